"""Builders shared by the test files: a tiny model that emits `[SEG]` on cue, ReasonSeg folders in the real on-disk
format, photos stored turned, as phones store them; training runs of the scripts and what they leave."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import torch
from PIL import ExifTags, Image

from model.loading import load_lisa, save_lisa
from model.processing import LisaBatch
from utils.checkpoint import LATEST, read_pointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    """A TCP port no one listens on now, for a launcher's rendezvous or a server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_turned_photo(path: str, stored: np.ndarray) -> None:
    """A JPEG whose pixels are `stored` (h, w, 3) and whose EXIF says to turn them 90 degrees clockwise for display
    (Orientation 6, what a phone held upright writes): it is displayed (w, h)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(path, exif=exif)


def write_seg_emitter(lisa_dir: str, out_dir: str, after_seg: str | None = ".") -> str:
    """A copy of the tiny LISA whose greedy answer is fixed: `[SEG]` first, then `after_seg`, then `[SEG]`
    again, ... (`after_seg=None`: end of turn right after the first `[SEG]`, i.e. exactly one mask).

    A random tiny model almost never emits `[SEG]`, so mask writing could not be tested deterministically.
    Here every decoder layer adds nothing (o_proj and down_proj are zero), so the last hidden state depends
    only on the current token; all tokens share one embedding v except `[SEG]` (u, orthogonal to v), and
    the output head scores `[SEG]` by v and the follow-up token by u. SAM stays random, so masks still
    depend on the image.
    """
    model, processor = load_lisa(lisa_dir)
    tokenizer = processor.tokenizer
    seg = processor.seg_token_id
    follow = tokenizer.eos_token_id if after_seg is None else tokenizer.convert_tokens_to_ids(after_seg)
    language_model = model.vlm.model.language_model
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.get_input_embeddings().weight
        hidden = embed.shape[1]
        v = torch.ones(hidden)
        u = torch.tensor([(-1.0) ** i for i in range(hidden)])
        embed.copy_(v.expand_as(embed))
        embed[seg] = u
        head = model.get_output_embeddings().weight
        head.zero_()
        head[seg] = v
        head[follow] = u
    save_lisa(model, processor, out_dir)
    return out_dir


def write_reason_seg(root: str, split: str, items: list[dict]) -> str:
    """Writes `root/reason_seg/ReasonSeg/{split}/{name}.jpg + .json` for each item
    `{"name", "size": (h, w), "texts", "is_sentence", "shapes": [(label, points)], "seed"}`; returns `root`."""
    folder = os.path.join(root, "reason_seg", "ReasonSeg", split)
    os.makedirs(folder, exist_ok=True)
    for item in items:
        h, w = item["size"]
        pixels = np.random.default_rng(item.get("seed", 0)).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, item["name"] + ".jpg"))
        anno = {
            "text": item["texts"],
            "is_sentence": item["is_sentence"],
            "shapes": [{"label": label, "points": points} for label, points in item["shapes"]],
        }
        with open(os.path.join(folder, item["name"] + ".json"), "w") as f:
            json.dump(anno, f)
    return root


def reason_seg_items(count: int, seed: int = 0) -> list[dict]:
    """`count` random samples, alternating short and long queries, each with a target and an ignore region."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        h, w = int(rng.integers(24, 60)), int(rng.integers(24, 60))
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(w // 2, w)), int(rng.integers(h // 2, h))
        items.append({
            "name": f"img{i:03d}",
            "size": (h, w),
            "texts": [f"the red object number {i}", f"another wording {i}"],
            "is_sentence": i % 2 == 1,
            "shapes": [
                ("target", [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]),
                ("ignore", [[0, 0], [w // 4, 0], [w // 4, h // 4]]),
            ],
            "seed": i,
        })
    return items


def train_command(tiny_dir, toy_dir, run_dir, *extra: str, nproc: int = 1, launcher: str = "deepspeed", vlm: str = "llava",
                  sam: str = "sam", gradient_checkpointing: bool = False) -> list[str]:
    if launcher == "deepspeed":
        head = [os.path.join(BIN, "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port())]
    else:
        head = [os.path.join(BIN, "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    return head + [
        "train_ds.py", "--version", str(tiny_dir / vlm), "--vision_pretrained", str(tiny_dir / sam),
        "--out_dim", "64", "--dataset_dir", str(toy_dir), "--precision", "fp32", "--workers", "0",
        "--log_base_dir", str(run_dir.parent), "--exp_name", run_dir.name, "--batch_size", "2",
        "--grad_accumulation_steps", "2", "--warmup_steps", "2", "--lr", "1e-3",
        "--gradient_checkpointing" if gradient_checkpointing else "--no_gradient_checkpointing", *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def run(command: list[str], succeed: bool = True) -> str:
    """The command's output; it must exit 0 (`succeed`) or fail."""
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == succeed, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def final_weights(ckpt_dir) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=read_pointer(str(ckpt_dir), LATEST))


def toy_batch(processor, seed: int = 0) -> LisaBatch:
    """Two images, three conversations, three [SEG] with random target masks."""
    rng = np.random.default_rng(seed)
    items = []
    for n in (1, 2):
        image = rng.integers(0, 255, (48 + 8 * n, 64, 3), dtype=np.uint8)
        conversations = [
            [{"role": "user", "content": "<image>\nWhat is the red circle in this image?"},
             {"role": "assistant", "content": "It is [SEG]."}]
        ] * n
        masks = rng.random((n, *image.shape[:2])) > 0.5
        items.append(processor.process_sample(image, conversations, masks, sample_id=f"img{n}"))
    return processor.collate(items)
