"""The model families LISA can stand on, one file each, and their registries: the vision-language models
(`VLM_FAMILIES`) and the mask heads (`MASK_HEAD_FAMILIES`), looked up by their config's `model_type`.

A family resolved from a folder's (or hub id's) config is passed on as the object: to the model, the processor,
loading and merging. What a family answers is in `model.families.base`.

Conversation formats are Jinja chat templates, each family's own (`VlmFamily.chat_templates`; `CHAT_TEMPLATES` holds
all of them). Each assistant turn, with its end-of-turn token, sits inside a `{% generation %}` block: the tokenizer's
`apply_chat_template(..., return_assistant_tokens_mask=True)` then marks exactly the tokens a model is trained to
produce. A prompt for generation ends with the assistant prefix (`add_generation_prompt=True`).

Adding a family: one file here defining its `VlmFamily` or `MaskHeadFamily` subclass (with its `ImageInputs`, chat
templates, `owns` and `build_tiny`), one line in the registry below, and its pair in `tests/conftest.py: PAIRS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from transformers import PretrainedConfig

from model.families.base import Family, MaskHeadFamily, VlmFamily
from model.families.internvl import InternVLFamily
from model.families.llava import LlavaFamily
from model.families.qwen2_5_vl import Qwen2_5_VLFamily
from model.families.qwen3_5 import Qwen3_5Family
from model.families.qwen3_vl import Qwen3VLFamily
from model.families.sam import SamFamily
from model.families.sam2 import Sam2Family
from model.families.sam3_tracker import Sam3TrackerFamily

VLM_FAMILIES: dict[str, VlmFamily] = {
    f.name: f for f in (LlavaFamily(), Qwen2_5_VLFamily(), Qwen3VLFamily(), Qwen3_5Family(), InternVLFamily())
}
MASK_HEAD_FAMILIES: dict[str, MaskHeadFamily] = {f.name: f for f in (SamFamily(), Sam2Family(), Sam3TrackerFamily())}
CHAT_TEMPLATES: dict[str, str] = {name: t for f in VLM_FAMILIES.values() for name, t in f.chat_templates.items()}

F = TypeVar("F", bound=Family)


def describe(families: Mapping[str, Family]) -> str:
    """"llava (LLaVA-1.5), qwen2_5_vl (Qwen2.5-VL)": the families, for messages and --help."""
    return ", ".join(f"{name} ({family.title})" for name, family in families.items())


def family_of(families: Mapping[str, F], model: PretrainedConfig | dict | str, what: str, source: str = "") -> F:
    """The family of a config, config dict or `model_type` (its name or one of its `aliases`); `what` names the part
    ("mask head"), `source` where the config came from, for the error.

    Raises:
        ValueError: a model of no family of `families`, naming them.
    """
    if isinstance(model, str):
        model_type = model
    else:
        model_type = model.get("model_type") if isinstance(model, dict) else model.model_type
    aliased = [family for family in families.values() if model_type in family.aliases]
    if aliased:
        return aliased[0]
    if model_type not in families:
        where = f"{source} holds" if source else "got"
        raise ValueError(
            f"{where} a {model_type or 'model without model_type'!r} model, not a supported {what}; "
            f"supported families: {describe(families)}"
        )
    return families[model_type]


def vlm_family(model: PretrainedConfig | dict | str, source: str = "") -> VlmFamily:
    """The family of a VLM config, config dict or `model_type`; `source` names where it came from, for the error.

    Raises:
        ValueError: a model of no supported family, naming the supported ones.
    """
    return family_of(VLM_FAMILIES, model, "vision-language model", source)


def mask_head_family(model: PretrainedConfig | dict | str, source: str = "") -> MaskHeadFamily:
    """The family of a segmentation-model config, config dict or `model_type`; `source` names where it came from.

    Raises:
        ValueError: a model of no supported family, naming the supported ones.
    """
    return family_of(MASK_HEAD_FAMILIES, model, "mask head", source)


def mask_head_family_at(path_or_id: str) -> MaskHeadFamily:
    """The family of the mask head in a folder or hub id, read from its config; SAM's for a checkpoint file or a path
    without a config (original segment-anything checkpoints: SAM's loader then says what the path is not).

    Raises:
        ValueError: a model of no supported family, naming the supported ones.
    """
    if Path(path_or_id).is_file():
        return MASK_HEAD_FAMILIES["sam"]
    try:
        config, _ = PretrainedConfig.get_config_dict(str(path_or_id))
    except OSError:
        return MASK_HEAD_FAMILIES["sam"]
    return mask_head_family(config, source=str(path_or_id))
