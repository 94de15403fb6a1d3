"""Width slicing by index sets (HeteroFL prefixes, FedRolex rolling windows) and overlap-count averaging."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from fedbench import registry
from fedbench.errors import ConfigError, PluginError
from fedbench.models import BlockModel
from fedbench.models.slicing import (
    extract,
    index_sets,
    layout,
    positions,
    rolling_indices,
    space_sizes,
    submodel,
    write_back,
)
from fedbench.training.aggregate import overlap_count_average

MODELS = ["cnn", "resnet18", "resnet34", "vgg11_bn", "squeezenet", "squeezenet_nopool", "vit"]
SHAPE = (3, 16, 16)


@functools.lru_cache
def builder(name):
    return registry.load("models", name)


def small(name, width=0.5, shape=SHAPE):
    torch.manual_seed(0)
    model = builder(name)(shape, 10, width=width)
    model.builder = builder(name)
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", MODELS)
def test_extracting_then_writing_back_an_unchanged_sub_model_leaves_the_full_model_bit_identical(name):
    full = small(name)
    before = snapshot(full)
    for rule in ("prefix", "rolling"):
        sub, sets = submodel(full, 0.25, rule, round_idx=5)
        sub.eval()(torch.randn(2, *SHAPE))  # the slice is a working model (concats, bypasses, heads agree)
        write_back(full, sub, sets)
        assert all(torch.equal(before[k], v) for k, v in full.state_dict().items()), rule


def test_heterofl_keeps_the_first_channels_of_every_layer():
    full = small("resnet18")
    sub, _ = submodel(full, 0.25)
    w_full, w_sub = full.blocks[1].unit1.conv1.weight, sub.blocks[1].unit1.conv1.weight
    assert torch.equal(w_sub, w_full[: w_sub.shape[0], : w_sub.shape[1]])
    fc_full, fc_sub = full.head.classifier[-1].weight, sub.head.classifier[-1].weight
    assert fc_sub.shape[0] == 10 and torch.equal(fc_sub, fc_full[:, : fc_sub.shape[1]])  # all classes kept
    assert sub.stem.conv.weight.shape[1] == 3  # image channels are never sliced


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vgg11_bn", "squeezenet", "vit"])
def test_a_full_width_slice_computes_the_full_model(name):
    full = small(name).eval()
    sub, _ = submodel(full, full.width)
    x = torch.randn(2, *SHAPE)
    assert torch.equal(sub.eval()(x), full(x))


def test_a_fire_output_slice_is_the_union_of_both_expand_slices():
    full = small("squeezenet", width=1.0)
    _, sets = submodel(full, 0.25)
    fire = full.blocks[0].fire3
    expand = fire.expand1x1.conv.out_channels  # E1 = 64 global expand-1×1 channels
    consumer = positions(full, sets)["blocks.1.fire4.squeeze.conv.weight"][1]
    assert consumer.tolist() == list(range(16)) + [expand + i for i in range(16)]


def test_vit_slices_keep_every_head_and_narrow_each():
    full = small("vit", width=1.0)
    sub, sets = submodel(full, 0.5)
    rows = positions(full, sets)["blocks.0.0.attn.qkv.weight"][0]
    assert rows.tolist() == [segment * 64 + i for segment in range(9) for i in range(32)]  # q, k, v × 3 heads
    assert sub.blocks[0][0].attn.heads == 3 and sub.blocks[0][0].attn.head_dim == 32


def test_the_cnn_flattened_map_is_sliced_per_channel():
    full = small("cnn", width=1.0, shape=(1, 28, 28))
    _, sets = submodel(full, 0.5)
    columns = positions(full, sets)["head.1.weight"][1]
    assert columns.tolist() == list(range(32 * 16))  # the first 32 channels × 4×4 pixels


def test_fedrolex_window_moves_by_one_and_wraps_around():
    assert rolling_indices(8, 4, 0).tolist() == [0, 1, 2, 3]
    assert rolling_indices(8, 4, 1).tolist() == [1, 2, 3, 4]
    assert rolling_indices(8, 4, 6).tolist() == [6, 7, 0, 1]
    assert rolling_indices(8, 4, 13).tolist() == [5, 6, 7, 0]


def test_over_k_rounds_a_half_width_window_covers_every_channel_of_every_layer():
    full, half = small("resnet18", width=0.25), small("resnet18", width=0.125)
    sizes = space_sizes(full)
    covered = {space: set() for space in sizes}
    for round_idx in range(max(sizes.values())):
        for space, idx in index_sets(full, half, "rolling", round_idx).items():
            covered[space].update(idx.tolist())
    assert all(covered[space] == set(range(size)) for space, size in sizes.items())


def test_overlap_count_average_of_a_tiny_hand_computed_example():
    old = {"w": torch.full((2, 3), 9.0), "steps": torch.tensor(4), "b": torch.tensor([1.0, 1.0])}
    client_a = {"w": torch.tensor([[1.0, 2.0]]), "steps": torch.tensor(6)}  # no "b": not held
    where_a = {"w": (torch.tensor([0]), torch.tensor([0, 1])), "steps": ()}
    client_b = {
        "w": torch.tensor([[3.0, 4.0], [5.0, 6.0]]),
        "steps": torch.tensor(9),
        "b": torch.tensor([3.0]),
    }
    where_b = {"w": (torch.tensor([0, 1]), torch.tensor([1, 2])), "steps": (), "b": (torch.tensor([1]),)}
    result = overlap_count_average(old, [client_a, client_b], [where_a, where_b])
    assert result["w"].tolist() == [[1.0, 2.5, 4.0], [9.0, 5.0, 6.0]]  # (1,0) covered by nobody: kept
    assert result["b"].tolist() == [1.0, 3.0]
    assert result["steps"].item() == 8 and result["steps"].dtype == torch.int64  # round(7.5)


def test_overlap_averaging_identical_slices_writes_them_back():
    full = small("squeezenet")
    sub_a, sets_a = submodel(full, 0.25, "rolling", 0)
    sub_b, sets_b = submodel(full, 0.25, "rolling", 3)
    with torch.no_grad():
        for p in (*sub_a.parameters(), *sub_b.parameters()):
            p.fill_(0.5)
    averaged = overlap_count_average(
        full.state_dict(),
        [sub_a.state_dict(), sub_b.state_dict()],
        [positions(full, sets_a), positions(full, sets_b)],
    )
    reference = small("squeezenet")
    write_back(reference, sub_a, sets_a)
    write_back(reference, sub_b, sets_b)
    for key, value in reference.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(averaged[key], value), key


@pytest.mark.parametrize("width", [0.0, -1.0, 0.75])
def test_a_sub_model_width_outside_the_full_width_is_a_one_line_error(width):
    with pytest.raises(ConfigError, match=r"sub-model width .* must be in \(0, 0\.5\]") as info:
        submodel(small("resnet18"), width)
    assert "\n" not in str(info.value)


def test_an_unknown_rule_and_a_wider_sub_model_are_rejected():
    full, narrow = small("cnn", width=0.25), small("cnn", width=0.5)
    with pytest.raises(ConfigError, match="unknown slicing rule 'random'"):
        index_sets(narrow, full, "random")
    with pytest.raises(ConfigError, match="wider than the full model"):
        index_sets(full, narrow)
    with pytest.raises(ConfigError, match="their layers differ"):
        index_sets(full, small("squeezenet", width=0.25))


def test_an_untagged_layer_is_reported_by_name():
    model = BlockModel(
        arch="plain",
        stem=nn.Identity(),
        blocks=[nn.Linear(4, 4)],
        head=nn.Identity(),
        input_shape=(1, 2, 2),
        num_classes=4,
    )
    with pytest.raises(PluginError, match="'blocks.0.weight' has no slicing axes"):
        layout(model)


def test_extract_checks_shapes():
    full = small("cnn", width=0.5)
    sets = index_sets(full, small("cnn", width=0.25))
    with pytest.raises(ConfigError, match="has shape"):
        extract(full, small("cnn", width=0.5, shape=(3, 16, 16)), sets)
