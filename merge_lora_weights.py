"""Turn a training checkpoint into one self-contained LISA folder (the original's `merge_lora_weights_and_save_hf_model.py`).

    python merge_lora_weights.py --weight runs/lisa-7b/ckpt_model --save_path ./LISA-7B

`--weight` may be
* a DeepSpeed checkpoint folder (`<run>/ckpt_model`, read directly: its fp32 master weights; `--tag` picks
  `best` (default when there is one), `latest` or a `global_stepN`);
* the output of DeepSpeed's `zero_to_fp32.py` — a folder (possibly sharded, with an index) or a single file;
* a folder written by `--adapter_only`.
The model is rebuilt from the base it was trained from (read from the run's `train_args.json`; `--version` and
the LoRA flags override), the weights are loaded strictly, LoRA is merged into the language model and the result
is saved with its processor. `chat.py --version`, `eval_reasonseg.py --version` and `train_ds.py --version`
load it. `--adapter_only` saves just the LoRA adapter (PEFT format) and the fully trained modules instead.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from model.builder import save_lisa
from model.peft_setup import load_for_training, setup_trainable
from utils.checkpoint import BEST, LATEST, read_pointer
from utils.cli import HelpFormatter
from utils.locations import location_problem

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TRAIN_ARGS_FILE = "train_args.json"
TRAINED_MODULES_FILE = "trained_modules.safetensors"
MODEL_ARGS = ("version", "vision_pretrained", "conv_type", "out_dim", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules", "train_sam_encoder", "ce_loss_weight", "bce_loss_weight", "dice_loss_weight")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--weight", required=True,
                        help="DeepSpeed checkpoint folder, zero_to_fp32 output (folder or file), or an --adapter_only folder")
    parser.add_argument("--save_path", required=True, help="output folder")
    parser.add_argument("--tag", default=None,
                        help="checkpoint of a DeepSpeed folder: 'best', 'latest' or a tag such as global_step500 "
                             "(default: best if recorded, else latest)")
    parser.add_argument("--train_args", default=None,
                        help=f"the run's {TRAIN_ARGS_FILE} (default: looked up beside/above --weight)")
    parser.add_argument("--precision", default="bf16", choices=sorted(DTYPES), help="dtype of the saved weights")
    parser.add_argument("--adapter_only", action=argparse.BooleanOptionalAction, default=False,
                        help="save only the LoRA adapter and the fully trained modules, not a merged model")
    group = parser.add_argument_group("model (default: the training run's values from train_args.json)")
    group.add_argument("--version", help="the LLaVA base or LISA folder training started from")
    group.add_argument("--vision_pretrained", help="SAM weights training started from (LLaVA base only)")
    group.add_argument("--conv_type", help="conversation format")
    group.add_argument("--out_dim", type=int, help="width of SAM's prompt embeddings")
    group.add_argument("--lora_r", type=int, help="LoRA rank")
    group.add_argument("--lora_alpha", type=int, help="LoRA alpha")
    group.add_argument("--lora_dropout", type=float, help="LoRA dropout")
    group.add_argument("--lora_target_modules", help="comma-separated LoRA target names of the language model")
    group.add_argument("--train_sam_encoder", action=argparse.BooleanOptionalAction, default=None,
                       help="whether SAM's image encoder was trained in full")
    for term in ("ce", "bce", "dice"):
        group.add_argument(f"--{term}_loss_weight", type=float, help=f"{term} loss weight stored in the saved config")
    args = parser.parse_args(argv)
    if not os.path.exists(args.weight):
        parser.error(f"--weight {args.weight}: no such file or folder")
    if args.version is not None and (problem := location_problem(args.version)) is not None:
        parser.error(f"--version {problem}")
    return args


def find_train_args(weight: str) -> str | None:
    """`train_args.json` in `weight`'s folder or up to two levels above (zero_to_fp32 output often sits there)."""
    folder = weight if os.path.isdir(weight) else os.path.dirname(weight)
    for _ in range(3):
        path = os.path.join(folder, TRAIN_ARGS_FILE)
        if os.path.isfile(path):
            return path
        folder = os.path.dirname(os.path.abspath(folder))
    return None


