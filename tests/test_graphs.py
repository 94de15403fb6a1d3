"""cuda_graphs: local steps replayed from a captured graph train as eager steps do.

A CUDA graph needs a GPU; here :class:`ReplayedStep` stands in for it: it records the step at
capture and calls it again per replay, through the same static input tensors, warm-up steps and
eager last batches as a CUDA graph. A run through it must equal the eager run bit for bit, for every
method (each marks its loss graph-safe), and every replay must make the torch calls of the first
with the same Python arguments, as a graph's frozen kernels do; a loss that is not marked is never
captured."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode
from typer.testing import CliRunner

from fedbench import engine, registry
from fedbench.cli.main import app
from fedbench.config import RunConfig, make_config
from fedbench.core import method as method_module
from fedbench.data import ImageDataset
from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from fedbench.errors import ConfigError, PluginError
from fedbench.kits.widths import is_channels_last
from fedbench.testing import kit_config
from fedbench.training import graphs
from fedbench.training.graphs import (
    CachedStep,
    GraphedSteps,
    ReplayedStep,
    StepGraphCache,
    graph_safe,
    is_graph_safe,
)
from fedbench.training.loop import cross_entropy_loss, local_sgd
from fedbench.training.sgd import LocalSGD

# The built-ins and the example plugin (CI installs it), whose loss hook is decorated @graph_safe.
METHODS = sorted(info.name for info in registry.available("methods") if info.builtin or info.name == "fedprox")


def _shown(value):
    """A torch call's argument as a graph sees it: a tensor by its shape, dtype and device (its
    values may change between replays), anything else by its value (frozen at capture)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, (list, tuple)):
        return tuple(_shown(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _shown(v)) for k, v in value.items()))
    return value if isinstance(value, (int, float, bool, str, type(None), torch.dtype)) else type(value).__name__


