"""Executors (issue 12 §2): serial, process, Ray and trainer threads give bit-identical runs for every method;
bad executor settings, a missing Ray and a dying worker are one line each."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedbench import engine, registry
from fedbench.cli.main import app
from fedbench.core import checkpoint
from fedbench.core.method import Assignment, Method
from fedbench.errors import ConfigError, ExecutorError, PluginError
from fedbench.execution.executors import (
    ProcessExecutor,
    ProcessPool,
    SerialExecutor,
    StreamExecutor,
    make_executor,
)
from fedbench.execution.replica import ServerSync, WorkerReplica, split_work
from fedbench.testing import kit_config
from fedbench.tracking.tracker import NullTracker

BUILTIN_METHODS = sorted(info.name for info in registry.available("methods") if info.builtin)


def config_for(method: str, executor: str = "serial", **extra):
    """3 rounds of 3 of 6 devices, so devices train again (DepthFL's per-device state matters);
    the ``relative`` fleet gives the width and depth methods more than one kind of work."""
    return kit_config(method, **{"rounds": 3, "executor": executor, "workers": 2, "executor_threads": 1, **extra})


def outcome(config, executor):
    """Per-round metrics (no wall times), the evaluated model and the server's other state."""
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    executor.start(method)
    rounds = engine.run_rounds(method, executor=executor)
    metrics = [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in rounds]
    model = {k: v.clone() for k, v in method.eval_model().state_dict().items()}
    return metrics, model, server_state(method)


def _holds_module(value) -> bool:
    if isinstance(value, torch.nn.Module):
        return True
    if isinstance(value, dict):
        return any(_holds_module(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_module(v) for v in value)
    return dataclasses.is_dataclass(value) and _holds_module(vars(value))


def server_state(method):
    """The method's public state that holds no module (modules are scratch copies or are
    checked through the evaluated model): DepthFL's per-device g_m, Oort's arms, TiFL's credits."""
    return {k: v for k, v in method.state_values().items() if not _holds_module(v)}


def assert_equal(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a) or hasattr(a, "__dict__") and not callable(a):
        assert_equal(vars(a), vars(b), where)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def assert_same(first, second):
    (metrics_a, model_a, state_a), (metrics_b, model_b, state_b) = first, second
    assert metrics_a == metrics_b
    assert_equal(model_a, model_b, "model")
    assert_equal(state_a, state_b)


@pytest.fixture(scope="module")
def pool():
    """Two workers with one thread each, shared by the tests of this module."""
    workers = ProcessPool(2, 1)
    yield workers
    workers.close()


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_every_method_gives_bit_identical_results_serially_and_in_worker_processes(method, pool):
    config = config_for(method)
    serial = outcome(config, SerialExecutor(1))
    process = outcome(dataclasses.replace(config, executor="process"), ProcessExecutor(2, 1, pool=pool))
    assert_same(serial, process)


def test_worker_processes_train_each_round_with_its_scheduled_lr_like_the_serial_run(pool):
    config = config_for("depthfl")
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, lr=0.1, lr_schedule="multistep", lr_decay=0.1, lr_milestones=(0.3, 0.6)))
    serial = outcome(config, SerialExecutor(1))
    process = outcome(dataclasses.replace(config, executor="process"), ProcessExecutor(2, 1, pool=pool))
    assert_same(serial, process)
    assert [m["train/lr"] for m in serial[0]] == pytest.approx([0.1, 0.01, 0.001])
    constant = outcome(dataclasses.replace(config, train=dataclasses.replace(config.train, lr_schedule="constant",
                                                                             lr_milestones=())), SerialExecutor(1))
    assert serial[0][0]["train/loss"] == constant[0][0]["train/loss"] != 0  # round 1 at the same lr
    assert serial[0][1]["train/loss"] != constant[0][1]["train/loss"]  # round 2 at a tenth of it


