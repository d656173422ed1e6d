"""Which parameters of LISA train, and how (as the original's `train_ds.py` sets them up).

LISA's recipe: LoRA on the language model's attention projections, plus a few modules trained in full
(`lm_head`, `embed_tokens` — they hold the new `[SEG]` row —, SAM's mask decoder and the `[SEG]` projection).
Everything else is frozen: the vision-language model's image encoder (LLaVA's CLIP tower and projector, Qwen's
vision transformer and merger), the mask head's image and prompt encoders, the base LLM.
"""

from __future__ import annotations

import re
import warnings

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from model.families import VLM_FAMILIES
from model.lisa import LisaForCausalLM

# Modules trained in full in LISA's recipe, matched as substrings of parameter names (as the original did).
FULLY_TRAINED = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs")
# A research option: SAM's image encoder, frozen in LISA's recipe (the paper ablates unfreezing it).
SAM_IMAGE_ENCODER = "sam.vision_encoder"
# LISA's LoRA: rank 8, alpha 16, dropout 0.05 (Lai et al., 2024), on the language model's q_proj and v_proj; each
# family names its targets (`VlmFamily.lora_targets`), those of a language model without them in every layer included.
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05


def lora_targets_by_family() -> str:
    """"llava: q_proj,v_proj; ...": each family's default LoRA targets, for --help."""
    return "; ".join(f"{name}: {','.join(family.lora_targets)}" for name, family in VLM_FAMILIES.items())


def lora_target_regex(target_modules: str) -> str:
    """`"q_proj,v_proj"` -> a regex that peft matches against full module names.

    Only the language model's linears are targeted: a bare name list would also put LoRA on the vision tower's and
    the mask head's `q_proj`/`v_proj`, which LISA keeps frozen.
    """
    names = [re.escape(name.strip()) for name in target_modules.split(",") if name.strip()]
    if not names:
        raise ValueError("--lora_target_modules names no module")
    return rf".*language_model.*\.({'|'.join(names)})"


def lora_config(r: int, alpha: int, dropout: float, target_modules: str) -> LoraConfig:
    # No task_type: the PEFT wrapper then forwards LISA's own arguments unchanged to `LisaForCausalLM.forward`.
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_regex(target_modules), bias="none")


def is_trained_in_full(name: str, train_sam_encoder: bool = False) -> bool:
    """Whether parameter `name` (with or without PEFT's prefix) is trained in full, not through LoRA."""
    return any(part in name for part in FULLY_TRAINED) or (train_sam_encoder and SAM_IMAGE_ENCODER in name)


def setup_trainable(
    model: LisaForCausalLM,
    lora_r: int = LORA_R,
    lora_alpha: int = LORA_ALPHA,
    lora_dropout: float = LORA_DROPOUT,
    lora_target_modules: str | None = None,
    train_sam_encoder: bool = False,
) -> PeftModel:
    """Wraps `model` with LoRA and sets `requires_grad` per LISA's recipe.

    Args:
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (`lora_target_modules` is a
            comma-separated list of language-model linear names; None: the VLM family's `lora_targets`).
        train_sam_encoder: also train SAM's image encoder in full (research option, off in LISA).

    Returns:
        the PEFT model; its `get_base_model()` is `model`, modified in place.
    """
    with warnings.catch_warnings():
        # peft reads transformers' deprecated alias `is_gradient_checkpointing`, which warns on every run; the alias
        # still returns the right value (`is_activation_checkpointing`), so the warning asks nothing of this project.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        targets = lora_target_modules or ",".join(model.vlm_family.lora_targets)
        peft_model = get_peft_model(model, lora_config(lora_r, lora_alpha, lora_dropout, targets))
    # get_peft_model froze everything but the LoRA matrices; unfreeze the fully trained modules.
    for name, param in peft_model.named_parameters():
        if is_trained_in_full(name, train_sam_encoder):
            param.requires_grad_(True)
    return peft_model


def parameter_groups(model: nn.Module) -> list[dict]:
    """The trainable parameters as optimizer groups: `[everything else]`, plus `[SAM's image encoder]` when it
    trains (`--train_sam_encoder`), so that its learning rate can follow a schedule of its own."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    encoder = [param for name, param in trainable if SAM_IMAGE_ENCODER in name]
    rest = [param for name, param in trainable if SAM_IMAGE_ENCODER not in name]
    return [{"params": rest}] + ([{"params": encoder}] if encoder else [])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts as its unpacked shape (bitsandbytes stores two
    values per byte)."""

    def size(param: nn.Parameter) -> int:
        quant_state = getattr(param, "quant_state", None)
        return quant_state.shape.numel() if quant_state is not None else param.numel()

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(size(p) for p in model.parameters())
