"""Looking a model family up by its config's `model_type`, for both parts of LISA: the vision-language models of
`model.vlm_families` and the mask heads of `model.mask_heads`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from transformers import PretrainedConfig


class Family(Protocol):
    name: str  # the `model_type` of the family's configs
    title: str


F = TypeVar("F", bound=Family)


def describe(families: Mapping[str, Family]) -> str:
    """"llava (LLaVA-1.5), qwen2_5_vl (Qwen2.5-VL)": the families, for messages."""
    return ", ".join(f"{name} ({family.title})" for name, family in families.items())


def family_of(families: Mapping[str, F], config: PretrainedConfig | dict, what: str, source: str = "") -> F:
    """The family of a config (or config dict); `what` names the part ("mask head"), `source` where the config came
    from, for the error.

    Raises:
        ValueError: a model of no family of `families`, naming them.
    """
    model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
    if model_type not in families:
        where = f"{source} holds" if source else "got"
        raise ValueError(
            f"{where} a {model_type or 'model without model_type'!r} model, not a supported {what}; "
            f"supported families: {describe(families)}"
        )
    return families[model_type]
