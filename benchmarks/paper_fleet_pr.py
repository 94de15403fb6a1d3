"""Participation rate of every paper method on every paper model under a fleet, beside the paper's.

    python benchmarks/paper_fleet_pr.py                 # the `paper` fleet, 100 devices, seed 42
    python benchmarks/paper_fleet_pr.py --fleet uniform-mb --seed 3

A method's PR is the share of devices that fit at least one of its workloads (``fedbench memory``'s
rows at batch 64 on CIFAR-10 shapes: NeuLite's cheapest stage, DepthFL's depth 1, the narrowest
HeteroFL/FedRolex/AllSmall width, the full model for ExclusiveFL, TiFL and Oort). The paper's PRs
come from the values shipped with the reports (``fedbench.reports.paper``); both SqueezeNet
variants are set against the paper's SqueezeNet. Prints a Markdown table and the mean absolute
error per method over the published cells of ResNet18, VGG11_bn, SqueezeNet and ResNet34.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedbench.reports.memory_table import memory_table
from fedbench.reports.paper import published

METHODS = ("allsmall", "exclusivefl", "depthfl", "heterofl", "fedrolex", "tifl", "oort", "neulite")
MODELS = ("resnet18", "vgg11_bn", "squeezenet", "squeezenet_nopool", "resnet34")
# The errors are taken over the paper's four models, SqueezeNet being the variant the `paper`
# fleet is fitted to (python -m fedbench.simulation.fleet_fit); squeezenet_nopool is shown for reference.
ERROR_MODELS = ("resnet18", "vgg11_bn", "squeezenet", "resnet34")


def method_pr(rows: list[dict[str, Any]]) -> float:
    """The share of devices that fit some workload of the method: its best row, leaving out the
    full-model reference row that ``fedbench memory`` adds to a method with sub-models."""
    own = rows[:-1] if len(rows) > 1 and rows[-1]["submodel"] == "full" else rows
    return max(r["pr"] for r in own)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default="paper")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per core)")
    args = parser.parse_args(argv)
    pairs = [(model, "cifar10", method) for model in MODELS for method in METHODS]
    rows = memory_table(pairs, 64, args.fleet, jobs=args.jobs, clients=args.clients, seed=args.seed)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_pair.setdefault((row["method"], row["model"]), []).append(row)
    print(f"PR (%) under the `{args.fleet}` fleet ({args.clients} devices, seed {args.seed}): fedbench / paper")
    print()
    print("| method | " + " | ".join(MODELS) + " |")
    print("|---|" + "---|" * len(MODELS))
    errors: dict[str, list[float]] = {}
    for method in METHODS:
        cells = []
        for model in MODELS:
            ours = 100 * method_pr(by_pair[(method, model)])
            theirs = published("pr", method, model)
            cells.append(f"{ours:.0f} / {theirs if theirs is not None else '—'}")
            if theirs is not None and model in ERROR_MODELS:
                errors.setdefault(method, []).append(abs(ours - float(theirs)))
        print(f"| {method} | " + " | ".join(cells) + " |")
    print()
    for method, errs in errors.items():
        print(f"{method}: mean absolute error {sum(errs) / len(errs):.1f} points over {len(errs)} published PRs")
    both = errors.get("exclusivefl", []) + errors.get("depthfl", [])
    if both:
        print(f"exclusivefl + depthfl: mean absolute error {sum(both) / len(both):.1f} points over {len(both)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
