"""The model flags of every script that answers with a trained LISA model (`chat.py`, `app.py`, `eval_reasonseg.py`)
and loading the model they name."""

from __future__ import annotations

import argparse
import sys

from model.conversation import CHAT_TEMPLATES
from model.lisa import LisaForCausalLM
from model.loading import PRECISIONS, load_for_inference
from model.processing import LisaProcessor
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


def load_model(args: argparse.Namespace) -> tuple[LisaForCausalLM, LisaProcessor]:
    """The model `add_model_arguments`' flags name; a folder that cannot be loaded exits with why."""
    if (problem := location_problem(args.version)) is not None:
        sys.exit(f"cannot load --version {problem}")  # at once: transformers would first try the hub with it
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    try:
        return load_for_inference(args.version, args.precision, quantization, conv_type=args.conv_type)
    except (OSError, RuntimeError, ValueError) as error:
        sys.exit(f"cannot load {args.version}: {error}")
