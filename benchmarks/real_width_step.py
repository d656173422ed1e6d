"""One LISA training step at the real widths of Qwen2.5-VL-3B + SAM 2.1-hiera-tiny, random bf16 weights: step time
and peak memory.

    python -m benchmarks.real_width_step [--layers 2] [--steps 2] [--device cpu|cuda] [--threads 2]

The model: Qwen2.5-VL-3B's language model (width 2048, MLP 11008, 16 heads / 2 key-value heads, vocabulary 151936,
tied embeddings) and vision transformer (width 1280, window attention, patch merger to 2048), each cut to a few layers
(`--layers` of the 36 language-model layers, the vision tower's 32 in the same proportion; below 8 vision layers none
attends globally), with SAM 2.1-hiera-tiny as the mask head, as `benchmarks.backbones` builds them. The step is what
`train_ds.py` runs: gradient checkpointing, LoRA r 8 on the language model's q_proj / v_proj plus `lm_head` /
`embed_tokens`, SAM 2's mask decoder and the [SEG] projection trained in full (`model.peft_setup`), DeepSpeed ZeRO-2
in one process with torch's fused AdamW, bf16 — on LISA's batch: 2 images x 3 conversations, one 1024 x 768 image
each (999 image tokens at Qwen's 28-px merged patches), answers of the lengths LISA's data has (a short one, a
referring one, an explained one), one [SEG] each.

Only public interfaces are used (`processor(...)`, `model(**batch)`, `setup_trainable`), so the same script measures the
code before and after a change of how the step computes. What it reports for each step (the second is the one every later step of a run repeats: the first makes Adam's moments at its end,
2.4 GiB for the 320 M trained parameters, and warms the kernels up):
* time: wall-clock seconds, and on the CPU also processor seconds (all threads; OpenMP's idle threads sleep), which
  other jobs on a shared host do not move;
* memory before the step (weights, DeepSpeed's fp32 copies of the trained ones, Adam's moments after the first step)
  and its peak: `torch.cuda.memory_allocated` / `max_memory_allocated` on CUDA; on the CPU the process's resident set
  and its high-water mark (`VmRSS`, `VmHWM`, with freed blocks returned to the system at once, as `benchmarks.memory`
  measures), which also hold the Python/torch runtime (a few hundred MiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.backbones import qwen_3b_sam2_tiny
from benchmarks.devices import add_device_argument, check_device, synchronize
from benchmarks.memory import child_env, peak_bytes, reset_peak
from model.lisa import LisaForCausalLM
from model.losses import IGNORE_LABEL
from model.peft_setup import count_parameters, parameter_groups, setup_trainable
from model.processing import LisaBatch, LisaProcessor
from utils.cli import HelpFormatter
from utils.deepspeed_config import deepspeed_config
from utils.distributed import single_process_environment

LANGUAGE_LAYERS, VISION_LAYERS = 36, 32  # Qwen2.5-VL-3B's depths
IMAGE_SIZE = (768, 1024)  # (H, W)
GIB = 2**30
# Three conversations of the kinds LISA's mix samples (semantic, referring, ReasonSeg with an explanation). Their words
# are whole tokens of the benchmark's tokenizer, so the text takes about as many tokens as Qwen's would give it.
CONVERSATIONS = [
    [{"role": "user", "content": "<image>\nWhat is the white object in this image? Please output segmentation mask."},
     {"role": "assistant", "content": "Sure, it is [SEG]."}],
    [{"role": "user", "content": "<image>\nCan you segment the leftmost person on the road in this image?"},
     {"role": "assistant", "content": "Sure, the segmentation result is [SEG]."}],
    [{"role": "user", "content": "<image>\nWhich part of this picture has the colour of the sky? Please output "
                                 "segmentation mask and explain why."},
     {"role": "assistant", "content": "Sure, [SEG]. It is the blue part at the top of the picture, above the building "
                                      "and the road: the sky is blue, and this part is the largest blue one in the "
                                      "image, so it is the one that has the colour of the sky."}],
]


def make_batch(processor: LisaProcessor, rng: np.random.Generator) -> LisaBatch:
    """2 random 1024 x 768 images x the 3 conversations, a random rectangle as each [SEG]'s target."""
    height, width = IMAGE_SIZE
    images, masks = [], []
    for _ in range(2):
        images.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image_masks = np.zeros((len(CONVERSATIONS), height, width), dtype=bool)
        for mask in image_masks:
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[top : top + height // 3, left : left + width // 3] = True
        masks.append(image_masks)
    return processor(images, [CONVERSATIONS] * 2, masks)


def resident_bytes(device: torch.device) -> int:
    """What is held now: allocated tensors on CUDA, the resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def measure(layers: int, steps: int, device: torch.device) -> dict:
    """Runs in a child process of its own (its peak memory is the step's): builds the model and times `steps` steps."""
    import deepspeed

    single_process_environment()
    deepspeed.init_distributed()
    config, processor = qwen_3b_sam2_tiny(layers / LANGUAGE_LAYERS)
    torch.manual_seed(0)
    with device:  # built where it runs: a full-depth model initialises on the GPU in seconds
        model = LisaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()  # as train_ds.py: checkpointed blocks need an input that requires grad
    model = setup_trainable(model)
    trainable, total = count_parameters(model)
    ds_config = deepspeed_config(2, 1, 3e-4, precision="bf16", total_steps=steps, warmup_steps=1)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model), config=ds_config)
    engine.train()
    batch = make_batch(processor, np.random.default_rng(0)).to(device, torch.bfloat16)
    figures = []
    for _ in range(steps):
        reset_peak(device)
        before = resident_bytes(device)
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        synchronize(device)
        figures.append({"wall": time.perf_counter() - started, "cpu": time.process_time() - started_cpu,
                        "before": before, "peak": peak_bytes(device)})
    if not torch.isfinite(loss):
        raise RuntimeError(f"the step's loss is {loss.item()}")
    vision = config.vlm_config.vision_config
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "layers": config.vlm_config.text_config.num_hidden_layers, "vision_layers": vision.depth,
        "global_vision_layers": len(vision.fullatt_block_indexes), "parameters": total, "trainable": trainable,
        "row_tokens": batch["attention_mask"].sum(1).tolist(),
        "image_tokens": int((batch["input_ids"][0] == config.vlm_config.image_token_id).sum()),
        "labelled": int((batch["labels"] != IGNORE_LABEL).sum()), "loss": loss.item(),
        "steps": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--layers", type=int, default=2,
                        help=f"language-model layers of the {LANGUAGE_LAYERS} (the vision tower's {VISION_LAYERS} cut in "
                             "proportion); a step of 2 takes minutes on a 2-core CPU and 17 GiB, 36 is the full model "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2,
                        help="training steps on the same batch, each measured; from the second on the step holds Adam's "
                             "moments (the first makes them at its end) and finds its kernels warm, as every step of a "
                             "run does (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    add_device_argument(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: the measuring process
    args = parser.parse_args()
    if not 1 <= args.layers <= LANGUAGE_LAYERS:
        parser.error(f"--layers {args.layers}: between 1 and {LANGUAGE_LAYERS}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    device = check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    if args.child:
        torch.set_flush_denormal(True)  # random weights give denormal activations, the CPU's slow path would time them
        print(json.dumps(measure(args.layers, args.steps, device)))
        return

    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.real_width_step", "--child", "--layers", str(args.layers),
               "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    env = {**child_env(), "OMP_WAIT_POLICY": "PASSIVE"}  # waiting threads sleep: processor seconds are work
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"the measuring process failed (exit {result.returncode}):\n{result.stderr[-5000:]}")
    r = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"LISA training step at Qwen2.5-VL-3B + SAM 2.1-hiera-tiny widths on {r['device']} "
          f"({args.threads} thread(s)): "
          f"{r['layers']} of {LANGUAGE_LAYERS} language-model layers, {r['vision_layers']} of {VISION_LAYERS} vision "
          f"layers ({r['global_vision_layers']} global), {r['parameters'] / 1e9:.2f} B parameters, "
          f"{r['trainable'] / 1e6:.0f} M trainable")
    print(f"batch: 2 images x 3 conversations, {r['image_tokens']} image tokens per image, rows of {r['row_tokens']} "
          f"tokens, {r['labelled']} labelled; loss {r['loss']:.3f}")
    kind = "allocated" if r["device"] != "cpu" else "resident"
    for number, step in enumerate(r["steps"], 1):
        seconds = f"{step['wall']:.2f} s" + (f" ({step['cpu']:.1f} processor s)" if r["device"] == "cpu" else "")
        print(f"step {number}: {seconds}; memory {kind}: {step['before'] / GIB:.2f} GiB before, peak "
              f"{step['peak'] / GIB:.2f} GiB (+{(step['peak'] - step['before']) / GIB:.2f} GiB)")
    print(f"benchmark: {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
