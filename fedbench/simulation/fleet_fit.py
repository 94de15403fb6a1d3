"""Fit the ``paper`` fleet profile to the NeuLite paper's participation rates.

    python -m fedbench.simulation.fleet_fit            # print the fit
    python -m fedbench.simulation.fleet_fit --write    # ... and regenerate fedbench/simulation/fleet_paper.py

The paper publishes PRs but neither its device budgets nor its architectures.
A target "method M on model X has PR p" says that a share p of the devices has a
budget of at least the peak of M's smallest workload on X (the memory model, batch
64, CIFAR-10 shapes). Two kinds of target are hard constraints, met exactly:
NeuLite's 100 % (the paper's claim of inclusiveness: its cheapest stage fits every
device, so the smallest budget is at least that stage's peak) and ResNet34's
ExclusiveFL PR of 0 (no budget reaches its full model). One distribution of budgets
cannot meet every other target when the peaks are ordered differently from the PRs,
so those shares are fitted by isotonic least squares between the hard bounds (the
survival function of a budget distribution cannot rise with the threshold), each
target weighted by the number of the paper's accuracy results measured under it.
The fitted shares become the knots of a piecewise-linear CDF.

Thresholds come from the registered models and methods; a target whose model or
method is not registered is skipped unless ``--peak METHOD:MODEL=MIB`` gives its
peak by hand (recorded as such in the output).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbench import registry
from fedbench.memory.model import MemoryModel, SGDSpec
from fedbench.models import build_model
from fedbench.seeding import Stream, numpy_rng
from fedbench.simulation.fleet import MIB, quantile_budgets, stratified_quantiles

CIFAR10_SHAPE, CIFAR10_CLASSES, BATCH_SIZE = (3, 32, 32), 10, 64
KNOT_DECIMALS = 3  # MiB decimals of the generated knots
REFERENCE = ("exclusivefl", "resnet18")


@dataclass(frozen=True)
class Target:
    method: str
    model: str
    paper_pr: float
    exact: bool = False  # a hard constraint: everyone (PR 1) or nobody (PR 0) fits
    variants: tuple[str, ...] = ()  # registered models that may stand for `model`; the best fit wins

    def __post_init__(self) -> None:
        # A hard PR strictly between 0 and 1 would pin one knot of the CDF, not bound the fit.
        if self.exact and self.paper_pr not in (0.0, 1.0):
            raise ValueError(f"exact target {self.method}:{self.model} must have PR 0 or 1, not {self.paper_pr}")


# spec Q5: the paper's SqueezeNet is unpublished; with or without the stem pool. One variant
# stands for SqueezeNet in every target of a fit.
SQUEEZENET_VARIANTS = ("squeezenet", "squeezenet_nopool")

# Distinct experiments (data set x partition) the paper reports per model, Tables 1 and 2: a
# target's weight in the fit, so that a PR behind more published accuracies counts more.
# ResNet18: CIFAR-10 IID and non-IID, CINIC-10, CIFAR-100 IID and non-IID; ResNet34: CIFAR-10 and
# CIFAR-100, IID and non-IID; VGG11_bn and SqueezeNet: CIFAR-10, CINIC-10, CIFAR-100 (non-IID).
MODEL_WEIGHTS: dict[str, float] = {"resnet18": 5.0, "resnet34": 4.0, "vgg11_bn": 3.0, "squeezenet": 3.0}

# NeuLite paper, Table 1/2 (PR column).
TARGETS: tuple[Target, ...] = (
    Target("exclusivefl", "resnet18", 0.18),
    Target("exclusivefl", "vgg11_bn", 0.22),
    Target("exclusivefl", "squeezenet", 0.11, variants=SQUEEZENET_VARIANTS),
    Target("exclusivefl", "resnet34", 0.0, exact=True),
    Target("depthfl", "resnet18", 0.43),
    Target("depthfl", "vgg11_bn", 0.43),
    Target("depthfl", "squeezenet", 0.39, variants=SQUEEZENET_VARIANTS),
    Target("depthfl", "resnet34", 0.36),
    Target("neulite", "resnet18", 1.0, exact=True),
    Target("neulite", "vgg11_bn", 1.0, exact=True),
    Target("neulite", "squeezenet", 1.0, exact=True, variants=SQUEEZENET_VARIANTS),
    Target("neulite", "resnet34", 1.0, exact=True),
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


def knot_value(threshold_mib: float, share: float) -> float:
    """A threshold rounded to the knots' decimals on the side that keeps a hard share exact: up
    when everyone must fit (share 1), strictly below when nobody may (share 0)."""
    scale = 10**KNOT_DECIMALS
    if share >= 1.0:
        return math.ceil(threshold_mib * scale) / scale
    if share <= 0.0:
        return (math.ceil(threshold_mib * scale) - 1) / scale
    return round(threshold_mib, KNOT_DECIMALS)


def knots_from_fit(thresholds_mib: list[float], shares: list[float]) -> list[tuple[float, float]]:
    """CDF knots ``(budget MiB, P(budget < value))`` meeting ``P(budget >= t_j) = share_j``."""
    low = min(100.0, 0.5 * thresholds_mib[0])
    knots = [(low, 0.0)]
    for t, share in zip(thresholds_mib, shares, strict=True):
        knots.append((knot_value(t, share), round(1.0 - share, 6)))
    if knots[-1][1] < 1.0:
        knots.append((max(900.0, 1.25 * thresholds_mib[-1]), 1.0))
    return knots


def measure_thresholds(overrides: dict[tuple[str, str], float]) -> tuple[list[Threshold], list[str]]:
    """Peak of each target's smallest workload (one entry per model variant); notes for skipped ones."""

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
                method_cls = registry.load("methods", target.method)
                peak = min(
                    memory.report(w.model, w.trainable, BATCH_SIZE, CIFAR10_SHAPE,
                                  **({"loss_fn": w.loss_fn} if w.loss_fn is not None else {})).peak_bytes
                    for w in method_cls.workloads(model, method_cls.parse_options({}))
                )
                found.append(Threshold(target, peak, "memory model", name))
            else:
                skipped.append(f"{target.method}:{name} skipped ({target.method} not registered)")
    return found, skipped


