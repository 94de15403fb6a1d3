"""Per-block cost vs the full model, from the models alone (no runs): Fig. 6 and Fig. 7.

Memory comes from :mod:`fedbench.memory.model`, time from :mod:`fedbench.simulation.clock`. A
"block" row is NeuLite's stage k: the stage model S_k with block k, its output
module and the co-adapted part of block k−1 trainable. When a ``neulite`` method
is registered its own ``workloads`` are used (they include its loss and
projection MLP); otherwise the stage models are built here from
:mod:`fedbench.models.cutting` with cross-entropy loss, and the frame says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch

from fedbench import registry
from fedbench.config import RunConfig
from fedbench.core import setup
from fedbench.core.context import RunContext
from fedbench.core.method import Workload, validate_method
from fedbench.data import ImageDataset
from fedbench.errors import ConfigError, UnknownNameError
from fedbench.memory.model import MemoryModel, SGDSpec
from fedbench.models import BlockModel, build_model
from fedbench.models.cutting import StageModel, stage_trainable
from fedbench.simulation.clock import (
    DeviceClass,
    VirtualClock,
    device_time,
    state_bytes,
    trainable_upload_bytes,
)
from fedbench.simulation.fleet import DEVICE_CLASSES, make_fleet
from fedbench.training.loop import cross_entropy_loss

log = logging.getLogger(__name__)

MEMORY_COLUMNS = ("label", "peak_bytes", "params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")
TIME_COLUMNS = ("label", "compute_s", "comm_s", "total_s")


def stage_workloads(model: BlockModel) -> list[Workload]:
    """NeuLite's stage k = 1..S as memory-model workloads (cross-entropy loss, no projection MLP)."""

    stages = [StageModel(model, k) for k in range(1, model.num_blocks + 1)]
    return [Workload(f"block {s.stage}", s, stage_trainable(model, s)) for s in stages]


def neulite_workloads(model: BlockModel) -> tuple[list[Workload], str]:
    """The registered ``neulite`` method's workloads if there is one, else :func:`stage_workloads`;
    with a word on which was used."""

    try:
        method = registry.load("methods", "neulite", validate=validate_method)
    except UnknownNameError:
        return stage_workloads(model), "stage models from fedbench.models.cutting, cross-entropy loss"
    workloads = [w for w in method.workloads(model, method.parse_options({})) if w.name != "full"]
    return workloads, "the neulite method's workloads"


def block_memory(
    model: BlockModel, input_shape: tuple[int, int, int], batch_size: int, optimizer: object | None = None
) -> tuple[pd.DataFrame, str]:
    """Peak bytes (and breakdown) of one local step of every block's stage and of the full model."""

    memory = MemoryModel(optimizer or SGDSpec())
    workloads, source = neulite_workloads(model)
    rows = []
    for workload in [*workloads, Workload("full", model)]:
        report = memory.report(workload.model, workload.trainable, batch_size, input_shape,
                               loss_fn=workload.loss_fn or cross_entropy_loss)
        rows.append({"label": workload.name, **{k: getattr(report, k) for k in MEMORY_COLUMNS[1:]}})
    return pd.DataFrame(rows, columns=list(MEMORY_COLUMNS)), source


@dataclass(frozen=True)
class StageTime:
    """One row of Fig. 7: a NeuLite stage (or the full model) on one device class."""

    label: str
    compute_s: float
    comm_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s


def device_class(name: str) -> DeviceClass:
    for cls in DEVICE_CLASSES:
        if cls.name == name:
            return cls
    known = ", ".join(c.name for c in DEVICE_CLASSES)
    raise ConfigError(f"unknown device class {name!r}; known: {known}")


def stage_round_times(
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    samples: int,
    epochs: int,
    device_class_name: str = "jetson-tx2",
    width: float = 1.0,
) -> list[StageTime]:
    """Seconds of one device's round for each NeuLite stage k = 1..S and for the full model.

    Stage k is the registered ``neulite`` method's workload, as its runs train and time it (S_k
    with block k, the co-adapted part of block k−1, the output module and projection MLP
    trainable, the curriculum-aware loss with its nHSIC terms; :func:`neulite_workloads`), or,
    without that method, the stage model of :mod:`fedbench.models.cutting` under cross-entropy.
    It downloads S_k's full state and uploads the trainable tensors plus all buffers (spec neulite
    §2.5), as NeuLite's ``device_cost`` does; the full model moves its whole state both ways.
    Labels are ``block <k>`` and ``full``.
    """

    device = device_class(device_class_name)
    clock = VirtualClock(batch_size, tuple(input_shape), epochs)
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_name, tuple(input_shape), num_classes, width=width)
    workloads, _ = neulite_workloads(model)
    rows = []
    for k, work in enumerate(workloads, start=1):
        cost = clock.cost(work.model, samples, work.trainable, work.loss_fn, bytes_down=state_bytes(work.model),
                          bytes_up=trainable_upload_bytes(work.model, work.trainable))
        rows.append((f"block {k}", cost))
    rows.append(("full", clock.cost(model, samples)))
    out = []
    for label, cost in rows:
        t = device_time(0, cost, device)
        out.append(StageTime(label, t.compute_s, t.comm_s))
    return out


