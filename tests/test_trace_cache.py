"""The on-disk trace cache: same answers, no trace on a hit, keys that follow the code."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fedbench.memory import model as memory
from fedbench.memory.model import MemoryModel, SGDSpec
from fedbench.models import build_model
from fedbench.tracing import cache as trace_cache
from fedbench.tracing.meta import building_on_meta


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "traces"
    monkeypatch.setenv(trace_cache.ENV, str(folder))
    return folder


class Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_second_lookup_reads_the_stored_answer(cache_dir):
    compute = Counter({"peak": 123})
    assert trace_cache.cached("memory", ("a", 1), (), compute) == {"peak": 123}
    assert trace_cache.cached("memory", ("a", 1), (), compute) == {"peak": 123}
    assert compute.calls == 1
    (entry,) = (cache_dir / "memory").glob("*.json")
    assert json.loads(entry.read_text())["value"] == {"peak": 123}


def test_any_key_part_makes_a_new_entry(cache_dir):
    compute = Counter(1.0)
    for key in [("a", 1), ("a", 2), ("b", 1), ("a", 1.0), ("a", frozenset({"x", "y"}))]:
        trace_cache.cached("flops", key, (), compute)
    assert compute.calls == 5
    trace_cache.cached("flops", ("a", frozenset({"y", "x"})), (), compute)  # a set names itself sorted
    assert compute.calls == 5


@dataclasses.dataclass(frozen=True)
class HiddenField:
    shown: int
    hidden: float = dataclasses.field(default=0.0, repr=False)


def test_a_dataclass_is_named_by_every_field_not_its_repr(cache_dir):
    compute = Counter(1)
    trace_cache.cached("memory", (HiddenField(1, 0.5),), (), compute)
    trace_cache.cached("memory", (HiddenField(1, 0.7),), (), compute)
    trace_cache.cached("memory", (HiddenField(1, 0.7),), (), compute)
    assert compute.calls == 2


@dataclasses.dataclass(frozen=True)
class WithMethod:
    scale: float

    def loss(self, model, images, labels):
        return self.scale


def test_a_bound_method_is_named_with_its_object(cache_dir):
    compute = Counter(1)
    trace_cache.cached("memory", (WithMethod(1.0).loss,), (WithMethod(1.0).loss,), compute)
    trace_cache.cached("memory", (WithMethod(2.0).loss,), (WithMethod(2.0).loss,), compute)
    trace_cache.cached("memory", (WithMethod(2.0).loss,), (WithMethod(2.0).loss,), compute)
    assert compute.calls == 2


@pytest.mark.parametrize("unstable", [lambda: 0, object()])
def test_a_key_without_stable_text_is_not_cached(cache_dir, unstable):
    compute = Counter(7)
    trace_cache.cached("memory", ("a", unstable), (), compute)
    trace_cache.cached("memory", ("a", unstable), (), compute)
    assert compute.calls == 2
    assert not cache_dir.exists()


def test_the_folder_is_bounded_least_recently_used_first(cache_dir, monkeypatch):
    monkeypatch.setattr(trace_cache, "MAX_ENTRIES", 8)
    monkeypatch.setattr(trace_cache, "_CHECKED", {cache_dir / "memory"})  # this process bounded it already
    compute = Counter(1)

    def entry(i):
        return cache_dir / "memory" / f"{trace_cache._digest('memory', ('entry', i), ())[0]}.json"

    for i in range(10):
        trace_cache.cached("memory", ("entry", i), (), compute)
        os.utime(entry(i), (1_000_000 + i, 1_000_000 + i))  # entry 0 the oldest
    trace_cache.cached("memory", ("entry", 0), (), compute)  # a hit: now the most recently used
    assert compute.calls == 10 and len(list(entry(0).parent.glob("*.json"))) == 10

    trace_cache._CHECKED.clear()  # the next process's first new entry bounds the folder: 11 > 8, down to 6
    trace_cache.cached("memory", ("entry", 10), (), compute)
    kept = {i for i in range(11) if entry(i).exists()}
    assert kept == {0, 6, 7, 8, 9, 10}


def test_turned_off(cache_dir, monkeypatch):
    monkeypatch.setenv(trace_cache.ENV, "off")
    compute = Counter(7)
    trace_cache.cached("memory", ("a",), (), compute)
    trace_cache.cached("memory", ("a",), (), compute)
    assert compute.calls == 2 and trace_cache.cache_dir() is None


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(trace_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trace_cache.cache_dir() == tmp_path / "fedbench" / "traces"


def test_corrupt_entry_is_recomputed_and_replaced(cache_dir):
    compute = Counter([1, 2])
    trace_cache.cached("memory", ("a",), (), compute)
    (entry,) = (cache_dir / "memory").glob("*.json")
    entry.write_text("{not json")
    assert trace_cache.cached("memory", ("a",), (), compute) == [1, 2]
    assert compute.calls == 2
    assert json.loads(entry.read_text())["value"] == [1, 2]


def test_unwritable_folder_only_costs_the_trace(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(trace_cache.ENV, str(blocker / "traces"))  # cannot be created
    compute = Counter(3)
    assert trace_cache.cached("memory", ("a",), (), compute) == 3
    assert trace_cache.cached("memory", ("a",), (), compute) == 3
    assert compute.calls == 2


def test_editing_the_defining_module_changes_the_key(cache_dir, tmp_path, monkeypatch):
    """A plugin's loss edited between two processes must not read the old answer."""
    source = tmp_path / "plugin_src"
    source.mkdir()
    module_file = source / "my_loss_plugin.py"
    module_file.write_text("class Loss:\n    def __call__(self, model, x, y):\n        return 0\n")
    monkeypatch.syspath_prepend(str(source))
    plugin = importlib.import_module("my_loss_plugin")
    compute = Counter(5)
    trace_cache.cached("memory", ("a",), (plugin.Loss(),), compute)
    trace_cache.cached("memory", ("a",), (plugin.Loss(),), compute)
    assert compute.calls == 1
    module_file.write_text("class Loss:\n    def __call__(self, model, x, y):\n        return 1\n")
    trace_cache._file_digest.cache_clear()  # a new process would read the file afresh
    trace_cache.cached("memory", ("a",), (plugin.Loss(),), compute)
    assert compute.calls == 2


