"""Every rank on its own GPU from its first collective, in training and in evaluation.

No GPU here: `torch.cuda` is replaced by a node of two GPUs that keeps a current device as CUDA does (0 until
`set_device`). NCCL's object collectives stage their objects on `torch.cuda.current_device()`, so that device, read
when the script's first collective starts, is what the tests check.
"""

from __future__ import annotations

import deepspeed
import pytest
import torch
import torch.distributed as dist

import eval_reasonseg
import train_ds
from utils.distributed import use_local_device


class FakeCuda:
    """`torch.cuda` of a node with `count` GPUs: the current device is 0 until `set_device`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int):
        deepspeed.get_accelerator()  # resolved now, on the real (CPU-only) torch: it is cached for the process
        self.count, self.current = count, 0
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)

    def set_device(self, device: int | str | torch.device) -> None:
        index = device if isinstance(device, int) else torch.device(device).index
        if not 0 <= index < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        self.current = index


class FirstCollective(Exception):
    """Raised where a script's first collective would start."""


@pytest.fixture
def second_rank(monkeypatch):
    """This process as rank 1 of 2, the second process on a node with two GPUs."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    return FakeCuda(monkeypatch, count=2)


def test_training_sets_the_rank_s_gpu_before_its_first_collective(second_rank, monkeypatch, tmp_path):
    seen = []

    def first_collective(value):
        seen.append(torch.cuda.current_device())
        raise FirstCollective

    # The process group itself is not needed to see the device: DeepSpeed's joining sets none.
    monkeypatch.setattr(deepspeed, "init_distributed", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_ds, "broadcast_from_main", first_collective)
    with pytest.raises(FirstCollective):
        train_ds.main(["--log_base_dir", str(tmp_path), "--exp_name", "run"])
    assert seen == [1]


def test_evaluation_sets_the_rank_s_gpu_before_joining_the_group(second_rank, monkeypatch, tmp_path):
    seen = []

    def init_process_group(backend, **kwargs):
        seen.append((backend, torch.cuda.current_device()))

    def first_use(*args, **kwargs):
        seen.append(("data", torch.cuda.current_device()))
        raise FirstCollective

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(eval_reasonseg, "build_val_dataset", first_use)
    with pytest.raises(FirstCollective):
        eval_reasonseg.main(["--pred_dir", str(tmp_path)])
    assert seen == [("nccl", 1), ("data", 1)]


def test_more_processes_than_gpus_is_refused_by_name(monkeypatch):
    FakeCuda(monkeypatch, count=2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2, but only 2 CUDA device"):
        use_local_device()


def test_without_cuda_the_device_is_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert use_local_device() == torch.device("cpu")
