"""Model factory: every architecture is a :class:`BlockModel` built from a registered builder."""

from __future__ import annotations

from collections.abc import Callable

from fedbench import registry
from fedbench.errors import ConfigError, PluginError
from fedbench.models.base import BlockModel, scaled

ModelBuilder = Callable[..., BlockModel]

__all__ = ["BlockModel", "ModelBuilder", "build_model", "scaled"]


def _validate_builder(name: str, obj: object) -> None:
    if not callable(obj):
        raise PluginError(f"model '{name}' must be a builder function (input_shape, num_classes, width)")


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
) -> BlockModel:
    """Build model ``name`` for the given input shape, class count and width multiplier."""
    if not 0 < width <= 1:
        raise ConfigError(f"model width ({width}) must be in (0, 1]")
    builder = registry.load("models", name, validate=_validate_builder)
    model = builder(tuple(input_shape), num_classes, width=width)
    if not isinstance(model, BlockModel):
        raise PluginError(f"model '{name}' built a {type(model).__name__}, not a fedbench BlockModel")
    try:
        model.block_output_shapes()
    except RuntimeError as exc:
        raise ConfigError(
            f"model '{name}' cannot take inputs of shape {tuple(input_shape)}: {str(exc).splitlines()[0]}"
        ) from exc
    model.builder = builder  # narrower copies of the same variant need no registry lookup (slicing)
    return model
