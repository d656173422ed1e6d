"""DeepSpeed checkpoints that survive being killed mid-save.

A run directory's `ckpt_model/` holds DeepSpeed tag folders (`global_step{N}/`: ZeRO shards, module weights,
optimizer and scheduler state, our client state) and small pointer files naming a tag:
* `latest` — the checkpoint `--auto_resume` continues from (DeepSpeed's own name, so `zero_to_fp32.py` and
  `load_checkpoint` find it too);
* `best` — the checkpoint with the best validation gIoU (`best.json` holds its metrics).
A new checkpoint is written into a fresh tag folder first; the pointers move only once every rank has finished
writing, by an atomic rename. A process killed while saving thus leaves the pointers on the previous, complete
checkpoint; the half-written folder is removed by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from utils.distributed import barrier, is_main

LATEST = "latest"
BEST = "best"
TRAIN_ARGS_FILE = "train_args.json"  # a run's flags, beside its checkpoints: what merging needs to rebuild the model


def step_tag(global_step: int) -> str:
    return f"global_step{global_step}"


def tag_step(tag: str) -> int:
    """The optimizer step a `global_step{N}` tag was saved at."""
    return int(tag.removeprefix("global_step"))


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` so that a reader sees either the old or the new content, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_pointer(ckpt_dir: str, name: str = LATEST) -> str | None:
    """The tag a pointer file names, or None when there is none (or it names a missing folder)."""
    path = os.path.join(ckpt_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    return tag if tag and os.path.isdir(os.path.join(ckpt_dir, tag)) else None


def read_best(ckpt_dir: str) -> dict[str, Any] | None:
    """`{"tag", "giou", "ciou", "epoch"}` of the best checkpoint so far, or None."""
    path = os.path.join(ckpt_dir, BEST + ".json")
    if read_pointer(ckpt_dir, BEST) is None or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_checkpoint(engine, ckpt_dir: str, global_step: int, client_state: dict[str, Any], best: dict[str, Any] | None = None) -> str:
    """Saves the engine's full training state as tag `global_step{N}` and points `latest` at it.

    Called by every rank (each writes its ZeRO shard). `best` (the new best metrics, with no "tag") also
    moves the `best` pointer here. Tags that no pointer names any more are deleted.

    Returns:
        the tag.
    """
    tag = step_tag(global_step)
    try:
        engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
    except (OSError, RuntimeError) as error:
        # torch.save reports a full disk as "[enforce fail at inline_container.cc] ... file write failed".
        kept = read_pointer(ckpt_dir, LATEST)
        raise RuntimeError(
            f"could not write checkpoint {os.path.join(ckpt_dir, tag)}: disk full? ({error}). "
            + (f"The previous checkpoint {kept} is intact." if kept else "No earlier checkpoint exists.")
        ) from error
    barrier()  # every shard is on disk before any pointer names it
    if is_main():
        if best is not None:
            write_atomic(os.path.join(ckpt_dir, BEST + ".json"), json.dumps({**best, "tag": tag}, indent=2))
            write_atomic(os.path.join(ckpt_dir, BEST), tag)
        write_atomic(os.path.join(ckpt_dir, LATEST), tag)
        keep = {tag, read_pointer(ckpt_dir, BEST)}
        for name in os.listdir(ckpt_dir):
            if name.startswith("global_step") and name not in keep:
                shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
    barrier()
    return tag
