"""Fit the ``paper`` fleet profile to the NeuLite paper's participation rates.

    python -m fedbench.fleet_fit            # print the fit
    python -m fedbench.fleet_fit --write    # ... and regenerate fedbench/fleet_paper.py

The paper publishes PRs but neither its device budgets nor its architectures.
A target "method M on model X has PR p" says that a share p of the devices has a
budget of at least the peak of M's smallest workload on X (the memory model, batch
64, CIFAR-10 shapes). One distribution of budgets cannot meet every target when
the peaks are ordered differently from the PRs, so the shares are fitted by
weighted isotonic least squares (the survival function of a budget distribution
cannot rise with the threshold); ResNet34's ExclusiveFL PR of 0 is a hard
constraint. The fitted shares become the knots of a piecewise-linear CDF.

Thresholds come from the registered models and methods; a target whose model or
method is not registered is skipped unless ``--peak METHOD:MODEL=MIB`` gives its
peak by hand (recorded as such in the output).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbench import registry
from fedbench.fleet import MIB, quantile_budgets, stratified_quantiles
from fedbench.seeding import Stream, numpy_rng

CIFAR10_SHAPE, CIFAR10_CLASSES, BATCH_SIZE = (3, 32, 32), 10, 64
EXACT_WEIGHT = 1e6
REFERENCE = ("exclusivefl", "resnet18")


@dataclass(frozen=True)
class Target:
    method: str
    model: str
    paper_pr: float
    exact: bool = False  # must be met exactly (ResNet34: nobody fits the full model)
    variants: tuple[str, ...] = ()  # registered models that may stand for `model`; the best fit wins


# NeuLite paper, Table 1/2 (PR column).
TARGETS: tuple[Target, ...] = (
    Target("exclusivefl", "resnet18", 0.18),
    Target("exclusivefl", "vgg11_bn", 0.22),
    # spec Q5: the paper's SqueezeNet is unpublished; with or without the stem pool.
    Target("exclusivefl", "squeezenet", 0.11, variants=("squeezenet", "squeezenet_nopool")),
    Target("exclusivefl", "resnet34", 0.0, exact=True),
    Target("depthfl", "resnet18", 0.43),
    Target("depthfl", "resnet34", 0.36),
)


@dataclass(frozen=True)
class Threshold:
    target: Target
    peak_bytes: int
    source: str  # "memory model" or "--peak"
    model: str = ""  # the registered model measured (a variant of target.model)


def isotonic_non_increasing(values: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares fit of a non-increasing sequence (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(int(n))]


def knots_from_fit(thresholds_mib: list[float], shares: list[float]) -> list[tuple[float, float]]:
    """CDF knots ``(budget MiB, P(budget < value))`` meeting ``P(budget >= t_j) = share_j``."""
    low = min(100.0, 0.5 * thresholds_mib[0])
    knots = [(low, 0.0)]
    for t, share in zip(thresholds_mib, shares, strict=True):
        knots.append((t, round(1.0 - share, 6)))
    if knots[-1][1] < 1.0:
        knots.append((max(900.0, 1.25 * thresholds_mib[-1]), 1.0))
    return knots


def exits_loss(model, images, labels):  # noqa: ANN001, ANN201 (LossFn)
    """Sum of the exits' cross-entropies: DepthFL's loss at depth 1, where there is no distillation."""
    import torch.nn.functional as F

    return sum(F.cross_entropy(logits, labels) for logits in model(images))


def depthfl_depth1(model):  # noqa: ANN001, ANN201
    """DepthFL's depth-1 local model (stem, block 1, exit 1), from the model zoo's cutting
    helpers; used while the depthfl method is not registered."""
    from fedbench.models.cutting import ExitModel, exit_heads

    return ExitModel(model, exit_heads(model, [1]), 1)


def measure_thresholds(overrides: dict[tuple[str, str], float]) -> tuple[list[Threshold], list[str]]:
    """Peak of each target's smallest workload (one entry per model variant); notes for skipped ones."""
    from fedbench.memory import MemoryModel, SGDSpec
    from fedbench.method import validate_method
    from fedbench.models import build_model

    models = {i.name for i in registry.available("models")}
    methods = {i.name for i in registry.available("methods")}
    memory = MemoryModel(SGDSpec())
    found, skipped = [], []
    for target in TARGETS:
        key = (target.method, target.model)
        if key in overrides:
            found.append(Threshold(target, int(overrides[key] * MIB), "--peak", target.model))
            continue
        for name in target.variants or (target.model,):
            if name not in models:
                skipped.append(f"{target.method}:{name} skipped ({name} not registered)")
                continue
            model = build_model(name, CIFAR10_SHAPE, CIFAR10_CLASSES)
            if target.method in methods:
                method_cls = registry.load("methods", target.method, validate=validate_method)
                peak = min(
                    memory.report(w.model, w.trainable, BATCH_SIZE, CIFAR10_SHAPE,
                                  **({"loss_fn": w.loss_fn} if w.loss_fn is not None else {})).peak_bytes
                    for w in method_cls.workloads(model, method_cls.parse_options({}))
                )
                found.append(Threshold(target, peak, "memory model", name))
            elif target.method == "depthfl":
                peak = memory.report(depthfl_depth1(model), None, BATCH_SIZE, CIFAR10_SHAPE, loss_fn=exits_loss)
                found.append(Threshold(target, peak.peak_bytes, "memory model, depth-1 ExitModel", name))
            else:
                skipped.append(f"{target.method}:{name} skipped ({target.method} not registered)")
    return found, skipped


