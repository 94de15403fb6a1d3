"""Ctrl-C and SIGTERM wait for a round's write to the store and its checkpoint, then stop the run."""

from __future__ import annotations

import dataclasses
import signal
import threading

import pytest

from fedbench import engine
from fedbench.core import checkpoint
from fedbench.tracking.interrupts import deferred_interrupts
from fedbench.tracking.tracker import MlflowTracker


def test_a_signal_inside_the_block_is_delivered_when_the_block_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            finished.append("the rest of the write")
    assert finished == ["the rest of the write"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_is_delivered_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            reached.append("after the second")
    assert reached == []


def test_sigterm_goes_to_the_handler_that_was_in_place_and_nested_blocks_hold_until_the_outermost_ends():
    delivered = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: delivered.append(signum))
    try:
        with deferred_interrupts():
            with deferred_interrupts():
                signal.raise_signal(signal.SIGTERM)
            assert delivered == []
        assert delivered == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_inside_nested_blocks_a_second_signal_is_still_delivered_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            with deferred_interrupts():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                reached.append("after the second")
    assert reached == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_the_block_changes_nothing():
    seen = []

    def body() -> None:
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_ctrl_c_while_a_round_is_written_lets_the_write_finish_and_the_run_is_marked_killed(tmp_path, tiny_config):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(store, experiment="interrupted")
    tracker.start(tiny_config, {})
    write = tracker._client.log_batch

    def interrupted_write(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # arrives mid-write: without deferral it would end the write here
        return write(*args, **kwargs)

    tracker._client.log_batch = interrupted_write
    with pytest.raises(KeyboardInterrupt):
        tracker.log_round(0, {"eval/accuracy": 0.5})
    tracker._client.log_batch = write
    tracker.finish("KILLED", "interrupted by the user")
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "eval/accuracy")] == [0.5]


class _InterruptWhileLogging:
    """A tracker whose log_round receives Ctrl-C in round 2."""

    run_id = "interrupted-run"

    def __init__(self) -> None:
        self.logged, self.status = [], None

    def start(self, config, partition) -> None:
        pass

    def log_round(self, round_idx, metrics) -> None:
        if round_idx == 1:
            signal.raise_signal(signal.SIGINT)
        self.logged.append(round_idx)

    def resume(self, run_id, rows) -> None:
        pass

    def finish(self, status, error=None) -> None:
        self.status = status


def test_a_round_being_logged_when_ctrl_c_arrives_is_also_checkpointed(tmp_path, monkeypatch, tiny_config):
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path))
    config = dataclasses.replace(tiny_config, rounds=4)
    tracker = _InterruptWhileLogging()
    with pytest.raises(KeyboardInterrupt):
        engine.run(config, tracker=tracker)
    assert tracker.logged == [0, 1] and tracker.status == "KILLED"
    saved = checkpoint.load(checkpoint.checkpoint_path(tracker.run_id), config)
    assert saved.round_idx == 1  # a resume goes on with round 3, not round 2 again
