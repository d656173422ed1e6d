"""Training-step speed and memory: samples/s and peak memory of one optimizer step of LISA's trainable setup
(LoRA + fully trained modules), tiny model, with and without gradient checkpointing.

    python -m benchmarks.train_step [--batch_size 4] [--steps 20] [--threads 2] [--device cpu|cuda]

Runs in-process with torch's AdamW (DeepSpeed's ZeRO-2 step on one CPU process adds little to this), on
synthetic toy-like batches: 64-96 px images, three conversations per image, one [SEG] each. Peak memory is
the process's peak resident set on CPU (`ru_maxrss`, which never decreases, so the two settings run in
separate processes) and `torch.cuda.max_memory_allocated` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.devices import add_device_argument, check_device, synchronize
from model.loading import load_for_training
from model.peft_setup import setup_trainable
from model.processing import LisaBatch
from model.tiny import write_tiny
from utils.cli import HelpFormatter


def make_batch(processor, batch_size: int, rng: np.random.Generator) -> LisaBatch:
    conversation = [{"role": "user", "content": "<image>\nWhat is the red circle in this image? Please output segmentation mask."},
                    {"role": "assistant", "content": "Sure, it is [SEG]."}]
    images, masks = [], []
    for _ in range(batch_size):
        height, width = rng.integers(64, 97, size=2)
        images.append(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        masks.append(rng.random((3, height, width)) > 0.5)
    return processor(images, [[conversation] * 3] * batch_size, masks)


def measure(tiny: str, batch_size: int, steps: int, checkpointing: bool, device: torch.device) -> dict:
    """Runs in a child process: one setting per process, so the peak RSS is its own."""
    model, processor = load_for_training(os.path.join(tiny, "llava"), os.path.join(tiny, "sam"), out_dim=64)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = setup_trainable(model, train_sam_encoder=True).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(0)
    batches = [make_batch(processor, batch_size, rng) for _ in range(4)]
    timings = []
    for step in range(steps + 2):  # two warm-up steps
        batch = batches[step % len(batches)].to(device, torch.float32)
        synchronize(device)
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        timings.append(time.perf_counter() - started)
    seconds = float(np.median(timings[2:]))
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"gradient_checkpointing": checkpointing, "device": device.type, "batch_size": batch_size,
            "secs_per_step": seconds, "samples_per_s": batch_size / seconds, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4, help="images per step (3 conversations each)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    add_device_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: "TINY_DIR:0|1", one measurement
    args = parser.parse_args()
    device = check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    if args.child:
        tiny, checkpointing = args.child.rsplit(":", 1)
        print(json.dumps(measure(tiny, args.batch_size, args.steps, checkpointing == "1", device)))
        return

    with tempfile.TemporaryDirectory() as tiny:
        write_tiny(tiny)
        print(f"tiny LISA on {args.device}, batch {args.batch_size} images x 3 conversations, {args.threads} thread(s), "
              f"median of {args.steps} steps")
        print(f"{'gradient checkpointing':>24} {'secs/step':>10} {'samples/s':>10} {'peak MiB':>10}")
        for checkpointing in (False, True):
            command = [sys.executable, "-m", "benchmarks.train_step", "--batch_size", str(args.batch_size), "--steps", str(args.steps),
                       "--threads", str(args.threads), "--device", args.device, "--child", f"{tiny}:{int(checkpointing)}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"{'on' if checkpointing else 'off':>24} {result['secs_per_step']:>10.4f} "
                  f"{result['samples_per_s']:>10.1f} {result['peak_mib']:>10.0f}")


if __name__ == "__main__":
    main()
