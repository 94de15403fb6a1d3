"""Every grid and run config shipped under configs/ is valid (a typo there would fail a user's job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbench import registry, sweep
from fedbench.simulation.fleet_paper import PAPER_FIT_TABLE

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_grid_expands_and_names_only_registered_plugins(path):
    grid = sweep.load_grid(path)
    assert grid.cells
    for cell in grid.cells:
        config = cell.config
        assert config.method in {i.name for i in registry.available("methods")}
        assert config.data.dataset in {i.name for i in registry.available("datasets")}
        assert config.model.name in {i.name for i in registry.available("models")}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "paper"], ids=lambda p: p.name)
def test_paper_grids_use_only_the_models_the_paper_fleet_was_fitted_to(path):
    """The `paper` fleet's budgets hold NeuLite at 100 % on the models it was fitted to, and there
    only: on `squeezenet_nopool` (the variant the fit rejected) ExclusiveFL, TiFL and Oort have no
    device and NeuLite's stages fit 11–32 % of the fleet."""
    fitted = {model for _, model, *_ in PAPER_FIT_TABLE}
    for cell in sweep.load_grid(path).cells:
        if cell.config.fleet.profile == "paper":
            assert cell.config.model.name in fitted, f"{cell.label}: the paper fleet was fitted to {sorted(fitted)}"


@pytest.mark.parametrize(
    ("grid_name", "clients"),
    [("fig5a.yaml", 120), ("fig5a.yaml", 240), ("fig5a.yaml", 500), ("fig5b.yaml", 100)],
)
def test_every_neulite_stage_of_the_fig5_grids_fits_every_device(grid_name, clients):
    """What the Fig. 5 grids say of their fleets: NeuLite's stages fit the whole fleet (FEMNIST
    ResNet18 under `paper` at each size; ViT under `relative`), the full model only part of it."""
    import json

    from typer.testing import CliRunner

    from fedbench.cli.main import app

    path = next(p for p in CONFIGS if p.name == grid_name)
    cell = next(c for c in sweep.load_grid(path).cells
                if c.config.method == "neulite" and c.config.data.num_clients == clients)
    config = cell.config
    result = CliRunner().invoke(app, [
        "memory", "--model", config.model.name, "--dataset", config.data.dataset, "--method", "neulite",
        "--fleet", config.fleet.profile, "--clients", str(clients), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["submodel"]: row["pr"] for row in json.loads(result.stdout)["rows"]}
    stages = [name for name in rows if name.startswith("stage")]
    assert len(stages) == (3 if config.model.name == "vit" else 4)
    assert all(rows[name] == 1.0 for name in stages), rows
    assert rows["full"] < 0.5, rows
