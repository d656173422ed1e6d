"""A training run's folder belongs to one process at a time, and resuming it must continue the same run.

Two trainings started with one `--exp_name` would otherwise overwrite each other's checkpoints, arguments and
TensorBoard events; a resume with other arguments (learning rate, steps, data) would silently mix two runs.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Collection
from typing import IO, Any

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder."""


def lock_run_folder(run_dir: str) -> IO[str]:
    """Takes the run folder's lock for as long as the returned file stays open (the process's life).

    The lock is an `flock` on `{run_dir}/.lock`: the system releases it when its holder exits, even by `kill -9`,
    so a crashed run never leaves a stale lock. The file records the holder's process id for the message.

    Raises:
        RunFolderBusy: another process holds it.
    """
    os.makedirs(run_dir, exist_ok=True)
    handle = open(os.path.join(run_dir, LOCK_NAME), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderBusy(
            f"{run_dir} is in use by another training (process {holder}); wait for it or choose another --exp_name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def argument_changes(saved: dict[str, Any], current: dict[str, Any], may_change: Collection[str]) -> list[str]:
    """`--name saved -> current` for every argument whose value differs, except those in `may_change`."""
    names = sorted((saved.keys() | current.keys()) - set(may_change))
    missing = "(not set)"
    return [
        f"--{name} {saved.get(name, missing)} -> {current.get(name, missing)}"
        for name in names
        if saved.get(name, missing) != current.get(name, missing)
    ]
