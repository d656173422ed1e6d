"""The model flags of every script that answers with a trained LISA model (`chat.py`, `app.py`, `eval_reasonseg.py`)
and loading the model they name; the image and attention flags also serve training (`train_ds.py`)."""

from __future__ import annotations

import argparse
import sys

from model.families import CHAT_TEMPLATES
from model.families.base import ATTN_IMPLEMENTATIONS
from model.lisa import LisaForCausalLM
from model.loading import PRECISIONS, load_for_inference
from model.processing import LisaProcessor
from model.video import ANSWER_FRAMES, PROPAGATIONS, LazyVideoModel, default_propagation
from utils.cli import positive_int
from utils.locations import location_problem


def add_model_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 512, version_required: bool = True) -> None:
    """Adds the flags naming the model and how to load and run it."""
    parser.add_argument("--version", required=version_required, help="trained LISA folder")
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS),
                        help="weights' precision; with --load_in_8bit/--load_in_4bit that of the unquantised parts and "
                             "of the computation (default: %(default)s)")
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument("--load_in_8bit", action="store_true",
                              help="quantise the language model's linear layers to 8 bits (bitsandbytes LLM.int8)")
    quantization.add_argument("--load_in_4bit", action="store_true",
                              help="quantise the language model's linear layers to 4-bit NF4 (bitsandbytes)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=max_new_tokens, help="longest answer, in tokens (default: %(default)s)")
    parser.add_argument("--conv_type", choices=list(CHAT_TEMPLATES), help="conversation format (default: the model folder's)")
    add_image_and_attention_arguments(parser, max_pixels_default="the model folder's, saved at training")


def add_image_and_attention_arguments(parser: argparse._ActionsContainer, max_pixels_default: str) -> None:
    """`--max_pixels` and `--attn_implementation`; `max_pixels_default` says what no `--max_pixels` means."""
    parser.add_argument(
        "--max_pixels", type=positive_int, default=None,
        help="Qwen2.5-VL / Qwen3-VL: pixels of one image at most. An image is resized (aspect kept) to multiples of "
             "patch·merge px (28 for Qwen2.5-VL, 32 for Qwen3-VL) within it and takes about pixels / (patch·merge)² "
             "tokens (784 px a token for Qwen2.5-VL, 1024 for Qwen3-VL) in every conversation row about it: memory and "
             "time grow with it (Qwen2.5-VL's hub config allows 12,845,056 px: 15,552 tokens for a 4032×3024 photo). Saved "
             "in the model folder's preprocessor_config.json; given here, it replaces the folder's. Less than one token "
             "is an error, and so is any value for LLaVA-1.5, whose images all take one size (336 px square, 576 tokens). "
             "InternVL3: the pixels of an image's tile grid, N // 448² tiles of 256 tokens (plus a 256-token thumbnail "
             "when there are several; the hub allows 12 tiles, 3,328 tokens with the thumbnail); below one tile "
             "(200,704 px) is an error "
             f"(default: {max_pixels_default})")
    parser.add_argument(
        "--attn_implementation", default="sdpa", choices=list(ATTN_IMPLEMENTATIONS),
        help="attention of the vision-language model, vision tower and language model (SAM keeps sdpa): sdpa (torch's "
             "fused kernels), flash_attention_2 (needs the flash_attn package, a CUDA GPU and bf16/fp16; attends all of "
             "Qwen2.5-VL's vision windows in one call, where sdpa and eager loop over them), eager (plain matmuls: the "
             "slowest and most memory, for checking). A runtime choice, not saved with the model (default: %(default)s)")


def load_model(args: argparse.Namespace) -> tuple[LisaForCausalLM, LisaProcessor]:
    """The model `add_model_arguments`' flags name; a folder that cannot be loaded exits with why."""
    if (problem := location_problem(args.version)) is not None:
        sys.exit(f"cannot load --version {problem}")  # at once: transformers would first try the hub with it
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    try:
        return load_for_inference(
            args.version, args.precision, quantization, conv_type=args.conv_type, max_pixels=args.max_pixels,
            attn_implementation=args.attn_implementation,
        )
    except (OSError, RuntimeError, ValueError) as error:
        sys.exit(f"cannot load {args.version}: {error}")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of answering about a video: how many frames the model sees, and how masks reach every frame."""
    parser.add_argument("--num_frames", type=positive_int, default=ANSWER_FRAMES,
                        help="frames of a video shown to the model, spread uniformly over the whole video (fewer, with "
                             "a warning, where their image tokens would not leave 512 positions of the language "
                             "model's context: LLaVA-1.5's 4,096 hold 6) (default: %(default)s)")
    parser.add_argument("--propagate", choices=list(PROPAGATIONS), default=None,
                        help="how the answer's masks reach every frame: memory (the key frames' masks carried forward "
                             "and backward by the memory modules of the mask head's video model: SAM 2, SAM 3 tracker) "
                             "or per_frame (each [SEG] decoded on every frame; the only way for the original SAM) "
                             "(default: memory where the mask head has a video model, else per_frame)")
    parser.add_argument("--video_memory", default=None,
                        help="folder or hub id of the video model whose memory modules carry masks through a video "
                             "(e.g. facebook/sam2.1-hiera-large, the checkpoint the mask head came from; its mask "
                             "decoder is replaced by the model's) (default: the checkpoint recorded at training, the "
                             "model folder's mask_head_source)")


def load_video_model_for(model: LisaForCausalLM, args: argparse.Namespace):
    """The video model `--propagate memory` uses (None for per_frame); a checkpoint that cannot serve exits with why.

    Args:
        args: with `add_video_arguments`' flags; `args.propagate` None is resolved to the model's default here.
    """
    args.propagate = args.propagate or default_propagation(model)
    if args.propagate != "memory":
        return None
    try:
        return LazyVideoModel(model, args.video_memory).get()
    except ValueError as error:
        sys.exit(f"--propagate memory: {error} (--video_memory names another)")
