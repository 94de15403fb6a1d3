"""The simulated device fleet: N devices with a memory budget, a speed and a bandwidth.

Budgets come from a named *profile* in the ``fedbench.fleets`` entry-point
group, so a third party can ship its own. A profile is a function

    profile(config: FleetConfig, num_devices: int, rng: numpy Generator,
            reference_peak_bytes: () -> int) -> sequence of budgets (bytes, or None = unlimited)

``reference_peak_bytes`` is the memory model's peak for the run's full model trained
as the paper's common setting trains it (SGD with momentum, batch 64), whatever the
run's own optimizer and batch, so the devices are the same for every method and
training setting of one model and data set; it is computed only if a profile calls
it (``relative`` does). Speeds and
bandwidths come from :data:`DEVICE_CLASSES`, drawn independently of memory.
Every draw uses the run seed's FLEET stream, so a fleet is a function of
(seed, profile, N).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedbench import registry
from fedbench.config import FleetConfig
from fedbench.errors import ConfigError, PluginError
from fedbench.seeding import Stream, numpy_rng
from fedbench.simulation.fleet_paper import PAPER_BUDGET_KNOTS_MIB, PAPER_REFERENCE_PEAK_BYTES

MIB = 1024 * 1024
_FLEET_BUDGETS, _FLEET_CLASSES = 0, 1  # keys of the two independent FLEET sub-streams

ProfileFn = Callable[[FleetConfig, int, np.random.Generator, Callable[[], int]], Sequence[int | None]]


@dataclass(frozen=True)
class DeviceClass:
    """A kind of device: peak FP32 throughput and the uplink it trains behind."""

    name: str
    flops_per_s: float
    bandwidth_bytes_per_s: float
    share: float  # probability that a device is of this class
    source: str


# Peak FP32 FLOP/s = shader cores x 2 (FMA) x boost clock, from the vendors' published core
# counts and clocks; bandwidths are assumed typical links (not measured). See docs/memory.md.
DEVICE_CLASSES: tuple[DeviceClass, ...] = (
    DeviceClass("jetson-xavier-nx", 384 * 2 * 1.1e9, 50e6 / 8, 0.2,
                "384 Volta CUDA cores at 1100 MHz; Wi-Fi 50 Mbit/s"),
    DeviceClass("jetson-tx2", 256 * 2 * 1.465e9, 50e6 / 8, 0.3,
                "256 Pascal CUDA cores at 1465 MHz (the paper's test board); Wi-Fi 50 Mbit/s"),
    DeviceClass("jetson-nano", 128 * 2 * 0.921e9, 20e6 / 8, 0.3,
                "128 Maxwell CUDA cores at 921 MHz; Wi-Fi 20 Mbit/s"),
    DeviceClass("raspberry-pi-4", 4 * 8 * 1.5e9, 10e6 / 8, 0.2,
                "4 Cortex-A72 cores at 1.5 GHz, 8 FP32 FLOP/cycle (NEON FMA); LTE uplink 10 Mbit/s"),
)


@dataclass(frozen=True)
class Device:
    device_id: int
    memory_bytes: int | None  # None: unlimited (the `homogeneous` profile)
    flops_per_s: float
    bandwidth_bytes_per_s: float
    device_class: str

    def fits(self, peak_bytes: int) -> bool:
        return self.memory_bytes is None or peak_bytes <= self.memory_bytes


@dataclass(frozen=True)
class Fleet:
    """N devices; device ``i`` is client ``i`` of the run's partition."""

    profile: str
    devices: tuple[Device, ...]

    def __len__(self) -> int:
        return len(self.devices)

    @property
    def unlimited(self) -> bool:
        """Every device fits every workload (no memory model needed)."""
        return all(d.memory_bytes is None for d in self.devices)

    @property
    def largest_budget_bytes(self) -> int | None:
        budgets = [d.memory_bytes for d in self.devices]
        return None if any(b is None for b in budgets) else max(budgets)  # type: ignore[type-var]

    @functools.cached_property
    def _ids_and_budgets(self) -> tuple[np.ndarray, np.ndarray]:
        """Device ids and budgets (unlimited: +inf) as arrays, so eligibility is one vector
        comparison rather than a Python loop over N devices each round."""
        ids = np.array([d.device_id for d in self.devices], dtype=np.int64)
        budgets = np.array([np.inf if d.memory_bytes is None else d.memory_bytes for d in self.devices], dtype=np.float64)
        return ids, budgets

    def eligible(self, peak_bytes: int) -> list[int]:
        """Ids of the devices whose budget holds a step needing ``peak_bytes``."""
        ids, budgets = self._ids_and_budgets
        return ids[budgets >= peak_bytes].tolist()

    def participation_rate(self, peak_bytes: int) -> float:
        return len(self.eligible(peak_bytes)) / len(self.devices)


