"""GPU cells of a sweep on Ray: what each cell's task asks for, the device it computes on there, and
the one-line errors; with a fake ``ray`` (Ray and GPUs are not needed; no cuda cell runs here)."""

from __future__ import annotations

import dataclasses
import textwrap
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from fedbench import sweep
from fedbench.cli.main import app
from fedbench.errors import ConfigError

GPU_GRID = """
experiment: gpu-grid
base:
  method: fedavg
  rounds: 1
  clients_per_round: 2
  data: {dataset: synthetic, num_clients: 4, partition: iid}
  model: {width: 0.25}
axes:
  device: [cpu, cuda]
  seed: [1, 2]
"""


class Ref:
    """An object ref: hashable, holding the task's result."""

    def __init__(self, value) -> None:
        self.value = value


class FakeRay:
    """The parts of ``ray`` a sweep uses: ``remote(fn).options(**kw).remote(*args)`` records ``kw``
    and runs ``fn`` at once; ``wait`` hands back the first ref, ``get`` its value."""

    def __init__(self, gpus: float = 0) -> None:
        self.resources = {"CPU": 16.0} | ({"GPU": float(gpus)} if gpus else {})
        self.asked: list[dict] = []
        self.shut_down = False

    def remote(self, fn):
        def options(**kw):
            def remote(*args, **kwargs):
                self.asked.append(kw)
                return Ref(fn(*args, **kwargs))

            return SimpleNamespace(remote=remote)

        return SimpleNamespace(options=options)

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def cluster_resources(self):
        return dict(self.resources)

    def shutdown(self):
        self.shut_down = True


@pytest.fixture
def fake_ray(monkeypatch):
    """Install a FakeRay (set its GPUs with ``fake_ray.resources``) and record what each cell's task
    would run: (device, run key, config type); cells are not trained."""
    fake = FakeRay(gpus=1)
    fake.ran = []
    monkeypatch.setattr(sweep.runner, "require_ray", lambda: fake)
    monkeypatch.setattr(sweep.runner, "connect_ray", lambda num_cpus: True)  # "started here": shut down after

    def run_cell(config, resume_run_id=None):
        fake.ran.append((config.device, config.run_key))
        return sweep.CellOutcome(-1, "FINISHED", final_accuracy=0.5)

    monkeypatch.setattr(sweep.runner, "run_cell", run_cell)
    return fake


def _grid(tmp_path, extra: str = "") -> sweep.Grid:
    """The GPU grid (``extra``: more top-level keys). Sweeps below run it with ``rerun=True``: the
    tracking store is not read, and nothing is written to it as ``run_cell`` is faked."""
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent(GPU_GRID) + extra)
    return sweep.load_grid(path)


# ------------------------------------------------------------------- pure parts
def test_a_cuda_cell_asks_for_gpus_and_a_cpu_cell_for_none(tiny_config):
    cpu = dataclasses.replace(tiny_config, threads=3)
    assert sweep.cell_resources(cpu) == {"num_cpus": 3, "num_gpus": 0}
    assert sweep.cell_resources(cpu, 0.25) == {"num_cpus": 3, "num_gpus": 0}
    for device in ("cuda", "cuda:1"):
        gpu = dataclasses.replace(cpu, device=device)
        assert sweep.cell_resources(gpu) == {"num_cpus": 3, "num_gpus": 1}
        assert sweep.cell_resources(gpu, 0.25) == {"num_cpus": 3, "num_gpus": 0.25}
        assert sweep.cell_resources(gpu, 2.0) == {"num_cpus": 3, "num_gpus": 2}


def test_a_cell_pinned_to_one_gpu_is_refused_on_ray(tmp_path, fake_ray):
    """Ray shows a task only the GPU it assigned, so ``cuda:N`` cannot be honoured there."""
    path = tmp_path / "pinned.yaml"
    path.write_text(textwrap.dedent(GPU_GRID).replace("[cpu, cuda]", '[cpu, "cuda:1"]'))
    with pytest.raises(ConfigError, match=r"^cell 2 asks for device cuda:1, but on Ray each cell computes on the "
                                          r"GPU Ray assigns it; write device: cuda in the grid$"):
        sweep.run_grid(sweep.load_grid(path), executor="ray", rerun=True)
    assert fake_ray.asked == []


