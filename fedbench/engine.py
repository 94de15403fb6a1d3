"""The round loop: select → assign → local update → aggregate → evaluate → log.

The engine knows nothing about any particular method; everything that differs
between methods is a hook of :class:`fedbench.core.method.Method`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedbench.config import RunConfig
from fedbench.core import checkpoint
from fedbench.core.method import Assignment, Method
from fedbench.core.setup import (
    check_device,
    check_parallelism,
    make_method,
    prepare,
    restore,
    snapshot,
    warn_of_idle_clients,
)
from fedbench.errors import DivergedError, ExecutorError
from fedbench.execution import executors
from fedbench.execution.executors import Executor, SerialExecutor
from fedbench.tracking.interrupts import deferred_interrupts
from fedbench.tracking.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)

# Logged with every evaluation: 1 where the round ends one of the method's cycles
# (Method.ends_cycle), 0 for a last round that does not; reports read it by this name.
CYCLE_END = "eval/cycle_end"


@dataclass(frozen=True)
class RoundResult:
    """Metrics of one finished round (0-based ``round_idx``)."""

    round_idx: int
    metrics: dict[str, float]


@dataclass
class RunResult:
    config: RunConfig
    rounds: list[RoundResult] = field(default_factory=list)
    partition: dict = field(default_factory=dict)
    stopped: bool = False  # True: ``stop_after_s`` ended the run before its last round (resumable)
    first_round: int = 0  # the round this call began with: > 0 when it continued a checkpoint

    def metric(self, key: str) -> list[float]:
        """The values of ``key`` over the rounds that logged it."""
        return [r.metrics[key] for r in self.rounds if key in r.metrics]


def evaluation_rounds(method: Method) -> frozenset[int]:
    """The 0-based rounds after which the engine evaluates: every ``eval_every``-th round, or,
    where that round ends none of the method's cycles (:meth:`Method.ends_cycle`; NeuLite's
    stage-k < S rounds), the next round that does; and the last round of the run. Counting
    rounds, not cycles, gives every method the same evaluation grid (spec §2.9), so final and
    best accuracy, curves and time-to-accuracy compare like with like."""
    config = method.ctx.config
    chosen, due = set(), False
    for round_idx in range(config.rounds):
        due = due or (round_idx + 1) % config.eval_every == 0
        if due and method.ends_cycle(round_idx):
            chosen.add(round_idx)
            due = False
    chosen.add(config.rounds - 1)
    return frozenset(chosen)


def check_finite(method: Method, round_idx: int, updates: list) -> None:
    """A non-finite training loss or global parameter ends the run as a failure, not a result."""
    losses = [u.loss for u in updates]
    if any(not math.isfinite(loss) for loss in losses):
        bad = next(loss for loss in losses if not math.isfinite(loss))
        raise DivergedError(f"diverged at round {round_idx + 1}: training loss {bad}; lower --lr "
                            f"(now {_round_lr(method, round_idx)}) or check the data")
    for name, tensor in method.global_model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DivergedError(f"diverged at round {round_idx + 1}: global parameter {name} is not finite "
                                f"after aggregation; lower --lr (now {_round_lr(method, round_idx)})")


def _round_lr(method: Method, round_idx: int) -> str:
    """The lr a diverged round trained with, and the run's --lr where a schedule changed it."""
    train, rounds = method.ctx.config.train, method.ctx.config.rounds
    lr = train.lr_at(round_idx, rounds)
    return f"{train.lr}" if lr == train.lr else f"{train.lr}; {lr:.3g} in round {round_idx + 1} by the {train.lr_schedule} schedule"


