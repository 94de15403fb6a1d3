"""``fedbench checkpoints list|prune``: they refuse what ``fedbench run --resume`` refuses, and
``list --json`` prints one JSON document."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from typer.testing import CliRunner

from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.core import checkpoint
from fedbench.errors import CheckpointError

runner = CliRunner()


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(folder))
    return folder


def _config(tracking_uri=None):
    return make_config(overrides={
        "method": "fedavg", "data": {"dataset": "synthetic", "num_clients": 6, "partition": "iid"},
        "train": {"local_epochs": 1}, "model": {"width": 0.25}, "clients_per_round": 3, "rounds": 4,
        "tracking": {"experiment": "checkpoints", **({"uri": tracking_uri} if tracking_uri else {})},
    })


def _save(path, config, round_idx=1, mtime=None):
    """A checkpoint of ``round_idx`` with a ~160 KB payload, as the engine writes one."""
    state = {"w": torch.arange(40_000, dtype=torch.float32)}
    checkpoint.save(path, checkpoint.Checkpoint(config.run_key, round_idx, state, {}, [], config.flat_params()))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _flip_middle_of_payload(path, count=100):
    """Flip ``count`` bytes in the middle of the payload: the length stays, the checksum fails."""
    _, offset = checkpoint.read_header(path)
    data = bytearray(path.read_bytes())
    middle = offset + (len(data) - offset) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _listed(*args):
    result = runner.invoke(app, ["checkpoints", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # one document, not one object per checkpoint


def test_a_bit_flipped_checkpoint_that_resume_refuses_is_listed_unreadable_and_pruned(tmp_path, tracking_uri,
                                                                                        checkpoints):
    from fedbench.tracking.tracker import MlflowTracker

    config = _config(tracking_uri)
    tracker = MlflowTracker(tracking_uri, "checkpoints")
    tracker.start(config, {})  # a RUNNING run, as if killed after round 2
    flipped = _save(checkpoint.checkpoint_path(tracker.run_id), config)
    _flip_middle_of_payload(flipped)
    os.utime(flipped, (1_700_000_000, 1_700_000_000))
    intact = _save(checkpoints / "intact.ckpt", config, mtime=1_700_000_100)

    resumed = runner.invoke(app, ["run", "--resume", tracker.run_id, "--tracking-uri", tracking_uri])
    assert resumed.exit_code == 2, resumed.output
    refusal = f"checkpoint {flipped} is corrupt (its payload fails the checksum); delete it and rerun"
    assert refusal in " ".join(resumed.output.split())

    listing = _listed()["checkpoints"]
    assert [item["run_id"] for item in listing] == ["intact", tracker.run_id]  # newest first
    assert listing[0]["unreadable"] is None and listing[0]["round"] == 2 and listing[0]["method"] == "fedavg"
    assert listing[1]["unreadable"] == refusal and listing[1]["round"] is None
    assert listing[1]["bytes"] == flipped.stat().st_size and listing[1]["path"] == str(flipped)

    table = runner.invoke(app, ["checkpoints", "list"])
    assert table.exit_code == 0, table.output
    flat = " ".join(table.output.split())
    assert "unreadable" in flat and f"unreadable: {refusal}" in flat
    assert "1 unreadable checkpoint(s): fedbench checkpoints prune --unreadable removes them" in flat

    dry = runner.invoke(app, ["checkpoints", "prune", "--unreadable", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove {flipped.name} (unreadable)" in dry.output and "1 checkpoint(s) would be removed" in dry.output
    assert flipped.is_file()

    pruned = runner.invoke(app, ["checkpoints", "prune", "--unreadable"])
    assert pruned.exit_code == 0, pruned.output
    assert f"removed {flipped.name} (unreadable)" in pruned.output and "1 checkpoint(s) removed" in pruned.output
    assert sorted(p.name for p in checkpoints.iterdir()) == [intact.name]
    assert checkpoint.load(intact, config).round_idx == 1


def _foreign(path):
    path.write_bytes(b"PK\x03\x04 an old torch.save zip")


def _older_format(path):
    path.write_bytes(path.read_bytes().replace(b"fedbench-checkpoint 2\n", b"fedbench-checkpoint 1\n", 1))


def _damaged_header(path):
    data = path.read_bytes()
    first_end = data.index(b"\n") + 1
    path.write_bytes(data[:first_end] + b"{not json" + data[data.index(b"\n", first_end):])


def _no_round(path):
    header, offset = checkpoint.read_header(path)
    del header["round_idx"]
    path.write_bytes(b"fedbench-checkpoint 2\n" + json.dumps(header).encode() + b"\n" + path.read_bytes()[offset:])


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-1000])


def _bit_flipped(path):
    _flip_middle_of_payload(path)


@pytest.mark.parametrize("damage, reason", [
    (_foreign, "is not a fedbench checkpoint"), (_older_format, "has format 1"),
    (_damaged_header, "has a damaged header"), (_no_round, "has a damaged header (no finished round)"),
    (_truncated, "truncated or padded"), (_bit_flipped, "fails the checksum"),
])
def test_list_gives_for_each_damaged_file_the_line_load_refuses_it_with(checkpoints, damage, reason):
    config = _config()
    path = _save(checkpoints / "damaged.ckpt", config)
    damage(path)
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load(path, config)
    with pytest.raises(CheckpointError) as verified:
        checkpoint.verify(path)
    assert str(verified.value) == str(refused.value) and reason in str(refused.value)
    [item] = _listed()["checkpoints"]
    assert item["unreadable"] == str(refused.value) and item["round"] is None and item["method"] == "?"
    pruned = runner.invoke(app, ["checkpoints", "prune", "--unreadable"])
    assert pruned.exit_code == 0 and "removed damaged.ckpt (unreadable)" in pruned.output, pruned.output
    assert not path.exists()


def test_a_checkpoint_of_another_config_is_no_damage_to_list_or_prune(checkpoints):
    """The run key needs the run's config, which only --resume has: listing cannot refuse it."""
    config = _config()
    path = _save(checkpoints / "other.ckpt", dataclasses.replace(config, seed=7))
    assert checkpoint.verify(path)["round_idx"] == 1
    assert _listed()["checkpoints"][0]["unreadable"] is None
    pruned = runner.invoke(app, ["checkpoints", "prune", "--unreadable"])
    assert pruned.exit_code == 0 and "0 checkpoint(s) removed" in pruned.output, pruned.output
    assert path.is_file()