def test_memory_model_reads_the_disk_without_tracing(cache_dir, monkeypatch):
    with building_on_meta():
        model = build_model("cnn", (1, 28, 28), 10, width=0.5)
    memory._SHARED_CACHE.clear()
    traced = MemoryModel(SGDSpec()).report(model, batch_size=16)
    memory._SHARED_CACHE.clear()  # as in a new process

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again although the answer is on disk")

    monkeypatch.setattr(memory, "peak_training_bytes", no_trace)
    assert MemoryModel(SGDSpec()).report(model, batch_size=16) == traced
    memory._SHARED_CACHE.clear()
    with pytest.raises(AssertionError, match="traced again"):  # another batch size is another key
        MemoryModel(SGDSpec()).report(model, batch_size=8)


def test_cached_block_shapes_match_the_traced_ones(cache_dir):
    with building_on_meta():
        first = build_model("resnet18", (3, 32, 32), 10, width=0.25)
        second = build_model("resnet18", (3, 32, 32), 10, width=0.25)  # from the cache
    assert list((cache_dir / "shapes").glob("*.json"))
    assert second.block_output_shapes() == first._traced_block_output_shapes()
    assert all(isinstance(shape, tuple) for shape in second.block_output_shapes())


def test_building_on_meta_skips_only_meta_initialisation():
    with torch.device("meta"):
        reference = build_model("resnet18", (3, 32, 32), 10)
    with building_on_meta():
        model = build_model("resnet18", (3, 32, 32), 10)
        real = nn.init.ones_(torch.empty(3, device="cpu"))  # a real tensor is still initialised
    assert [(n, p.shape, p.device.type) for n, p in model.named_parameters()] == [
        (n, p.shape, p.device.type) for n, p in reference.named_parameters()
    ]
    assert [b.shape for b in model.buffers()] == [b.shape for b in reference.buffers()]
    assert torch.equal(real, torch.ones(3))
    assert torch.zeros(1).device.type == "cpu"  # the default device is back


def test_like_factories_on_meta_keep_torch_s_layout_and_real_tensors_keep_their_values():
    sources = [torch.empty(4, 3, device="meta"), torch.empty(2, 3, 5, 5, device="meta", dtype=torch.float16),
               torch.empty(6, 4, device="meta").t(), torch.empty((), device="meta", dtype=torch.int64)]
    factories = [(torch.zeros_like, ()), (torch.ones_like, ()), (torch.empty_like, ()), (torch.full_like, (2.0,)),
                 (torch.randn_like, ())]
    for source in sources:
        for factory, extra in factories:
            if factory is torch.randn_like and not source.is_floating_point():
                continue
            expected = factory(source, *extra)
            with building_on_meta():
                found = factory(source, *extra)
            assert (found.shape, found.stride(), found.dtype, found.device) == (
                expected.shape, expected.stride(), expected.dtype, expected.device)
    with building_on_meta():
        real = torch.ones_like(torch.zeros(3, device="cpu"))  # real data: computed as ever
        assert torch.zeros_like(torch.empty(2, device="meta"), dtype=torch.int32).dtype == torch.int32
    assert torch.equal(real, torch.ones(3))


def test_second_run_does_no_meta_work(tmp_path):
    """The point of the cache: a run whose traces are stored never imports torch's compiler."""
    script = textwrap.dedent("""
        import json, sys
        from fedbench.api import make_config, run
        config = make_config(overrides={
            "method": "fedavg", "rounds": 1, "clients_per_round": 2, "tracking": {"enabled": False},
            "data": {"dataset": "synthetic", "num_clients": 4, "partition": "iid"},
            "model": {"name": "cnn", "width": 0.25}, "train": {"batch_size": 16},
        })
        result = run(config)
        metrics = result.rounds[-1].metrics
        print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, **{
            key: metrics[key] for key in ("clock/round_s", "participation/rate", "eval/accuracy", "train/loss")}}))
    """)
    env = {**os.environ, trace_cache.ENV: str(tmp_path / "traces")}

    def run_once() -> dict:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = run_once(), run_once()
    assert list((tmp_path / "traces").rglob("*.json"))
    assert second["dynamo"] is False
    assert second == {**first, "dynamo": False}


def test_method_modules_outside_the_package_folder_are_keyed_by_their_source():
    """``fedbench.methods`` is installed from methods/, outside fedbench/ whose digest covers the
    engine: an edit to a built-in method must change the key too."""
    import fedbench.methods.depthfl  # noqa: F401

    assert trace_cache._module_digest("fedbench.memory.model") == "fedbench.memory.model"
    name, digest = trace_cache._module_digest("fedbench.methods.depthfl").split(":")
    assert name == "fedbench.methods.depthfl" and len(digest) == 64
