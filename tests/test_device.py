"""--device: where local training and evaluation compute. CPU-only here; the GPU path is checked by
benchmarks/cuda_checks.sh on a CUDA machine (docs/gpu.md holds its results)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.errors import ConfigError
from fedbench.training.loop import model_device, placed_on

TINY = {"method": "fedavg", "data": {"dataset": "synthetic", "num_clients": 4}, "clients_per_round": 2,
        "rounds": 2, "train": {"local_epochs": 1}}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:3"])
def test_accepted_device_names(device):
    assert make_config(overrides={"device": device}).device == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "mps0", ""])
def test_unknown_device_names_fail_with_the_accepted_forms(device):
    with pytest.raises(ConfigError, match=r"must be cpu, cuda or cuda:N"):
        make_config(overrides={"device": device})


def test_a_gpu_run_uses_the_serial_executor():
    with pytest.raises(ConfigError, match="serial executor only"):
        make_config(overrides={"device": "cuda", "executor": "process"})


def test_run_key_of_cpu_runs_is_unchanged_and_a_gpu_run_has_its_own():
    base = make_config()
    assert make_config(overrides={"device": "cpu"}).run_key == base.run_key
    # The key a default config had before the field existed: sweeps find finished cells by it.
    assert base.run_key == "7c2a3b9b07c2f7fa"
    assert make_config(overrides={"device": "cuda"}).run_key != base.run_key


def test_placed_on_the_model_s_own_device_is_a_no_op():
    model = nn.Linear(3, 2)
    weight = model.weight
    with placed_on(model, "cpu") as inside:
        assert inside is model and model.weight is weight
    assert model_device(model) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


class RecordingLinear(nn.Linear):
    """Records the moves asked of it (this machine has no second device to move to)."""

    def __init__(self) -> None:
        super().__init__(3, 2)
        self.moves: list[torch.device] = []

    def to(self, device):  # type: ignore[override]
        assert not torch.is_inference_mode_enabled(), "copies made in inference mode cannot be trained later"
        self.moves.append(torch.device(device))
        return self


def test_placed_on_moves_the_model_there_and_back_even_on_error():
    model = RecordingLinear()
    with pytest.raises(RuntimeError, match="boom"), placed_on(model, "cuda:1"):
        assert model.moves == [torch.device("cuda:1")]
        raise RuntimeError("boom")
    assert model.moves == [torch.device("cuda:1"), torch.device("cpu")]


def test_placed_on_inside_inference_mode_moves_with_normal_tensors():
    """Evaluation moves the global model under inference mode; its parameters must stay trainable."""
    model = RecordingLinear()
    with torch.inference_mode(), placed_on(model, "cuda"):
        pass
    assert model.moves == [torch.device("cuda"), torch.device("cpu")]


@no_cuda
def test_engine_refuses_cuda_without_a_gpu_before_loading_anything():
    config = make_config(overrides={**TINY, "device": "cuda"})
    with pytest.raises(ConfigError, match=r"sees no CUDA GPU; run with --device cpu"):
        engine.run(config)


@no_cuda
def test_cli_device_cuda_without_a_gpu_is_one_line_and_exit_2():
    args = ["run", "--method", "fedavg", "--dataset", "synthetic", "--clients", "4", "--clients-per-round", "2",
            "--rounds", "1", "--no-tracking", "--device", "cuda"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and "sees no CUDA GPU" in text and "Traceback" not in result.output


def test_explicit_cpu_device_reproduces_the_default_run():
    default = engine.run(make_config(overrides=TINY))
    explicit = engine.run(make_config(overrides={**TINY, "device": "cpu"}))
    assert default.metric("eval/accuracy") == explicit.metric("eval/accuracy")
    assert default.metric("train/loss") == explicit.metric("train/loss")
