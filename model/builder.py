"""The two ways a LISA model comes to be.

* `build_lisa_from_base`: training init from a vision-language base (LLaVA-1.5 or Qwen2.5-VL) plus SAM or SAM 2
  weights — `[SEG]` is added to the tokenizer, the embeddings are resized and the `[SEG]` projection is fresh.
* `load_lisa`: a trained LISA folder, restored exactly — nothing is re-initialised, and a folder whose weights
  do not cover the model (or hold weights the model does not have) is an error, not a silent re-randomisation.
"""

from __future__ import annotations

import os

import torch
from tokenizers import AddedToken
from transformers import PretrainedConfig

from model.lisa import LisaConfig, LisaForCausalLM
from model.mask_heads import load_mask_head, mask_head_family
from model.processing import SEG_TOKEN, LisaProcessor
from model.vlm_families import vlm_family


def add_seg_token(tokenizer, seg_token: str = SEG_TOKEN) -> int:
    """Adds `[SEG]` as a special token and returns its id.

    Raises if it does not encode to exactly that one id: with some LLaMA-2 tokenizers the original's
    `tokenizer("[SEG]")` gave a leading space piece first, so every mask was read from the wrong position.
    """
    tokenizer.add_tokens([AddedToken(seg_token, special=True, normalized=False)], special_tokens=True)
    seg_token_id = tokenizer.convert_tokens_to_ids(seg_token)
    encoded = tokenizer(seg_token, add_special_tokens=False).input_ids
    if encoded != [seg_token_id]:
        raise ValueError(f"{seg_token!r} encodes to {encoded}, not to the single id {seg_token_id}")
    return seg_token_id


def build_lisa_from_base(
    base_path: str,
    sam_path: str,
    conv_type: str | None = None,
    dtype: torch.dtype | None = None,
    out_dim: int | None = None,
    **config_kwargs,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A LISA model to train, from a vision-language base and SAM or SAM 2 weights; each family is read from its
    folder's (or hub id's) config.

    Args:
        base_path: hub id or folder of a `LlavaForConditionalGeneration` (e.g. `llava-hf/llava-1.5-7b-hf`) or a
            `Qwen2_5_VLForConditionalGeneration` (e.g. `Qwen/Qwen2.5-VL-3B-Instruct`).
        sam_path: a `SamModel` or `Sam2Model` folder or hub id (e.g. `facebook/sam2.1-hiera-tiny`), or a
            `sam_vit_h_4b8939.pth`-style file in segment-anything's layout.
        conv_type: conversation format (`model.conversation.CHAT_TEMPLATES`); None: the base family's default.
        out_dim: output width of the new `[SEG]` projection; it must be the mask head's prompt width (the default;
            256 for the released SAM and SAM 2).
        config_kwargs: other `LisaConfig` fields (loss weights).

    Raises:
        ValueError: a base or mask head of no supported family (naming the supported ones).
    """
    family = vlm_family(PretrainedConfig.get_config_dict(base_path)[0], source=base_path)
    vlm_processor = family.load_processor(base_path)
    seg_token_id = add_seg_token(vlm_processor.tokenizer)
    vlm = family.model_class.from_pretrained(base_path, dtype=dtype)
    vlm.resize_token_embeddings(len(vlm_processor.tokenizer))
    sam = load_mask_head(sam_path, dtype=dtype)
    prompt_width = sam.config.prompt_encoder_config.hidden_size
    if out_dim not in (None, prompt_width):
        raise ValueError(f"out_dim {out_dim} must equal the prompt width {prompt_width} of the SAM in {sam_path}")

    config = LisaConfig(
        vlm_config=vlm.config, sam_config=sam.config, seg_token_id=seg_token_id, out_dim=prompt_width,
        **config_kwargs,
    )
    model = LisaForCausalLM(config, vlm=vlm, sam=sam)
    # Wrapping the loaded parts' configs in LisaConfig clears their resolved attention implementation, and a
    # language model without one attends bidirectionally; set it once for the whole model, as loading does.
    model.set_attn_implementation(config._attn_implementation)
    if dtype is not None:
        model.text_hidden_fcs.to(dtype)
    sam_family = mask_head_family(sam.config)
    processor = LisaProcessor(vlm_processor, sam_image_size=sam_family.image_size(sam.config), sam_family=sam_family.name)
    processor.set_chat_template(conv_type or family.chat_templates[0])
    return model, processor


def load_lisa(path: str, dtype: torch.dtype | None = None, **kwargs) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A trained LISA folder (ours, as written by `save_pretrained`): model and processor.

    Args:
        path: the folder.
        dtype: weights' dtype (default: as saved).
        kwargs: passed to `from_pretrained` — `LisaConfig` overrides such as loss weights, or
            `quantization_config` / `device_map`.
    """
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json, not a LISA folder")
    model, info = LisaForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs)
    problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems:
        details = "; ".join(f"{k}: {sorted(map(str, v))}" for k, v in problems.items())
        raise ValueError(f"{path}: the weights do not match the LISA model ({details})")
    if dtype is not None and "quantization_config" not in kwargs:
        # The vision-language model builds its vision tower and language model from their own sub-configs, which
        # keep the saved dtype; one cast makes the whole model uniform.
        model.to(dtype)
    return model, LisaProcessor.from_pretrained(path)


def save_lisa(model: LisaForCausalLM, processor: LisaProcessor, path: str) -> None:
    """Writes one self-contained folder: weights, config, tokenizer, image processor, chat template."""
    model.save_pretrained(path)
    processor.save_pretrained(path)
