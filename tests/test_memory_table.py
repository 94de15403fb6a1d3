"""`fedbench memory`'s rows (reports/memory_table.py): one pair or a table of many, traced here
or in worker processes."""

from __future__ import annotations

import json
import os
import sys

import pytest
from torch import nn
from typer.testing import CliRunner

from fedbench import registry
from fedbench.cli.main import app
from fedbench.core.method import Method, Workload
from fedbench.errors import FedbenchError, UnknownNameError
from fedbench.memory.model import _SHARED_CACHE, peak_training_bytes
from fedbench.models import build_model
from fedbench.reports import memory_table

FMNIST = (1, 28, 28)
runner = CliRunner()


class Plain(Method):
    pass


class Other(Method):
    pass


class AddsLayer(Method):
    """Adds a layer to the model it is given."""

    @classmethod
    def workloads(cls, model, options):
        model.extra = nn.Linear(512, 512)
        return [Workload("full", model)]


@pytest.fixture
def fresh(monkeypatch):
    """Empty memory caches, no trace cache, and the test methods above findable by name."""
    methods = {"plain": Plain, "other": Other, "adds": AddsLayer}
    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda kind, name, validate=None: (
        methods[name] if kind == "methods" and name in methods else real_load(kind, name, validate)))
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", "off")
    memory_table.clear_caches()
    _SHARED_CACHE.clear()


def test_rows_are_cached_for_the_process_and_match_a_real_model(monkeypatch):
    rows = memory_table.memory_rows("cnn", "fashion-mnist", 16, "fedavg", "relative")
    with monkeypatch.context() as patched:
        patched.setattr(memory_table, "_traced_reports", None)  # a second call must not trace
        assert memory_table.memory_rows("cnn", "fashion-mnist", 16, "fedavg", "relative") == rows
    real = peak_training_bytes(build_model("cnn", FMNIST, 10), batch_size=16)  # built on the CPU, initialised
    assert rows[0]["peak_bytes"] == real.peak_bytes and rows[0]["activations_bytes"] == real.activations_bytes


def test_a_method_that_changes_its_model_does_not_change_other_methods_rows(fresh):
    """Each method gets a model of its own: a layer one adds (its weights cost memory) shows in its
    rows only."""
    changed = memory_table.memory_rows("cnn", "fashion-mnist", 16, "adds", "uniform-mb")
    plain = memory_table.memory_rows("cnn", "fashion-mnist", 16, "plain", "uniform-mb")
    expected = peak_training_bytes(build_model("cnn", FMNIST, 10), batch_size=16)
    assert changed[0]["peak_bytes"] > expected.peak_bytes  # the layer costs memory: it would show
    assert plain[0]["peak_bytes"] == expected.peak_bytes


PAIRS = [("cnn", "fashion-mnist", "fedavg"), ("cnn", "fashion-mnist", "heterofl"),
         ("resnet18", "synthetic", "neulite")]


def test_a_table_traced_in_worker_processes_equals_one_traced_here_and_stays_cached(monkeypatch):
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", "off")  # the workers must trace, not read
    memory_table.clear_caches()
    in_workers = memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=2)
    memory_table.clear_caches()
    _SHARED_CACHE.clear()
    here = memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=1)
    assert in_workers == here
    assert [(r["model"], r["method"]) for r in here][:2] == [("cnn", "fedavg"), ("cnn", "heterofl")]
    assert {r["dataset"] for r in here} == {"fashion-mnist", "synthetic"}
    memory_table.clear_caches()
    memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=2)
    monkeypatch.setattr(memory_table, "_traced_reports", None)  # asking again neither traces nor forks
    monkeypatch.setattr(memory_table, "_traced_in_worker", None)
    assert memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=2) == here


def test_a_table_whose_traces_are_stored_builds_no_model_and_starts_no_worker(tmp_path, monkeypatch):
    """The second process to ask for a table reads each pair's rows whole from the trace cache."""
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", str(tmp_path))
    memory_table.clear_caches()
    _SHARED_CACHE.clear()
    first = memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=1)
    memory_table.clear_caches()  # as a new process would start
    _SHARED_CACHE.clear()
    monkeypatch.setattr(memory_table, "_reports_of", None)
    monkeypatch.setattr(memory_table, "_traced_in_worker", None)
    assert memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=2) == first


def test_a_user_error_in_a_worker_comes_back_as_one_line_naming_its_pair(monkeypatch):
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", "off")
    keys = [memory_table.ReportsKey("cnn", FMNIST, 10, 1.0, "fedavg", 16),
            memory_table.ReportsKey("vgg11_bn", (1, 8, 8), 10, 1.0, "fedavg", 16)]  # too small for VGG
    memory_table.clear_caches()
    for jobs in (2, 1):
        with pytest.raises(FedbenchError, match=r"^vgg11_bn / fedavg: model 'vgg11_bn' needs inputs of at least 16×16"):
            memory_table.trace_all(keys, jobs=jobs)


def _dies_on_vgg(key):
    if key.model_name == "vgg11_bn":
        os._exit(3)
    return "ok", memory_table.workload_reports(*key)


