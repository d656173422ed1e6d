"""Loading a trained LISA folder for inference (chat, evaluation, the web demo): device, precision and
optional bitsandbytes quantisation."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

from model.builder import load_lisa
from model.conversation import CHAT_TEMPLATES
from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Kept in full precision when quantising: SAM (as the original's `llm_int8_skip_modules=["visual_model"]`;
# its decoder reads its weights directly), the [SEG] projection, the CLIP tower (the original loaded CLIP
# after quantisation, so it stayed unquantised) and the output head (transformers' own default skip).
QUANTIZATION_SKIP_MODULES = ["sam", "text_hidden_fcs", "vision_tower", "lm_head"]


def pick_device() -> torch.device:
    """This process's GPU (`LOCAL_RANK` under a launcher) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def quantization_config(load_in_8bit: bool, load_in_4bit: bool, dtype: torch.dtype, device: torch.device):
    """A `BitsAndBytesConfig` (None without quantisation): 4-bit = NF4 with double quantisation, as the original.

    Raises:
        RuntimeError: both flags, no CUDA device, or bitsandbytes not installed — bitsandbytes only runs on GPUs.
    """
    if not (load_in_8bit or load_in_4bit):
        return None
    if load_in_8bit and load_in_4bit:
        raise RuntimeError("choose one of --load_in_8bit and --load_in_4bit")
    if device.type != "cuda":
        raise RuntimeError("8-bit / 4-bit loading needs a CUDA GPU (bitsandbytes); none is available here")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("8-bit / 4-bit loading needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES)


def load_for_inference(
    version: str,
    precision: str = "bf16",
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    conv_type: str | None = None,
    device: torch.device | None = None,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A LISA folder ready to answer: weights in `precision` on `device` (default `pick_device()`), eval mode.

    Args:
        precision: "fp32", "bf16" or "fp16"; with quantisation, the dtype of the unquantised parts and of
            the 4-bit compute.
        conv_type: a `model.conversation.CHAT_TEMPLATES` name overriding the folder's chat template.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    device = device or pick_device()
    quantization = quantization_config(load_in_8bit, load_in_4bit, dtype, device)
    if quantization is not None:
        model, processor = load_lisa(version, dtype=dtype, quantization_config=quantization, device_map={"": device.index or 0})
    else:
        model, processor = load_lisa(version, dtype=dtype)
        model.to(device)
    if conv_type is not None:
        processor.set_chat_template(conv_type)
    return model.eval(), processor


def add_model_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 512) -> None:
    """The flags every script that answers with a trained model shares (`chat.py`, `app.py`)."""
    parser.add_argument("--version", required=True, help="trained LISA folder")
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="weights' precision")
    parser.add_argument("--load_in_8bit", action="store_true", help="quantise the language model to 8 bits (bitsandbytes, CUDA)")
    parser.add_argument("--load_in_4bit", action="store_true", help="quantise the language model to 4-bit NF4 (bitsandbytes, CUDA)")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="longest answer, in tokens")
    parser.add_argument("--conv_type", choices=list(CHAT_TEMPLATES), help="conversation format (default: the model folder's)")


def load_from_arguments(args: argparse.Namespace) -> tuple[LisaForCausalLM, LisaProcessor]:
    """`load_for_inference` with `add_model_arguments`' flags; a folder that cannot be loaded exits with why."""
    try:
        return load_for_inference(args.version, args.precision, args.load_in_8bit, args.load_in_4bit, conv_type=args.conv_type)
    except (OSError, RuntimeError, ValueError) as error:
        sys.exit(f"cannot load {args.version}: {error}")
