"""The few `torch.distributed` steps the scripts share: joining and leaving a process group, rank queries,
barriers and averages over ranks. Every function also works without a process group (one process)."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist


def single_process_environment() -> None:
    """Launcher variables for a one-process group, where no launcher (`deepspeed`, `torchrun`) set them: DeepSpeed
    would otherwise look for MPI. The port is a free one, so concurrent runs do not collide."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def use_local_device() -> torch.device:
    """This process's device, made the current one: CUDA device `LOCAL_RANK` (a launcher gives each process of a
    node its own number) when CUDA is available, else the CPU.

    Call it before the first collective. NCCL's object collectives (`broadcast_object_list`, `all_gather_object`)
    stage the pickled object on the *current* CUDA device, device 0 on every rank until set, while each rank's
    communicator is bound to device `LOCAL_RANK` (DeepSpeed binds it so): unset, the ranks other than 0 hang or
    fail in their first collective.

    Raises:
        RuntimeError: `LOCAL_RANK` names no visible CUDA device (more processes on the node than GPUs).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(
            f"LOCAL_RANK {local_rank}, but only {count} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most {count} process(es) on this node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed() -> tuple[int, int]:
    """Sets this process's device (`use_local_device`) and joins the process group a launcher (`torchrun`,
    `deepspeed`) describes in the environment, if any.

    Returns:
        (rank, world size); (0, 1) for a plain single-process run.
    """
    use_local_device()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank_and_world()


def finish_distributed() -> None:
    """Leaves the process group, if any, once every rank is done: a gloo group still alive at interpreter exit
    can abort the process ("terminate called without an active exception") after its work is finished."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_lists(items: list) -> list:
    """Every rank's `items` (picklable), concatenated in rank order, on every rank."""
    if not is_distributed():
        return list(items)
    gathered: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (itself without a process group)."""
    if not is_distributed():
        return dict(values)
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))
