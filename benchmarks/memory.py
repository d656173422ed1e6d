"""Peak memory of one LISA-7B training step, bf16 LoRA against QLoRA (4-bit NF4 language model), at the real widths.

    python -m benchmarks.memory                  # CPU: 1- and 2-layer language models, extrapolated to 32 layers
    python -m benchmarks.memory --layers 32      # a GPU (--device cuda, the default there): the full depth, measured

The model is LISA-7B's shape with random weights (nothing is downloaded): CLIP ViT-L/14 at 336 px (576 image
tokens), LLaMA-7B (width 4096, 32 heads, MLP 11008, vocabulary 32k), SAM ViT-H at 1024 px. One step is what
`train_ds.py` runs — DeepSpeed ZeRO-2 in one process, LoRA r 8 on q/v plus `lm_head`, `embed_tokens`, SAM's mask
decoder and the [SEG] projection trained in full, torch's fused AdamW, gradient checkpointing — at LISA's batch:
2 images x 3 conversations, each conversation 576 image tokens plus `--text_tokens` of text with one [SEG].

Each configuration runs in a fresh process, once with a 1-layer language model and once with `--layers` layers:
the difference is the memory per language-model layer, and what is left of the 1-layer figure is the fixed part
(CLIP, SAM, embeddings and head, optimizer state of the fully trained modules, activations outside the layers).
The full-depth peak is fixed + 32 x per layer. What "peak" is:
* CUDA: `torch.cuda.max_memory_allocated` over the step (tensors only; the caching allocator reserves more);
* CPU: the process's resident-set high-water mark over the step (`VmHWM`, reset after building the model), with
  malloc returning large blocks to the system as they are freed; it also holds the Python/torch runtime and
  libraries (a few hundred MiB, in the fixed part), so it is an upper bound on what the step's tensors need.
The ZeRO-2 column divides DeepSpeed's partitioned state — fp32 master weights, Adam moments and fp32 gradients,
16 bytes per trainable parameter — among 8 GPUs; the rest stays per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, SamConfig, SamVisionConfig

from benchmarks.devices import add_device_argument, check_device
from model.families import MASK_HEAD_FAMILIES, VLM_FAMILIES
from model.families.llava import LlavaImageInputs
from model.lisa import LisaConfig, LisaForCausalLM
from model.loading import add_seg_token, load_lisa
from model.peft_setup import count_parameters, parameter_groups, setup_trainable
from model.processing import LisaProcessor
from utils.cli import HelpFormatter
from utils.deepspeed_config import deepspeed_config

FULL_DEPTH = 32  # LLaMA-7B's layers
VOCAB = 32000
IMAGE_TOKEN_ID, SEG_TOKEN_ID = VOCAB, VOCAB + 1  # as LLaVA-1.5 and LISA add them after the base vocabulary
GIB = 2**30


def lisa_7b_config(layers: int) -> LisaConfig:
    """LISA-7B's architecture (LLaVA-1.5-7B + SAM ViT-H) with `layers` language-model layers."""
    clip = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768)
    llama = LlamaConfig(vocab_size=VOCAB + 2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    llava = LlavaConfig(vision_config=clip, text_config=llama, image_token_index=IMAGE_TOKEN_ID, image_seq_length=576,
                        vision_feature_layer=-2, vision_feature_select_strategy="default")
    sam = SamConfig(vision_config=SamVisionConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31],
        output_channels=256, image_size=1024, patch_size=16, window_size=14, mlp_dim=5120,
    ))
    return LisaConfig(vlm_config=llava, sam_config=sam, seg_token_id=SEG_TOKEN_ID, out_dim=256)


