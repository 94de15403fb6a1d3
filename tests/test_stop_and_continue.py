"""An untracked run that stops at a time limit and continues from its checkpoint file equals the
uninterrupted run: how a long run spans several sittings of a borrowed machine (docs/gpu.md)."""

from __future__ import annotations

import pytest

from fedbench import engine
from fedbench.errors import CheckpointError
from fedbench.testing import kit_config

TINY = {"rounds": 4, "eval_every": 1}


def _curve(result: engine.RunResult) -> list[tuple[int, float, float]]:
    return [(r.round_idx, r.metrics["train/loss"], r.metrics["eval/accuracy"]) for r in result.rounds]


@pytest.mark.parametrize("method", ["fedavg", "depthfl"])
def test_a_run_stopped_in_time_continues_from_its_file_to_the_uninterrupted_result(tmp_path, method):
    config = kit_config(method, **TINY)
    whole = engine.run(config)
    path = tmp_path / "run.ckpt"
    first = engine.run(config, checkpoint_file=path, stop_after_s=0.0)  # stops after round 1
    assert first.stopped and len(first.rounds) == 1 and path.is_file()
    second = engine.run(config, checkpoint_file=path, stop_after_s=0.0)  # round 2
    assert second.stopped and len(second.rounds) == 2
    rest = engine.run(config, checkpoint_file=path)
    assert not rest.stopped
    assert _curve(rest) == _curve(whole)
    again = engine.run(config, checkpoint_file=path)  # finished: nothing left to train
    assert _curve(again) == _curve(whole)


def test_a_checkpoint_file_of_another_configuration_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    engine.run(kit_config("fedavg", **TINY), checkpoint_file=path, stop_after_s=0.0)
    with pytest.raises(CheckpointError):
        engine.run(kit_config("fedavg", **TINY, seed=7), checkpoint_file=path)


def test_a_checkpoint_file_is_for_untracked_runs_only(tmp_path):
    class Tracked:  # any tracker but the null one
        run_id = None

    with pytest.raises(ValueError, match="untracked runs"):
        engine.run(kit_config("fedavg", **TINY), tracker=Tracked(), checkpoint_file=tmp_path / "x.ckpt")
