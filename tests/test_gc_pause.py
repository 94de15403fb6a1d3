"""Meta traces run with Python's cyclic garbage collector held off
(fedbench/tracing/_speedups/collector.py), and never import torch's compiler while it is."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from fedbench.tracing import cache as trace_cache
from fedbench.tracing._speedups import ENV
from fedbench.tracing._speedups.collector import collector_paused


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_restored_after_even_on_an_error(collector_on):
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner one leaves it off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), collector_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_caller_stays_off(collector_on):
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_every_trace_runs_with_the_collector_paused(collector_on, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", str(tmp_path))
    seen = []
    answer = trace_cache.cached("probe", ("gc", 1), (), lambda: seen.append(gc.isenabled()) or 7)
    assert answer == 7 and seen == [False] and gc.isenabled()


def test_switched_off_the_collector_runs_as_usual(collector_on, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setenv("FEDBENCH_TRACE_CACHE", str(tmp_path))
    with collector_paused():
        assert gc.isenabled()
    seen = []
    trace_cache.cached("probe", ("gc", 2), (), lambda: seen.append(gc.isenabled()) or 7)
    assert seen == [True]


def test_torch_s_compiler_is_loaded_before_a_trace_pauses_the_collector():
    """Its first import, from inside a guarded kernel, leaves cycles that would keep traced
    tensors alive (and count them) while the collector is paused."""
    code = ("import gc, sys\n"
            "from fedbench.tracing import cache as trace_cache\n"
            "seen = []\n"
            "trace_cache.cached('probe', ('c', 1), (), lambda: seen.append(\n"
            "    (gc.isenabled(), 'torch._dynamo' in sys.modules)) or 1)\n"
            "print(seen)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "FEDBENCH_TRACE_CACHE": "off"})
    assert done.stdout.strip() == "[(False, True)]"