# ------------------------------------------------------------------ profiles
def homogeneous(config: FleetConfig, num_devices: int, rng: np.random.Generator,
                reference_peak_bytes: Callable[[], int]) -> list[int | None]:
    """Every device fits everything: vanilla FL, the default."""
    return [None] * num_devices


def uniform_mb(config: FleetConfig, num_devices: int, rng: np.random.Generator,
               reference_peak_bytes: Callable[[], int]) -> list[int | None]:
    """Budgets uniform over the integers [low_mb, high_mb] MiB ([C-ProFL] draws 100-900)."""
    draws = rng.integers(config.low_mb, config.high_mb + 1, size=num_devices)
    return [int(mb) * MIB for mb in draws]


def stratified_quantiles(num_devices: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw inside each of N equal probability strata, in random device order,
    so that the fleet's empirical distribution matches the target within 1/N."""
    strata = rng.permutation(num_devices)
    return (strata + rng.random(num_devices)) / num_devices


def quantile_budgets(knots: Sequence[tuple[float, float]], quantiles: np.ndarray) -> np.ndarray:
    """Invert a piecewise-linear CDF given as ``(value, cumulative probability)`` knots
    (values increasing, probabilities non-decreasing from 0 to 1). Two knots with the same
    probability leave no mass between their values (a jump of the inverse)."""
    values = np.array([v for v, _ in knots], dtype=np.float64)
    probs = np.array([p for _, p in knots], dtype=np.float64)
    upper = np.clip(np.searchsorted(probs, quantiles, side="left"), 1, len(probs) - 1)
    lower = upper - 1
    span = probs[upper] - probs[lower]
    frac = np.where(span > 0, (quantiles - probs[lower]) / np.where(span > 0, span, 1.0), 1.0)
    return values[lower] + np.clip(frac, 0.0, 1.0) * (values[upper] - values[lower])


def paper(config: FleetConfig, num_devices: int, rng: np.random.Generator,
          reference_peak_bytes: Callable[[], int]) -> list[int | None]:
    """Absolute budgets fitted to the paper's participation rates (``python -m fedbench.simulation.fleet_fit``)."""

    mib = quantile_budgets(PAPER_BUDGET_KNOTS_MIB, stratified_quantiles(num_devices, rng))
    return [int(math.floor(m * MIB)) for m in mib]


def relative(config: FleetConfig, num_devices: int, rng: np.random.Generator,
             reference_peak_bytes: Callable[[], int]) -> list[int | None]:
    """The ``paper`` quantiles as fractions of the reference peak (the run's full model at the
    paper's SGD and batch 64), so a scaled-down experiment (small model, Fashion-MNIST) keeps the
    paper's participation structure, and another optimizer or batch changes who fits, as it
    would on real devices, instead of rescaling the devices."""

    fractions = [(mib * MIB / PAPER_REFERENCE_PEAK_BYTES, p) for mib, p in PAPER_BUDGET_KNOTS_MIB]
    scale = reference_peak_bytes()
    return [int(math.floor(f * scale)) for f in quantile_budgets(fractions, stratified_quantiles(num_devices, rng))]


# ------------------------------------------------------------------ building
def _validate_profile(name: str, obj: object) -> None:
    if not callable(obj):
        raise PluginError(f"fleet profile '{name}' must be a function (config, num_devices, rng, peak_fn)")


def _device_classes(num_devices: int, rng: np.random.Generator) -> list[DeviceClass]:
    shares = np.array([c.share for c in DEVICE_CLASSES])
    picks = rng.choice(len(DEVICE_CLASSES), size=num_devices, p=shares / shares.sum())
    return [DEVICE_CLASSES[i] for i in picks]


def make_fleet(
    config: FleetConfig,
    num_devices: int,
    seed: int,
    reference_peak_bytes: Callable[[], int] = lambda: 0,
) -> Fleet:
    """Draw the fleet of profile ``config.profile`` (unknown names list the known ones)."""
    draw: ProfileFn = registry.load("fleets", config.profile, validate=_validate_profile)
    budgets = list(draw(config, num_devices, numpy_rng(seed, Stream.FLEET, _FLEET_BUDGETS), reference_peak_bytes))
    if len(budgets) != num_devices:
        raise PluginError(
            f"fleet profile '{config.profile}' drew {len(budgets)} budgets for {num_devices} devices"
        )
    for budget in budgets:
        if budget is not None and budget <= 0:
            raise ConfigError(
                f"fleet profile '{config.profile}' drew a budget of {budget} bytes; budgets must be > 0"
            )
    classes = _device_classes(num_devices, numpy_rng(seed, Stream.FLEET, _FLEET_CLASSES))
    devices = tuple(
        Device(i, None if b is None else int(b), c.flops_per_s, c.bandwidth_bytes_per_s, c.name)
        for i, (b, c) in enumerate(zip(budgets, classes, strict=True))
    )
    return Fleet(profile=config.profile, devices=devices)
