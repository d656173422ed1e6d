"""Which parameters of LISA train, and how (as the original's `train_ds.py` sets them up).

LISA's recipe: LoRA on the language model's attention projections, plus a few modules trained in full
(`lm_head`, `embed_tokens` — they hold the new `[SEG]` row —, SAM's mask decoder and the `[SEG]` projection).
Everything else is frozen: the CLIP tower, the projector, SAM's image and prompt encoders, the base LLM.
"""

from __future__ import annotations

import re
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PretrainedConfig

from model.builder import build_lisa_from_llava, load_lisa
from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor

# Modules trained in full in LISA's recipe, matched as substrings of parameter names (as the original did).
FULLY_TRAINED = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs")
# A research option: SAM's image encoder, frozen in LISA's recipe (the paper ablates unfreezing it).
SAM_IMAGE_ENCODER = "sam.vision_encoder"


def lora_target_regex(target_modules: str) -> str:
    """`"q_proj,v_proj"` -> a regex that peft matches against full module names.

    Only the language model's linears are targeted: a bare name list would also put LoRA on CLIP's and SAM's
    `q_proj`/`v_proj`, which LISA keeps frozen.
    """
    names = [re.escape(name.strip()) for name in target_modules.split(",") if name.strip()]
    if not names:
        raise ValueError("--lora_target_modules names no module")
    return rf".*language_model.*\.({'|'.join(names)})"


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str = "q_proj,v_proj") -> LoraConfig:
    # No task_type: the PEFT wrapper then forwards LISA's own arguments unchanged to `LisaForCausalLM.forward`.
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_regex(target_modules), bias="none")


def is_trained_in_full(name: str, train_sam_encoder: bool = False) -> bool:
    """Whether parameter `name` (with or without PEFT's prefix) is trained in full, not through LoRA."""
    return any(part in name for part in FULLY_TRAINED) or (train_sam_encoder and SAM_IMAGE_ENCODER in name)


def setup_trainable(
    model: LisaForCausalLM,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_target_modules: str = "q_proj,v_proj",
    train_sam_encoder: bool = False,
) -> PeftModel:
    """Wraps `model` with LoRA and sets `requires_grad` per LISA's recipe.

    Args:
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (`lora_target_modules` is a
            comma-separated list of language-model linear names).
        train_sam_encoder: also train SAM's image encoder in full (research option, off in LISA).

    Returns:
        the PEFT model; its `get_base_model()` is `model`, modified in place.
    """
    with warnings.catch_warnings():
        # peft reads transformers' deprecated alias `is_gradient_checkpointing`, which warns on every run; the alias
        # still returns the right value (`is_activation_checkpointing`), so the warning asks nothing of this project.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config(lora_r, lora_alpha, lora_dropout, lora_target_modules))
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
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def is_lisa(version: str) -> bool:
    """Whether `version` (hub id or folder) is a trained LISA (config `model_type` "lisa") or a LLaVA base."""
    config, _ = PretrainedConfig.get_config_dict(version)
    return config.get("model_type") == "lisa"


def load_for_training(
    version: str,
    vision_pretrained: str,
    conv_type: str | None = None,
    dtype: torch.dtype | None = None,
    out_dim: int | None = None,
    **loss_weights: float,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """The model a training run starts from, and its processor.

    Args:
        version: a LLaVA base (llava-hf layout): `[SEG]` is added and the LISA parts are new, SAM comes from
            `vision_pretrained`; or a trained LISA folder: restored exactly, nothing re-initialised and
            `vision_pretrained` unused (its SAM is part of it).
        conv_type: conversation format; None keeps the base's (llava_1_5) or the folder's own.
        out_dim: width of SAM's prompt embeddings, the new projection's output (LLaVA base only; default:
            read from the SAM weights).
        loss_weights: `ce_loss_weight`, `bce_loss_weight`, `dice_loss_weight` — they replace a LISA folder's
            saved weights, so fine-tuning uses the flags.
    """
    if is_lisa(version):
        model, processor = load_lisa(version, dtype=dtype, **loss_weights)
        if conv_type is not None:
            processor.set_chat_template(conv_type)
        return model, processor
    return build_lisa_from_llava(
        version, vision_pretrained, conv_type=conv_type or "llava_1_5", dtype=dtype, out_dim=out_dim, **loss_weights
    )
