"""Training presets: the paper's common setting, or each method's own code's (docs/protocol.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fedbench import registry
from fedbench.config.coercion import deep_merge
from fedbench.config.run import PRESETS, RunConfig
from fedbench.config.sections import train_defaults
from fedbench.errors import FedbenchError

log = logging.getLogger(__name__)


# A training value that decides what others mean: naming it explicitly drops the preset's values
# of the others (`--lr-schedule constant` over HeteroFL's multistep preset drops its milestones).
_COMPANIONS = {"lr_schedule": ("lr_decay", "lr_milestones", "lr_min"), "optimizer": ("momentum",)}


def with_preset(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` over the training values of the preset they name: the preset replaces the
    defaults, and every value given (in a config file, a grid or a flag) replaces the preset's.
    A stored run's config, which gives every value, is therefore run again as it was."""
    layer = preset_layer(values.get("preset"), values.get("method", RunConfig.method)).get("train")
    if not layer:
        return dict(values)
    given = values.get("train") or {}
    if isinstance(given, Mapping):
        for key, companions in _COMPANIONS.items():
            if key in given:
                layer = {k: v for k, v in layer.items() if k not in companions}
        masked = sorted(k for k, v in given.items() if k in layer and _as_list(v) != _as_list(layer[k]))
        if masked:
            log.warning("preset %s: the values given win over the preset's: %s", values.get("preset"),
                        ", ".join(f"train.{k}={given[k]} (preset: {layer[k]})" for k in masked))
    return deep_merge({"train": layer}, values)


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def preset_layer(preset: Any, method: Any) -> dict[str, Any]:
    """The whole ``train`` block ``preset`` sets for ``method``: ``paper`` the paper's common
    setting (TrainConfig's defaults), ``official`` those updated with the method's
    ``official_train``. Empty for no preset (or a value RunConfig will refuse by name); the
    paper's setting for a method that cannot be loaded (the run fails on that, in its own line)."""
    if preset not in PRESETS or not isinstance(method, str):
        return {}
    train = train_defaults()
    if preset == "official":
        train |= {k: _as_list(v) for k, v in official_train(method).items()}
    return {"train": train}


def official_train(method: str) -> Mapping[str, Any]:
    """The training values ``method``'s own code uses where they differ from the paper's common
    setting (``Method.official_train``; spec decisions Q7); none for a method that cannot be loaded."""
    try:
        return getattr(registry.load("methods", method), "official_train", {})
    except FedbenchError:
        return {}