def in_threads(config, executor, threads=2):
    """``outcome`` with the process at ``threads`` torch threads, which trainer threads share."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return outcome(dataclasses.replace(config, threads=threads, executor_threads=None), executor)
    finally:
        executor.close()
        torch.set_num_threads(previous)


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_every_method_gives_bit_identical_results_serially_and_in_trainer_threads(method):
    config = config_for(method)
    serial = in_threads(config, SerialExecutor(None))
    streams = in_threads(dataclasses.replace(config, executor="streams", executor_threads=None), StreamExecutor(2))
    assert_same(serial, streams)


def test_trainer_threads_hand_back_updates_as_their_tensors_not_through_bytes():
    config = config_for("fedavg", executor="streams", executor_threads=None)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    replica = WorkerReplica(config, None, data=ctx.data)
    assert replica.ctx.data is ctx.data  # the data set is shared, not loaded again
    assignments = method.assign(0)
    sync = ServerSync(method)
    share = list(range(len(assignments)))
    result = replica.train(sync.message(assignments, 0), share, in_process=True)
    model_bytes = sum(p.numel() * p.element_size() for p in method.global_model.parameters())
    assert result.tensors and len(result.payload) < model_bytes  # the tensors are referenced, not pickled
    updates = sync.updates(assignments, [result])
    assert all(any(v is t for t in result.tensors) for u in updates for v in u.state.values())


def test_a_failing_trainer_thread_fails_the_round_with_its_own_error_after_the_others_stop(monkeypatch):
    train = Method.local_update
    finished = []

    def local_update(self, client):
        if client.client_id == min(a.client_id for a in self.assign(client.round_idx)):
            raise PluginError("client says no")
        finished.append(client.client_id)
        return train(self, client)

    monkeypatch.setattr(Method, "local_update", local_update)
    config = config_for("fedavg", executor="streams", executor_threads=None)
    with pytest.raises(PluginError, match="^client says no$"):
        in_threads(config, StreamExecutor(2))
    assert finished  # the other trainer ran its share to the end


def test_a_closed_streams_executor_gives_up_a_round_before_its_next_client(monkeypatch):
    config = config_for("fedavg", executor="streams", executor_threads=None)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    executor = StreamExecutor(2)
    executor.start(method)
    trained = []
    train = Method.local_update

    def local_update(self, client):
        trained.append(client.client_id)
        executor._stop.set()  # as close() does when the server is interrupted mid-round
        return train(self, client)

    monkeypatch.setattr(Method, "local_update", local_update)
    assignments = method.assign(0)
    with pytest.raises(ExecutorError, match="round 1 given up: the executor was closed"):
        executor.local_updates(method, assignments, 0)
    assert 0 < len(trained) <= 2 < len(assignments)  # each trainer finished at most the client it was on
    executor.close()


class CountsAggregations(Method):
    """FedAvg keeping an undeclared counter that the server changes in ``aggregate``."""

    def __init__(self, ctx, options=None):
        super().__init__(ctx, options)
        self.aggregations = 0

    def aggregate(self, round_idx, updates):
        super().aggregate(round_idx, updates)
        self.aggregations += 1


def test_undeclared_state_the_server_changes_stops_a_process_run_before_workers_use_a_stale_copy(pool):
    ctx, _ = engine.prepare(config_for("fedavg", executor="process"))
    method = CountsAggregations(ctx)  # the workers build fedavg, the server this subclass
    executor = ProcessExecutor(2, 1, pool=pool)
    executor.start(method)
    with pytest.raises(PluginError) as failure:
        engine.run_rounds(method, executor=executor)
    message = str(failure.value)
    assert "\n" not in message and message.startswith(
        "method CountsAggregations: aggregations changed on the server before round 2, but is not declared state")
    assert method.aggregations == 1  # round 1 finished; round 2 never reached the workers


def test_a_worker_that_dies_starting_names_a_script_without_a_main_guard(tmp_path):
    import types

    from fedbench.execution.executors import unguarded_script_hint

    def main(source, spec=None):
        path = tmp_path / "script.py"
        path.write_text(source)
        return types.SimpleNamespace(__file__=str(path), __spec__=spec)

    hint = unguarded_script_hint(main("from fedbench.testing import check_method\ncheck_method(M)\n"))
    assert hint.startswith("; worker processes run the script ") and 'under `if __name__ == "__main__":`' in hint
    assert unguarded_script_hint(main("if __name__ == '__main__':\n    check_method(M)\n")) == ""
    assert unguarded_script_hint(main("check_method(M)\n", spec=object())) == ""  # python -m: run as a module
    assert unguarded_script_hint(types.SimpleNamespace()) == ""  # an interactive session


def test_the_executor_does_not_change_the_run_key():
    keys = {config_for("fedavg", executor=e, workers=w).run_key for e in ("serial", "process") for w in (1, 3)}
    assert len(keys) == 1


def test_assignments_are_split_longest_first_to_the_least_loaded_worker():
    assert split_work([5, 1, 4, 3, 2], 2) == [[0, 1, 4], [2, 3]]  # loads 8 and 7
    assert split_work([7], 3) == [[0], [], []]


# ------------------------------------------------------------------ bad input
runner = CliRunner()
TINY = ["--method", "fedavg", "--dataset", "synthetic", "--clients", "4", "--clients-per-round", "2",
        "--partition", "iid", "--local-epochs", "1", "--width", "0.25", "--rounds", "1", "--no-tracking"]


def one_line_error(args):
    result = runner.invoke(app, ["run", *TINY, *args], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: "), result.output
    return result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--executor", "proces"], "unknown executor 'proces' (did you mean 'process'?); known: serial, process, ray"),
        (["--executor", "process", "--workers", "0"], "workers (0) must be >= 1"),
        (["--executor-threads", "0"], "executor_threads (0) must be >= 1"),
        (["--executor", "streams", "--executor-threads", "2"],
         "executor_threads (2) does not apply to the streams executor"),
        (["--executor", "stream"], "unknown executor 'stream' (did you mean 'streams'?)"),
    ],
)
def test_bad_executor_settings_are_one_line(args, fragment):
    assert fragment in one_line_error(args)


def test_the_ray_executor_without_ray_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert 'pip install "fedbench[ray]"' in one_line_error(["--executor", "ray"])
    with pytest.raises(ConfigError, match="needs Ray"):
        make_executor(config_for("fedavg", executor="ray"))


def test_the_command_line_runs_a_process_executor_and_starts_its_forkserver_first(monkeypatch):
    import fedbench.cli.run

    started = []
    real_start = fedbench.cli.run.start_early
    monkeypatch.setattr(fedbench.cli.run, "start_early", lambda: (started.append(True), real_start()))
    result = runner.invoke(app, ["run", *TINY, "--executor", "process", "--workers", "2", "--executor-threads", "1"])
    assert result.exit_code == 0, result.output
    assert "last evaluation" in result.output
    assert started == [True]


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_are_forked_from_one_forkserver_that_has_torch_loaded(pool):
    """Why: workers that import torch themselves made the process executor 10-15 % slower than
    serial on 2 cores (worker_start.py)."""
    parents = {_parent_pid(pid) for pid in pool.pids()}
    assert len(parents) == 1 and os.getpid() not in parents
    forkserver = parents.pop()
    assert "forkserver" in Path(f"/proc/{forkserver}/cmdline").read_text()
    assert "libtorch" in Path(f"/proc/{forkserver}/maps").read_text()


class _ExitOnArrival:
    """A work object whose unpickling ends the process that receives it (a worker dying)."""

    def __reduce__(self):
        return (os._exit, (3,))


class _Recorder(NullTracker):
    """A tracker that keeps the final status instead of writing to MLflow."""

    run_id = "dying-worker-run"

    def __init__(self) -> None:
        self.status: tuple[str, str | None] | None = None

    def finish(self, status, error=None):
        self.status = (status, error)


def test_a_dying_worker_fails_the_run_in_one_line_and_keeps_the_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path))
    honest = Method.assign

    def assign(self, round_idx):
        found = honest(self, round_idx)
        return found if round_idx == 0 else [Assignment(found[0].client_id, _ExitOnArrival()), *found[1:]]

    monkeypatch.setattr(Method, "assign", assign)
    config = config_for("fedavg", executor="process", fleet={"profile": "homogeneous"})
    tracker = _Recorder()
    with pytest.raises(ExecutorError) as info:
        engine.run(config, tracker=tracker)
    message = str(info.value)
    assert "\n" not in message
    assert "exited with code 3 while training round 2" in message
    assert "fedbench run --resume dying-worker-run" in message
    assert tracker.status[0] == "FAILED" and "exited with code 3" in tracker.status[1]

    monkeypatch.setattr(Method, "assign", honest)
    saved = checkpoint.load(checkpoint.checkpoint_path(tracker.run_id), config)
    assert saved.round_idx == 0  # round 1 finished and was kept; round 2 was lost
    resumed = engine.run(dataclasses.replace(config, executor="serial"), tracker=tracker,
                         resume_run_id=tracker.run_id)
    plain = engine.run(dataclasses.replace(config, executor="serial"))
    assert resumed.metric("eval/accuracy") == plain.metric("eval/accuracy")


# ------------------------------------------------------------------------ ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize("method", ["fedavg", "neulite", "depthfl"])
def test_ray_actors_give_the_same_results_as_the_serial_executor(method, local_ray):
    config = config_for(method)
    serial = outcome(config, SerialExecutor(1))
    executor = make_executor(dataclasses.replace(config, executor="ray"))
    try:
        assert_same(serial, outcome(config, executor))
    finally:
        executor.close()
    assert local_ray.is_initialized()  # an executor leaves a Ray it did not start running


def test_a_dying_ray_actor_fails_the_round_in_one_line(monkeypatch, local_ray):
    honest = Method.assign
    monkeypatch.setattr(
        Method, "assign", lambda self, r: [Assignment(a.client_id, _ExitOnArrival()) for a in honest(self, r)]
    )
    with pytest.raises(ExecutorError, match="a Ray actor of the executor died while training round 1") as info:
        engine.run(config_for("fedavg", executor="ray"))
    assert "\n" not in str(info.value)


# ------------------------------------------------- worker start-up beside the server's
class _RecordingExecutor(SerialExecutor):
    """Serial, but notes when the engine begins, starts and closes it."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def begin(self, config) -> None:
        self.calls.append("begin")

    def start(self, method) -> None:
        self.calls.append("start")

    def close(self) -> None:
        self.calls.append("close")