# ------------------------------------------------------------- through the sweep
@pytest.mark.parametrize(("in_grid", "option", "asked"), [(None, None, 1.0), (0.5, None, 0.5), (0.5, 0.25, 0.25)])
def test_each_cuda_cell_asks_ray_for_its_gpus_and_runs_on_the_assigned_one(
    tmp_path, tracking_uri, fake_ray, in_grid, option, asked
):
    grid = _grid(tmp_path, f"gpus_per_cell: {in_grid}\n" if in_grid else "")
    outcomes = sweep.run_grid(grid, tracking_uri=tracking_uri, executor="ray", gpus_per_cell=option, rerun=True)
    threads = grid.cells[0].config.threads
    gpu = [c.config.device == "cuda" for c in grid.cells]
    assert gpu == [False, False, True, True]
    assert fake_ray.asked == [{"num_cpus": threads, "num_gpus": asked if g else 0, "max_retries": 0} for g in gpu]
    assert fake_ray.ran == [(c.config.device, c.config.run_key) for c in grid.cells]
    assert [(o.index, o.status) for o in outcomes] == [(i, "FINISHED") for i in range(4)]
    assert fake_ray.shut_down


@pytest.mark.parametrize(
    ("gpus", "option", "message"),
    [
        (0, None, "the Ray cluster has 0 GPUs but each cuda cell asks for 1; add GPU nodes (`ray start "
                  "--address=HEAD_IP:6379` on each GPU machine), or run the cells on device cpu"),
        (1, 2.0, "the Ray cluster has 1 GPUs but each cuda cell asks for 2; add GPU nodes (`ray start "
                 "--address=HEAD_IP:6379` on each GPU machine), or lower --gpus-per-cell to at most 1"),
    ],
)
def test_too_few_gpus_in_the_cluster_is_one_line_before_anything_is_submitted(
    tmp_path, tracking_uri, fake_ray, gpus, option, message
):
    fake_ray.resources = {"CPU": 16.0} | ({"GPU": float(gpus)} if gpus else {})
    with pytest.raises(ConfigError) as info:
        sweep.run_grid(_grid(tmp_path), tracking_uri=tracking_uri, executor="ray", gpus_per_cell=option, rerun=True)
    assert str(info.value) == message
    assert fake_ray.asked == [] and fake_ray.shut_down


def test_a_cpu_grid_needs_no_gpu_in_the_cluster(tmp_path, tracking_uri, fake_ray):
    fake_ray.resources = {"CPU": 16.0}
    grid = _grid(tmp_path)
    grid = sweep.Grid(grid.experiment, grid.cells[:1])
    (outcome,) = sweep.run_grid(grid, tracking_uri=tracking_uri, executor="ray", gpus_per_cell=0.25, rerun=True)
    assert outcome.status == "FINISHED" and fake_ray.asked[0]["num_gpus"] == 0


# ------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--gpus-per-cell", "0.25"], "error: --gpus-per-cell (0.25) places cells on a Ray cluster's GPUs and needs "
                                      "--executor ray; the serial executor"),
        (["--gpus-per-cell", "1", "--max-parallel", "2"], "error: --gpus-per-cell (1) places cells on a Ray"),
        (["--gpus-per-cell", "1.5", "--executor", "ray"], "error: --gpus-per-cell (1.5) must be a share of one GPU"),
    ],
)
def test_a_misplaced_or_bad_gpus_per_cell_option_is_one_line(tmp_path, args, start):
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent(GPU_GRID))
    result = CliRunner().invoke(app, ["sweep", str(path), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and result.output.startswith(start), result.output
    assert result.output.strip().count("\n") == 0


def test_too_few_gpus_is_one_line_from_the_cli(tmp_path, tracking_uri, fake_ray, monkeypatch):
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    fake_ray.resources = {"CPU": 16.0}
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent(GPU_GRID))
    result = CliRunner().invoke(app, ["sweep", str(path), "--executor", "ray", "--rerun", "--tracking-uri", tracking_uri],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: the Ray cluster has 0 GPUs but each cuda cell asks for 1; add GPU nodes")
    assert result.output.strip().count("\n") == 0 and fake_ray.asked == []
