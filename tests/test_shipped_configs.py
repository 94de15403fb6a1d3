"""Every grid and run config shipped under configs/ is valid (a typo there would fail a user's job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbench import registry, sweep

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
