"""Generic cuts: NeuLite stage models and stand-ins, co-adaptation scopes, ProgFed prefixes, DepthFL exits."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from fedbench import registry
from fedbench.errors import ConfigError
from fedbench.models import BlockModel
from fedbench.models.cutting import (
    ExitModel,
    StageModel,
    coadaptation_scope,
    exit_head,
    exit_heads,
    output_module,
    prefix_model,
)

MODELS = ["cnn", "resnet18", "resnet34", "vgg11_bn", "squeezenet", "squeezenet_nopool", "vit"]
SHAPE = (3, 16, 16)


@functools.lru_cache
def builder(name):
    return registry.load("models", name)


def small(name, shape=SHAPE, width=0.25):
    torch.manual_seed(0)
    return builder(name)(shape, 10, width=width)


def meta(name, shape=(3, 32, 32)):
    with torch.device("meta"):
        return builder(name)(shape, 10)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_stage_models_give_logits_z_and_pooled_features_for_every_stage(name):
    model = small(name).eval()
    x = torch.randn(2, *SHAPE)
    for k in range(1, model.num_blocks + 1):
        out = StageModel(model, k).eval().forward_all(x)
        assert out.logits.shape == (2, 10)
        assert out.pooled.shape == (2, model.cut.feature_dim)
        assert out.z.dim() == 2 and out.z.shape[0] == 2
        assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_the_last_stage_is_the_full_model(name):
    model = small(name).eval()
    stage = StageModel(model, model.num_blocks).eval()
    x = torch.randn(2, *SHAPE)
    assert torch.equal(stage(x), model(x))
    assert list(stage.state_dict()) == list(model.state_dict())
    assert len(stage.standins) == 0


def test_resnet18_stand_ins_and_co_adapted_layers_have_the_reference_sizes():
    model = meta("resnet18")
    assert [count(output_module(model, k).standins) for k in (1, 2, 3)] == [1_548_288, 1_474_560, 1_179_648]
    extra = [sum(model.get_parameter(n).numel() for n in coadaptation_scope(model, k)) for k in (2, 3, 4)]
    assert extra == [36_992, 147_712, 590_336]
    assert coadaptation_scope(model, 1) == ()
    assert coadaptation_scope(model, 2) == (
        "blocks.0.unit2.conv2.weight",
        "blocks.0.unit2.bn2.weight",
        "blocks.0.unit2.bn2.bias",
    )
    assert meta("resnet34").names_of([]) == () and coadaptation_scope(meta("resnet34"), 4)[0].startswith(
        "blocks.2.unit6.conv2"
    )


def test_stand_ins_are_plain_strided_convs_without_bn_or_relu():
    standins = output_module(meta("resnet18"), 1).standins
    assert all(isinstance(s, nn.Conv2d) and s.stride == (2, 2) and s.bias is None for s in standins)
    assert [(s.in_channels, s.out_channels) for s in standins] == [(64, 128), (128, 256), (256, 512)]
    squeeze = output_module(meta("squeezenet"), 1).standins
    assert [(s.in_channels, s.out_channels, s.stride[0]) for s in squeeze] == [
        (128, 256, 2),
        (256, 384, 1),
        (384, 512, 2),
    ]


def test_vit_stand_ins_are_one_encoder_per_missing_block_and_z_is_the_token_sequence():
    model = small("vit", (3, 32, 32))
    assert len(output_module(model, 1).standins) == 2 and len(output_module(model, 2).standins) == 1
    out = StageModel(model, 1).forward_all(torch.randn(2, 3, 32, 32))
    assert out.z.shape == (2, 65 * model.cut.feature_dim)  # 64 patches + CLS, flattened
    assert coadaptation_scope(model, 2)[0].startswith("blocks.0.3.mlp.")


@pytest.mark.parametrize("name", MODELS)
def test_co_adaptation_scopes_name_parameters_of_the_previous_block(name):
    model = meta(name)
    for k in range(2, model.num_blocks + 1):
        scope = coadaptation_scope(model, k)
        assert scope and all(n.startswith(f"blocks.{k - 2}.") for n in scope)
        assert set(scope) <= set(dict(StageModel(model, k).named_parameters()))


def test_a_stage_model_shares_its_blocks_with_the_model():
    model = small("resnet18")
    stage = StageModel(model, 2)
    with torch.no_grad():
        next(stage.blocks[1].parameters()).add_(1.0)
    assert torch.equal(next(stage.blocks[1].parameters()), next(model.blocks[1].parameters()))


def test_a_persisted_output_module_is_reused_by_the_stage_model():
    model = small("squeezenet")
    kept = output_module(model, 2)
    stage = StageModel(model, 2, kept)
    assert stage.head is kept.head and stage.standins is kept.standins


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_progfed_prefixes_end_in_a_head_on_the_block_width(name):
    model = small(name, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    for k in range(1, model.num_blocks + 1):
        sub = prefix_model(model, k)
        assert len(sub.standins) == 0 and sub(x).shape == (2, 10)
    assert prefix_model(model, model.num_blocks).head is model.head


def test_resnet18_exits_follow_depthfl():
    model = meta("resnet18")
    exits = exit_heads(model)
    assert list(exits) == ["1", "2", "3"]
    assert [len(exits[k].scala) for k in exits] == [3, 2, 1]  # one SepConv per later block
    assert [exits[k].head.classifier[-1].in_features for k in exits] == [512, 512, 512]
    assert all(not isinstance(exits[k].attention, nn.Identity) for k in exits)


def test_exit_convs_are_kaiming_normal_fan_out_like_the_trunk():
    """[C-DFL]'s init loop covers the exits: std √(2 / fan_out), not PyTorch's default √(1 / (3 fan_in))."""
    exits = exit_heads(small("resnet18", (3, 32, 32), width=1.0))
    convs = [m.weight for m in exits.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    assert len(convs) >= 10
    for weight in convs:
        fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
        assert weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


def test_an_exit_on_a_one_pixel_map_has_no_attention():
    model = small("vgg11_bn")  # at 16×16, block 3 ends on a 1×1 map
    assert model.block_output_shapes()[2][1:] == (1, 1)
    assert isinstance(exit_head(model, 3).attention, nn.Identity)
    assert not isinstance(exit_head(model, 1).attention, nn.Identity)


@pytest.mark.parametrize("name", ["resnet18", "squeezenet", "vit"])
def test_depth_d_models_return_d_exits_and_their_state_is_a_prefix_of_the_full_depth(name):
    model = small(name, (3, 32, 32)).eval()
    exits = exit_heads(model)
    full_keys = set(ExitModel(model, exits, model.num_blocks).state_dict())
    x = torch.randn(2, 3, 32, 32)
    for depth in range(1, model.num_blocks + 1):
        local = ExitModel(model, exits, depth).eval()
        logits = local(x)
        assert len(logits) == depth and all(o.shape == (2, 10) for o in logits)
        assert set(local.state_dict()) <= full_keys
    assert torch.equal(ExitModel(model, exits, model.num_blocks).eval()(x)[-1], model(x))


@pytest.mark.parametrize("bad", [0, 5, -1, 2.0])
def test_a_block_index_out_of_range_is_a_one_line_error(bad):
    model = meta("resnet18")
    for call in (
        lambda: StageModel(model, bad),
        lambda: coadaptation_scope(model, bad),
        lambda: exit_head(model, bad),
    ):
        with pytest.raises(ConfigError, match=r"out of range for model 'resnet18': use 1\.\.4") as info:
            call()
        assert "\n" not in str(info.value)


def test_the_last_block_has_no_middle_exit():
    with pytest.raises(ConfigError, match="model's own head"):
        exit_head(meta("resnet18"), 4)


def test_a_model_without_a_cut_spec_cannot_be_staged():
    model = BlockModel(
        arch="plain",
        stem=nn.Identity(),
        blocks=[nn.Identity(), nn.Identity()],
        head=nn.Flatten(),
        input_shape=(1, 4, 4),
        num_classes=16,
    )
    assert StageModel(model, 2)(torch.zeros(1, 1, 4, 4)).shape == (1, 16)
    with pytest.raises(ConfigError, match="declares no CutSpec"):
        StageModel(model, 1)
