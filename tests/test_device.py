"""--device: where local training and evaluation compute. CPU-only here; the GPU path is checked by
benchmarks/cuda_checks.sh on a CUDA machine (docs/gpu.md holds its results)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.core.setup import home_device
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


def test_several_trainers_share_a_gpu_through_the_process_executor_not_ray():
    assert make_config(overrides={"device": "cuda", "executor": "process", "workers": 4}).workers == 4
    with pytest.raises(ConfigError, match=r"serial, process or streams executor .*fedbench sweep GRID --executor ray"):
        make_config(overrides={"device": "cuda", "executor": "ray"})
    with pytest.raises(ConfigError, match="needs the resident GPU path"):
        make_config(overrides={"device": "cuda", "executor": "process", "resident": False})


def test_the_resident_switch_is_not_part_of_the_run_key():
    resident = make_config(overrides={"device": "cuda"})
    assert make_config(overrides={"device": "cuda", "resident": False}).run_key == resident.run_key


def test_a_resident_gpu_run_keeps_its_data_and_models_on_the_gpu_else_the_cpu():
    assert home_device(make_config(overrides={"device": "cuda:1"})) == torch.device("cuda:1")
    assert home_device(make_config(overrides={"device": "cuda", "resident": False})) == torch.device("cpu")
    assert home_device(make_config()) == torch.device("cpu")


# The meta device stands in for a GPU here: torch refuses to mix it with CPU tensors just as it
# refuses to mix CUDA and CPU ones, so these find every tensor a path leaves on the CPU.
def _meta_dataset():
    dataset = load_cifar_like()
    return dataset, dataset.to("meta")


def load_cifar_like():
    from fedbench.data import ImageDataset
    from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(20) % 10
    return ImageDataset("tiny", images, labels, images[:4], labels[:4], 10, IMAGENET_MEAN, IMAGENET_STD,
                        augment=RandomCropFlip(2, IMAGENET_MEAN, IMAGENET_STD))


def test_a_data_set_moved_to_a_device_makes_and_augments_batches_there():
    on_cpu, moved = _meta_dataset()
    assert on_cpu.to("cpu") is on_cpu and moved.device == torch.device("meta")
    assert on_cpu.device == torch.device("cpu")  # the original is not moved
    batch = torch.tensor([3, 1, 4, 1, 5])
    images, labels = moved.train_batch(batch, torch.Generator().manual_seed(1))
    assert images.device.type == labels.device.type == "meta" and images.shape == (5, 3, 8, 8)
    test_images, _ = next(moved.test_batches(2))
    assert test_images.device.type == "meta"


def test_augmentation_draws_the_same_choices_wherever_the_images_are():
    """The draws come from the CPU generator in the same order on any device: a GPU run's client sees the
    CPU run's crops and flips (the generator's state after the batch is the same)."""
    on_cpu, moved = _meta_dataset()
    batch = torch.arange(6)
    first, second = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    on_cpu.train_batch(batch, first)
    moved.train_batch(batch, second)
    assert torch.equal(first.get_state(), second.get_state())


class HostToDeviceCopies(TorchFunctionMode):
    """Counts the operations that take a CPU tensor and return one on another device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        from_cpu = any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in args)
        if from_cpu and isinstance(result, torch.Tensor) and result.device.type != "cpu":
            self.count += 1
        return result


@pytest.mark.parametrize("batch_size", [2, 4, 10])
def test_a_resident_pass_copies_to_the_device_twice_whatever_its_number_of_batches(batch_size):
    """A copy from the host waits for the GPU (torch synchronises the stream on a blocking copy), so
    none may happen per batch: a pass copies its order and its augmentation draws, once each."""
    _, moved = _meta_dataset()
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    with HostToDeviceCopies() as copies:
        batches = list(moved.training_batches(order, batch_size, torch.Generator().manual_seed(1)))
    assert len(batches) == 20 // batch_size and batches[0][0].device.type == "meta"
    assert copies.count == 2


def test_aggregation_runs_where_the_states_are():
    from fedbench.training.aggregate import overlap_count_average, weighted_average

    states = [{"w": torch.ones(4, 3, device="meta"), "n": torch.zeros((), dtype=torch.long, device="meta")}] * 2
    assert {t.device.type for t in weighted_average(states, [0.5, 0.5]).values()} == {"meta"}
    where = [{"w": (torch.tensor([0, 2]), None), "n": ()}] * 2
    sliced = [{"w": torch.ones(2, 3, device="meta"), "n": torch.zeros((), dtype=torch.long, device="meta")}] * 2
    averaged = overlap_count_average(states[0], sliced, where)
    assert {t.device.type for t in averaged.values()} == {"meta"}


def test_depthfl_s_feddyn_server_step_runs_where_the_global_model_is():
    from methods.depthfl import holder_average

    old = {"w": torch.ones(4, 3, device="meta")}
    h: dict[str, torch.Tensor] = {}
    new = holder_average(old, [{"w": torch.ones(4, 3, device="meta")}], ["w"], h, alpha=0.1, num_clients=4)
    assert new["w"].device.type == h["w"].device.type == "meta"


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
