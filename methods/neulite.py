"""NeuLite: elastic progressive training (Wu et al., "NeuLite: Memory-Efficient Federated
Learning via Elastic Progressive Training"; released code Wuxiaobo315/NeuLiteCode).

The model is cut into S blocks. Round t trains stage k = ((t−1) mod S)+1: the real
blocks 1..k, with block k (plus the co-adapted last layer of block k−1) trainable and
the earlier blocks frozen, followed by stage k's own *output module* O_k (one
stand-in layer per later block and a classifier) and a linear projection MLP used
by the curriculum-aware loss

    L = CE − λ1(k)·nHSIC(Z, X) − λ2(k)·nHSIC(P, Y).

Frozen parts store no gradients, optimizer state or activations, so a stage needs
much less memory than the full model and the devices that fit it can join its
rounds. Everything follows ``spec/neulite.md``; its Decisions are cited as §x.y:
server state W = {stem, blocks} + one persistent O_k and MLP_k per stage (§2.3),
eligibility per stage from the memory model and skipped stages (§2.4, Q19),
trainable set and BN-in-train-mode (§2.5), nHSIC estimator (§2.6, ``fedbench.kits.hsic``),
linear λ schedule with λ_max = 0.4 (§2.7, Q1; a fedbench proposal, the paper
publishes none), uniform mean of the stage model's whole state (§2.8), evaluation
of the full model S_S (§2.9) and the ablation switches of §2.11.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.api import (
    SIGMA,
    Assignment,
    BlockModel,
    ClientContext,
    ConfigError,
    LossFn,
    MemoryBudgetError,
    Method,
    OutputModule,
    RunContext,
    StageModel,
    Stream,
    Update,
    Workload,
    coadaptation_scope,
    cross_entropy_loss,
    cut_spec,
    derive_seed,
    evaluate,
    evaluate_outputs,
    format_bytes,
    graph_reusable,
    nhsic,
    one_hot,
    output_module,
    prefix_head,
)

log = logging.getLogger(__name__)

OUTPUT_MODULES = ("stand_in", "fc_only")
EVALUATIONS = ("cycle", "stage")  # options.evaluate: full model after stage-S rounds, or every stage model
RELEASED_MLP_WIDTHS = {512: (2056, 1024)}  # "2056" as released (spec §2.2); other widths: (4d, 2d)


@dataclass(frozen=True, kw_only=True)
class NeuLiteOptions:
    """NeuLite's switches (spec §2.3–2.11). Per-stage values are tuples indexed by stage."""

    curriculum_loss: bool = True  # False: plain CE, no projection MLP (Fig. 8 "w/o curriculum-aware loss")
    co_adaptation: bool = True  # train the co-adapted last layer(s) of block k−1 with block k
    round_robin: bool = True  # False: naive progressive training, stage k for R/S rounds then frozen
    output_module: str = "stand_in"  # "fc_only": no stand-ins, a pooled classifier on block k
    lambda1: tuple[float, ...] = ()  # weight of nHSIC(Z, X) per stage; empty: λ_max·(S−k+1)/S
    lambda2: tuple[float, ...] = ()  # weight of nHSIC(P, Y) per stage; empty: λ_max·k/S
    lambda_max: float = 0.4  # scale of the default linear schedules (fedbench proposal, spec Q1)
    sigma: float = SIGMA  # nHSIC kernel bandwidth (released code: 5)
    freeze_bn_stats: bool = False  # True: frozen BN layers in eval mode (the code trains their stats)
    replicate_stem_artifact: bool = False  # the code's stem-BN restore at stage-1 rounds (§2.3)
    # What an evaluation scores: "cycle" the full model after stage-S rounds (spec §2.9; a due
    # evaluation moves on to the next one), "stage" the just-trained stage model (the released code).
    evaluate: str = "cycle"

    def __post_init__(self) -> None:
        if self.evaluate not in EVALUATIONS:
            raise ConfigError(f"options.evaluate ({self.evaluate!r}) must be one of {', '.join(EVALUATIONS)}")
        for name in ("lambda1", "lambda2"):
            values = getattr(self, name)
            if any(v < 0 for v in values):
                raise ConfigError(f"options.{name} {values} has a negative weight; every λ must be >= 0")
        if self.lambda_max < 0:
            raise ConfigError(f"options.lambda_max ({self.lambda_max}) must be >= 0 (the spec uses 0.4)")
        if self.sigma <= 0:
            raise ConfigError(f"options.sigma ({self.sigma}) must be > 0 (the released code uses 5)")
        if self.output_module not in OUTPUT_MODULES:
            raise ConfigError(
                f"options.output_module ({self.output_module!r}) must be one of {', '.join(OUTPUT_MODULES)}"
            )

    def lambdas(self, num_stages: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(λ1, λ2) per stage: the given tuples, or the linear schedules of spec §2.7."""
        stages = range(1, num_stages + 1)
        lam1 = self.lambda1 or tuple(self.lambda_max * (num_stages - k + 1) / num_stages for k in stages)
        lam2 = self.lambda2 or tuple(self.lambda_max * k / num_stages for k in stages)
        for name, values in (("lambda1", lam1), ("lambda2", lam2)):
            if len(values) != num_stages:
                raise ConfigError(
                    f"options.{name} has {len(values)} values but the model has {num_stages} stages; "
                    "give one weight per stage"
                )
        return lam1, lam2


# ------------------------------------------------------------------ stage models
class NeuLiteStage(StageModel):
    """S_k (shared blocks, its own O_k) plus its projection MLP (None without the curriculum loss).

    ``eval_norms`` names BatchNorm layers kept in eval mode while the rest trains
    (``freeze_bn_stats``); by default frozen BN layers train their statistics as
    in the released code (spec §2.5).
    """

    def __init__(
        self, model: BlockModel, k: int, output: OutputModule, mlp: nn.Module | None
    ) -> None:
        super().__init__(model, k, output)
        self.mlp = mlp
        self.eval_norms: tuple[str, ...] = ()

    def train(self, mode: bool = True) -> NeuLiteStage:
        super().train(mode)
        if mode:
            for name in self.eval_norms:
                self.get_submodule(name).eval()
        return self


class EveryStage(nn.Module):
    """The S stage models as one network for scoring: the stem and the real blocks run once, and
    after block k stage k's stand-ins and head give its logits. Stage S's head is the global
    model's, so the last output is the full model's."""

    def __init__(self, model: BlockModel, stages: Sequence[StageModel]) -> None:
        super().__init__()
        self.training = model.training  # scoring restores this mode: the global model's own
        self.stem = model.stem
        self.blocks = model.blocks
        self.outputs = nn.ModuleList(nn.ModuleDict({"standins": s.standins, "head": s.head}) for s in stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        logits = []
        for block, output in zip(self.blocks, self.outputs, strict=True):
            x = block(x)
            y = x
            for standin in output["standins"]:
                y = standin(y)
            logits.append(output["head"](y))
        return tuple(logits)


def projection_mlp(dim: int) -> nn.Sequential:
    """Linear d→h1→h2→d with no activation (spec §2.2, §12.6)."""
    hidden1, hidden2 = RELEASED_MLP_WIDTHS.get(dim, (4 * dim, 2 * dim))
    return nn.Sequential(nn.Linear(dim, hidden1), nn.Linear(hidden1, hidden2), nn.Linear(hidden2, dim))


def stage_output_module(model: BlockModel, k: int, kind: str) -> tuple[OutputModule, int]:
    """O_k and the width of the pooled feature its classifier reads (the MLP's input)."""
    if k == model.num_blocks:
        return output_module(model, k), cut_spec(model).feature_dim
    if kind == "fc_only":
        shape = model.block_output_shapes()[k - 1]
        return OutputModule([], prefix_head(model, k)), shape[0] if len(shape) == 3 else shape[-1]
    output = output_module(model, k)
    for module in output.standins.modules():  # released code: Kaiming-normal for every conv (§2.2)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return output, cut_spec(model).feature_dim


def trainable_names(stage: NeuLiteStage, model: BlockModel, co_adaptation: bool) -> frozenset[str]:
    """T_k (spec §2.5): all of S_1; for k ≥ 2 block k, O_k, MLP_k and the co-adapted layers of block k−1."""
    k = stage.stage
    if k == 1:
        return frozenset(name for name, _ in stage.named_parameters())
    parts = {"standins": stage.standins, "head": stage.head, f"blocks.{k - 1}": stage.blocks[k - 1]}
    if stage.mlp is not None:
        parts["mlp"] = stage.mlp
    names = {name for prefix, part in parts.items() for name, _ in part.named_parameters(prefix=prefix)}
    if co_adaptation:
        names.update(coadaptation_scope(model, k))
    return frozenset(names)


def frozen_norms(stage: nn.Module, trainable: frozenset[str]) -> tuple[str, ...]:
    """Names of the BatchNorm layers none of whose parameters are trainable."""
    return tuple(
        name
        for name, module in stage.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(f"{name}.{p}" in trainable for p, _ in module.named_parameters())
    )


# ------------------------------------------------------------------------- loss
class LossTerms(NamedTuple):
    loss: torch.Tensor
    ce: torch.Tensor
    nhsic_zx: torch.Tensor
    nhsic_py: torch.Tensor
    used: torch.Tensor  # bool: the nHSIC terms entered the loss (False: degenerate batch, CE only)


@dataclass(frozen=True)
class CurriculumLoss:
    """CE − λ1·nHSIC(Z, X) − λ2·nHSIC(P, Y) (spec §2.5). Hashable, so the memory model caches it.

    X is the flattened input batch, Y its one-hot labels, Z the flattened last
    spatial map of the stage model, P the projection MLP of its pooled feature.
    A batch where either term is undefined (B < 2, zero denominator) trains on
    CE only (§2.6 Decision).
    """

    lambda1: float
    lambda2: float
    num_classes: int
    sigma: float = SIGMA

    def terms(self, model: NeuLiteStage, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        out = model.forward_all(images)
        ce = F.cross_entropy(out.logits, labels)
        zx = nhsic(out.z, images, self.sigma)
        py = nhsic(model.mlp(out.pooled), one_hot(labels, self.num_classes), self.sigma)
        used = zx.valid & py.valid
        bonus = self.lambda1 * zx.value + self.lambda2 * py.value
        loss = ce - torch.where(used, bonus, torch.zeros_like(bonus))
        return LossTerms(loss, ce, zx.value, py.value, used)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.terms(model, images, labels).loss  # type: ignore[arg-type]


class LossStats:
    """Running sums of one device's loss terms, kept on the training device (no sync per batch).

    The sums are one tensor made at the first batch and added to in place, with no Python state
    per batch, so the curriculum loss can be replayed from a CUDA graph (:func:`graph_reusable`:
    a stage keeps one and zeroes it per device); the number of batches is the local loop's step
    count."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # ce, nhsic_zx, nhsic_py, dropped batches

    def reset(self) -> None:
        """Start the next device's sums in the same tensor (a kept CUDA graph adds to it)."""
        if self.sums is not None:
            self.sums.zero_()

    def add(self, terms: LossTerms) -> None:
        used = terms.used.to(terms.ce.dtype)  # nHSIC means over the batches whose terms entered the loss
        values = torch.stack([terms.ce, terms.nhsic_zx * used, terms.nhsic_py * used, 1.0 - used])
        if self.sums is None:
            self.sums = torch.zeros(4, dtype=torch.float64, device=values.device)
        self.sums.add_(values.detach().to(torch.float64))

    def as_dict(self, batches: int) -> dict[str, float]:
        if self.sums is None:
            return {}
        ce, zx, py, dropped = (float(v) for v in self.sums.cpu())
        used = max(batches - int(dropped), 1)
        return {"ce": ce / max(batches, 1), "nhsic_zx": zx / used, "nhsic_py": py / used,
                "dropped_batches": dropped}


# -------------------------------------------------------------------- the method
def stage_output_modules(stage: NeuLiteStage) -> nn.ModuleDict:
    """The modules of S_k that are its own rather than the global model's: stand-ins, head, MLP."""
    parts: dict[str, nn.Module] = {"standins": stage.standins, "head": stage.head}
    if stage.mlp is not None:
        parts["mlp"] = stage.mlp
    return nn.ModuleDict(parts)


def stage_workloads(model: BlockModel, options: NeuLiteOptions) -> list[Workload]:
    """One workload per stage: S_k with O_k and MLP_k (sharing ``model``'s blocks), T_k and its loss."""
    cut_spec(model)  # a model without block structure is a one-line ConfigError
    lam1, lam2 = options.lambdas(model.num_blocks)
    workloads = []
    for k in range(1, model.num_blocks + 1):
        output, feature_dim = stage_output_module(model, k, options.output_module)
        mlp = projection_mlp(feature_dim) if options.curriculum_loss else None
        stage = NeuLiteStage(model, k, output, mlp)
        trainable = trainable_names(stage, model, options.co_adaptation)
        if options.freeze_bn_stats:
            stage.eval_norms = frozen_norms(stage, trainable)
        loss = (
            CurriculumLoss(lam1[k - 1], lam2[k - 1], model.num_classes, options.sigma)
            if options.curriculum_loss
            else None
        )
        workloads.append(Workload(f"stage{k}", stage.to(next(model.parameters()).device), trainable, loss))
    return workloads


class NeuLite(Method):
    """Elastic progressive training with the Curriculum Mentor and the Training Harmonizer."""

    options_type = NeuLiteOptions
    # Besides the global model (base): every stage's output module O_k and projection MLP, the count of
    # rounds skipped for want of a fitting device, and the stem kept after stage 1 (replicate_stem_artifact).
    server_state = ("stage_outputs", "skipped_rounds", "stem_after_stage1")

    def __init__(self, ctx: RunContext, options: NeuLiteOptions | None = None) -> None:
        super().__init__(ctx, options)
        self.num_stages = self.global_model.num_blocks
        with torch.random.fork_rng(devices=[]):  # O_k and MLP_k from the run seed (§2.3 first cycle)
            torch.manual_seed(derive_seed(ctx.config.seed, Stream.METHOD))
            self.stages = stage_workloads(self.global_model, self.options)
        self.eligible_ids = [ctx.eligible(w.model, w.trainable, w.loss_fn) for w in self.stages]
        if not any(self.eligible_ids):
            smallest = min(self.stage_peak_bytes(k) for k in range(1, self.num_stages + 1))
            raise MemoryBudgetError(
                f"no device can train any NeuLite stage of {self.global_model.arch} (smallest stage needs "
                f"{format_bytes(smallest)} at batch {ctx.config.train.batch_size}); "
                "choose a larger --fleet profile, a smaller --batch-size or --width"
            )
        unfit = [k for k, ids in enumerate(self.eligible_ids, start=1) if not ids]
        if unfit:  # spec Q19: the run goes on, skipping those rounds; common.md §1.1: PR 0 ("NA")
            ctx.not_runnable = "NeuLite stage(s) {} fit no device (need {})".format(
                ", ".join(map(str, unfit)), ", ".join(format_bytes(self.stage_peak_bytes(k)) for k in unfit))
            log.warning("%s: their rounds will be skipped and the run's PR is 0 (NA in the tables), since "
                        "no device trains those blocks; choose a larger --fleet profile or a smaller --batch-size",
                        ctx.not_runnable)
        rounds, stages = ctx.config.rounds, self.num_stages
        if self.options.round_robin and rounds % stages:
            whole_cycles = [r for r in (rounds - rounds % stages, rounds + stages - rounds % stages) if r > 0]
            log.warning(
                "NeuLite: %d rounds is not a multiple of the %d stages, so the final full model follows a "
                "stage-%d round, not a stage-%d one (spec §2.9 takes the final value after the last stage); "
                "use --rounds %s", rounds, stages, self.stage_of(rounds - 1), stages,
                " or ".join(map(str, whole_cycles)),
            )
        self.skipped_rounds = [0] * self.num_stages
        self._workers: dict[int, NeuLiteStage] = {}
        self._losses: dict[int, tuple[object, LossFn, LossStats]] = {}  # per stage: _stage_loss
        self.stem_after_stage1: dict[str, torch.Tensor] | None = None
        self._last_stage: int | None = None  # the stage of the round being run (for evaluate)
        self.stage_outputs = nn.ModuleList(stage_output_modules(w.model) for w in self.stages)

    @classmethod
    def workloads(cls, model: BlockModel, options: Any) -> list[Workload]:
        return stage_workloads(model, options)

    def stage_peak_bytes(self, k: int) -> int:
        """Peak bytes of one local step of stage k (memory model; cached by the context)."""
        work = self.stages[k - 1]
        return self.ctx.memory_report(work.model, work.trainable, work.loss_fn).peak_bytes

    def stage_of(self, round_idx: int) -> int:
        """1-based stage of a 0-based round: round-robin (§2.3) or R/S consecutive rounds each (§2.11)."""
        if self.options.round_robin:
            return round_idx % self.num_stages + 1
        return min(self.num_stages, round_idx * self.num_stages // self.ctx.config.rounds + 1)

    # ------------------------------------------------------------------ hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        k = self.stage_of(round_idx)
        self._last_stage = k
        pool = self.eligible_ids[k - 1]
        if not pool:
            self.skipped_rounds[k - 1] += 1
            log.warning("round %d: NeuLite stage %d fits no device; round skipped", round_idx + 1, k)
            return []
        if k == 1 and self.options.replicate_stem_artifact and self.stem_after_stage1 is not None:
            self.global_model.stem.load_state_dict(self.stem_after_stage1)
        return [Assignment(c, self.stages[k - 1]) for c in self.ctx.sample_clients(round_idx, pool)]

    def local_update(self, client: ClientContext) -> Update:
        work: Workload = client.work
        worker = self._local_copy(work)
        worker.load_state_dict(work.model.state_dict())
        for name, param in worker.named_parameters():
            param.requires_grad_(name in work.trainable)
        loss_fn, stats = self._stage_loss(work)
        update = self.train_client(worker, client, loss_fn=loss_fn)
        update.extra.update(stats.as_dict(update.num_steps))
        return update

    def _stage_loss(self, work: Workload) -> tuple[LossFn, LossStats]:
        """The stage's loss and its running sums, made once per stage and zeroed per device: the
        same function over the same tensors for every device of the stage, so one CUDA graph
        capture serves them all (:func:`graph_reusable`) instead of one per device."""
        k = work.model.stage
        kept = self._losses.get(k)
        if kept is None or kept[0] != work.loss_fn:
            stats = LossStats()
            loss_fn: LossFn = cross_entropy_loss
            if work.loss_fn is not None:
                curriculum: CurriculumLoss = work.loss_fn  # type: ignore[assignment]

                @graph_reusable
                def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                    terms = curriculum.terms(model, images, labels)  # type: ignore[arg-type]
                    stats.add(terms)
                    return terms.loss

            kept = self._losses[k] = (work.loss_fn, loss_fn, stats)
        _, loss_fn, stats = kept
        stats.reset()
        return loss_fn, stats

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        """Mean of the stage model's whole state, written back into W (prefix + block k) and O_k (§2.8)."""
        if not updates:
            return
        stage: NeuLiteStage = updates[0].work.model
        stage.load_state_dict(self.average(updates))
        if stage.stage == 1:
            self.stem_after_stage1 = {
                k: v.detach().clone() for k, v in self.global_model.stem.state_dict().items()
            }

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        k = self.stage_of(round_idx)
        metrics = {
            "neulite/stage": float(k),
            "work/stage": float(k),
            "neulite/eligible": float(len(self.eligible_ids[k - 1])),
            "neulite/peak_bytes": float(self.stage_peak_bytes(k)),
            "neulite/skipped_rounds": float(sum(self.skipped_rounds)),
        }
        for stage, skipped in enumerate(self.skipped_rounds, start=1):  # spec Q19's per-stage counters
            if skipped:
                metrics[f"neulite/stage{stage}_skipped"] = float(skipped)
        extras = [u.extra for u in updates if u.extra]
        for key in ("ce", "nhsic_zx", "nhsic_py", "dropped_batches"):
            if extras:
                metrics[f"neulite/{key}"] = sum(e[key] for e in extras) / len(extras)
        return metrics

    def ends_cycle(self, round_idx: int) -> bool:
        """A cycle ends with a stage-S round: only then is every block trained against the current
        earlier blocks (spec §2.9). With ``evaluate=stage`` every round is scored."""
        return self.options.evaluate == "stage" or self.stage_of(round_idx) == self.num_stages

    def evaluate(self, batch_size: int) -> dict[str, float]:
        """``eval/accuracy`` and ``eval/loss`` of the full model S_S, and ``eval/stage<k>/accuracy``
        of every stage model S_k from the same pass over the test set (spec §2.9: per-stage
        accuracy as well); the real blocks run once, each stage adds only its stand-ins and head.
        With ``evaluate=stage`` the stage model just trained is the headline, as in the released code."""
        k = self._last_stage
        device = self.ctx.config.device
        if self.options.evaluate == "stage" and k is not None:
            scores = evaluate(self.stages[k - 1].model, self.ctx.data.dataset, batch_size, device)
            return {"eval/accuracy": scores["accuracy"], "eval/loss": scores["loss"],
                    f"eval/stage{k}/accuracy": scores["accuracy"]}
        every_stage = EveryStage(self.global_model, [work.model for work in self.stages])
        per_stage = evaluate_outputs(every_stage, self.ctx.data.dataset, batch_size, device)
        metrics = {"eval/accuracy": per_stage[-1]["accuracy"], "eval/loss": per_stage[-1]["loss"]}
        metrics.update({f"eval/stage{j}/accuracy": s["accuracy"] for j, s in enumerate(per_stage, start=1)})
        return metrics

    def information_plane(self, per_class: int, sigma: float = SIGMA) -> dict[str, float]:
        return super().information_plane(per_class, self.options.sigma)

    def device_cost(self, assignment: Assignment, update: Update | None = None) -> Any:
        """Download the whole S_k; upload T_k and every BN buffer of S_k (spec §2.5 Decision)."""
        work: Workload = assignment.work
        samples = update.num_samples if update is not None else int(
            self.ctx.data.shards[assignment.client_id].numel())
        params = dict(work.model.named_parameters())
        down = sum(t.numel() * t.element_size() for t in work.model.state_dict().values())
        up = sum(params[n].numel() * params[n].element_size() for n in work.trainable) + sum(
            b.numel() * b.element_size() for b in work.model.buffers())
        return self.ctx.clock.cost(work.model, samples, work.trainable, work.loss_fn, down, up)

    # ---------------------------------------------------------------- helpers
    def _local_copy(self, work: Workload) -> NeuLiteStage:
        """One reusable local copy per stage, so no model is built per client."""
        k = work.model.stage
        if k not in self._workers:
            self._workers[k] = copy.deepcopy(work.model)
        return self._workers[k]