def _bug_on_vgg(key):
    if key.model_name == "vgg11_bn":
        raise ZeroDivisionError("a bug in a worker")
    return "ok", memory_table.workload_reports(*key)


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked (and see this patch) on Linux")
def test_a_worker_that_dies_fails_the_table_with_one_line_and_a_bug_keeps_its_type(monkeypatch):
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", "off")
    keys = [memory_table.ReportsKey("cnn", FMNIST, 10, 1.0, "fedavg", 16),
            memory_table.ReportsKey("vgg11_bn", (3, 32, 32), 10, 0.0625, "fedavg", 16)]
    memory_table.clear_caches()
    monkeypatch.setattr(memory_table, "_traced_in_worker", _dies_on_vgg)
    with pytest.raises(FedbenchError, match=r"^a worker process died; [12] of 2 \(model, method\) pairs were not traced; try --jobs 1$"):
        memory_table.trace_all(keys, jobs=2)
    memory_table.clear_caches()
    monkeypatch.setattr(memory_table, "_traced_in_worker", _bug_on_vgg)
    with pytest.raises(ZeroDivisionError, match="a bug in a worker"):
        memory_table.trace_all(keys, jobs=2)


def test_unknown_names_and_bad_jobs_fail_before_any_worker_starts(monkeypatch):
    monkeypatch.setattr(memory_table, "_traced_in_worker", None)
    with pytest.raises(UnknownNameError, match="nope"):
        memory_table.memory_table([("cnn", "fashion-mnist", "nope")], 16, "uniform-mb")
    with pytest.raises(UnknownNameError, match="resnet99"):
        memory_table.memory_table([("resnet99", "fashion-mnist", "fedavg")], 16, "uniform-mb")
    with pytest.raises(FedbenchError, match=r"jobs \(-1\) must be >= 0"):
        memory_table.memory_table(PAIRS, 16, "uniform-mb", jobs=-1)


def test_fedbench_memory_prints_a_table_of_several_methods_and_models():
    result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--batch-size", "16",
                                 "--method", "fedavg,exclusivefl", "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [(r["model"], r["method"], r["submodel"]) for r in rows] == [
        ("cnn", "fedavg", "full"), ("cnn", "exclusivefl", "full")]
    assert rows[0]["peak_bytes"] == rows[1]["peak_bytes"]
    # FedAvg's runs train every device (PR 100 %): its column is the share that fits, marked so.
    assert [r["ignores_memory"] for r in rows] == [True, False]
    table = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--batch-size", "16",
                                "--method", "fedavg,exclusivefl", "--jobs", "1"], env={"COLUMNS": "200"})
    assert "* fedavg ignores memory budgets: its runs train every device (PR 100 %)" in table.output
    result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--method", "all",
                                 "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert all(info.name[:4] in result.output for info in registry.available("methods"))


def test_fedbench_memory_with_an_unknown_name_in_a_list_fails_with_one_line():
    result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--method", "fedavg,nope"])
    assert result.exit_code == 2
    assert "nope" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_table_passes_the_fleet_and_width_options_on_to_every_row():
    options = {"width": 0.5, "clients": 20, "seed": 3, "low_mb": 1, "high_mb": 30}
    table = memory_table.memory_table([("cnn", "fashion-mnist", "fedavg")], 16, "uniform-mb", jobs=1, **options)
    rows = memory_table.memory_rows("cnn", "fashion-mnist", 16, "fedavg", "uniform-mb", **options)
    assert table == [{"model": "cnn", "dataset": "fashion-mnist", "method": "fedavg", **row} for row in rows]
    assert rows != memory_table.memory_rows("cnn", "fashion-mnist", 16, "fedavg", "uniform-mb")
    with pytest.raises(FedbenchError, match=r"model width \(1.5\) must be in \(0, 1\]"):
        memory_table.memory_table([("cnn", "fashion-mnist", "fedavg")], 16, "uniform-mb", width=1.5)


def test_fedbench_memory_traces_a_methods_sub_models_with_the_options_given():
    def rows(*extra: str) -> list[dict]:
        result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--batch-size", "16",
                                     "--method", "neulite", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["rows"]

    curriculum, plain = rows(), rows("--opt", "curriculum_loss=false")
    assert [r["submodel"] for r in curriculum] == [r["submodel"] for r in plain]
    stages = [i for i, r in enumerate(plain) if r["submodel"] != "full"]
    assert all(plain[i]["peak_bytes"] < curriculum[i]["peak_bytes"] for i in stages)  # no projection MLP
    assert curriculum == rows()  # the options are part of the cache key: defaults come back unchanged


@pytest.mark.parametrize("args, message", [
    (["--method", "neulite,fedavg", "--opt", "sigma=2"], "--opt sets options of one method, but 2 are asked for"),
    (["--method", "neulite", "--opt", "sigmaa=2"], "unknown config key 'sigmaa' in options of NeuLite"),
])
def test_fedbench_memory_with_options_it_cannot_apply_fails_with_one_line(args, message):
    result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