@pytest.mark.parametrize("made", [False, True])
def test_list_json_with_no_checkpoints_is_an_empty_list(checkpoints, made):
    if made:
        checkpoints.mkdir()
        (checkpoints / "run.ckpt.tmp").write_bytes(b"half written")  # not a checkpoint yet
    assert _listed() == {"checkpoints": []}


def test_list_json_is_one_document_with_every_checkpoint_newest_first(checkpoints):
    config = _config()
    for i, name in enumerate(("old", "middle", "new")):
        _save(checkpoints / f"{name}.ckpt", config, round_idx=i, mtime=1_700_000_000 + 100 * i)
    listed = _listed()
    assert list(listed) == ["checkpoints"]
    assert [(item["run_id"], item["round"]) for item in listed["checkpoints"]] == [("new", 3), ("middle", 2), ("old", 1)]
    for item in listed["checkpoints"]:
        assert set(item) == {"run_id", "path", "method", "round", "bytes", "modified", "unreadable"}
        assert item["path"] == str(checkpoints / f"{item['run_id']}.ckpt") and item["unreadable"] is None
        assert item["bytes"] == (checkpoints / f"{item['run_id']}.ckpt").stat().st_size


def test_list_json_help_names_the_document():
    result = runner.invoke(app, ["checkpoints", "list", "--help"])
    assert result.exit_code == 0 and '{"checkpoints":' in result.output, result.output
