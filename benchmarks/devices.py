"""The `--device` flag of the benchmarks that time or measure memory, and waiting for the device before reading a
clock."""

from __future__ import annotations

import argparse

import torch

DEVICES = ("cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--device`; the default is CUDA where there is a GPU, else the CPU."""
    parser.add_argument("--device", choices=DEVICES, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda if a GPU is visible, else cpu)")


def check_device(parser: argparse.ArgumentParser, device: str) -> torch.device:
    """The device `--device` names (CUDA: the first GPU); a usage error when it is CUDA and no GPU is visible."""
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    return torch.device("cuda", 0)


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on `device`: CUDA kernels run asynchronously, so a clock read without this times
    the queuing, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