class CallTrace(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__qualname__", repr(func)), _shown(args), _shown(kwargs or {})))
        return func(*args, **(kwargs or {}))


class CountingReplay(ReplayedStep):
    """The stand-in, also holding each replay to the torch calls of the first: a real graph replays
    its captured kernels with the arguments they had, so a step whose calls or Python-side
    arguments (a counter, a scalar read from a changing attribute) differ between replays would
    be frozen on a GPU."""

    captures = replays = 0

    def capture(self, step):
        CountingReplay.captures += 1
        self.recorded = None
        super().capture(step)

    def replay(self):
        CountingReplay.replays += 1
        with CallTrace() as trace:
            super().replay()
        if self.recorded is None:
            self.recorded = trace.calls
        assert trace.calls == self.recorded, "a replay's torch calls differ from the captured step's"


def outcome(config):
    """Per-round metrics (no wall times) and the evaluated model's state."""
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    rounds = engine.run_rounds(method)
    metrics = [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in rounds]
    return metrics, {k: v.clone() for k, v in method.eval_model().state_dict().items()}


def eager_and_graphed(config, monkeypatch):
    """:func:`outcome` of ``config`` run eagerly, then with the stand-in graph (counts reset)."""
    eager = outcome(config)
    monkeypatch.setattr("fedbench.core.method.step_graphs", lambda device, enabled: CountingReplay)
    monkeypatch.setattr(CountingReplay, "captures", 0)
    monkeypatch.setattr(CountingReplay, "replays", 0)
    return eager, outcome(config)


@pytest.mark.parametrize("method", METHODS)
def test_a_graphed_run_trains_bit_for_bit_as_the_eager_run(method, monkeypatch):
    # Batches of 8 over shards of ~40 samples, 2 epochs: warm-up, capture, replays and an eager
    # last batch in every client's training.
    options = {"mu": 0.1} if method == "fedprox" else None
    config = kit_config(method, options, rounds=3, train={"local_epochs": 2, "batch_size": 8})
    (eager_metrics, eager_model), (graphed_metrics, graphed_model) = eager_and_graphed(config, monkeypatch)
    assert graphed_metrics == eager_metrics
    assert eager_model.keys() == graphed_model.keys()
    assert all(torch.equal(eager_model[k], graphed_model[k]) for k in eager_model)
    assert CountingReplay.captures > 0 and CountingReplay.replays > 2 * CountingReplay.captures


@pytest.mark.parametrize("method", ["fedavg", "neulite", "depthfl", "heterofl", "oort"])
def test_a_graphed_channels_last_run_trains_bit_for_bit_as_its_eager_run(method, monkeypatch):
    """The default GPU path combines both switches: graphs replay channels-last steps as they ran."""
    config = kit_config(method, rounds=3, train={"local_epochs": 2, "batch_size": 8}, channels_last=True)
    (eager_metrics, eager_model), (graphed_metrics, graphed_model) = eager_and_graphed(config, monkeypatch)
    assert graphed_metrics == eager_metrics
    assert all(torch.equal(eager_model[k], graphed_model[k]) for k in eager_model)
    assert CountingReplay.captures > 0


def _tiny_training(loss_fn, make_graph):
    """Three epochs of a linear model on 18 augmented 8x8 images in batches of 4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 10
    dataset = ImageDataset("tiny", images, labels, images[:4], labels[:4], 10, IMAGENET_MEAN, IMAGENET_STD,
                           augment=RandomCropFlip(2, IMAGENET_MEAN, IMAGENET_STD))
    train = make_config(overrides={"train": {"local_epochs": 3, "batch_size": 4}}).train
    result = local_sgd(model, dataset, torch.arange(18), train, torch.Generator().manual_seed(1), loss_fn=loss_fn,
                       graphs=make_graph)
    return result, [p.detach().clone() for p in model.parameters()]


class HostReadsRaise(TorchFunctionMode):
    """On the CPU, what ``torch.cuda.set_sync_debug_mode("error")`` does on a GPU: reading a
    tensor's value on the host raises torch's error."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__):
            raise RuntimeError(f"{graphs.HOST_SYNC_ERROR}\nmore detail")
        return func(*args, **(kwargs or {}))


class SyncCheckingReplay(ReplayedStep):
    warmups: list[bool] = []

    def warmup(self, strict):
        SyncCheckingReplay.warmups.append(strict)
        return HostReadsRaise() if strict else contextlib.nullcontext()


def test_a_graph_safe_loss_that_reads_the_host_stops_the_run_in_one_line_before_any_capture(monkeypatch):
    monkeypatch.setattr(SyncCheckingReplay, "warmups", [])

    @graph_safe
    def reads_host(model, images, labels):
        loss = cross_entropy_loss(model, images, labels)
        print(f"loss {loss.item():.3f}")  # frozen at its captured value in a graph
        return loss

    with pytest.raises(PluginError, match=r"^test_\w+\.<locals>\.reads_host is marked graph_safe but a step of it reads a value back "
                                          r"to the host \(called a synchronizing CUDA operation\), which a CUDA "
                                          r"graph cannot replay; remove @graph_safe from it or run with "
                                          r"--no-cuda-graphs$"):
        _tiny_training(reads_host, SyncCheckingReplay)
    assert SyncCheckingReplay.warmups == [False, True]


def test_a_host_read_in_the_first_warm_up_only_fills_a_cache_and_is_allowed(monkeypatch):
    monkeypatch.setattr(SyncCheckingReplay, "warmups", [])
    cache: dict[str, int] = {}

    @graph_safe
    def cached(model, images, labels):
        if "classes" not in cache:  # once, as a class mask is made
            cache["classes"] = int(labels.max().item()) + 1
        return cross_entropy_loss(model, images, labels)

    eager, eager_weights = _tiny_training(cross_entropy_loss, None)
    graphed, graphed_weights = _tiny_training(cached, SyncCheckingReplay)
    assert graphed == eager and all(torch.equal(a, b) for a, b in zip(eager_weights, graphed_weights, strict=True))


def test_a_failed_capture_stops_the_run_naming_the_error_it_started_with():
    class FailingCapture(ReplayedStep):
        def capture(self, step):
            try:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
            except RuntimeError:
                raise RuntimeError("operation failed due to a previous error during capture") from None

    with pytest.raises(RuntimeError, match=r"^capturing a local step of cross_entropy_loss as a CUDA graph failed "
                                           r"\(operation not permitted when stream is capturing\); run with "
                                           r"--no-cuda-graphs$"):
        _tiny_training(cross_entropy_loss, FailingCapture)


def test_only_losses_marked_graph_safe_are_captured(monkeypatch):
    monkeypatch.setattr(CountingReplay, "captures", 0)

    def unmarked(model, images, labels):
        return cross_entropy_loss(model, images, labels)

    _tiny_training(unmarked, CountingReplay)
    assert CountingReplay.captures == 0 and not is_graph_safe(unmarked)
    graphed, _ = _tiny_training(graph_safe(unmarked), CountingReplay)
    assert CountingReplay.captures == 1  # one graph per local training, replayed for its full batches
    assert graphed.num_steps == 3 * 5  # 18 samples: 4 full batches and a last one of 2, per epoch


def test_the_stand_in_catches_a_loss_whose_python_state_a_graph_would_freeze():
    steps = [0]

    @graph_safe
    def counting(model, images, labels):  # weights the loss by a step counter kept in Python
        steps[0] += 1
        return cross_entropy_loss(model, images, labels) * min(steps[0], 10)

    with pytest.raises(AssertionError, match="a replay's torch calls differ from the captured step's"):
        _tiny_training(counting, CountingReplay)


def test_graphed_steps_warm_up_then_capture_once_and_replay_full_size_batches_only():
    calls: list[int] = []

    def step(images, labels):
        calls.append(images.shape[0])
        return images.sum()

    graph = CountingReplay()
    run = GraphedSteps(step, 4, lambda: graph, "step")
    for size in (4, 4, 4, 4, 3, 4):
        run(torch.ones(size, 2), torch.zeros(size))
    # two warm-ups, the capture's recording (run by its replay), a replay, the eager batch of 3, a replay
    assert calls == [4, 4, 4, 4, 3, 4]
    assert run.captured_sizes == [4] and run.graph is graph and run.by_size[4].images.shape == (4, 2)


def test_kept_graphed_steps_graph_every_batch_size_that_recurs():
    calls: list[int] = []

    def step(images, labels):
        calls.append(images.shape[0])
        return images.sum()

    graph = CountingReplay()
    run = GraphedSteps(step, 4, lambda: graph, "step", every_size=True)
    for size in (4, 4, 4, 3, 4, 3, 2, 3, 3, 2):
        run(torch.ones(size, 2), torch.zeros(size))
    # size 3 warms up twice, is captured at its third batch and replayed at its fourth; 2 warms up
    assert calls == [4, 4, 4, 3, 4, 3, 2, 3, 3, 2]
    assert run.captured_sizes == [3, 4] and run.by_size[2].seen == 2
    assert run.by_size[3].graph is not graph and run.by_size[3].images.shape == (3, 2)


def graphed_through_stand_in(monkeypatch) -> list[GraphedSteps]:
    """Makes runs graph through :class:`CountingReplay`; the list fills with every GraphedSteps made."""
    made: list[GraphedSteps] = []

    def made_steps(*args, **kwargs):
        made.append(GraphedSteps(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("fedbench.core.method.step_graphs", lambda device, enabled: CountingReplay)
    monkeypatch.setattr("fedbench.training.loop.GraphedSteps", made_steps)
    return made


def _count_captures(method, monkeypatch, trained_models=None, **train_overrides):
    """(full-size captures, local trainings, the GraphedSteps made) of a 3-round graphed run;
    ``trained_models`` (a set) collects the ids of the models trained."""
    made, trainings = graphed_through_stand_in(monkeypatch), []
    train = method_module.local_sgd

    def counted(model, *args, **kwargs):
        trainings.append(1)
        if trained_models is not None:
            trained_models.add(id(model))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(method_module, "local_sgd", counted)
    outcome(kit_config(method, rounds=3, train={"local_epochs": 2, "batch_size": 8, **train_overrides}))
    full_size = sum(8 in steps.captured_sizes for steps in made)
    return full_size, len(trainings), made


@pytest.mark.parametrize("method", ["fedavg", "oort"])  # cross-entropy; Oort's loss records into one kept buffer
def test_one_capture_serves_every_client_of_a_method_whose_loss_is_kept(method, monkeypatch):
    captures, trainings, made = _count_captures(method, monkeypatch)
    assert trainings > 3 and captures == 1 and len(made) == 1  # the bit-for-bit test above holds these runs to eager ones


def test_neulite_captures_once_per_stage_visit_not_per_device(monkeypatch):
    captures, trainings, made = _count_captures("neulite", monkeypatch)
    stage_visits = len({id(steps) for steps in made})  # a stage's loss, kept while its rounds last
    assert trainings > 3 and captures == stage_visits <= 3 and captures < trainings


def test_depthfl_keeps_one_capture_per_depth_through_its_distillation_ramp_up(monkeypatch):
    depth_models = set()
    captures, trainings, made = _count_captures("depthfl", monkeypatch, depth_models, lr=0.05)
    # 3 rounds of the 300-round ramp-up, each with its own distillation weight: still a graph per
    # depth model, not per round or per device
    assert trainings > 3 and captures == len(made) == len(depth_models) < trainings


def test_heterofl_keeps_one_capture_per_width_level_its_class_mask_refilled_per_client(monkeypatch):
    captures, trainings, made = _count_captures("heterofl", monkeypatch)
    levels = {id(steps) for steps in made}
    assert trainings > 3 and captures == len(levels) < trainings


def test_a_loss_made_per_client_or_a_new_lr_is_captured_again(monkeypatch):
    captures, trainings, made = _count_captures("fedprox", monkeypatch)  # its loss reads the client's start weights
    assert captures == trainings > 3
    assert all(steps.captured_sizes == [8] for steps in made)  # a last batch recurs too rarely in one training
    captures, trainings, _ = _count_captures("fedavg", monkeypatch, lr_schedule="exponential", lr_decay=0.9)
    assert captures == 3  # one per round: each round's lr is frozen in its graph


def test_a_kept_graph_replays_the_last_batches_of_later_clients_bit_for_bit(monkeypatch):
    # 3 local epochs: each client's last-batch size recurs three times in its first training
    config = kit_config("fedavg", rounds=3, train={"local_epochs": 3, "batch_size": 8})
    eager_metrics, eager_model = outcome(config)
    made = graphed_through_stand_in(monkeypatch)
    graphed_metrics, graphed_model = outcome(config)
    assert graphed_metrics == eager_metrics
    assert all(torch.equal(eager_model[k], graphed_model[k]) for k in eager_model)
    [steps] = made
    smaller = [size for size in steps.captured_sizes if size < 8]
    assert smaller and all(steps.by_size[size].seen > 3 for size in smaller)


def test_a_kept_step_graph_serves_only_the_tensors_it_was_captured_over():
    cache = StepGraphCache(CountingReplay)
    model = torch.nn.Linear(3, 2)
    tensors = [*model.parameters()]
    kept = CachedStep(("settings",), tensors, steps=object(), optimizer=object())
    cache.keep(kept)
    assert cache.find(("settings",), [*model.parameters()]) is kept
    assert cache.find(("other settings",), [*model.parameters()]) is None
    model.weight = torch.nn.Parameter(model.weight.detach().clone())  # same values, another tensor
    assert cache.find(("settings",), [*model.parameters()]) is None


def test_restarting_sgd_zeroes_momentum_in_place_and_steps_as_a_fresh_optimizer():
    torch.manual_seed(0)
    fresh_model, kept_model = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    kept = LocalSGD(kept_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    kept_model(torch.randn(5, 4)).sum().backward()
    kept.step()  # buffers made and filled
    buffers = list(kept.momentum_buffers)
    kept_model.load_state_dict(fresh_model.state_dict())
    kept.restart()
    assert all(a is b and not a.any() for a, b in zip(kept.momentum_buffers, buffers, strict=True))
    fresh = LocalSGD(fresh_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch = torch.randn(5, 4)
    for model, optimizer in ((fresh_model, fresh), (kept_model, kept)):
        for _ in range(3):
            optimizer.zero_grad()
            model(batch).pow(2).sum().backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(fresh_model.parameters(), kept_model.parameters(), strict=True))


def test_cuda_graphs_need_the_resident_gpu_path_and_stay_out_of_the_run_key():
    with pytest.raises(ConfigError, match=r"cuda_graphs needs the resident GPU path \(got device cpu\)"):
        make_config(overrides={"cuda_graphs": True})
    with pytest.raises(ConfigError, match=r"got device cuda, resident=false"):
        make_config(overrides={"cuda_graphs": True, "device": "cuda", "resident": False})
    graphed = make_config(overrides={"cuda_graphs": True, "device": "cuda"})
    assert graphed.run_key == dataclasses.replace(graphed, cuda_graphs=False).run_key


@pytest.mark.parametrize(("overrides", "graphs", "channels_last"), [
    ({}, False, False),  # the CPU: neither
    ({"device": "cuda"}, True, True),  # a GPU: the fastest path measured (docs/gpu.md)
    ({"device": "cuda:1", "resident": False}, False, True),  # the transfer path cannot replay graphs
    ({"device": "cuda", "cuda_graphs": False, "channels_last": False}, False, False),  # asked off
    ({"channels_last": True}, False, True),  # asked on, on the CPU
])
def test_graphs_and_channels_last_are_on_by_default_with_a_gpu_only(overrides, graphs, channels_last):
    config = make_config(overrides=overrides)
    assert (config.uses_cuda_graphs, config.uses_channels_last) == (graphs, channels_last)
    assert config.run_key == dataclasses.replace(config, cuda_graphs=None, channels_last=None).run_key


@pytest.mark.parametrize("default_on", [False, True])
def test_the_run_takes_graphs_and_layout_from_their_effective_values(default_on, monkeypatch):
    """What the run asks for follows ``uses_cuda_graphs``/``uses_channels_last`` (a GPU's
    defaults are on), not the raw, unset fields."""
    asked = []
    monkeypatch.setattr("fedbench.core.method.step_graphs", lambda device, enabled: asked.append(enabled))
    monkeypatch.setattr(RunConfig, "uses_cuda_graphs", property(lambda self: default_on))
    monkeypatch.setattr(RunConfig, "uses_channels_last", property(lambda self: default_on))
    config = kit_config("fedavg", None, rounds=1)
    assert config.cuda_graphs is None and config.channels_last is None
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    engine.run_rounds(method)
    assert asked and set(asked) == {default_on}
    assert is_channels_last(method.global_model) == default_on


def test_the_cuda_graphs_flag_on_a_cpu_run_is_one_line():
    result = CliRunner().invoke(app, ["run", "--cuda-graphs", "--dataset", "synthetic", "--no-tracking"])
    assert result.exit_code == 2
    assert "cuda_graphs needs the resident GPU path" in result.output


def test_trainer_threads_replay_kept_graphs_as_the_serial_eager_run_trains(monkeypatch):
    from fedbench.execution.executors import StreamExecutor

    config = kit_config("fedavg", rounds=3, train={"local_epochs": 3, "batch_size": 8})
    eager_metrics, eager_model = outcome(config)
    made = graphed_through_stand_in(monkeypatch)
    threaded = dataclasses.replace(config, executor="streams", workers=2, executor_threads=None)
    ctx, _ = engine.prepare(threaded)
    method = engine.make_method(ctx)
    executor = StreamExecutor(2)
    try:
        executor.start(method)
        rounds = engine.run_rounds(method, executor=executor)
    finally:
        executor.close()
    assert [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in rounds] == eager_metrics
    assert all(torch.equal(eager_model[k], v) for k, v in method.eval_model().state_dict().items())
    # one kept step per trainer; torch's host-read check is process-wide, so it is off beside other threads
    assert len(made) == 2 and not any(steps.check_host_reads for steps in made)


class FakeCuda:
    """What CudaStepGraph asks of torch.cuda, recorded, for its wiring on a machine without a GPU."""

    def __init__(self):
        self.calls, self.streams = [], []
        fake = self

        class Graph:
            def capture_begin(self, pool, capture_error_mode):
                fake.calls.append(("begin", pool, capture_error_mode, fake.streams[-1] if fake.streams else None))

            def capture_end(self):
                fake.calls.append(("end",))

            def replay(self):
                fake.calls.append(("replay",))

        self.CUDAGraph = Graph
        self.Stream = object
        self.pools = iter(range(100))

    def graph_pool_handle(self):
        return ("pool", next(self.pools))

    @contextlib.contextmanager
    def stream(self, stream):
        self.streams.append(stream)
        try:
            yield
        finally:
            self.streams.pop()


def test_a_cuda_step_graph_captures_on_its_stream_into_its_pool_and_always_ends_the_capture(monkeypatch):
    fake = FakeCuda()
    for name in ("CUDAGraph", "Stream", "graph_pool_handle", "stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    graph = graphs.CudaStepGraph()
    sibling = graph.sibling()
    assert sibling.stream is graph.stream and sibling.pool == graph.pool == ("pool", 0)
    assert graphs.CudaStepGraph().pool == ("pool", 1)  # made alone: a pool of its own
    cache = StepGraphCache(graphs.CudaStepGraph)  # a run's graphs, per-client ones too: one pool
    first, second = cache(), cache()
    assert first is not second and first.pool == second.pool == ("pool", 2) and first.stream is second.stream
    graph.capture(lambda: fake.calls.append(("step",)))
    assert fake.calls == [("begin", ("pool", 0), "thread_local", graph.stream), ("step",), ("end",)]
    fake.calls.clear()

    def failing():
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="not permitted"):
        sibling.capture(failing)
    assert fake.calls[-1] == ("end",) and not graphs._CAPTURING.locked()  # capture mode left, lock released
