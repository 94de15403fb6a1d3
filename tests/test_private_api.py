"""Private torch and MLflow APIs are used in one place only, fedbench/tracing/_speedups/, and each hook
there still works on the installed torch, gives the answers of its public fallback, and is
switched off by FEDBENCH_NO_SPEEDUPS.

A failure here after a torch upgrade names the hook's module: its fallback already keeps results
correct, so either repair the hook or delete the module and its use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedbench.memory.model import peak_training_bytes
from fedbench.models import build_model
from fedbench.tracing import meta as meta_outputs
from fedbench.tracing._speedups import ENV, dispatch, enabled, meta_build, meta_kernels

ROOT = Path(__file__).resolve().parents[1]
FENCE = ROOT / "fedbench" / "tracing" / "_speedups"
PRIVATE = ("torch._dynamo", "torch._disable_dynamo", "_default_to_fused_or_foreach", "_initialize_tables",
           "mlflow.store", "._schema", "._cdata", "sys.modules[")
# Lines that name a private module without using it: MLflow's loggers, silenced by their names.
NAMES_ONLY = ("NOISY_LOGGERS = (",)


def test_private_apis_appear_only_inside_the_fenced_package():
    found = []
    for folder in ("fedbench", "methods", "datasets", "reports"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if FENCE in path.parents:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                hits = [p for p in PRIVATE if p in line]
                if hits and not line.lstrip().startswith(NAMES_ONLY):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {', '.join(hits)}")
    assert not found, "private API outside fedbench/tracing/_speedups/:\n" + "\n".join(found)


def test_the_switch_reads_the_environment(monkeypatch):
    for value, on in (("", True), ("0", True), ("false", True), ("1", False), ("yes", False), ("TRUE", False)):
        monkeypatch.setenv(ENV, value)
        assert enabled() is on, value
    monkeypatch.delenv(ENV)
    assert enabled()


# ---------------------------------------------------------------- each hook against this torch
def test_meta_kernels_hook_reads_op_schemas():
    assert meta_kernels.AVAILABLE, (
        "fedbench/tracing/_speedups/meta_kernels.py: torch no longer exposes OpOverload._schema with alias "
        "information; remembered meta kernels are off (results stay correct, traces are slower)")
    assert meta_kernels._qualifies(torch.ops.aten.convolution.default)
    assert meta_kernels._in_place(torch.ops.aten.add_.Tensor)
    assert not meta_kernels._qualifies(torch.ops.aten.t.default)  # a view


def test_dispatch_hook_still_opts_out_of_torch_s_compiler_guard():
    assert dispatch.AVAILABLE, (
        "fedbench/tracing/_speedups/dispatch.py: TorchDispatchMode._should_skip_dynamo is gone; fedbench's "
        "dispatch modes keep torch's guard (results stay correct, traces are slower)")

    def hook(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))

    guarded = type("Guarded", (TorchDispatchMode,), {"__torch_dispatch__": hook})
    unguarded = type("Free", (dispatch.Unguarded, TorchDispatchMode), {"__torch_dispatch__": hook})
    assert guarded.__dict__["__torch_dispatch__"] is not hook, (
        "fedbench/tracing/_speedups/dispatch.py: torch no longer wraps dispatch modes; the hook does nothing, remove it")
    assert unguarded.__dict__["__torch_dispatch__"] is hook


def test_meta_build_hook_extends_torch_s_device_mode():
    assert meta_build.AVAILABLE, (
        "fedbench/tracing/_speedups/meta_build.py: torch.utils._device.DeviceContext/_device_constructors are gone; "
        "sub-models are built with torch.device('meta') plus a public mode (same models, slower)")
    assert torch.empty in meta_build._device_constructors()


# ------------------------------------------------------- fast path == fallback, in this process
@pytest.mark.parametrize("switch", ["", "1"])
def test_building_on_meta_gives_the_same_models_both_ways(switch, monkeypatch):
    monkeypatch.setenv(ENV, switch)
    with torch.device("meta"):
        reference = build_model("resnet18", (3, 32, 32), 10)
    context = meta_outputs.building_on_meta()
    with context:
        model = build_model("resnet18", (3, 32, 32), 10)
        real = torch.nn.init.ones_(torch.empty(3, device="cpu"))  # a real tensor is still initialised
        like = torch.zeros_like(torch.empty(4, 3, device="meta").t())
    assert isinstance(context, meta_build._BuildOnMeta) is (switch == "")
    assert [(n, p.shape, p.device.type) for n, p in model.named_parameters()] == [
        (n, p.shape, p.device.type) for n, p in reference.named_parameters()]
    assert [b.shape for b in model.buffers()] == [b.shape for b in reference.buffers()]
    assert torch.equal(real, torch.ones(3)) and (like.shape, like.stride()) == ((3, 4), (1, 3))
    assert torch.zeros(1).device.type == "cpu"


def test_remembered_kernels_give_the_reports_of_running_every_kernel(monkeypatch):
    meta_kernels.clear()
    model = build_model("cnn", (1, 28, 28), 10, width=0.5)
    fast = [peak_training_bytes(model, batch_size=b) for b in (8, 8, 32)]
    monkeypatch.setenv(ENV, "1")
    assert meta_kernels.dispatcher() is meta_kernels.run
    assert [peak_training_bytes(model, batch_size=b) for b in (8, 8, 32)] == fast


# ------------------------------------------------ switched off: the same results, fresh processes
_RESULTS = """
import json
from fedbench.reports.memory_table import memory_rows
from fedbench.models import build_model
from fedbench.tracing.meta import building_on_meta
from dataclasses import asdict
from fedbench.simulation.flops import model_flops
rows = {f"{m}/{k}": memory_rows(m, d, 32, k, "uniform-mb", width=w) for m, d, k, w in (
    ("cnn", "fashion-mnist", "fedavg", 1.0), ("cnn", "fashion-mnist", "heterofl", 1.0),
    ("resnet18", "cifar10", "neulite", 0.25), ("resnet18", "cifar10", "depthfl", 0.25),
    ("squeezenet", "cifar10", "progfed", 0.5))}
with building_on_meta():
    model = build_model("vgg11_bn", (3, 32, 32), 10, width=0.25)
print(json.dumps({"rows": rows, "shapes": [list(s) for s in model.block_output_shapes()],
                  "flops": asdict(model_flops("resnet18", (3, 32, 32), 10, 0.5))}))
"""


def _results(**env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _RESULTS], capture_output=True, text=True, check=True,
                          env={**os.environ, "FEDBENCH_TRACE_CACHE": "off", **env})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_with_every_speed_up_switched_off_the_results_are_identical():
    assert _results(**{ENV: "1"}) == _results(**{ENV: "0"})
