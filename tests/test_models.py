"""The model zoo: reference sizes, every model trains, widths scale, bad input fails in one line."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from typer.testing import CliRunner

from fedbench import registry
from fedbench.errors import ConfigError, UnknownNameError
from fedbench.models import build_model, scaled
from fedbench.models.slicing import space_sizes
from fedbench.simulation.flops import count_flops, model_flops

MODELS = ["cnn", "resnet18", "resnet34", "vgg11_bn", "squeezenet", "squeezenet_nopool", "vit"]
ZOO = [m for m in MODELS if m != "cnn"]
SHAPES = [(3, 32, 32), (1, 28, 28), (3, 84, 84)]  # CIFAR, Fashion-MNIST, Mini-ImageNet


@functools.lru_cache
def builder(name):
    """The registered builder, looked up once (an entry-point scan costs ~0.1 s)."""
    return registry.load("models", name)


def meta_model(name, shape=(3, 32, 32), classes=10, width=1.0):
    """Shapes and counts without weights or arithmetic."""
    with torch.device("meta"):
        return builder(name)(shape, classes, width=width)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_resnet18_on_cifar10_has_the_reference_parameter_counts():
    model = meta_model("resnet18")
    assert count(model) == 11_173_962
    assert count(model.stem) == 1_856
    assert [count(block) for block in model.blocks] == [147_968, 525_568, 2_099_712, 8_393_728]
    assert count(model.head) == 5_130


def test_resnet34_has_3_4_6_3_units_and_the_same_stem_and_head():
    model = meta_model("resnet34")
    assert [len(block) for block in model.blocks] == [3, 4, 6, 3]
    assert count(model) == 21_282_122  # torchvision-style CIFAR ResNet34 with a 10-class fc


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape", SHAPES, ids=["cifar", "fmnist", "mini-imagenet"])
def test_every_model_builds_for_every_benchmark_shape(name, shape):
    model = meta_model(name, shape, classes=100)
    assert model.num_blocks == (3 if name == "vit" else 4)
    assert model(torch.zeros(2, *shape, device="meta")).shape == (2, 100)


def test_cnn_block_cuts_and_shapes_follow_the_spec():
    assert [s[0] for s in meta_model("resnet18").block_output_shapes()] == [64, 128, 256, 512]
    assert meta_model("resnet18").block_output_shapes()[-1] == (512, 4, 4)
    assert meta_model("vgg11_bn").block_output_shapes() == [
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
        (512, 1, 1),
    ]
    assert meta_model("squeezenet").block_output_shapes() == [
        (128, 16, 16),
        (256, 8, 8),
        (384, 8, 8),
        (512, 4, 4),
    ]
    assert meta_model("squeezenet_nopool").block_output_shapes()[-1] == (512, 8, 8)


def test_vit_uses_patch_12_on_84_pixels_and_three_blocks_of_four_encoders():
    model = meta_model("vit", (3, 84, 84), classes=100)
    assert model.stem.proj.kernel_size == (12, 12)
    assert model.block_output_shapes() == [(50, 192)] * 3  # 7×7 patches + CLS, D = 192
    assert [len(block) for block in model.blocks] == [4, 4, 4]
    assert meta_model("vit", (3, 32, 32)).block_output_shapes()[0] == (65, 192)  # patch 4: 8×8 + CLS


def test_vgg11_bn_has_the_profl_dense_head():
    model = meta_model("vgg11_bn")
    linear = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(512, 4096), (4096, 4096), (4096, 10)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("width", [0.5, 0.25])
def test_width_scales_every_hidden_width_with_ceil(name, width):
    full, narrow = space_sizes(meta_model(name)), space_sizes(meta_model(name, width=width))
    assert narrow == {space: scaled(size, width) for space, size in full.items()}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("width,channels", [(1.0, 3), (0.5, 1), (0.25, 3)])
def test_every_model_trains_one_sgd_step(name, width, channels):
    torch.manual_seed(0)
    model = builder(name)((channels, 16, 16), 10, width=width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(2, channels, 16, 16), torch.tensor([1, 7])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) >= len(list(model.parameters()))


def test_unknown_model_is_a_one_line_error_with_a_suggestion():
    with pytest.raises(
        UnknownNameError, match=r"unknown model 'resnet81' \(did you mean 'resnet18'\?\)"
    ) as info:
        build_model("resnet81", (3, 32, 32), 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("width", [0.0, -0.5, 1.5])
def test_width_outside_zero_one_is_a_one_line_error(width):
    with pytest.raises(ConfigError, match=r"width .* must be in \(0, 1\]") as info:
        build_model("resnet18", (3, 32, 32), 10, width=width)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name,too_small,minimum",
    [
        ("resnet18", 7, 8),
        ("resnet34", 4, 8),
        ("vgg11_bn", 15, 16),
        ("squeezenet", 7, 8),
        ("squeezenet_nopool", 3, 4),
        ("vit", 6, 7),
        ("cnn", 3, 4),
    ],
)
def test_too_small_inputs_name_the_minimum_size(name, too_small, minimum):
    with pytest.raises(
        ConfigError, match=rf"at least {minimum}×{minimum} pixels.*got {too_small}×{too_small}"
    ) as info:
        builder(name)((1, too_small, too_small), 10)
    assert "\n" not in str(info.value)
    meta_model(name, (1, minimum, minimum))  # the minimum itself works


def test_flop_counts_match_the_convolution_formula():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    flops = count_flops(conv, torch.zeros(1, 3, 16, 16), input_grad=False)
    macs = 8 * 3 * 9 * 16 * 16
    assert flops.forward == 2 * macs
    assert flops.backward == 2 * macs  # weight gradient only: the image needs none
    assert count_flops(conv, torch.zeros(1, 3, 16, 16)).backward == 4 * macs


def test_model_flops_are_per_block_cached_and_add_up():
    flops = model_flops("resnet18", (3, 32, 32), 10)
    assert model_flops("resnet18", (3, 32, 32), 10) is flops
    assert len(flops.blocks) == 4
    assert flops.total.forward == sum(b.forward for b in flops.blocks) + flops.head.forward
    assert 1.10e9 < flops.total.forward < 1.12e9  # 0.556 GMAC, the known CIFAR ResNet18 cost
    assert flops.blocks[0].backward < 2 * flops.blocks[0].forward  # the stem's input needs no gradient
    assert flops.blocks[1].backward == 2 * flops.blocks[1].forward


def test_list_models_json_shows_parameters_flops_and_blocks():
    from fedbench.cli.main import app

    result = CliRunner().invoke(
        app, ["list", "models", "--json", "--input-shape", "1,28,28", "--width", "0.5"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["models"]}
    assert set(MODELS) <= set(rows)
    assert rows["resnet18"]["parameters"] == count(meta_model("resnet18", (1, 28, 28), width=0.5))
    assert rows["resnet18"]["num_blocks"] == 4 and rows["vit"]["num_blocks"] == 3
    assert rows["cnn"]["forward_flops"] == model_flops("cnn", (1, 28, 28), 10, 0.5).total.forward


def test_list_models_rejects_a_malformed_input_shape_in_one_line():
    from fedbench.cli.main import app

    result = CliRunner().invoke(app, ["list", "models", "--input-shape", "3,32"])
    assert result.exit_code == 2
    assert "C,H,W" in result.output