def block_times(
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    samples: int,
    epochs: int,
    device_class: str,
    width: float = 1.0,
) -> pd.DataFrame:
    """Simulated seconds of one device's round per block (NeuLite stage) and for the full model."""

    times = stage_round_times(model_name, input_shape, num_classes, batch_size, samples, epochs,
                              device_class_name=device_class, width=width)
    return pd.DataFrame(
        [{"label": t.label, "compute_s": t.compute_s, "comm_s": t.comm_s, "total_s": t.total_s} for t in times],
        columns=list(TIME_COLUMNS),
    )


def reduction(frame: pd.DataFrame, value: str) -> float:
    """1 − (largest block ÷ full model) of ``value``: the paper's "reduced by up to" figure."""
    blocks = frame[frame["label"] != "full"][value]
    full = frame.loc[frame["label"] == "full", value].iloc[0]
    return 1.0 - float(blocks.max()) / float(full)


FLEET_TIME_COLUMNS = ("label", "compute_s", "comm_s", "total_s", "eligible", "rounds")


def shape_only_dataset(name: str, input_shape: tuple[int, int, int], num_classes: int,
                       num_train: int) -> ImageDataset:
    """A data set with the right shapes, labels and size but no pixels (zero-stride views):
    enough for the partitioner, the fleet, the memory model and the clock, which never look
    at pixel values, so Fig. 7 needs no download."""
    import torch

    blank = torch.zeros((1, *input_shape), dtype=torch.uint8)
    return ImageDataset(
        name=name, train_images=blank.expand(num_train, *input_shape),
        train_labels=torch.arange(num_train) % num_classes, test_images=blank,
        test_labels=torch.zeros(1, dtype=torch.int64), num_classes=num_classes,
        mean=(0.5,) * input_shape[0], std=(0.25,) * input_shape[0],
    )


def fleet_round_times(config: RunConfig, dataset: ImageDataset, rounds: int) -> pd.DataFrame:
    """Fig. 7 under a whole fleet: the simulated synchronous round (its slowest selected device)
    of each NeuLite stage and of FedAvg's full model, averaged over ``rounds`` sampled rounds.

    Each round draws its devices exactly as a run of ``config`` would (NeuLite: among the devices
    whose memory fits the stage; FedAvg: among all), and times them with the method's own
    ``device_time`` (NeuLite: S_k with its projection MLP and nHSIC terms, T_k uploaded), but trains
    nothing. ``compute_s``/``comm_s`` are those of each round's slowest device, so they add up to
    the round time. One row per stage (``block k``) and ``full``; ``eligible`` is the pool size.
    """
    from dataclasses import replace


    rows = []
    for method_name in ("neulite", "fedavg"):
        run_config = replace(config, method=method_name, rounds=rounds)
        data, _ = setup.partition(run_config, dataset)
        ctx = RunContext(config=run_config, data=data)
        ctx.fleet = make_fleet(run_config.fleet, data.num_clients, run_config.seed, ctx.reference_peak_bytes)
        method = setup.make_method(ctx)
        for round_idx in range(rounds):
            assignments = method.assign(round_idx)
            if not assignments:  # a NeuLite stage no device fits: skipped, as in a run
                continue
            slowest = max((method.device_time(a) for a in assignments), key=lambda t: t.total_s)
            if method_name == "neulite":
                stage = method.stage_of(round_idx)
                label, eligible = f"block {stage}", len(method.eligible_ids[stage - 1])
            else:
                label, eligible = "full", data.num_clients
            rows.append({"label": label, "compute_s": slowest.compute_s, "comm_s": slowest.comm_s,
                         "total_s": slowest.total_s, "eligible": eligible})
    frame = pd.DataFrame(rows)
    summary = frame.groupby("label", sort=False).agg(
        compute_s=("compute_s", "mean"), comm_s=("comm_s", "mean"), total_s=("total_s", "mean"),
        eligible=("eligible", "first"), rounds=("total_s", "size"),
    ).reset_index()
    order = sorted(summary["label"], key=lambda label: (label == "full", label))
    return summary.set_index("label").loc[order].reset_index()[list(FLEET_TIME_COLUMNS)]
