"""benchmarks/cuda_checks.sh rehearsed on the CPU (``DEVICE=cpu``): every step that runs on a GPU
machine runs here at toy size, so a short GPU visit is not spent finding a broken command, and a
long run's checkpoint makes the trip back in parts and out again, while it fits what may come back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedbench import registry
from fedbench.datasets.idx import write_idx

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_checks.sh"


def toy_fashion_mnist(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", 600), ("t10k", 100)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def rehearse(out: Path, data: Path, steps: str, expect_rc: int = 0, **env: str) -> str:
    settings = {**os.environ, "DEVICE": "cpu", "STEPS": steps, "PYTHON": sys.executable, "SMOKE_SECONDS": "300", **env}
    done = subprocess.run(["bash", str(SCRIPT), str(out), str(data)], env=settings, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == expect_rc, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_every_gpu_step_runs_on_the_cpu_and_a_stopped_run_continues_from_its_returned_parts(tmp_path):
    data = toy_fashion_mnist(tmp_path / "fashion-mnist")
    out, first_ckpt = tmp_path / "out", tmp_path / "ckpt-first-visit"
    long_run = {"LONG_METHODS": "fedavg", "LONG_ROUNDS": "8"}
    printed = rehearse(out, data, "1 2 2g 4 5 6", CKPT_DIR=str(first_ckpt), LONG_SECONDS="1", MAX_FILES="100",
                       **long_run)
    assert "1, 1b, 1c compare the memory model with CUDA's allocator: skipped on the CPU" in printed
    assert "2g. every method graphed vs eager: skipped on the CPU" in printed

    assert "fedbench code fedbench-under-test" in (out / "env.txt").read_text()  # which code made the figures
    smoke = lines(out / "smoke.jsonl")  # step 2: every registered method, two rounds
    assert sorted(r["method"] for r in smoke) == sorted(p.name for p in registry.available("methods"))
    assert all("error" not in r and r["rounds_reached"] == 2 for r in smoke)
    paths = {r["path"]: r for r in json.loads((out / "gpu_path.json").read_text())}  # step 4
    assert set(paths) == {"plain", "plain-graphs2", "transfer", "resident", "resident-cl", "workers2", "streams2"}
    assert all(paths[p]["images_per_s"] > 0 if p.startswith("plain") else paths[p]["steady_round_s"] > 0 for p in paths)
    assert (out / "profile_fedavg_resident.txt").is_file() and (out / "profile_fedavg_transfer.txt").is_file()
    ratio = {r["method"]: r for r in json.loads((out / "depthfl_ratio.json").read_text())}  # step 5
    assert set(ratio) == {"fedavg", "depthfl"}
    steps_5 = (out / "depthfl_steps.md").read_text()  # step 5's one-step and forward tables (a GPU: both layouts)
    assert "cpu, channels-last" in steps_5 and "| depthfl-fused |" in steps_5 and "| depthfl |" in steps_5
    assert "aten::convolution" in (out / "profile_depthfl_forward-cl.txt").read_text()

    stopped = lines(out / "long.jsonl")  # step 6: stopped in time, its checkpoint sent back in parts
    assert len(stopped) == 1 and stopped[0]["stopped"] and stopped[0]["rounds_reached"] < 8
    checkpoint = next(first_ckpt.glob("*.ckpt"))
    parts = sorted(out.glob("fedavg-*.ckpt.part-*"))
    assert parts and b"".join(p.read_bytes() for p in parts) == checkpoint.read_bytes()
    assert parts[0].name.endswith(f"part-00-of-{len(parts):02d}")

    # The next visit: only the parts travel out; the step puts the checkpoint together and continues.
    next_ckpt = tmp_path / "ckpt-next-visit"
    next_ckpt.mkdir()
    for part in parts:
        shutil.copy(part, next_ckpt / part.name)
    # ... in trainer threads and channels-last this time: neither is part of the run key
    rehearse(tmp_path / "out-next", data, "6", CKPT_DIR=str(next_ckpt), LONG_SECONDS="120", LONG_EXECUTOR="streams",
             LONG_CHANNELS_LAST="true", **long_run)
    assert not list(next_ckpt.glob("*.part-*")) and len(list(next_ckpt.glob("*.ckpt"))) == 1
    (continued,) = lines(tmp_path / "out-next" / "long.jsonl")
    assert continued["continued_from_round"] == stopped[0]["rounds_reached"] > 0
    assert continued["rounds_reached"] == 8 and not continued["stopped"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_a_checkpoint_larger_than_one_calls_return_travels_over_several_calls_each_way(tmp_path):
    """NeuLite's ResNet18 checkpoint (115 MiB) is more than one call brings back (64 MiB) or takes
    out: the parts that do not fit wait in the outbox for STEPS=6b, and step 6 runs only once every
    part has been carried back in, so a run never starts over from a partial checkpoint."""
    data = toy_fashion_mnist(tmp_path / "fashion-mnist")
    ckpt, long_run = tmp_path / "ckpt", {"LONG_METHODS": "fedavg", "LONG_ROUNDS": "8", "PART_SIZE": "1M"}
    printed = rehearse(tmp_path / "out1", data, "6", CKPT_DIR=str(ckpt), LONG_SECONDS="1",
                       TRAVEL_BYTES=str(2 * 2**20), **long_run)
    checkpoint = next(ckpt.glob("*.ckpt"))
    total = -(-checkpoint.stat().st_size // 2**20)
    assert total >= 3, "the toy checkpoint must need more parts than one call brings back"
    first = sorted((tmp_path / "out1").glob("*.part-*"))
    assert len(first) == 2 and f"{total - 2} checkpoint part(s) wait in {ckpt}/outbox" in printed
    rest = tmp_path / "out2"
    printed = rehearse(rest, data, "6b", CKPT_DIR=str(ckpt))
    assert "every checkpoint part is in" in printed
    parts = first + sorted(rest.glob("*.part-*"))
    assert [p.name.rsplit(".part-", 1)[1] for p in parts] == [f"{k:02d}-of-{total:02d}" for k in range(total)]
    assert b"".join(p.read_bytes() for p in parts) == checkpoint.read_bytes()

    # Out again over two calls: with a part still missing, step 6 says which and runs nothing.
    next_ckpt = tmp_path / "ckpt-next"
    next_ckpt.mkdir()
    for part in parts[:-1]:
        shutil.copy(part, next_ckpt / part.name)
    printed = rehearse(tmp_path / "out3", data, "6", expect_rc=1, CKPT_DIR=str(next_ckpt), **long_run)
    assert f"is missing {parts[-1].name}: carry them into {next_ckpt}; step 6 not run" in printed
    assert not (tmp_path / "out3" / "long.jsonl").exists() and not list(next_ckpt.glob("*.ckpt"))
    shutil.copy(parts[-1], next_ckpt / parts[-1].name)
    rehearse(tmp_path / "out4", data, "6", CKPT_DIR=str(next_ckpt), LONG_SECONDS="120", **long_run)
    (continued,) = lines(tmp_path / "out4" / "long.jsonl")
    assert continued["continued_from_round"] > 0 and continued["rounds_reached"] == 8


def test_graphed_and_eager_smoke_runs_are_compared_method_by_method(tmp_path):
    """Step 2g's table: a method whose two runs differ beyond the tolerance, failed or is missing is
    flagged; runs that agree are not."""
    def write(path, runs):
        path.write_text("".join(json.dumps(r) + "\n" for r in runs))

    def run(method, accuracy, loss):
        return {"method": method, "final_accuracy": accuracy, "last_eval": {"train/loss": loss}}

    write(tmp_path / "eager.jsonl", [run("fedavg", 0.5, 2.0), run("neulite", 0.4, 1.0), run("oort", 0.3, 1.5)])
    write(tmp_path / "graphs.jsonl", [run("fedavg", 0.505, 2.001), run("neulite", 0.4, 1.2),
                                      {"method": "oort", "error": "RuntimeError: capture failed"},
                                      run("tifl", 0.2, 1.0)])
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "compare_runs.py"), str(tmp_path / "eager.jsonl"),
                           str(tmp_path / "graphs.jsonl"), "--names", "eager,graphs"],
                          capture_output=True, text=True, check=True)
    rows = {line.split(" | ")[0].strip("| "): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert "same up to the tolerance" in rows["fedavg"]
    assert "differ by more than 0.01" in rows["neulite"]
    assert "graphs: RuntimeError: capture failed" in rows["oort"] and "eager: missing" in rows["tifl"]
    assert done.stdout.rstrip().endswith("3 of 4 methods flagged")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_checks_install_the_checkout_for_a_python_that_imports_it_only_from_the_checkouts_root(tmp_path):
    """On a bare GPU machine the script runs from the checkout's root, where ``python -c 'import
    fedbench'`` finds the folder itself; the benchmark scripts, run from benchmarks/, do not. So
    a Python without fedbench installed must be caught from outside the checkout and installed."""
    bare = tmp_path / "python"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # no site-packages: fedbench not installed
    bare.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=SCRIPT.parents[1], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DEVICE": "cpu", "STEPS": "", "PYTHON": str(bare)})
    assert "== installing" in done.stdout, done.stdout + done.stderr