def choices(thresholds: list[Threshold]) -> list[list[Threshold]]:
    """Every way of picking one registered variant per paper model (the same variant in every
    target on that model: a fleet is fitted to one SqueezeNet, not one per method)."""
    variants: dict[str, list[str]] = {}
    for t in thresholds:
        names = variants.setdefault(t.target.model, [])
        if t.model not in names:
            names.append(t.model)
    picks = [dict(zip(variants, combo, strict=True)) for combo in itertools.product(*variants.values())]
    return [[t for t in thresholds if t.model == pick[t.target.model]] for pick in picks]


def fit(thresholds: list[Threshold], num_devices: int = 100, seed: int = 42) -> dict:
    """The weighted least-squares fit over every choice of model variants; the best one wins."""
    return min((fit_one(c, num_devices, seed) for c in choices(thresholds)), key=lambda r: r["sse"])


def target_weight(target: Target) -> float:
    """The target's weight in the least squares (:data:`MODEL_WEIGHTS`; 1 for a model the paper's
    tables do not have)."""
    return MODEL_WEIGHTS.get(target.model, 1.0)


def fitted_shares(ordered: list[Threshold]) -> list[float]:
    """Shares of devices at or above each threshold (``ordered`` by peak): 1 up to the highest
    threshold that everyone must fit, 0 from the lowest that nobody may, and between them the
    isotonic least-squares fit of the other targets."""
    floor = max((t.peak_bytes for t in ordered if t.target.exact and t.target.paper_pr == 1.0), default=-1)
    ceiling = min((t.peak_bytes for t in ordered if t.target.exact and t.target.paper_pr == 0.0),
                  default=math.inf)
    if floor >= ceiling:
        raise SystemExit("the hard targets contradict each other: a workload everyone must fit "
                         "needs as much memory as one nobody may fit")
    free = [i for i, t in enumerate(ordered) if floor < t.peak_bytes < ceiling]
    fitted = isotonic_non_increasing([ordered[i].target.paper_pr for i in free],
                                     [target_weight(ordered[i].target) for i in free])
    shares = [1.0 if t.peak_bytes <= floor else 0.0 for t in ordered]
    for i, share in zip(free, fitted, strict=True):
        shares[i] = share
    return shares


def fit_one(thresholds: list[Threshold], num_devices: int, seed: int) -> dict:
    """One choice of variants: shares, knots, the PRs realised on the seed's fleet and the
    squared error of the soft targets."""
    ordered = sorted(thresholds, key=lambda t: t.peak_bytes)
    shares = fitted_shares(ordered)
    sse = sum(target_weight(t.target) * (s - t.target.paper_pr) ** 2 for s, t in zip(shares, ordered, strict=True))
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


def mean_absolute_errors(rows: list[tuple]) -> dict[str, tuple[float, int]]:
    """Per method, the mean absolute error of the fitted PRs against the paper's, in points, and
    the number of targets it is taken over."""
    errors: dict[str, list[float]] = {}
    for method, _model, _peak, paper_pr, fitted, _source in rows:
        errors.setdefault(method, []).append(abs(paper_pr - fitted))
    return {m: (100 * sum(e) / len(e), len(e)) for m, e in errors.items()}


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
# budgets are the knots above divided by this, times the run's full-model peak at the paper's training.
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
    parser = argparse.ArgumentParser(prog="python -m fedbench.simulation.fleet_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--peak", action="append", default=[], help="METHOD:MODEL=MIB for an unregistered model")
    parser.add_argument("--write", action="store_true", help="regenerate fedbench/simulation/fleet_paper.py")
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
    for method, (mae, count) in mean_absolute_errors(result["rows"]).items():
        print(f"{method} mean absolute error: {mae:.1f} points over {count} targets")
    print("knots (MiB, CDF): " + ", ".join(f"({v:.1f}, {p:.3f})" for v, p in result["knots"]))
    if args.write:
        command = "python -m fedbench.simulation.fleet_fit " + " ".join(
            [f"--peak {p}" for p in args.peak] + ["--write"]
        )
        path = Path(__file__).with_name("fleet_paper.py")
        path.write_text(render_module(result, reference[0].peak_bytes, command))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
