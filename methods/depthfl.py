"""DepthFL (Kim et al., "DepthFL: Depthwise Federated Learning for Heterogeneous
Clients", ICLR 2023), as specified in spec baselines.md §8.

The global model gets an early-exit classifier after every block (the model
zoo's generic exits, spec architectures.md §12.5). A device trains the deepest
prefix of blocks, with the exits inside it, that fits its memory; every exit is
trained on the labels and, by mutual self-distillation, on the other exits'
predictions, so deep blocks that few devices can train still learn from shallow
ones. A FedDyn regulariser (α = 0.1, on in the official code) keeps one state
vector per device. The server averages every tensor over the devices that held
it, and the headline accuracy is the ensemble (mean logits) of the exits that
some device can train: an exit deeper than every eligible device's depth stays
at its initialisation and would only add noise (``ensemble: all`` averages every
exit, as the official code does, where every depth always has devices).

Devices that cannot train even the shallowest offered depth are excluded:
DepthFL is not inclusive (PR = |E| / N).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from fedbench.api import (
    Assignment,
    BlockModel,
    ClientContext,
    ConfigError,
    DeviceCost,
    ExitModel,
    MemoryBudgetError,
    Method,
    RunContext,
    Stream,
    Update,
    Workload,
    check_block_index,
    evaluate_outputs,
    exit_heads,
    format_bytes,
    graph_reusable,
    numpy_rng,
    overlap_count_average,
    state_bytes,
)

log = logging.getLogger(__name__)

KD_EPSILON = 1e-7  # added to the distillation targets, as in DepthFL's KLLoss
ENSEMBLES = ("trained", "all")
EXIT_INIT_KEY = 1  # Stream.MODEL_INIT key of the exits' initialisation (0 is the trunk's)


@dataclass(frozen=True, kw_only=True)
class DepthFLOptions:
    """``exits``: blocks with a middle exit (default: every block but the last, whose exit
    is the model's own head); the offered depths are these blocks and S. ``kd``: mutual
    self-distillation; ``temperature`` T and ``rampup_rounds`` of its weight; ``feddyn``
    and its ``alpha``. ``ensemble``: the exits averaged into the prediction, ``trained`` (those
    some eligible device's depth reaches) or ``all`` (the official code's choice).
    ``feddyn_in_memory``: a device's budget must also hold FedDyn's g_m and θ^t (2× the local
    model's parameters) and the term's transients, as a real device running FedDyn does; false
    counts the exit model's training step alone (spec §8.3's rule), which lets more devices
    reach the deeper prefixes."""

    exits: tuple[int, ...] | None = None
    kd: bool = True
    temperature: float = 1.0
    rampup_rounds: int = 300
    feddyn: bool = True
    alpha: float = 0.1
    ensemble: str = "trained"
    feddyn_in_memory: bool = True

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"options.ensemble ({self.ensemble!r}) must be one of {', '.join(ENSEMBLES)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(
                f"options.temperature ({self.temperature}) must be > 0 (DepthFL uses 1.0)"
            )
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"options.alpha ({self.alpha}) must be >= 0 (DepthFL uses 0.1)")
        if self.feddyn and self.alpha == 0:
            raise ConfigError("options.alpha (0) must be > 0 with FedDyn; set --opt feddyn=false to turn it off")
        if self.rampup_rounds < 0:
            raise ConfigError(f"options.rampup_rounds ({self.rampup_rounds}) must be >= 0 (DepthFL uses 300)")


def offered_depths(model: BlockModel, exits: Iterable[int] | None) -> tuple[int, ...]:
    """The depths a device may get: the blocks carrying an exit, and S (the model's head)."""
    depth = model.num_blocks
    positions = range(1, depth) if exits is None else exits
    for k in positions:
        check_block_index(model, k, "options.exits: exit")
    return tuple(sorted({*positions, depth}))


# -------------------------------------------------------------------- local loss
def consistency_weight(round_idx: int, rampup_rounds: int) -> float:
    """Sigmoid ramp-up of the distillation weight: exp(−5 (1 − min(t, R)/R)²), t = 0-based round."""
    if rampup_rounds == 0:
        return 1.0
    phase = 1.0 - min(round_idx, rampup_rounds) / rampup_rounds
    return math.exp(-5.0 * phase * phase)


def distillation_loss(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Σ_i 1/(n−1) Σ_{j≠i} KL(q_j ‖ p_i) · T², p_i = softmax(o_i/T), q_j = softmax(o_j/T) + 1e-7
    from a *detached* o_j; KL summed over classes, averaged over the batch. Zero for n = 1."""
    n = len(logits)
    if n < 2:
        return logits[0].new_zeros(())
    scaled = logits if temperature == 1.0 else [o / temperature for o in logits]  # o / 1 is o, bit for bit
    log_p = [F.log_softmax(o, dim=1) for o in scaled]
    targets = [F.softmax(o.detach(), dim=1) + KD_EPSILON for o in scaled]
    log_targets = [q.log() for q in targets]  # once per exit, not per pair
    total = logits[0].new_zeros(())
    for i in range(n):
        for j in range(n):
            if i != j:
                kl = (targets[j] * (log_targets[j] - log_p[i])).sum(dim=1).mean()
                total = total + kl / (n - 1)
    return total * temperature * temperature


def fused_distillation_loss(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """:func:`distillation_loss` in a fixed number of ops over the stacked exits, instead of a
    handful per ordered pair. With S = Σ_j q_j, the pairs' sum regroups (batch means; B samples):

        Σ_i Σ_{j≠i} KL(q_j ‖ p_i) = [(n−1) Σ_j Σ q_j log q_j − Σ_i Σ (S − q_i) log p_i] / B

    The first sum has no gradient (the targets are detached); it only makes the value the KL. Same
    value and gradients to float32 rounding (tests/test_depth_baselines.py)."""
    n = len(logits)
    if n < 2:
        return logits[0].new_zeros(())
    stacked = torch.stack(list(logits))  # n × B × C
    if temperature != 1.0:
        stacked = stacked / temperature
    log_p = F.log_softmax(stacked, dim=2)
    targets = F.softmax(stacked.detach(), dim=2) + KD_EPSILON
    entropy_terms = (targets * targets.log()).sum()
    cross_terms = ((targets.sum(dim=0) - targets) * log_p).sum()
    total = (entropy_terms * (n - 1) - cross_terms) / ((n - 1) * stacked.shape[1])
    return total * temperature * temperature


class FedDynState(nn.Module):
    """A device's FedDyn vectors g_m and the received global values θ^t, one flat buffer each over
    the parameters of its local model (in ``parameters()`` order), so that the memory model counts
    them as device memory and the fused term (:class:`FedDynTerm`) reads them as they are;
    :meth:`pairs` gives each parameter's (g_m, θ^t) as views of the two buffers."""

    def __init__(self, parameters: Iterable[torch.Tensor]) -> None:
        super().__init__()
        params = [param.detach() for param in parameters]
        self.shapes = tuple(param.shape for param in params)
        self.sizes = tuple(param.numel() for param in params)
        self.size = len(params)
        anchor = torch.cat([param.reshape(-1) for param in params]) if params else torch.zeros(0)
        self.register_buffer("g", torch.zeros_like(anchor))
        self.register_buffer("anchor", anchor)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` (a vector laid out like the buffers) as one view per parameter (vectors need
        no reshaping: fewer ops for the memory model to trace)."""
        return [
            part if len(shape) == 1 else part.view(shape)
            for part, shape in zip(flat.split(self.sizes), self.shapes, strict=True)
        ]

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.views(self.g), self.views(self.anchor), strict=True))


class DepthFLLocal(nn.Module):
    """What a device of depth d holds: the depth-d exit model and, with FedDyn, its state."""

    def __init__(self, net: ExitModel, model: BlockModel, depth: int, feddyn: bool) -> None:
        super().__init__()
        self.net = net
        self.feddyn = FedDynState(net.parameters()) if feddyn else None
        # Identify the workload in the memory and FLOP caches (cheaper than its printed structure).
        exits = ",".join(net.exits.keys())
        self.arch = f"{model.arch}/depthfl-d{depth}-exits[{exits}]-feddyn{int(feddyn)}"
        self.width, self.input_shape, self.num_classes = model.width, model.input_shape, model.num_classes

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net(images)


class FedDynTerm(torch.autograd.Function):
    """FedDyn's term −⟨θ, g_m⟩ + α/2 ‖θ − θ^t‖² of one step as a single autograd node over the flat
    θ = (θ_1, …, θ_n), which also hands the parameters on: it returns the term's value and the
    parameters themselves (aliases), and the network computes with those aliases
    (:func:`feddyn_objective`). Its backward so receives every parameter's network gradient at once
    and adds the term's gradient α (θ − θ^t) − g_m to them in one flat vector, handing each
    parameter a view of the sum. Fed the parameters directly, as a loss term beside the network,
    autograd would sum the two contributions with one kernel per parameter tensor; the per-tensor
    form costs about eight forward and eight backward kernels per tensor. The sums are the same
    float additions either way, so the gradients are the same bit for bit. Inputs: the flat g_m
    and θ^t (:class:`FedDynState`), α, then the parameters."""

    @staticmethod
    def forward(
        ctx: Any, g: torch.Tensor, anchor: torch.Tensor, alpha: float, *params: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # θ, made by cat (never an alias of a parameter), then θ − θ^t in place
        diff = torch.cat([param if param.dim() == 1 else param.reshape(-1) for param in params])
        value = diff.dot(g).neg()
        diff.sub_(anchor)
        value = value + (0.5 * alpha) * diff.dot(diff)
        ctx.save_for_backward(diff, g)
        ctx.alpha = alpha
        ctx.shapes = [param.shape for param in params]
        return (value, *(param.view_as(param) for param in params))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, upstream: torch.Tensor, *network_grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        diff, g = ctx.saved_tensors
        grad = diff.mul(ctx.alpha).sub_(g).mul_(upstream)
        grad = torch.cat([part.reshape(-1) for part in network_grads]).add_(grad)  # network + term, flat
        parts = grad.split([shape.numel() for shape in ctx.shapes])
        return (None, None, None, *(
            part if len(shape) == 1 else part.view(shape) for part, shape in zip(parts, ctx.shapes, strict=True)))


def feddyn_objective(model: nn.Module, images: torch.Tensor, alpha: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The exits' logits of ``model`` (a :class:`DepthFLLocal`) and FedDyn's term, through
    :class:`FedDynTerm`: the network computes with the parameter aliases the term hands on."""
    net, feddyn = model.net, model.feddyn
    names, params = zip(*net.named_parameters(), strict=True)  # one walk of the modules per step
    value, *aliases = FedDynTerm.apply(feddyn.g, feddyn.anchor, alpha, *params)
    # an exit model ties no weights: skipping the search for tied ones halves the call's overhead
    return functional_call(net, dict(zip(names, aliases, strict=True)), (images,), tie_weights=False), value


@graph_reusable
@dataclass(frozen=True)
class DepthFLLoss:
    """DepthFL's local objective (spec §8.4), a hashable LossFn so the memory model can cache it:
    Σ_exits CE + ``kd_weight`` · distillation + Σ_θ [−⟨θ, g_m⟩ + α/2 ‖θ − θ^t‖²] (``alpha`` 0: no FedDyn).
    It reads the device's g_m and θ^t from the model's FedDyn buffers, which
    :meth:`DepthFL.local_update` fills in place per device, so one CUDA graph of a depth's step
    serves every device of that depth (:func:`graph_reusable`; equal losses compare equal).

    ``fused`` chooses how the FedDyn sum and the distillation are computed, not what they are.
    ``False`` (the reference, and what the memory model traces: :meth:`DepthFL.workloads`, the depth
    fit and the clock) adds the FedDyn term tensor by tensor and the distillation pair by pair;
    ``True`` (local training) is one :class:`FedDynTerm` over the flat vectors and
    :func:`fused_distillation_loss` over the stacked exits. They give the same loss and gradients to
    float32 rounding (tests/test_depthfl_feddyn.py) but not the same transient buffers: the fused
    term makes whole-model vectors at once (θ, its gradient), where the reference makes one
    tensor's at a time, so tracing the fused form would move the traced peaks; the simulated device
    runs the reference algorithm."""

    temperature: float = 1.0
    kd_weight: float = 1.0
    alpha: float = 0.0
    fused: bool = False

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return depthfl_objective(model, images, labels, self.temperature, self.kd_weight, self.alpha, self.fused)


def depthfl_objective(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    temperature: float, kd_weight: float | torch.Tensor | None, alpha: float, fused: bool,
) -> torch.Tensor:
    """:class:`DepthFLLoss`'s value; ``kd_weight`` may be a one-element tensor
    (:class:`RampedDepthFLLoss`), None or 0 for no distillation."""
    feddyn = getattr(model, "feddyn", None) if alpha else None
    if feddyn is not None and fused:
        logits, term = feddyn_objective(model, images, alpha)
    else:
        logits, term = model(images), None
    loss = sum(F.cross_entropy(o, labels) for o in logits)
    if isinstance(kd_weight, torch.Tensor) or kd_weight:
        distillation = fused_distillation_loss if fused else distillation_loss
        loss = loss + kd_weight * distillation(logits, temperature)
    if term is not None:
        loss = loss + term
    elif feddyn is not None:
        for param, (g, anchor) in zip(model.net.parameters(), feddyn.pairs(), strict=True):
            loss = loss - (param * g).sum() + 0.5 * alpha * (param - anchor).pow(2).sum()
    return loss


@graph_reusable
class RampedDepthFLLoss:
    """DepthFL's loss as local training runs it: fused (:class:`DepthFLLoss`), with the
    distillation weight of the round (its sigmoid ramp-up, :func:`consistency_weight`) in a
    one-element tensor that :meth:`for_round` refills in place. The method keeps one such loss for the run, so a CUDA
    graph of a depth's step serves every round of the ramp-up too, instead of a capture per round
    (a weight held as a Python number is frozen into the graph). The weight's float32 value
    multiplies the distillation term as the Python number would: the same loss and gradients, bit
    for bit (tests/test_depthfl_feddyn.py)."""

    fused = True  # FedDyn as one autograd node, the distillation over the stacked exits (DepthFLLoss.fused)

    def __init__(self, options: DepthFLOptions) -> None:
        self.options = options
        self.kd_weight: torch.Tensor | None = None

    def for_round(self, round_idx: int, device: torch.device) -> RampedDepthFLLoss:
        """This loss with round ``round_idx``'s distillation weight (in stream order: steps queued
        before still read the previous round's)."""
        opts = self.options
        if opts.kd:
            weight = consistency_weight(round_idx, opts.rampup_rounds)
            if self.kd_weight is None:
                self.kd_weight = torch.full((), weight, device=device)
            else:
                self.kd_weight.fill_(weight)
        return self

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        opts = self.options
        return depthfl_objective(model, images, labels, opts.temperature, self.kd_weight,
                                 opts.alpha if opts.feddyn else 0.0, self.fused)


# ------------------------------------------------------------------ FedDyn maths
def feddyn_client_state(
    g: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor], alpha: float,
) -> dict[str, torch.Tensor]:
    """g_m ← g_m − α (θ_m − θ^t) for each of the device's parameter tensors."""
    return {name: g[name] - alpha * (trained[name] - received[name]) for name in g}


def holder_average(
    old: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    parameter_names: Iterable[str],
    h: dict[str, torch.Tensor] | None,
    alpha: float,
    num_clients: int,
) -> dict[str, torch.Tensor]:
    """Spec §8.5: every tensor becomes the mean over the clients that held it (nobody: θ^t);
    with FedDyn (``h`` given; updated in place) each parameter held by c clients then gets
    h ← h − α (c/N)(θ̄ − θ^t), θ^{t+1} = θ̄ − h/α. BN buffers keep the plain mean."""
    positions = [{key: (None,) * state[key].dim() for key in state} for state in states]
    new = overlap_count_average(old, states, positions)
    if h is None:
        return new
    for name in parameter_names:
        holders = sum(name in state for state in states)
        if holders == 0:
            continue
        # On the global model's device (the GPU for a resident run), in float64.
        mean, previous = new[name].to(torch.float64), old[name].detach().to(torch.float64)
        h[name] = h.get(name, torch.zeros_like(previous)) - alpha * (holders / num_clients) * (mean - previous)
        new[name] = (mean - h[name] / alpha).to(old[name].dtype)
    return new


def counts_feddyn(options: DepthFLOptions) -> bool:
    return options.feddyn and options.feddyn_in_memory


def traced_loss(options: DepthFLOptions, feddyn: bool) -> DepthFLLoss:
    """DepthFL's loss as the memory model and the clock trace it: the distillation at full
    weight, and FedDyn's term if ``feddyn``."""
    return DepthFLLoss(options.temperature, 1.0 if options.kd else 0.0, options.alpha if feddyn else 0.0)


def budget_workload(model: BlockModel, exits: nn.ModuleDict, depth: int, options: DepthFLOptions) -> tuple[nn.Module, DepthFLLoss]:
    """The depth-d exit model and loss whose training step a device's budget must hold."""
    feddyn = counts_feddyn(options)
    return DepthFLLocal(ExitModel(model, exits, depth), model, depth, feddyn), traced_loss(options, feddyn)


def deepest_fitting_depth(peaks: Mapping[int, int], budget_bytes: int | None) -> int | None:
    """d_i = max{d : peak_d ≤ M_i} over the offered depths (None: no depth fits)."""
    fitting = [d for d, peak in peaks.items() if budget_bytes is None or peak <= budget_bytes]
    return max(fitting) if fitting else None


# ----------------------------------------------------------------------- method
class ExitEnsemble(nn.Module):
    """DepthFL's prediction: the mean of the logits of the exits at ``indices`` (positions in the
    exit model's output list; None: every exit). ``with_exits`` returns every exit's logits
    before the ensemble's, so one pass over the test set scores them all."""

    def __init__(self, net: ExitModel, indices: Sequence[int] | None = None, *, with_exits: bool = False) -> None:
        super().__init__()
        self.net = net
        self.indices = None if indices is None else tuple(indices)
        self.with_exits = with_exits

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.net(images)
        ensemble = ensemble_logits(outputs, self.indices)
        return (*outputs, ensemble) if self.with_exits else ensemble


def ensemble_logits(outputs: Sequence[torch.Tensor], indices: Sequence[int] | None = None) -> torch.Tensor:
    """The mean of ``outputs[i]`` over ``indices`` (None: all of them)."""
    chosen = outputs if indices is None else [outputs[i] for i in indices]
    return torch.stack(list(chosen)).mean(dim=0)


def trained_exits(positions: Sequence[int], depths: Iterable[int]) -> tuple[int, ...]:
    """The exit positions (blocks) that some device trains: a device of depth d trains the exits
    at blocks 1..d, so an exit is trained if it is no deeper than the deepest assigned depth."""
    deepest = max(depths, default=0)
    return tuple(k for k in positions if k <= deepest)


class DepthFL(Method):
    """Depth-scaled FL: each device trains the deepest exit-model prefix its memory holds."""

    options_type = DepthFLOptions
    # [C-DFL] conf/config.yaml (spec §8.7): batch 50, SGD without momentum, wd 1e-3,
    # lr 0.1·0.998^(t−1).
    official_train = {"batch_size": 50, "lr": 0.1, "momentum": 0.0, "weight_decay": 1e-3,
                      "lr_schedule": "exponential", "lr_decay": 0.998}
    server_state = ("exits", "h")  # the global model (base) and exits; FedDyn's server state h
    client_state = ("g",)  # FedDyn's g_m lives on client m

    def __init__(self, ctx: RunContext, options: DepthFLOptions | None = None) -> None:
        super().__init__(ctx, options)
        opts: DepthFLOptions = self.options
        model = self.global_model
        self.depths = offered_depths(model, opts.exits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(numpy_rng(ctx.config.seed, Stream.MODEL_INIT, EXIT_INIT_KEY).integers(2**62)))
            self.exits = exit_heads(model, self.depths[:-1]).to(ctx.device)
        self.full = ExitModel(model, self.exits, model.num_blocks)  # the global DepthFL model
        worker_model, worker_exits = copy.deepcopy((model, self.exits))
        self._locals = {
            d: DepthFLLocal(ExitModel(worker_model, worker_exits, d), worker_model, d, opts.feddyn)
            for d in self.depths
        }
        self.memory_loss = traced_loss(opts, opts.feddyn)
        self.train_loss = RampedDepthFLLoss(opts)
        budgeted = (  # what a device's budget must hold at each depth (the training models carry FedDyn state)
            {d: (local, self.memory_loss) for d, local in self._locals.items()} if counts_feddyn(opts) else
            {d: budget_workload(worker_model, worker_exits, d, opts) for d in self.depths}
        )
        self.depth_of = self._assign_depths(budgeted)
        self.eligible_ids = sorted(self.depth_of)
        self.exit_positions = (*(int(k) for k in self.exits.keys()), model.num_blocks)
        self.trained_exits = trained_exits(self.exit_positions, self.depth_of.values())
        self.ensemble_exits = self.exit_positions if opts.ensemble == "all" else self.trained_exits
        untrained = [k for k in self.exit_positions if k not in self.trained_exits]
        log.info(
            "DepthFL ensemble averages the exits at blocks %s%s", ", ".join(map(str, self.ensemble_exits)),
            f" (no eligible device's depth reaches block {', '.join(map(str, untrained))})" if untrained else "",
        )
        self.parameter_names = [name for name, _ in self.full.named_parameters()]
        self.g: dict[int, dict[str, torch.Tensor]] = {}  # per-device FedDyn state (its own tensors)
        self.h: dict[str, torch.Tensor] | None = {} if opts.feddyn else None

    @classmethod
    def workloads(cls, model: BlockModel, options: DepthFLOptions) -> list[Workload]:
        """One workload per offered depth: what a device's budget must hold to train it (the exit
        model, with FedDyn state unless ``feddyn_in_memory`` is off), under DepthFL's loss."""
        depths = offered_depths(model, options.exits)
        exits = exit_heads(model, depths[:-1])
        workloads = []
        for d in depths:
            module, loss = budget_workload(model, exits, d, options)
            workloads.append(Workload(f"depth{d}", module, None, loss))
        return workloads

    def _assign_depths(self, budgeted: Mapping[int, tuple[nn.Module, DepthFLLoss]]) -> dict[int, int]:
        """Each device's deepest depth whose ``budgeted`` workload fits (devices that fit none are left out)."""
        fleet = self.ctx.fleet
        if fleet is None or fleet.unlimited:
            return {c: self.depths[-1] for c in range(self.ctx.num_clients)}
        peaks = {d: self.ctx.memory_report(module, None, loss).peak_bytes for d, (module, loss) in budgeted.items()}
        depth_of = {}
        for device in fleet.devices:
            depth = deepest_fitting_depth(peaks, device.memory_bytes)
            if depth is not None:
                depth_of[device.device_id] = depth
        if not depth_of:
            shallowest = self.depths[0]
            raise MemoryBudgetError(
                f"no device can train DepthFL depth {shallowest} of {self.global_model.arch} (needs "
                f"{format_bytes(peaks[shallowest])} at batch {self.ctx.config.train.batch_size}; largest budget "
                f"{format_bytes(fleet.largest_budget_bytes or 0)}); choose a larger --fleet profile or a smaller --batch-size"
            )
        return depth_of

    # -------------------------------------------------------------- hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        chosen = self.ctx.sample_clients(round_idx, self.eligible_ids)
        return [Assignment(c, self.depth_of[c]) for c in chosen]

    def local_update(self, ctx: ClientContext) -> Update:
        opts: DepthFLOptions = self.options
        client, depth, round_idx = ctx.client_id, ctx.work, ctx.round_idx
        local = self._locals[depth]
        global_state = self.full.state_dict()
        local.net.load_state_dict({key: global_state[key] for key in local.net.state_dict()})
        names = [name for name, _ in local.net.named_parameters()]
        received = {name: p.detach().clone() for name, p in local.net.named_parameters()}
        if local.feddyn is not None:
            g = self.g.get(client, {})
            for name, (g_buf, anchor) in zip(names, local.feddyn.pairs(), strict=True):
                anchor.copy_(received[name])
                if name in g:
                    g_buf.copy_(g[name])
                else:
                    g_buf.zero_()
        loss = self.train_loss.for_round(round_idx, ctx.device)
        update = self.train_client(local, ctx, loss_fn=loss, sent=local.net)
        if local.feddyn is not None:
            g_now = {name: g_buf.detach().clone() for name, (g_buf, _) in zip(names, local.feddyn.pairs(), strict=True)}
            trained = {name: p.detach() for name, p in local.net.named_parameters()}
            self.g[client] = feddyn_client_state(g_now, trained, received, opts.alpha)
        return update

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        if not updates:
            return
        new = holder_average(
            self.full.state_dict(), [u.state for u in updates], self.parameter_names,
            self.h, self.options.alpha, self.ctx.num_clients,
        )
        self.full.load_state_dict(new)

    def eval_model(self) -> nn.Module:
        return ExitEnsemble(self.full, [self.exit_positions.index(k) for k in self.ensemble_exits])

    def evaluate(self, batch_size: int) -> dict[str, float]:
        """Every trained exit and the ensemble in one pass; the ensemble is the headline (spec §8.6,
        Q11). An exit no device trains has no ``eval/exit<k>/accuracy`` (it would be the accuracy
        of its initialisation); ``eval/ensemble_exits`` counts the exits averaged."""
        positions = self.exit_positions
        averaged = [positions.index(k) for k in self.ensemble_exits]
        scored = ExitEnsemble(self.full, averaged, with_exits=True)
        *exits, ensemble = evaluate_outputs(scored, self.ctx.data.dataset, batch_size, self.ctx.config.device)
        metrics = {
            f"eval/exit{k}/accuracy": scores["accuracy"]
            for k, scores in zip(positions, exits, strict=True) if k in self.trained_exits
        }
        metrics.update({
            "eval/accuracy": ensemble["accuracy"],
            "eval/ensemble/accuracy": ensemble["accuracy"],
            "eval/ensemble_exits": float(len(averaged)),
            "eval/loss": ensemble["loss"],
        })
        return metrics

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        depths = [u.work for u in updates]
        metrics = {f"work/depth_{d}": float(depths.count(d)) for d in self.depths}
        if depths:
            metrics["work/mean_depth"] = sum(depths) / len(depths)
        if self.options.kd:
            metrics["depthfl/kd_weight"] = consistency_weight(round_idx, self.options.rampup_rounds)
        return metrics

    def device_cost(self, assignment: Assignment, update: Update | None = None) -> DeviceCost:
        """The depth-d workload; only the exit model's state travels (FedDyn state stays on the device)."""
        local = self._locals[assignment.work]
        samples = update.num_samples if update is not None else int(self.ctx.data.shards[assignment.client_id].numel())
        moved = state_bytes(local.net)
        return self.ctx.clock.cost(local, samples, None, self.memory_loss, bytes_down=moved, bytes_up=moved)
