"""What ``fedbench list models`` shows per model: parameters, forward FLOPs, blocks.

Models are built on the meta device, so listing costs neither weight memory
nor initialisation time.
"""

from __future__ import annotations

from typing import Any

from fedbench.errors import ConfigError, FedbenchError
from fedbench.models import build_model
from fedbench.simulation.flops import model_flops
from fedbench.tracing.meta import building_on_meta


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` → (3, 32, 32); anything else is a one-line :class:`ConfigError`."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r} must be three positive integers C,H,W, e.g. 3,32,32")
    return shape  # type: ignore[return-value]


def model_summary(
    name: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
) -> dict[str, Any]:
    """Parameter count, per-sample forward FLOPs and block structure of one registered model."""

    if num_classes < 1:
        raise ConfigError(f"--num-classes ({num_classes}) must be >= 1")
    with building_on_meta():
        model = build_model(name, input_shape, num_classes, width=width)
    flops = model_flops(name, tuple(input_shape), num_classes, width)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "block_parameters": [
            sum(p.numel() for p in block.parameters())
            + (sum(p.numel() for p in model.stem.parameters()) if i == 0 else 0)
            for i, block in enumerate(model.blocks)
        ],
        "head_parameters": sum(p.numel() for p in model.head.parameters()),
        "forward_flops": flops.total.forward,
        "training_flops": flops.total.training,
        "num_blocks": model.num_blocks,
    }


def summarize_rows(
    rows: list[dict[str, Any]], input_shape: str, num_classes: int, width: float
) -> list[dict[str, Any]]:
    """``rows`` of ``fedbench list models`` with each model's summary; a model that cannot
    take the shape gets an ``error`` entry instead of failing the whole listing."""
    shape = parse_input_shape(input_shape)
    if not 0 < width <= 1:
        raise ConfigError(f"--width ({width}) must be in (0, 1]")
    if num_classes < 1:
        raise ConfigError(f"--num-classes ({num_classes}) must be >= 1")
    summarized = []
    for row in rows:
        extra: dict[str, Any] = {"input_shape": list(shape), "num_classes": num_classes, "width": width}
        try:
            extra.update(model_summary(row["name"], shape, num_classes, width))
        except FedbenchError as exc:
            extra["error"] = str(exc)
        summarized.append({**row, **extra})
    return summarized