def choices(thresholds: list[Threshold]) -> list[list[Threshold]]:
    """Every way of picking one variant per target."""
    by_target: dict[Target, list[Threshold]] = {}
    for t in thresholds:
        by_target.setdefault(t.target, []).append(t)
    return [list(combo) for combo in itertools.product(*by_target.values())]


def fit(thresholds: list[Threshold], num_devices: int = 100, seed: int = 42) -> dict:
    """The least-squares fit over every choice of model variants; the best one wins."""
    return min((fit_one(c, num_devices, seed) for c in choices(thresholds)), key=lambda r: r["sse"])


def fit_one(thresholds: list[Threshold], num_devices: int, seed: int) -> dict:
    ordered = sorted(thresholds, key=lambda t: t.peak_bytes)
    weights = [EXACT_WEIGHT if t.target.exact else 1.0 for t in ordered]
    shares = isotonic_non_increasing([t.target.paper_pr for t in ordered], weights)
    sse = sum(w * (s - t.target.paper_pr) ** 2 for w, s, t in zip(weights, shares, ordered, strict=True))
    knots = knots_from_fit([t.peak_bytes / MIB for t in ordered], shares)
    # PRs on the fleet a run actually draws (seed 42, N = 100), not just in expectation.
    quantiles = stratified_quantiles(num_devices, numpy_rng(seed, Stream.FLEET, 0))
    budgets = np.floor(quantile_budgets(knots, quantiles) * MIB)
    rows = [
        (t.target.method, t.model, t.peak_bytes, t.target.paper_pr,
         float(np.mean(budgets >= t.peak_bytes)), t.source)
        for t in thresholds
    ]
    return {"knots": knots, "rows": rows, "sse": sse}


def render_module(result: dict, reference_bytes: int, command: str) -> str:
    knots = ",\n".join(f"    ({v:.3f}, {p:.6f})" for v, p in result["knots"])
    rows = ",\n".join(
        f"    ({m!r}, {x!r}, {peak}, {paper:.2f}, {fitted:.2f}, {src!r})"
        for m, x, peak, paper, fitted, src in result["rows"]
    )
    return f'''"""The fitted ``paper`` fleet profile. Generated by ``{command}``; do not edit by hand.

Budgets follow a piecewise-linear CDF through these knots (MiB, cumulative probability).
"""

PAPER_BUDGET_KNOTS_MIB: tuple[tuple[float, float], ...] = (
{knots},
)

# Full-model peak of the reference (ExclusiveFL on ResNet18, batch 64, CIFAR-10): `relative`
# budgets are the knots above divided by this, times the run's own full-model peak.
PAPER_REFERENCE_PEAK_BYTES: int = {reference_bytes}

# (method, model, threshold bytes, paper PR, fitted PR on the seed-42 fleet of 100, threshold source)
PAPER_FIT_TABLE: tuple[tuple[str, str, int, float, float, str], ...] = (
{rows},
)
'''


def _parse_peak(text: str) -> tuple[tuple[str, str], float]:
    try:
        key, value = text.split("=")
        method, model = key.split(":")
        return (method, model), float(value)
    except ValueError:
        raise SystemExit(f"--peak {text!r} must look like METHOD:MODEL=MIB, e.g. exclusivefl:resnet18=400") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedbench.fleet_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--peak", action="append", default=[], help="METHOD:MODEL=MIB for an unregistered model")
    parser.add_argument("--write", action="store_true", help="regenerate fedbench/fleet_paper.py")
    args = parser.parse_args(argv)
    overrides = dict(_parse_peak(p) for p in args.peak)
    thresholds, skipped = measure_thresholds(overrides)
    for note in skipped:
        print(f"note: {note}", file=sys.stderr)
    reference = [t for t in thresholds if (t.target.method, t.target.model) == REFERENCE]
    if not reference:
        raise SystemExit("the reference exclusivefl:resnet18 has no threshold; register resnet18 or pass --peak")
    result = fit(thresholds)
    print(f"{'method':12} {'model':17} {'peak MiB':>9} {'paper PR':>8} {'fitted PR':>9}  source")
    for method, model, peak, paper_pr, fitted, source in result["rows"]:
        print(f"{method:12} {model:17} {peak / MIB:9.1f} {paper_pr:8.2f} {fitted:9.2f}  {source}")
    exclusive = [(p, f) for m, _, _, p, f, _ in result["rows"] if m == "exclusivefl"]
    if exclusive:
        mae = sum(abs(p - f) for p, f in exclusive) / len(exclusive)
        print(f"ExclusiveFL mean absolute error: {100 * mae:.1f} points over {len(exclusive)} targets")
    print("knots (MiB, CDF): " + ", ".join(f"({v:.1f}, {p:.3f})" for v, p in result["knots"]))
    if args.write:
        command = "python -m fedbench.fleet_fit " + " ".join(
            [f"--peak {p}" for p in args.peak] + ["--write"]
        )
        path = Path(__file__).with_name("fleet_paper.py")
        path.write_text(render_module(result, reference[0].peak_bytes, command))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
