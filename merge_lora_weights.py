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

A QLoRA run (`train_ds.py --load_in_4bit`) merges the same way into a normal full-precision folder: the base is
quantised to NF4 as in training and dequantised, so LoRA is merged into the weights it was trained against.
A folder saved quantised cannot be merged into: its full-precision weights are gone.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from model.families import MASK_HEAD_FAMILIES, VLM_FAMILIES, describe
from model.lisa import LisaConfig
from model.loading import PRECISIONS, check_weights_fit, load_for_training, save_lisa
from model.peft_setup import LORA_ALPHA, LORA_DROPOUT, LORA_R, setup_trainable
from model.quantization import dequantize, is_quantized_folder
from utils.checkpoint import BEST, LATEST, TRAIN_ARGS_FILE, read_pointer
from utils.cli import HelpFormatter, positive_int
from utils.locations import location_problem

TRAINED_MODULES_FILE = "trained_modules.safetensors"
# The run's settings that rebuild its model, and their values where a run did not record them (train_ds.py's defaults).
MODEL_DEFAULTS = {
    "version": None, "vision_pretrained": None, "conv_type": None, "out_dim": None, "max_pixels": None, "load_in_4bit": False,
    "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": LORA_DROPOUT, "lora_target_modules": None,
    "train_sam_encoder": False, "ce_loss_weight": LisaConfig.ce_loss_weight,
    "bce_loss_weight": LisaConfig.bce_loss_weight, "dice_loss_weight": LisaConfig.dice_loss_weight,
}


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
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="dtype of the saved weights (default: %(default)s)")
    parser.add_argument("--adapter_only", action=argparse.BooleanOptionalAction, default=False,
                        help="save only the LoRA adapter and the fully trained modules, not a merged model")
    group = parser.add_argument_group("model (default: the training run's values from train_args.json)")
    group.add_argument("--version", help=f"the base (of a family of {describe(VLM_FAMILIES)}) or LISA folder training "
                                         "started from")
    group.add_argument("--vision_pretrained", help=f"the mask head's weights (of a family of {describe(MASK_HEAD_FAMILIES)}) "
                                                   "training started from (base only)")
    group.add_argument("--conv_type", help="conversation format")
    group.add_argument("--out_dim", type=int, help="width of SAM's prompt embeddings")
    group.add_argument("--max_pixels", type=positive_int, help="pixels of one image at most (Qwen families), saved with the model")
    group.add_argument("--lora_r", type=int, help="LoRA rank")
    group.add_argument("--lora_alpha", type=int, help="LoRA alpha")
    group.add_argument("--lora_dropout", type=float, help="LoRA dropout")
    group.add_argument("--lora_target_modules", help="comma-separated LoRA target names of the language model (a run "
                                                    "that recorded none: the base family's)")
    group.add_argument("--train_sam_encoder", action=argparse.BooleanOptionalAction, default=None,
                       help="whether SAM's image encoder was trained in full")
    group.add_argument("--load_in_4bit", action=argparse.BooleanOptionalAction, default=None,
                       help="whether the run was QLoRA (a 4-bit NF4 language model)")
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
    settings = dict(MODEL_DEFAULTS)
    if path is not None:
        with open(path) as f:
            settings.update({k: v for k, v in json.load(f).items() if k in MODEL_DEFAULTS})
    settings.update({k: getattr(args, k) for k in MODEL_DEFAULTS if getattr(args, k) is not None})
    if settings["version"] is None:
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


def check_not_quantized(weight: str, version: str) -> None:
    """A folder saved quantised has lost the full-precision weights a merge starts from.

    Raises:
        SystemExit: `weight` or the base `version` is such a folder.
    """
    if os.path.isfile(os.path.join(weight, "config.json")) and is_quantized_folder(weight):
        raise SystemExit(f"{weight} is a model folder saved quantised, not a training checkpoint: give the run's "
                         "ckpt_model folder (a QLoRA run's too), whose merge is a full-precision folder")
    if is_quantized_folder(version):
        raise SystemExit(f"the base {version} was saved quantised: merging needs the full-precision base the run "
                         "started from (a QLoRA run quantises it while loading, and so does the merge)")


def load_trained(peft_model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
    """The run's trained tensors (LoRA and the fully trained modules) into the rebuilt model.

    Its frozen weights are the rebuilt base's, which are the run's (for a QLoRA run the base's NF4 rounding,
    dequantised), so only the trained tensors are read. The checkpoint must hold all of them and nothing the model
    lacks (e.g. LoRA on other modules: the LoRA flags or train_args.json do not match).
    """
    # A checkpoint of other families (say, trained with SAM 2, rebuilt with SAM) is named as such.
    check_weights_fit(peft_model.get_base_model(), state, source)
    trained = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(trained - state.keys()), sorted(state.keys() - peft_model.state_dict().keys())
    if missing or unexpected:
        raise ValueError(f"{source}: the checkpoint does not match the rebuilt model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); pass the run's train_args.json or its LoRA flags")
    peft_model.load_state_dict({name: state[name] for name in trained}, strict=False)


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
    check_not_quantized(args.weight, settings["version"])
    model, processor = load_for_training(
        settings["version"], settings["vision_pretrained"], settings["conv_type"], dtype=torch.float32,
        out_dim=settings["out_dim"], max_pixels=settings["max_pixels"], quantization="4bit" if settings["load_in_4bit"] else None,
        ce_loss_weight=settings["ce_loss_weight"], bce_loss_weight=settings["bce_loss_weight"],
        dice_loss_weight=settings["dice_loss_weight"],
    )
    dequantize(model)  # a QLoRA run's base as it trained: NF4-rounded, now in fp32
    peft_model = setup_trainable(
        model, settings["lora_r"], settings["lora_alpha"], settings["lora_dropout"], settings["lora_target_modules"],
        settings["train_sam_encoder"],
    )
    if os.path.isfile(os.path.join(args.weight, "adapter_config.json")):
        load_adapter(peft_model, args.weight)
    else:
        load_trained(peft_model, read_checkpoint(args.weight, args.tag), args.weight)

    dtype = PRECISIONS[args.precision]
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
