"""Per-answer latency and peak memory of LISA pairs at their real widths, random weights, side by side:
LLaVA-1.5-7B + SAM ViT-H (the original's) against Qwen2.5-VL-3B, Qwen3-VL-4B, Qwen3.5-0.8B and InternVL3-2B, each +
SAM 2.1-hiera-tiny, and Qwen2.5-VL-3B + the SAM 3 tracker.

    python -m benchmarks.backbones [--fractions 0.25,0.5] [--image_size 480,640] [--new_tokens 16] [--threads 2]
                                   [--device cpu|cuda] [--pairs qwen3_5]

One answer is what `chat.py` does for a question about an image: preprocessing, the vision tower, the prompt, the
KV-cached generation of `--new_tokens` tokens (a `[SEG]` among them), SAM's image encoder and mask decoder, masks back
at the image's size. All pairs answer the same question about the same image, each in its family's default chat
format; bf16 weights (`--dtype`).

Depth cut: a full 7B model does not fit a small machine's time (or memory), so each deep stack — the language model,
the vision tower, SAM's ViT — is built with a fraction of its layers (`--fractions`, global-attention layers kept in
their proportion), and time and memory are extrapolated to full depth by a straight line through the measured
fractions: both grow linearly with the number of layers, and what does not grow with it (embeddings, output head,
SAM 2's small Hiera encoder, which is never cut, the process itself) stays in the intercept. `--fractions 1` measures
the full models (a GPU). Each fraction of each pair runs in its own process, so its peak memory is its own: the
process's peak resident set on the CPU (weights, activations and the Python/torch runtime), `torch.cuda.max_memory_allocated`
on CUDA.

Time: the wall-clock seconds of the best answer, and on the CPU also the processor seconds the answer took (all
threads, OpenMP's idle threads sleeping rather than spinning). On a host shared with other jobs the wall clock
measures the neighbours as much as the model; processor seconds measure the work, and the CPU ratio uses them.
Denormal floats are flushed to zero: random weights give activations a trained model does not have, and the CPU's slow
path for denormals would time those.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen3VLConfig,
    Qwen3_5Config,
    Sam2Config,
    SamConfig,
    Sam3TrackerConfig,
    Sam3ViTConfig,
    Sam3VisionConfig,
    SamVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX, Qwen3_5Tokenizer

from benchmarks.devices import add_device_argument, check_device, synchronize
from model.families import CHAT_TEMPLATES, MASK_HEAD_FAMILIES, VLM_FAMILIES
from model.families.internvl import CONTEXT_IMAGE, InternVLTextImageProcessor, tiny_tokenizer
from model.families.qwen2_5_vl import QwenVLTextImageProcessor, qwen_token_ids
from model.families.sam3_tracker import tracker_config
from model.inference import answer
from model.lisa import LisaConfig, LisaForCausalLM
from model.loading import PRECISIONS, add_seg_token
from model.processing import LisaProcessor
from model.tiny import build_qwen_tokenizer, build_tokenizer

QUESTION = "<image>\nWhat is the object that keeps the food cold in this kitchen? Please output segmentation mask."


def cut(layers: int, fraction: float) -> int:
    return max(1, round(layers * fraction))


def llava_7b_sam_vit_h(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`llava-hf/llava-1.5-7b-hf` + `facebook/sam-vit-huge`, their stacks cut to `fraction` of their depth."""
    tokenizer = build_tokenizer()  # the vocabulary size is the real one below; the ids used are all inside it
    seg_token_id = add_seg_token(tokenizer)
    clip = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=cut(24, fraction), num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    llama = LlamaConfig(
        vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=cut(32, fraction),
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vlm = LlavaConfig(
        vision_config=clip, text_config=llama, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    sam_layers = cut(32, fraction)
    sam = SamConfig(vision_config=SamVisionConfig(
        hidden_size=1280, num_hidden_layers=sam_layers, num_attention_heads=16, mlp_dim=5120, output_channels=256,
        # ViT-H's every 8th layer attends globally (7, 15, 23, 31), the others in 14 x 14 windows.
        global_attn_indexes=[i for i in range(sam_layers) if i % 8 == 7], window_size=14,
    ))
    processor = LisaProcessor(
        LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
            tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATES["llava_1_5"],
        ),
        sam_image_size=1024, vlm_family=VLM_FAMILIES["llava"], sam_family=MASK_HEAD_FAMILIES["sam"],
    )
    return LisaConfig(vlm_config=vlm, sam_config=sam, seg_token_id=seg_token_id, out_dim=256), processor


def qwen_3b_sam2_tiny(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`Qwen/Qwen2.5-VL-3B-Instruct` + `facebook/sam2.1-hiera-tiny`, the Qwen stacks cut to `fraction` of their
    depth (SAM 2's Hiera is small and kept whole)."""
    tokenizer = build_qwen_tokenizer()
    seg_token_id = add_seg_token(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["qwen2_5_vl"]
    vision_layers = cut(32, fraction)
    vlm = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=cut(36, fraction),
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        ),
        vision_config=dict(
            depth=vision_layers, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
            # Every 8th block attends over the whole image, the others in windows.
            fullatt_block_indexes=[i for i in range(vision_layers) if i % 8 == 7],
        ),
        **qwen_token_ids(tokenizer),
        tie_word_embeddings=True,
    )
    # Qwen's default pixel budget (up to 1280 tokens an image) and SAM 2.1-hiera-tiny's configuration.
    processor = LisaProcessor(
        QwenVLTextImageProcessor(tokenizer, Qwen2VLImageProcessorPil()), sam_image_size=1024,
        vlm_family=VLM_FAMILIES["qwen2_5_vl"], sam_family=MASK_HEAD_FAMILIES["sam2"],
    )
    return LisaConfig(vlm_config=vlm, sam_config=Sam2Config(), seg_token_id=seg_token_id, out_dim=256), processor


def qwen3_4b_sam2_tiny(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`Qwen/Qwen3-VL-4B-Instruct` + `facebook/sam2.1-hiera-tiny`, the Qwen stacks cut to `fraction` of their depth;
    the three DeepStack vision layers (5, 11, 17 of 24) stay at the same relative depths."""
    tokenizer = build_qwen_tokenizer()
    seg_token_id = add_seg_token(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["qwen3_vl"]
    vlm = Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=cut(36, fraction),
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True},
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        ),
        vision_config=dict(
            depth=cut(24, fraction), hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            deepstack_visual_indexes=[cut(layer + 1, fraction) - 1 for layer in (5, 11, 17)],
        ),
        **qwen_token_ids(tokenizer),
        tie_word_embeddings=True,
    )
    # Qwen3-VL's image processor: 16-px patches, pixels to [-1, 1], the same default pixel budget.
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LisaProcessor(
        QwenVLTextImageProcessor(tokenizer, image_processor), sam_image_size=1024, vlm_family=VLM_FAMILIES["qwen3_vl"],
        sam_family=MASK_HEAD_FAMILIES["sam2"],
    )
    return LisaConfig(vlm_config=vlm, sam_config=Sam2Config(), seg_token_id=seg_token_id, out_dim=256), processor


def qwen3_5_0_8b_sam2_tiny(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`Qwen/Qwen3.5-0.8B` + `facebook/sam2.1-hiera-tiny`, the Qwen stacks cut to `fraction` of their depth. Its 24
    language-model layers are 6 x (3 Gated DeltaNet, 1 full attention); a cut keeps that pattern from the first layer,
    which a quarter (6 layers: 5 DeltaNet, 1 full) cannot hold exactly: the extrapolation from 0.25 and 0.5 then counts
    one full-attention layer more and one DeltaNet layer fewer than the model has. `--fractions 0.5,1` measures it
    without that error (0.5 holds the pattern)."""
    tokenizer = build_qwen_tokenizer(Qwen3_5Tokenizer, PRETOKENIZE_REGEX)
    tokenizer.add_tokens(["<think>", "</think>"])
    seg_token_id = add_seg_token(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["qwen3_5"]
    vlm = Qwen3_5Config(
        text_config=dict(
            vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=cut(24, fraction),
            num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
            linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
            max_position_embeddings=262144, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                             "mrope_section": [11, 11, 10], "mrope_interleaved": True},
            eos_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        ),
        vision_config=dict(
            depth=cut(12, fraction), hidden_size=768, intermediate_size=3072, num_heads=12, out_hidden_size=1024,
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
        ),
        **qwen_token_ids(tokenizer),
        tie_word_embeddings=True,
    )
    # Qwen3-VL's image processor settings (16-px patches, pixels to [-1, 1]).
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LisaProcessor(
        QwenVLTextImageProcessor(tokenizer, image_processor), sam_image_size=1024, vlm_family=VLM_FAMILIES["qwen3_5"],
        sam_family=MASK_HEAD_FAMILIES["sam2"],
    )
    return LisaConfig(vlm_config=vlm, sam_config=Sam2Config(), seg_token_id=seg_token_id, out_dim=256), processor


def internvl3_2b_sam2_tiny(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`OpenGVLab/InternVL3-2B-hf` + `facebook/sam2.1-hiera-tiny`, InternViT-300M and the Qwen2.5-1.5B-wide language
    model cut to `fraction` of their depth; the image in the family's default tile cap (4 tiles + thumbnail)."""
    tokenizer = tiny_tokenizer()
    seg_token_id = add_seg_token(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["internvl3"]
    vlm = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=1024, num_hidden_layers=cut(24, fraction), num_attention_heads=16, intermediate_size=4096,
            image_size=448, patch_size=14, attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
            layer_norm_eps=1e-6, layer_scale_init_value=0.1, use_mean_pooling=True,
        ),
        text_config=Qwen2Config(
            # 151,674 rows, all the tokenizer's: [SEG] grows them to the next multiple of 64.
            vocab_size=151680, hidden_size=1536, intermediate_size=8960, num_hidden_layers=cut(28, fraction),
            num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(CONTEXT_IMAGE), image_seq_length=256, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    # The hub's image processor (448-px tiles, at most 12), capped as training init caps it.
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        resample=3, max_patches=12,
    )
    family = VLM_FAMILIES["internvl"]
    vlm_processor = InternVLTextImageProcessor(tokenizer, image_processor, image_seq_length=256)
    family.set_max_pixels(vlm_processor, None)
    processor = LisaProcessor(vlm_processor, sam_image_size=1024, vlm_family=family, sam_family=MASK_HEAD_FAMILIES["sam2"])
    return LisaConfig(vlm_config=vlm, sam_config=Sam2Config(), seg_token_id=seg_token_id, out_dim=256), processor


def qwen_3b_sam3_tracker(fraction: float) -> tuple[LisaConfig, LisaProcessor]:
    """`Qwen/Qwen2.5-VL-3B-Instruct` (as above) + `facebook/sam3`'s tracker (1008 px, its 1024-wide ViT of 32 layers,
    every 8th global), the Qwen stacks and the ViT cut to `fraction` of their depth."""
    config, processor = qwen_3b_sam2_tiny(fraction)
    layers = cut(32, fraction)
    vit = Sam3ViTConfig(num_hidden_layers=layers, global_attn_indexes=[i for i in range(layers) if i % 8 == 7])
    sam = tracker_config(Sam3TrackerConfig(vision_config=Sam3VisionConfig(backbone_config=vit)))
    processor = LisaProcessor(processor.vlm_processor, sam_image_size=1008, vlm_family=VLM_FAMILIES["qwen2_5_vl"],
                              sam_family=MASK_HEAD_FAMILIES["sam3_tracker"])
    return LisaConfig(vlm_config=config.vlm_config, sam_config=sam, seg_token_id=config.seg_token_id, out_dim=256), processor


# By the name of the family that sets the pair apart (`--pairs`).
PAIRS = {
    "llava": ("LLaVA-1.5-7B + SAM ViT-H", llava_7b_sam_vit_h),
    "qwen2_5_vl": ("Qwen2.5-VL-3B + SAM 2.1-hiera-tiny", qwen_3b_sam2_tiny),
    "qwen3_vl": ("Qwen3-VL-4B + SAM 2.1-hiera-tiny", qwen3_4b_sam2_tiny),
    "qwen3_5": ("Qwen3.5-0.8B + SAM 2.1-hiera-tiny", qwen3_5_0_8b_sam2_tiny),
    "internvl": ("InternVL3-2B + SAM 2.1-hiera-tiny", internvl3_2b_sam2_tiny),
    "sam3_tracker": ("Qwen2.5-VL-3B + SAM 3 tracker", qwen_3b_sam3_tracker),
}


class FixedAnswer(LogitsProcessor):
    """Forces `[SEG]` as the second token and the end of turn as the last, so both pairs answer alike."""

    def __init__(self, prompt_length: int, new_tokens: int, seg_token_id: int, eos_token_id: int):
        self.prompt_length, self.new_tokens, self.seg, self.eos = prompt_length, new_tokens, seg_token_id, eos_token_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        scores = scores.clone()
        scores[:, self.eos] = -1e9
        forced = {1: self.seg, self.new_tokens - 1: self.eos}.get(step)
        if forced is not None:
            scores[:, forced] = 1e9
        return scores


def measure(pair: str, fraction: float, height: int, width: int, new_tokens: int, repeats: int, dtype: torch.dtype,
            device: torch.device) -> dict:
    """Runs in a child process: one pair at one depth per process, so the peak memory is its own."""
    config, processor = PAIRS[pair][1](fraction)
    torch.manual_seed(0)
    model = LisaForCausalLM._from_config(config, dtype=dtype).to(device).eval()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": QUESTION}]
    prompt_length = processor([image], [[messages]], add_generation_prompt=True)["input_ids"].shape[1]
    force = LogitsProcessorList([FixedAnswer(prompt_length, new_tokens, processor.seg_token_id, processor.tokenizer.eos_token_id)])
    wall, processor_seconds = [], []
    for _ in range(repeats + 1):  # one warm-up answer
        started, started_cpu = time.perf_counter(), time.process_time()
        (reply,) = answer(model, processor, [image], [messages], max_new_tokens=new_tokens, logits_processor=force)
        synchronize(device)
        wall.append(time.perf_counter() - started)
        processor_seconds.append(time.process_time() - started_cpu)
    assert len(reply.token_ids) == new_tokens and len(reply.masks) == 1 and reply.masks[0].shape == (height, width)
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": min(wall[1:]), "cpu_seconds": min(processor_seconds[1:]), "peak_gib": peak_gib,
            "prompt_tokens": prompt_length, "parameters": sum(p.numel() for p in model.parameters()), "device": device.type}


def extrapolate(fractions: list[float], values: list[float]) -> float:
    """The value at full depth (fraction 1) of the least-squares line through (fraction, value)."""
    if fractions == [1.0]:
        return values[0]
    slope, intercept = np.polyfit(fractions, values, 1)
    return float(slope + intercept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", default="0.25,0.5",
                        help="depth fractions measured, comma-separated; '1' measures the full models (default on CPU: "
                             "0.25,0.5, extrapolated to 1)")
    parser.add_argument("--image_size", default="480,640", help="height,width of the image (a COCO-sized photo)")
    parser.add_argument("--new_tokens", type=int, default=16, help="tokens of each answer (one [SEG] among them)")
    parser.add_argument("--repeats", type=int, default=2, help="timed answers per setting after a warm-up (the best is kept)")
    parser.add_argument("--dtype", default="bf16", choices=list(PRECISIONS), help="weights' dtype")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    add_device_argument(parser)
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help="the pairs measured, by VLM family, comma-separated; time and memory ratios are to the "
                             "first (default: all, %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: "PAIR|FRACTION", one measurement
    args = parser.parse_args()
    device = check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    height, width = (int(v) for v in args.image_size.split(","))
    if args.child:
        pair, fraction = args.child.split("|")
        print(json.dumps(measure(pair, float(fraction), height, width, args.new_tokens, args.repeats, PRECISIONS[args.dtype],
                                 device)))
        return

    pairs = [name.strip() for name in args.pairs.split(",") if name.strip()]
    if not pairs or any(name not in PAIRS for name in pairs):
        parser.error(f"--pairs: comma-separated names of {', '.join(PAIRS)}")
    fractions = [float(f) for f in args.fractions.split(",")]
    if fractions != [1.0] and (len(set(fractions)) < 2 or any((4 * f) % 1 or not 0 < f <= 1 for f in fractions)):
        # Quarters of the depth keep the every-8th global-attention layers of SAM's ViT-H and Qwen's ViT in proportion.
        parser.error("--fractions: '1', or at least two different multiples of 0.25 up to 1")
    print(f"one answer of {args.new_tokens} tokens about a {height} x {width} image, {args.dtype} weights, on {args.device}, "
          f"{args.threads} thread(s); depth fractions {fractions}")
    print(f"{'pair':36} {'depth':>6} {'params':>8} {'prompt':>7} {'wall s':>8} {'CPU s':>8} {'peak GiB':>9}")
    keys = ("seconds", "cpu_seconds", "peak_gib", "parameters")
    full = {}
    for key in pairs:
        pair = PAIRS[key][0]
        results = []
        for fraction in fractions:
            command = [sys.executable, "-m", "benchmarks.backbones", "--child", f"{key}|{fraction}",
                       "--image_size", args.image_size, "--new_tokens", str(args.new_tokens),
                       "--repeats", str(args.repeats), "--dtype", args.dtype, "--threads", str(args.threads),
                       "--device", args.device]
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # waiting threads sleep: processor seconds are work
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            results.append(result := json.loads(out.strip().splitlines()[-1]))
            print(f"{pair:36} {fraction:>6.3g} {result['parameters'] / 1e9:>7.2f}B {result['prompt_tokens']:>7} "
                  f"{result['seconds']:>8.2f} {result['cpu_seconds']:>8.2f} {result['peak_gib']:>9.2f}", flush=True)
        full[pair] = {key: extrapolate(fractions, [r[key] for r in results]) for key in keys}
        if fractions != [1.0]:
            print(f"{pair:36} {'1 (ex)':>6} {full[pair]['parameters'] / 1e9:>7.2f}B {'':>7} {full[pair]['seconds']:>8.2f} "
                  f"{full[pair]['cpu_seconds']:>8.2f} {full[pair]['peak_gib']:>9.2f}")
    (original, old), *others = full.items()
    time_key = "cpu_seconds" if results[0]["device"] == "cpu" else "seconds"
    for pair, new in others:
        print(f"{pair} / {original} at full depth: time {new[time_key] / old[time_key]:.2f}x "
              f"({'processor' if time_key == 'cpu_seconds' else 'wall'} seconds), peak memory "
              f"{new['peak_gib'] / old['peak_gib']:.2f}x (target for Qwen2.5-VL-3B: <= 0.6x each)")


if __name__ == "__main__":
    main()