def write_model(folder: str, layers: int) -> None:
    """A random LISA-7B-shaped folder (bf16), so that both configurations load through `load_lisa`. Its processor is
    the tiny model's (the batch is built here, not tokenized)."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    LisaForCausalLM(lisa_7b_config(layers)).save_pretrained(folder)
    torch.set_default_dtype(torch.float32)
    llava, sam = VLM_FAMILIES["llava"], MASK_HEAD_FAMILIES["sam"]
    llava_processor = llava.build_tiny()[1]
    add_seg_token(llava_processor.tokenizer)
    LisaProcessor(llava_processor, sam_image_size=1024, vlm_family=llava, sam_family=sam).save_pretrained(folder)


def make_batch(text_tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    """LISA's batch: 2 images x 3 conversations; each row 576 image tokens, then text ending "[SEG] ." labelled."""
    images, rows, image_tokens = 2, 6, 576
    length = image_tokens + text_tokens
    input_ids = torch.randint(0, VOCAB, (rows, length))
    input_ids[:, 5 : 5 + image_tokens] = IMAGE_TOKEN_ID
    input_ids[:, -2] = SEG_TOKEN_ID
    labels = torch.full_like(input_ids, -100)
    labels[:, -text_tokens // 3 :] = input_ids[:, -text_tokens // 3 :]
    original = (480, 640)
    return {
        "input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device),
        "image_inputs": LlavaImageInputs(
            token_counts=(image_tokens,) * images, pixel_values=torch.randn(images, 3, 336, 336, device=device, dtype=dtype)
        ),
        "sam_pixel_values": torch.randn(images, 3, 1024, 1024, device=device, dtype=dtype),
        "image_index": torch.arange(images).repeat_interleave(rows // images).to(device),
        "resized_sizes": torch.tensor([[768, 1024]] * images, device=device),
        "original_sizes": torch.tensor([original] * images, device=device),
        "labels": labels.to(device),
        "masks": [torch.rand(rows // images, *original, device=device) > 0.5 for _ in range(images)],
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the resident-set high-water mark (VmHWM)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child_env() -> dict[str, str]:
    """On the CPU, glibc's malloc keeps freed heap memory resident, so the high-water mark would also count memory
    freed long before the peak. Serving every allocation over 64 KiB by mmap, returned to the system when freed,
    makes resident memory follow the live tensors."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}


def measure(folder: str, quantization: str | None, text_tokens: int, device: torch.device) -> dict:
    """One training step of the model in `folder` (in a child process of its own). Peaks in bytes."""
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    deepspeed.init_distributed()
    model, _ = load_lisa(folder, dtype=torch.bfloat16, quantization=quantization, device=device)
    model.to(device)
    if device.type == "cpu":
        # Loaded tensors can be views of the memory-mapped weights file, whose pages then count as resident for as
        # long as any view lives (for QLoRA: the whole bf16 file, next to its 4-bit copy). Copies of their own make
        # resident memory the model's.
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = setup_trainable(model)
    trainable, _ = count_parameters(model)
    config = deepspeed_config(2, 1, 3e-4, precision="bf16", total_steps=10, warmup_steps=1)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model), config=config)
    engine.train()  # loaded models are in eval mode, where gradient checkpointing is off
    batch = make_batch(text_tokens, device, torch.bfloat16)
    reset_peak(device)
    started = time.perf_counter()
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    return {"peak": peak_bytes(device), "trainable": trainable, "seconds": time.perf_counter() - started,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--layers", type=int, default=2,
                        help="language-model depth of the second run (the first has 1): 2 on a CPU, 32 on a GPU "
                             "(default: %(default)s)")
    parser.add_argument("--text_tokens", type=int, default=100,
                        help="text tokens per conversation besides the 576 image tokens (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    add_device_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: "FOLDER:lora|qlora", one measurement
    args = parser.parse_args()
    if args.layers < 2:
        parser.error("--layers must be >= 2 (the per-layer figure is the difference to a 1-layer run)")
    device = check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    if args.child:
        folder, setting = args.child.rsplit(":", 1)
        print(json.dumps(measure(folder, "4bit" if setting == "qlora" else None, args.text_tokens, device)))
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (1, args.layers):
            folder = os.path.join(tmp, f"lisa-7b-{layers}")
            write_model(folder, layers)
            for setting in ("lora", "qlora"):
                command = [sys.executable, "-m", "benchmarks.memory", "--text_tokens", str(args.text_tokens),
                           "--threads", str(args.threads), "--device", args.device, "--child", f"{folder}:{setting}"]
                out = subprocess.run(command, check=True, capture_output=True, text=True, env=child_env()).stdout
                results[setting, layers] = json.loads(out.strip().splitlines()[-1])
            shutil.rmtree(folder)  # 3-4 GB each

    device = results["lora", 1]["device"]
    print(f"LISA-7B training step (2 images x 3 conversations, {576 + args.text_tokens} tokens each, gradient "
          f"checkpointing, ZeRO-2, bf16) on {device}; peak = "
          f"{'max_memory_allocated' if device != 'cpu' else 'resident-set high-water mark of the step'}")
    print(f"{'':>6} {'1 layer':>9} {f'{args.layers} layers':>10} {'per layer':>10} {'fixed':>8} "
          f"{f'{FULL_DEPTH} layers':>10} {'ZeRO-2 x8':>10} {'trainable':>11} {'step s':>7}   (GiB)")
    for setting in ("lora", "qlora"):
        one, deep = results[setting, 1], results[setting, args.layers]
        per_layer = (deep["peak"] - one["peak"]) / (args.layers - 1)
        fixed = one["peak"] - per_layer
        full = fixed + FULL_DEPTH * per_layer
        # ZeRO-2 partitions fp32 master weights, Adam's two moments and fp32 gradients: 16 bytes per trainable parameter.
        trainable = deep["trainable"] + (FULL_DEPTH - args.layers) * (deep["trainable"] - one["trainable"]) / (args.layers - 1)
        zero2 = full - 7 / 8 * 16 * trainable
        print(f"{'bf16' if setting == 'lora' else 'QLoRA':>6} {one['peak'] / GIB:>9.2f} {deep['peak'] / GIB:>10.2f} "
              f"{per_layer / GIB:>10.3f} {fixed / GIB:>8.2f} {full / GIB:>10.2f} {zero2 / GIB:>10.2f} "
              f"{trainable / 1e6:>10.1f}M {deep['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
