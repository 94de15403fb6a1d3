"""Meta traces run with Python's cyclic garbage collector held off (fedbench/gc_pause.py)."""

from __future__ import annotations

import gc

import pytest

from fedbench import trace_cache
from fedbench.gc_pause import collector_paused


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
