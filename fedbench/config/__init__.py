"""The run config: everything that defines a run, as one frozen dataclass tree.

The tree is built from defaults, then the preset's training values, then a YAML file, then
command-line overrides (:func:`make_config`), and validated on construction so that a bad value
fails before round 1 with a message that names the field, the value and the allowed range.

- :mod:`.sections`: the data, model, training, fleet and tracking sections and their limits;
- :mod:`.run`: :class:`RunConfig`, the whole tree, and its run key;
- :mod:`.presets`: the ``paper`` and ``official`` training presets;
- :mod:`.coercion`: building the tree from nested mappings, type-checking each value;
- :mod:`.yaml_io`, :mod:`.folders`: reading and writing YAML; checking folders a run writes to.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.config.coercion import build_dataclass, deep_merge, dotted_to_nested
from fedbench.config.folders import check_writable
from fedbench.config.presets import official_train, preset_layer, with_preset
from fedbench.config.run import (
    DEVICE_PATTERN,
    EXECUTION_FIELDS,
    EXECUTORS,
    PRESETS,
    WEIGHTINGS,
    FrozenOptions,
    RunConfig,
)
from fedbench.config.sections import (
    DIRICHLET_VARIANTS,
    FLOAT32_MAX,
    LATER_TRAIN_FIELDS,
    LR_SCHEDULES,
    MAX_CLIENTS,
    MAX_INFO_PLANE,
    MAX_ROUNDS,
    MIN_TRAIN_BATCH,
    OPTIMIZERS,
    DataConfig,
    FleetConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    milestone_round,
    train_defaults,
)
from fedbench.config.yaml_io import load_yaml, parse_option_pairs, to_yaml

__all__ = [
    "DEVICE_PATTERN", "DIRICHLET_VARIANTS", "EXECUTION_FIELDS", "EXECUTORS", "FLOAT32_MAX", "LATER_TRAIN_FIELDS",
    "LR_SCHEDULES", "MAX_CLIENTS", "MAX_INFO_PLANE", "MAX_ROUNDS", "MIN_TRAIN_BATCH", "OPTIMIZERS", "PRESETS",
    "WEIGHTINGS", "DataConfig", "FleetConfig", "FrozenOptions", "ModelConfig", "RunConfig", "TrackingConfig",
    "TrainConfig", "build_dataclass", "check_writable", "deep_merge", "dotted_to_nested", "load_yaml",
    "make_config", "milestone_round", "official_train", "parse_option_pairs", "preset_layer", "to_yaml",
    "train_defaults", "with_preset",
]


def make_config(yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults <- the preset's training values <- YAML file <- overrides (nested mapping), validated."""
    values: dict[str, Any] = load_yaml(yaml_path) if yaml_path is not None else {}
    return build_dataclass(RunConfig, with_preset(deep_merge(values, overrides or {})))
