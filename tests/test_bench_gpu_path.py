"""benchmarks/bench_gpu_path.py's bookkeeping for the GPU-only paths, on a CPU machine: a path that
fails only after its rounds have run costs a GPU visit its time."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_path.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_path", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ["transfer", "resident", "graphs", "workers4", "graphs-workers4", "graphs-cl",
                                  "graphs-streams4"])
def test_every_gpu_path_counts_the_images_its_fedavg_rounds_train(path):
    bench = load_bench()
    args = argparse.Namespace(data_dir=None, model="cnn", width=1.0, epochs=2, rounds=4, threads=1, device="cuda")
    config = bench.workload("fedavg", path, args)
    assert config.device == "cuda" and config.cuda_graphs == path.startswith("graphs")
    assert config.channels_last == path.endswith("-cl")
    images = bench.trained_images(config, range(1, 3))  # counted on the CPU, whatever the path
    assert set(images) == {1, 2} and all(n > 0 and n % 2 == 0 for n in images.values())
    assert images == bench.trained_images(bench.workload("fedavg", "resident", args), range(1, 3))


def test_the_graphed_plain_loops_run_and_name_a_bad_count(tmp_path):
    bench = load_bench()
    args = argparse.Namespace(data_dir=None, model="cnn", width=1.0, epochs=1, rounds=3, threads=1, device="cpu",
                              plain_steps=4)
    row = bench.plain_row("plain-graphs2-cl", args)  # steps called again on a CPU, the same bookkeeping
    assert row["path"] == "plain-graphs2-cl" and row["steps"] == 4 and row["images_per_s"] > 0
    with pytest.raises(ValueError, match="plain-graphsK takes a number of models K >= 1"):
        bench.plain_row("plain-graphs0", args)