def model_settings(args: argparse.Namespace) -> dict:
    """The run's model settings, overridden by the flags given here."""
    path = args.train_args or find_train_args(args.weight)
    settings = {}
    if path is not None:
        with open(path) as f:
            settings = {k: v for k, v in json.load(f).items() if k in MODEL_ARGS}
    settings.update({k: getattr(args, k) for k in MODEL_ARGS if getattr(args, k) is not None})
    defaults = {"vision_pretrained": None, "conv_type": None, "out_dim": None, "lora_r": 8, "lora_alpha": 16,
                "lora_dropout": 0.05, "lora_target_modules": "q_proj,v_proj", "train_sam_encoder": False,
                "ce_loss_weight": 1.0, "bce_loss_weight": 2.0, "dice_loss_weight": 0.5}
    settings = {**defaults, **settings}
    if settings.get("version") is None:
        raise SystemExit(f"no {TRAIN_ARGS_FILE} found for {args.weight}: pass --version (and the LoRA flags used)")
    return settings


def load_file_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def read_consolidated(folder: str) -> dict[str, torch.Tensor]:
    """zero_to_fp32 output folder: one file or shards listed by an index."""
    indexes = glob.glob(os.path.join(folder, "*.index.json"))
    if indexes:
        with open(indexes[0]) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(folder, n))]
    if not files:
        raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint, zero_to_fp32 output or adapter found")
    state = {}
    for name in files:
        state.update(load_file_state_dict(os.path.join(folder, name)))
    return state


def read_checkpoint(weight: str, tag: str | None) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the training model (PEFT-wrapped names) from any supported `--weight`."""
    if os.path.isfile(weight):
        return load_file_state_dict(weight)
    if read_pointer(weight, LATEST) is not None:  # a DeepSpeed checkpoint folder
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if tag in (None, BEST, LATEST):
            tag = read_pointer(weight, tag or BEST) or read_pointer(weight, LATEST)
        print(f"reading {weight}/{tag}")
        return get_fp32_state_dict_from_zero_checkpoint(weight, tag=tag)
    return read_consolidated(weight)


def load_adapter(peft_model: PeftModel, folder: str) -> None:
    """Loads an `--adapter_only` folder into a freshly set-up PEFT model."""
    set_peft_model_state_dict(peft_model, load_file(os.path.join(folder, "adapter_model.safetensors")))
    trained = load_file(os.path.join(folder, TRAINED_MODULES_FILE))
    base = peft_model.get_base_model()
    expected = {n for n, p in base.named_parameters() if p.requires_grad and "lora_" not in n}
    if set(trained) != expected:
        raise ValueError(f"{folder}: trained modules do not match the model "
                         f"(missing {sorted(expected - set(trained))[:5]}, unexpected {sorted(set(trained) - expected)[:5]})")
    base.load_state_dict(trained, strict=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = model_settings(args)
    model, processor = load_for_training(
        settings["version"], settings["vision_pretrained"], settings["conv_type"], dtype=torch.float32,
        out_dim=settings["out_dim"], ce_loss_weight=settings["ce_loss_weight"],
        bce_loss_weight=settings["bce_loss_weight"], dice_loss_weight=settings["dice_loss_weight"],
    )
    peft_model = setup_trainable(
        model, settings["lora_r"], settings["lora_alpha"], settings["lora_dropout"], settings["lora_target_modules"],
        settings["train_sam_encoder"],
    )
    if os.path.isfile(os.path.join(args.weight, "adapter_config.json")):
        load_adapter(peft_model, args.weight)
    else:
        peft_model.load_state_dict(read_checkpoint(args.weight, args.tag), strict=True)

    dtype = DTYPES[args.precision]
    os.makedirs(args.save_path, exist_ok=True)
    if args.adapter_only:
        peft_model.save_pretrained(args.save_path)  # adapter_config.json + adapter_model.safetensors (LoRA only)
        trained = {n: p.detach().to(dtype).contiguous() for n, p in peft_model.get_base_model().named_parameters()
                   if p.requires_grad and "lora_" not in n}
        save_file(trained, os.path.join(args.save_path, TRAINED_MODULES_FILE))
        with open(os.path.join(args.save_path, TRAIN_ARGS_FILE), "w") as f:
            json.dump(settings, f, indent=2)
        processor.save_pretrained(args.save_path)
        print(f"saved the LoRA adapter and {len(trained)} fully trained tensors to {args.save_path}")
        return
    merged = peft_model.merge_and_unload()
    save_lisa(merged.to(dtype), processor, args.save_path)
    print(f"saved the merged LISA model to {args.save_path}")


if __name__ == "__main__":
    main()
