"""Remembered meta-kernel outputs (fedbench/tracing/_speedups/meta_kernels.py): exact metadata, fresh
storages, never for views, and the memory model's reports unchanged by them."""

from __future__ import annotations

import pytest
import torch

from fedbench.memory.model import peak_training_bytes
from fedbench.models import build_model
from fedbench.tracing._speedups import ENV, meta_kernels

aten = torch.ops.aten


@pytest.fixture(autouse=True)
def forget():
    meta_kernels.clear()
    yield
    meta_kernels.clear()


def meta(*shape):
    return torch.empty(*shape, device="meta")


def test_a_remembered_op_returns_fresh_tensors_with_the_kernel_s_metadata():
    x, w = meta(8, 3, 32, 32), meta(16, 3, 3, 3)
    args = (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    first = meta_kernels.call(aten.convolution.default, args, {})
    second = meta_kernels.call(aten.convolution.default, args, {})
    assert (second.shape, second.stride(), second.dtype) == (first.shape, first.stride(), first.dtype)
    assert second.untyped_storage() is not first.untyped_storage()
    assert second.untyped_storage().nbytes() == first.untyped_storage().nbytes()


def test_tuple_outputs_with_undefined_entries_are_rebuilt_in_place():
    x = meta(4, 6, 5, 5)
    weight, bias, mean, var = meta(6), meta(6), meta(6), meta(6)
    args = (x, weight, bias, mean, var, True, 0.1, 1e-5)
    first = meta_kernels.call(aten.native_batch_norm.default, args, {})
    again = meta_kernels.call(aten.native_batch_norm.default, args, {})
    assert [t.shape for t in again] == [t.shape for t in first]
    grads = (meta(4, 6, 5, 5), x, weight, mean, var, first[1], first[2], True, 1e-5, [True, False, False])
    real = aten.native_batch_norm_backward.default(*grads)
    meta_kernels.call(aten.native_batch_norm_backward.default, grads, {})
    remembered = meta_kernels.call(aten.native_batch_norm_backward.default, grads, {})
    assert [None if t is None else t.shape for t in remembered] == [None if t is None else t.shape for t in real]


def test_views_are_never_remembered():
    x = meta(3, 4)
    for _ in range(2):
        view = meta_kernels.call(aten.t.default, (x,), {})
        assert view.untyped_storage() is x.untyped_storage()


def test_in_place_ops_return_their_argument_without_running_again(monkeypatch):
    x, y = meta(5), meta(5)
    assert meta_kernels.call(aten.add_.Tensor, (x, y), {"alpha": 2}) is x
    assert meta_kernels.call(aten.add_.Tensor, (x, y), {"alpha": 2}) is x


class _FakeOp:
    """Has a real op's schema (fresh output) but returns a slice of a larger buffer."""

    _schema = aten.clone.default._schema

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return torch.empty(10, device="meta")[2:5]

    def __hash__(self) -> int:
        return id(self)


def test_an_output_that_is_not_a_whole_fresh_storage_keeps_running_for_real():
    op = _FakeOp()
    x = meta(3)
    for _ in range(3):
        out = meta_kernels.call(op, (x,), {})
        assert out.storage_offset() == 2
    assert op.calls == 3


def test_real_data_arguments_are_not_remembered():
    calls = []

    class Counting(_FakeOp):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return torch.empty(3, device="meta")

    op = Counting()
    for _ in range(2):
        meta_kernels.call(op, (torch.zeros(3),), {})  # a CPU tensor with data: its values could matter
    assert len(calls) == 2


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_the_memory_model_reports_the_same_with_and_without_remembered_outputs(arch, monkeypatch):
    shape = (1, 28, 28) if arch == "cnn" else (3, 32, 32)
    model = build_model(arch, shape, 10, width=0.25)
    after_first_block = {n for n, _ in model.named_parameters() if not n.startswith(("stem", "blocks.0"))}
    cases = [dict(batch_size=16), dict(batch_size=64, trainable=after_first_block)]
    remembered = [peak_training_bytes(model, **case) for case in cases]
    again = [peak_training_bytes(model, **case) for case in cases]  # now from memory
    monkeypatch.setenv(ENV, "1")  # every kernel runs
    assert meta_kernels.dispatcher() is meta_kernels.run
    real = [peak_training_bytes(model, **case) for case in cases]
    assert remembered == again == real