def test_the_engine_begins_its_executor_before_preparing_the_run_and_closes_it(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(engine.executors, "make_executor", lambda config: _RecordingExecutor(calls))
    real_prepare = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda config: (calls.append("prepare"), real_prepare(config))[1])
    engine.run(config_for("fedavg"))
    assert calls == ["begin", "prepare", "start", "close"]


def test_an_executor_begun_for_a_run_that_fails_to_prepare_is_closed(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(engine.executors, "make_executor", lambda config: _RecordingExecutor(calls))

    def broken_prepare(config):
        raise ConfigError("no data here")

    monkeypatch.setattr(engine, "prepare", broken_prepare)
    with pytest.raises(ConfigError, match="no data here"):
        engine.run(config_for("fedavg"))
    assert calls == ["begin", "close"]


def test_workers_begun_early_or_for_another_config_give_the_serial_results(pool):
    config = config_for("fedavg")
    serial = outcome(config, SerialExecutor(1))
    early = ProcessExecutor(2, 1, pool=pool)
    early.begin(dataclasses.replace(config, executor="process"))
    assert_same(serial, outcome(dataclasses.replace(config, executor="process"), early))
    stale = ProcessExecutor(2, 1, pool=pool)
    stale.begin(dataclasses.replace(config, executor="process", seed=config.seed + 1))
    assert_same(serial, outcome(dataclasses.replace(config, executor="process"), stale))
