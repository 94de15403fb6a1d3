"""channels_last: the models' convolutions in the NHWC layout that GPU tensor cores compute in.

The layout changes which kernels run, not what they compute, so every method's run in it must
match its default run up to float rounding, on the CPU as on a GPU; and the layout must reach
every model a client trains, the narrower sub-models of the width methods included."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedbench import engine, registry
from fedbench.config import make_config
from fedbench.core import method as method_module
from fedbench.kits.widths import is_channels_last, level_model
from fedbench.testing import kit_config

METHODS = sorted(info.name for info in registry.available("methods") if info.builtin)


def outcome(config):
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    rounds = engine.run_rounds(method)
    metrics = [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in rounds]
    return metrics, {k: v.detach().clone() for k, v in method.eval_model().state_dict().items()}, method


@pytest.mark.parametrize("method", METHODS)
def test_a_channels_last_run_trains_as_the_default_one_up_to_rounding(method, monkeypatch):
    config = kit_config(method, rounds=2)
    default_metrics, default_model, _ = outcome(config)
    layouts, train = [], method_module.local_sgd  # the layout of every model a client trains

    def local_sgd(model, *args, **kwargs):
        layouts.append(is_channels_last(model))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(method_module, "local_sgd", local_sgd)
    last_metrics, last_model, _ = outcome(dataclasses.replace(config, channels_last=True))
    assert layouts and all(layouts)
    assert [m.keys() for m in last_metrics] == [m.keys() for m in default_metrics]
    for got, want in zip(last_metrics, default_metrics, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
    assert last_model.keys() == default_model.keys()
    for key, value in default_model.items():
        assert torch.allclose(last_model[key].float(), value.float(), rtol=1e-3, atol=1e-4), key


def test_width_sub_models_take_the_global_models_layout_and_stay_out_of_the_run_key():
    config = kit_config("heterofl", rounds=1)
    ctx, _ = engine.prepare(dataclasses.replace(config, channels_last=True))
    full = ctx.build_model()
    assert is_channels_last(full)
    assert is_channels_last(level_model(full, 0.5, device="cpu"))
    assert not is_channels_last(level_model(ctx.build_model().to(memory_format=torch.contiguous_format), 0.5,
                                            device="cpu"))
    assert config.run_key == dataclasses.replace(config, channels_last=True).run_key
    assert make_config(overrides={"channels_last": True}).channels_last
