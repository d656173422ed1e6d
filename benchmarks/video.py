"""Masks through a whole video: frames per second and peak memory of memory propagation and of per-frame decoding,
at SAM 2.1-hiera-tiny's real width (random weights, 1024-px input) on a 640 x 480 video.

    python -m benchmarks.video                         # 50 and 500 frames, both ways, on the CPU
    python -m benchmarks.video --device cuda           # on a GPU
    python -m benchmarks.video --frames 20,200         # shorter videos
    python -m benchmarks.video --objects 1             # one [SEG] (the memory's work is per object)

What runs is `model.video.segment_video` after an answer with `--objects` `[SEG]` (default 2) on 4 key frames: `memory`
carries the key frames' masks with the video model (`Sam2VideoModel`, SAM 2.1-hiera-tiny's memory settings),
`per_frame` decodes the queries on every frame with the image mask head. Frames are drawn as they are read (a disc moving over noise) and
the masks are dropped once counted, as a caller writing them to disk would. Each (way, length) runs in a fresh
process; "peak" is, on the CPU, the resident-set high-water mark over the propagation (reset after building the
models), on CUDA `torch.cuda.max_memory_allocated`. Memory must not grow with the video: the last column compares
each length's peak with the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import Sam2Config, Sam2VideoConfig, Sam2VideoModel

from benchmarks.devices import add_device_argument, check_device, synchronize
from model.families import VLM_FAMILIES
from model.inference import Answer
from model.lisa import LisaConfig, LisaForCausalLM
from model.video import PROPAGATIONS, VideoAnswer, segment_video
from utils.cli import HelpFormatter

HEIGHT, WIDTH = 480, 640
KEY_FRAMES = 4
MIB = 2**20


class MovingDisc:
    """A video of `length` (H, W, 3) frames drawn when read: a disc crossing a noisy background."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(index)
        frame = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        y, x = np.ogrid[:HEIGHT, :WIDTH]
        cx = 80 + (WIDTH - 160) * index / max(self.length - 1, 1)
        frame[(y - HEIGHT / 2) ** 2 + (x - cx) ** 2 < 60**2] = (220, 40, 40)
        return frame


def build(device: torch.device) -> tuple[LisaForCausalLM, Sam2VideoModel]:
    """LISA with SAM 2.1-hiera-tiny's image model (a tiny language model: it does not run here) and the video model
    around the same image model."""
    vlm, _ = VLM_FAMILIES["qwen2_5_vl"].build_tiny()
    torch.manual_seed(0)
    lisa = LisaForCausalLM(LisaConfig(vlm_config=vlm.config, sam_config=Sam2Config(), seg_token_id=0, out_dim=256), vlm=vlm)
    sam = lisa.sam.config
    video = Sam2VideoModel(Sam2VideoConfig(
        vision_config=sam.vision_config.to_dict(), prompt_encoder_config=sam.prompt_encoder_config.to_dict(),
        mask_decoder_config=sam.mask_decoder_config.to_dict(),
    ))
    video.load_state_dict(lisa.sam.state_dict(), strict=False)
    return lisa.to(device).eval(), video.to(device).eval()


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets the resident-set high-water mark
            f.write("5")


def measure(propagate: str, length: int, objects: int, device: torch.device) -> dict:
    """Runs in a process of its own: one propagation of `objects` masks over a `length`-frame video."""
    lisa, video = build(device)
    frames = MovingDisc(length)
    key = [int((k + 0.5) * length / KEY_FRAMES) for k in range(KEY_FRAMES)]
    key_masks = torch.zeros(objects, KEY_FRAMES, HEIGHT, WIDTH, dtype=torch.bool)
    for k in range(objects):  # boxes side by side
        left = 40 + k * (WIDTH - 80) // objects
        key_masks[k, :, 180:300, left:left + (WIDTH - 80) // objects - 20] = True
    reply = VideoAnswer(
        Answer(text="", token_ids=[], masks=list(key_masks), scores=[1.0] * objects,
               queries=torch.randn(objects, 256, device=device)),
        key_frames=key,
    )
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    seen = sum(1 for _ in segment_video(lisa, frames, [reply], propagate, video_model=video))
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"frames": seen, "seconds": seconds, "peak": peak_bytes(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--frames", default="50,500", help="video lengths to measure, comma-separated (default: %(default)s)")
    parser.add_argument("--propagate", default=",".join(PROPAGATIONS), help="ways to measure (default: %(default)s)")
    parser.add_argument("--objects", type=int, default=2, help="masks carried through the video (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_device_argument(parser)
    args = parser.parse_args()
    device = check_device(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        propagate, length = args.child.split(":")
        print(json.dumps(measure(propagate, int(length), args.objects, device)))
        return
    lengths = [int(n) for n in args.frames.split(",")]
    print(f"SAM 2.1-hiera-tiny (random weights), 1024-px input, {WIDTH}x{HEIGHT} video, {args.objects} object(s), on {device}")
    print(f"{'way':>10} {'frames':>7} {'frames/s':>9} {'peak MiB':>9} {'peak vs first':>14}")
    for propagate in args.propagate.split(","):
        first = None
        for length in lengths:
            command = [sys.executable, "-m", "benchmarks.video", "--child", f"{propagate}:{length}", "--device", args.device,
                       "--objects", str(args.objects)]
            command += ["--threads", str(args.threads)] if args.threads else []
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            first = first or result["peak"]
            print(f"{propagate:>10} {result['frames']:>7} {result['frames'] / result['seconds']:>9.2f} "
                  f"{result['peak'] / MIB:>9.0f} {result['peak'] / first:>13.2f}x", flush=True)


if __name__ == "__main__":
    main()
