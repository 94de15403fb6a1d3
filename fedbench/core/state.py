"""A method's declared state as plain data: what a checkpoint stores and loads without pickled code.

A checkpoint must load with ``torch.load(..., weights_only=True)``, which admits tensors and
plain containers only, so an untrusted file cannot run code. The values a method declares as
state (:attr:`fedbench.core.method.Method.server_state` / ``client_state``) are turned into that
form here and restored *into the live method*, which ``__init__`` has already built from the
run's config:

* an ``nn.Module`` is stored as its ``state_dict`` and loaded back into the module the live
  method holds under the same name (its architecture comes from the config, never the file);
* a dataclass instance is stored as its fields; it is rebuilt without calling any code
  (no ``__init__``/``__post_init__``), and only if its class is a dataclass defined in
  fedbench or in the method's own module and already imported — the file names a class,
  it cannot make Python import or call anything;
* a NumPy array is stored as a tensor and comes back as an array of the same dtype;
* tensors, numbers, strings, bytes, ``None`` and lists/tuples/dicts/sets of them are stored
  as they are.

Anything else (a lambda, an open file, an arbitrary object) cannot be state: saving it is a
:class:`~fedbench.errors.PluginError` that names the attribute, so a method author learns it
at the first checkpoint, not at the first resume.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbench.errors import CheckpointError, PluginError

_TAG = "__fedbench__"
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def encode(value: Any, where: str) -> Any:
    """``value`` as tensors and plain containers (see the module docstring); ``where`` names it in errors."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, nn.Module):
        return {_TAG: "module", "state": {k: v.detach().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise PluginError(f"{where} is a NumPy array of Python objects, which cannot be state; store plain numbers")
        return {_TAG: "ndarray", "tensor": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, (list, tuple)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "frozen": isinstance(value, frozenset), "items": [encode(v, where) for v in value]}
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, _PLAIN):
                raise PluginError(f"{where} has a key of type {type(key).__name__}; state dicts need plain keys")
        return {_TAG: "dict", "items": {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
    raise PluginError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint cannot hold; "
        "state must be modules, tensors, dataclasses, NumPy arrays or plain data"
    )


def decode(stored: Any, live: Any, where: str, home_module: str) -> Any:
    """The value to assign for ``stored``; modules are loaded into ``live`` (the current value) in place.

    ``home_module`` is the method's module: dataclasses defined there (or in fedbench) may be rebuilt.
    """
    if isinstance(stored, (list, tuple)):
        lives = live if isinstance(live, (list, tuple)) and len(live) == len(stored) else [None] * len(stored)
        items = [decode(s, v, f"{where}[{i}]", home_module) for i, (s, v) in enumerate(zip(stored, lives, strict=True))]
        return items if isinstance(stored, list) else tuple(items)
    if not (isinstance(stored, dict) and _TAG in stored):
        return stored
    kind = stored[_TAG]
    if kind == "dict":
        lives = live if isinstance(live, Mapping) else {}
        return {k: decode(v, lives.get(k), f"{where}[{k!r}]", home_module) for k, v in stored["items"].items()}
    if kind == "set":
        items = [decode(v, None, where, home_module) for v in stored["items"]]
        return frozenset(items) if stored["frozen"] else set(items)
    if kind == "ndarray":
        return stored["tensor"].numpy().copy()
    if kind == "module":
        if not isinstance(live, nn.Module):
            raise CheckpointError(f"the checkpoint holds a module for {where}, but the method has none there")
        try:
            live.load_state_dict(stored["state"])
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint's {where} does not fit the method's model: "
                                  f"{str(exc).splitlines()[0]}") from exc
        return live
    if kind == "dataclass":
        cls = _dataclass_type(stored["class"], home_module, where)
        instance = object.__new__(cls)
        for name, value in stored["fields"].items():
            object.__setattr__(instance, name, decode(value, getattr(live, name, None), f"{where}.{name}", home_module))
        return instance
    raise CheckpointError(f"the checkpoint's {where} has an unknown kind {kind!r}")


def _dataclass_type(name: str, home_module: str, where: str) -> type:
    """The dataclass ``module:qualname`` if fedbench or the method's module defines it and it is imported."""
    module_name, _, qualname = name.partition(":")
    allowed = module_name == home_module or module_name == "fedbench" or module_name.startswith("fedbench.")
    module = sys.modules.get(module_name) if allowed else None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        raise CheckpointError(f"the checkpoint's {where} names the class {name}, which is not a dataclass of "
                              f"fedbench or of {home_module}; it cannot be restored")
    return target