def run_round(
    method: Method, round_idx: int, executor: Executor | None = None, evaluate: bool | None = None
) -> RoundResult:
    """One round: assign → local updates (where ``executor`` runs them; default: here, one
    after the other) → aggregate → (evaluate if ``evaluate``; None: on the method's schedule)."""
    config = method.ctx.config
    if evaluate is None:
        evaluate = round_idx in evaluation_rounds(method)
    start = time.perf_counter()
    assignments = method.assign(round_idx)
    updates = (executor or SerialExecutor()).local_updates(method, assignments, round_idx)
    method.aggregate(round_idx, updates)
    check_finite(method, round_idx, updates)
    train_s = time.perf_counter() - start
    metrics: dict[str, float] = {"round/clients": float(len(updates))}
    if config.train.lr_schedule != "constant":
        metrics["train/lr"] = config.train.lr_at(round_idx, config.rounds)
    trained = [u for u in updates if u.num_steps > 0]  # a client with one sample trains no step
    if trained:
        metrics["train/loss"] = sum(u.loss for u in trained) / len(trained)
    metrics.update(method.round_metrics(round_idx, updates))
    metrics.update(method.ctx.participation_metrics())
    if method.ctx.fleet is not None:  # virtual clock: the round lasts as long as its slowest device
        assigned = {a.client_id: a for a in assignments}
        times = [method.device_time(assigned.get(u.client_id, Assignment(u.client_id, u.work)), u) for u in updates]
        metrics.update(method.ctx.clock.advance(times))
    if evaluate:
        eval_start = time.perf_counter()
        metrics.update(method.evaluate(config.eval_batch_size))
        # 0 for a last round that ends no cycle (NeuLite: a stage-k < S round): reports leave
        # such an evaluation out of final and best accuracy (spec neulite §2.9).
        metrics[CYCLE_END] = float(method.ends_cycle(round_idx))
        if config.info_plane:
            metrics.update(method.information_plane(config.info_plane))
        metrics["time/eval_s"] = time.perf_counter() - eval_start
    metrics["time/train_s"] = train_s
    metrics["time/round_s"] = time.perf_counter() - start
    return RoundResult(round_idx, metrics)


def run_rounds(
    method: Method,
    on_round: Callable[[RoundResult], None] | None = None,
    first_round: int = 0,
    executor: Executor | None = None,
) -> list[RoundResult]:
    """Run rounds ``first_round``.. of an already prepared method; ``on_round`` sees each finished
    round. ``executor`` must have been started with ``method``."""
    results = []
    scheduled = evaluation_rounds(method)
    for round_idx in range(first_round, method.ctx.config.rounds):
        result = run_round(method, round_idx, executor, evaluate=round_idx in scheduled)
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results


def run(
    config: RunConfig,
    tracker: Tracker | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    resume_run_id: str | None = None,
    executor: Executor | None = None,
    checkpoint_file: Path | None = None,
    stop_after_s: float | None = None,
) -> RunResult:
    """One complete run. Every finished round is logged before the next starts, and
    checkpointed every ``tracking.checkpoint_every`` rounds, so a crash or Ctrl-C never
    loses a finished round; the tracker records the run as FAILED or KILLED.
    With ``resume_run_id`` the run continues from that run's last checkpoint, into
    the same tracked run, exactly as the uninterrupted run would have gone on.
    Local updates run where ``config.executor`` says (fedbench/execution/executors.py), or in
    ``executor`` if given (it is started here; the caller closes it).

    Untracked runs can checkpoint to ``checkpoint_file`` instead, and continue from it when it
    exists (a checkpoint of another configuration is a :class:`CheckpointError`). With
    ``stop_after_s`` the run stops after the first round that ends past that many seconds,
    checkpoints there and returns with ``stopped``: a run longer than one allotted slot of a
    machine goes on in the next one from the file."""
    check_parallelism(config)
    torch.set_num_threads(config.threads)
    executors.check_available(config)
    check_device(config.device)
    tracker = tracker or NullTracker()
    with contextlib.ExitStack() as cleanup:
        if executor is None:
            executor = executors.make_executor(config)  # worker processes/actors start now ...
            cleanup.callback(executor.close)
            begin = getattr(executor, "begin", None)
            if begin is not None:
                begin(config)  # ... and load their copy of the run while this process loads its own
        return _run_prepared(config, tracker, on_round, resume_run_id, executor, checkpoint_file, stop_after_s)


class _TimeUp(Exception):
    """``stop_after_s`` has passed: end the run after this round."""


def _run_prepared(
    config: RunConfig,
    tracker: Tracker,
    on_round: Callable[[RoundResult], None] | None,
    resume_run_id: str | None,
    active: Executor,
    checkpoint_file: Path | None = None,
    stop_after_s: float | None = None,
) -> RunResult:
    """:func:`run` once its executor exists (started here; closed by the caller)."""
    started = time.perf_counter()
    if checkpoint_file is not None and (resume_run_id is not None or not isinstance(tracker, NullTracker)):
        raise ValueError("checkpoint_file is for untracked runs; a tracked run checkpoints under its run id")
    ctx, stats = prepare(config)
    warn_of_idle_clients(ctx.data)
    method = make_method(ctx)
    _trace_before_round_one(method)
    result = RunResult(config=config, partition=stats)
    first_round = 0
    saved = None
    if resume_run_id is not None:
        saved = checkpoint.load(checkpoint.checkpoint_path(resume_run_id), config)
        tracker.resume(resume_run_id, saved.metric_rows)
    elif checkpoint_file is not None and checkpoint_file.is_file():
        saved = checkpoint.load(checkpoint_file, config)
    else:
        try:
            tracker.start(config, stats)
        except KeyboardInterrupt:  # the run may exist already: it must not stay RUNNING
            if tracker.run_id is not None:
                tracker.finish("KILLED", "interrupted by the user")
            raise
    if saved is not None:
        restore(method, saved)
        first_round = result.first_round = saved.round_idx + 1
        result.rounds = [RoundResult(int(r["round"]), {k: v for k, v in r.items() if k != "round"})
                         for r in saved.metric_rows]
    rows = [{"round": r.round_idx, **r.metrics} for r in result.rounds]
    every = config.tracking.checkpoint_every

    def target() -> Path | None:
        if checkpoint_file is not None:
            return checkpoint_file
        return checkpoint.checkpoint_path(tracker.run_id) if tracker.run_id is not None else None

    def record(round_result: RoundResult) -> None:
        done = round_result.round_idx + 1
        with deferred_interrupts():  # a round logged is a round checkpointed: Ctrl-C waits for both
            tracker.log_round(round_result.round_idx, round_result.metrics)
            result.rounds.append(round_result)
            rows.append({"round": round_result.round_idx, **round_result.metrics})
            time_up = stop_after_s is not None and done < config.rounds and time.perf_counter() - started > stop_after_s
            path = target()
            if path is not None and (time_up or (every and (done % every == 0 or done == config.rounds))):
                checkpoint.save(path, snapshot(method, round_result.round_idx, rows))
        if on_round is not None:
            on_round(round_result)
        if time_up:
            raise _TimeUp

    try:
        active.start(method)
        run_rounds(method, record, first_round=first_round, executor=active)
    except _TimeUp:
        result.stopped = True
        resume = f"fedbench run --resume {tracker.run_id}" if tracker.run_id is not None else "run it again"
        tracker.finish("KILLED", f"stopped after {stop_after_s:g} s at round {len(result.rounds)}; {resume}")
        return result
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted by the user")
        raise
    except BaseException as exc:
        tracker.finish("FAILED", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ExecutorError) and tracker.run_id is not None:
            if checkpoint.checkpoint_path(tracker.run_id).is_file():
                raise ExecutorError(
                    f"{exc}; run {tracker.run_id} is marked FAILED and keeps its last checkpoint: "
                    f"fedbench run --resume {tracker.run_id}"
                ) from exc
            raise ExecutorError(f"{exc}; run {tracker.run_id} is marked FAILED") from exc
        raise
    tracker.finish("FINISHED")
    if tracker.run_id is not None and not config.tracking.keep_checkpoint:
        checkpoint.remove(tracker.run_id)  # the run's record is complete: nothing left to resume
    return result


def _trace_before_round_one(method: Method) -> None:
    """The meta-device traces round 1 needs at the latest, taken before the run is created.

    A process's first meta traces pay one-time costs (torch's meta kernels, sympy). Here they land while the tracking helper process is
    still opening its store and the main process would only wait for it, instead of inside
    round 1: the full model's memory (every round's participation metrics) and the global model's
    training FLOPs (the virtual clock of every method that keeps the default device cost). Both
    are cached, so nothing is traced twice; with the traces on disk neither traces at all.
    """
    ctx = method.ctx
    ctx.participation_metrics()
    default_cost = type(method).device_cost is Method.device_cost
    if default_cost and ctx.fleet is not None:
        ctx.clock.step_flops(method.global_model)


