"""Every way a LISA model comes to be, and how it is saved.

* `build_lisa_from_base`: training init from a vision-language base plus mask-head weights, each of a family of
  `model.families` read from its config — `[SEG]` is added to the tokenizer and given embedding rows (the
  base's padded vocabulary is kept), the `[SEG]` projection is fresh, and a base or SAM checkpoint that lacks weights
  of its model is refused.
* `load_lisa`: a trained LISA folder, restored exactly — nothing is re-initialised, and a folder whose weights
  do not cover the model (or hold weights the model does not have) is an error, not a silent re-randomisation.
* `save_lisa`: one self-contained folder that `load_lisa` reads.
* `load_for_training` (a base or a LISA folder, what `train_ds.py --version` takes) and
  `load_for_inference` (a LISA folder on a device in a precision, what chat, evaluation and the demo take).

All of them take the pixel budget of one image (`max_pixels`, for the dynamic-resolution families; saved with the
image processor) and the attention implementation of the vision-language model (`attn_implementation`; a runtime
choice, saved nowhere).

Both of the last two can quantise the language model with bitsandbytes (`model.quantization`).
* `check_weights_fit`: weights of a model of other families than a LISA model's are named as such.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable

import torch
from tokenizers import AddedToken
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import GENERATION_CONFIG_NAME

from model.families import MASK_HEAD_FAMILIES, VLM_FAMILIES, mask_head_family, mask_head_family_at, vlm_family
from model.families.base import VlmFamily
from model.lisa import LisaConfig, LisaForCausalLM
from model.pretrained import load_pretrained
from model.processing import SEG_TOKEN, LisaProcessor
from model.quantization import cast_unquantized, check_quantized, quantization_kwargs
from utils.distributed import use_local_device
from utils.log_filters import dropping_log_message

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A base whose embedding matrices have no row for `[SEG]` grows them to a multiple of this (GPU matmuls are fastest on
# such sizes; the released bases pad to 64 and beyond).
EMBEDDING_ROWS = 64
# The mask head attends with SDPA whatever the vision-language model uses: `SamModel` has no FlashAttention, and eager
# attention over SAM's 64×64 image-embedding tokens only costs memory.
MASK_HEAD_ATTENTION = "sdpa"


# ----------------------------------------------------------------------------------------- attention
def check_attn_package(attn_implementation: str) -> None:
    """Raises RuntimeError for flash_attention_2 without the flash_attn package: transformers would look for a substitute
    kernel on the hub instead (or fail at the first forward)."""
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise RuntimeError("attn_implementation flash_attention_2 needs the flash_attn package (CUDA): pip install flash-attn")


def attention_implementations(family: VlmFamily, attn_implementation: str) -> dict[str, str]:
    """The attention implementation of each part of a LISA model, as `from_pretrained` and `set_attn_implementation`
    take it: `attn_implementation` for the vision-language model (vision tower and language model alike),
    `MASK_HEAD_ATTENTION` for the mask head.

    Raises:
        ValueError: an implementation the family's models do not support.
        RuntimeError: see `check_attn_package`.
    """
    if attn_implementation not in family.attn_implementations:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not supported by {family.title} models; "
                         f"choose from {', '.join(family.attn_implementations)}")
    check_attn_package(attn_implementation)
    return {"vlm_config": attn_implementation, "sam_config": MASK_HEAD_ATTENTION}


# ------------------------------------------------------------------------------------------ building
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


def fit_embeddings(vlm: PreTrainedModel, tokens: int, base_tokens: int, seg_token_id: int) -> None:
    """Gives every one of `tokens` ids an input and an output row, and `[SEG]` (when new) rows of its own, in place.

    Real bases pad their vocabulary (llava-1.5-7b-hf: 32064 rows for 32002 tokens; Qwen2.5-VL-3B: 151936 for 151665),
    and `[SEG]` takes the first unused row: the padded size is kept (cutting it to the tokenizer would make a size
    that is no multiple of 64, slower on GPUs). A base without room grows to the next multiple of `EMBEDDING_ROWS`.
    `[SEG]`'s rows and the grown ones hold the mean of the `base_tokens` real tokens' rows, not what a padded slot of
    the checkpoint held (which may never have been trained), so `[SEG]` starts with an average token's logit; a tied
    output head stays tied (one matrix). Rows no token has are never generated (`model.inference.answer` masks them).
    """
    rows = vlm.get_input_embeddings().weight.shape[0]
    if tokens > rows:
        # Mean-resizing would sample the new rows around the mean of all rows, padding included; they are set below.
        vlm.resize_token_embeddings(tokens, pad_to_multiple_of=EMBEDDING_ROWS, mean_resizing=False)
    fresh = set(range(rows, vlm.get_input_embeddings().weight.shape[0]))
    if seg_token_id >= base_tokens:  # added now, not a token of the base
        fresh.add(seg_token_id)
    matrices = {id(e.weight): e.weight for e in (vlm.get_input_embeddings(), vlm.get_output_embeddings())}
    with torch.no_grad():
        for weight in matrices.values():
            weight[sorted(fresh)] = weight[: min(base_tokens, rows)].mean(0, dtype=torch.float32).to(weight.dtype)


def _load_vlm(family: VlmFamily, path: str, config: dict, **kwargs) -> PreTrainedModel:
    """The base's model (`load_pretrained`: refused when its checkpoint lacks weights), its output head tied to its
    input embeddings when its config ties them in `text_config` only and its checkpoint holds no head of its own, and
    its config's tie flag saying what the loaded weights are.

    transformers 5 ties from the outer config's flag and lifts the text config's for Qwen2.5-VL, not for Qwen3-VL: such
    a Qwen3-VL base would get a random head. The flag is lifted here as there. A checkpoint head that differs from the
    embeddings stays untied whatever the flag (transformers checks), but a flag left saying "tied" — `InternVLConfig`'s
    default, for a config.json without the key — would let a later `tie_weights` (resizing for `[SEG]` calls it)
    replace the head by the embeddings."""
    lift = not config.get("tie_word_embeddings") and (config.get("text_config") or {}).get("tie_word_embeddings")
    vlm = load_pretrained(family.model_class, path, **({"tie_word_embeddings": True} if lift else {}), **kwargs)
    vlm.config.tie_word_embeddings = vlm.get_output_embeddings().weight is vlm.get_input_embeddings().weight
    return vlm


def build_lisa_from_base(
    base_path: str,
    sam_path: str,
    conv_type: str | None = None,
    dtype: torch.dtype | None = None,
    out_dim: int | None = None,
    quantization: str | None = None,
    device: torch.device | None = None,
    max_pixels: int | None = None,
    attn_implementation: str = "sdpa",
    **config_kwargs,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A LISA model to train, from a vision-language base and mask-head weights; each family (`model.families`) is
    read from its folder's (or hub id's) config, once.

    Args:
        base_path: hub id or folder of a model of a family of `VLM_FAMILIES` (e.g. `llava-hf/llava-1.5-7b-hf`,
            `Qwen/Qwen2.5-VL-3B-Instruct`, `Qwen/Qwen3-VL-2B-Instruct`, `OpenGVLab/InternVL3-2B-hf`).
        sam_path: a folder or hub id of a model of a family of `MASK_HEAD_FAMILIES` (e.g. `facebook/sam-vit-huge`,
            `facebook/sam2.1-hiera-tiny`), or a `sam_vit_h_4b8939.pth`-style file in segment-anything's layout.
        conv_type: conversation format (`model.families.CHAT_TEMPLATES`); None: the base family's default.
        out_dim: output width of the new `[SEG]` projection; it must be the mask head's prompt width (the default;
            256 for the released SAM and SAM 2).
        quantization, device, attn_implementation: see `load_lisa`.
        max_pixels: pixels of one image at most (Qwen families; InternVL3: of its tile grid; an error for LLaVA);
            None: the default budget (`model.families.base.IMAGE_TOKEN_BUDGET` tokens), or the base's own cap where
            lower.
        config_kwargs: other `LisaConfig` fields (loss weights).

    Raises:
        ValueError: a base or mask head of no supported family (naming the supported ones), a checkpoint of either
            that lacks weights of its model (naming the folder and the weights), a bad `max_pixels` or
            `attn_implementation`.
    """
    base_config = PretrainedConfig.get_config_dict(base_path)[0]
    family = vlm_family(base_config, source=base_path)
    attention = attention_implementations(family, attn_implementation)
    vlm_processor = family.load_processor(base_path)
    family.set_max_pixels(vlm_processor, max_pixels)
    base_tokens = len(vlm_processor.tokenizer)
    seg_token_id = add_seg_token(vlm_processor.tokenizer)
    vlm = _load_vlm(
        family, base_path, base_config, dtype=dtype, attn_implementation=attn_implementation,
        **quantization_kwargs(quantization, dtype, device, family.unquantized_linears),
    )
    fit_embeddings(vlm, len(vlm_processor.tokenizer), base_tokens, seg_token_id)
    sam_family = mask_head_family_at(sam_path)
    sam = sam_family.load(sam_path, dtype=dtype)
    prompt_width = sam.config.prompt_encoder_config.hidden_size
    if out_dim not in (None, prompt_width):
        raise ValueError(f"out_dim {out_dim} must equal the prompt width {prompt_width} of the SAM in {sam_path}")

    config = LisaConfig(
        vlm_config=vlm.config, sam_config=sam.config, seg_token_id=seg_token_id, out_dim=prompt_width,
        mask_head_source=str(sam_path), **config_kwargs,
    )
    model = LisaForCausalLM(config, vlm=vlm, sam=sam)
    # Wrapping the loaded parts' configs in LisaConfig clears their resolved attention implementation, and a
    # language model without one attends bidirectionally; set it once for the whole model, as loading does. SAM 2's
    # prompt encoder and mask decoder have sub-configs but are no `PreTrainedModel`s, so transformers sets theirs
    # "without finding the associated sub-model" and warns of "undefined behavior": harmless, the decoder's attention
    # reads its implementation from that config, as it does after loading (which sets it without a word).
    with dropping_log_message("transformers.modeling_utils", "We set the attention implementation for the sub-config"):
        model.set_attn_implementation(attention)
    if quantization is not None:
        model.to(device)  # SAM and the new projection join the quantised base on its device
    if dtype is not None:
        cast_unquantized(model, dtype)
    check_quantized(model, quantization, family.unquantized_linears)
    # The base's own chat template, if its tokenizer has one (Qwen's may keep it in the processor's
    # `chat_template.json` only), is replaced by LISA's format of the family.
    processor = LisaProcessor(
        vlm_processor, sam_image_size=sam_family.image_size(sam.config), vlm_family=family, sam_family=sam_family,
        conv_type=conv_type or next(iter(family.chat_templates)),
    )
    return model, processor


# ------------------------------------------------------------------------------------- loading, saving
def load_lisa(
    path: str,
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    device: torch.device | None = None,
    max_pixels: int | None = None,
    attn_implementation: str = "sdpa",
    **kwargs,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A trained LISA folder (ours, as written by `save_pretrained`): model and processor.

    Args:
        path: the folder.
        dtype: weights' dtype (default: as saved); with quantisation, the unquantised parts' and the compute dtype.
        quantization: None, "8bit" or "4bit" (`quantization_config`); the model is then loaded onto `device`
            (default: the CPU), where bitsandbytes quantises it.
        max_pixels: replaces the folder's pixel budget of one image (see `build_lisa_from_base`); None: the folder's.
        attn_implementation: "sdpa", "flash_attention_2" (needs the flash_attn package) or "eager", for the
            vision-language model; the mask head keeps SDPA. Not saved: transformers leaves it out of config.json.
        kwargs: `LisaConfig` overrides, such as loss weights.
    """
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json, not a LISA folder")
    try:
        config = LisaConfig.from_pretrained(path, **kwargs)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if dtype is None and isinstance(config.dtype, torch.dtype):
        # The dtype the folder was saved in is the top-level config's; the parts' sub-configs keep the one they were
        # built in (a bf16 merge of a float32 training), and loading by them would mix the two.
        dtype = config.dtype
    families = vlm_family(config.vlm_config, source=path), mask_head_family(config.sam_config, source=path)
    attention = attention_implementations(families[0], attn_implementation)
    # The processor first: a bad max_pixels is told before the weights load.
    processor = LisaProcessor.from_pretrained(path)
    if (processor.vlm_family, processor.sam_family) != families:
        raise ValueError(f"{path}: its processor is of a {processor.vlm_family.title} and a {processor.sam_family.title} "
                         f"model, its config of a {families[0].title} and a {families[1].title} one")
    if max_pixels is not None:
        processor.set_max_pixels(max_pixels)
    model, info = LisaForCausalLM.from_pretrained(
        path, config=config, dtype=dtype, output_loading_info=True, attn_implementation=attention,
        **quantization_kwargs(quantization, dtype, device, families[0].unquantized_linears),
    )
    problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems:
        details = "; ".join(f"{k}: {sorted(map(str, v))}" for k, v in problems.items())
        raise ValueError(f"{path}: the weights do not match the LISA model ({details})")
    if dtype is not None:
        # The vision-language model builds its vision tower and language model from their own sub-configs, which
        # keep the saved dtype; one cast makes the whole model (but the quantised weights) uniform.
        cast_unquantized(model, dtype)
    check_quantized(model, quantization, families[0].unquantized_linears)
    if os.path.isfile(os.path.join(path, GENERATION_CONFIG_NAME)):
        # Without it (folders written before it was saved) the VLM's generation config is derived from its config.
        model.vlm.generation_config = GenerationConfig.from_pretrained(path)
    return model, processor


def save_lisa(model: LisaForCausalLM, processor: LisaProcessor, path: str) -> None:
    """Writes one self-contained folder: weights, config, the VLM's generation config (its end-of-answer ids: two for
    Qwen2.5-VL-Instruct, one in its config), tokenizer, image processor, chat template."""
    model.save_pretrained(path)
    model.vlm.generation_config.save_pretrained(path)
    processor.save_pretrained(path)


def check_weights_fit(model: LisaForCausalLM, weight_names: Iterable[str], source: str) -> None:
    """Raises when weights (named as in `model`, possibly under a prefix such as PEFT's) are those of a model of other
    families — say, SAM 2 weights for a model built with SAM — naming the families, where loading them would only list
    missing and unexpected keys. Weights no family owns are left to the loader to report."""
    names = list(weight_names)
    parts = (("vlm", "vision-language model", VLM_FAMILIES, model.vlm_family),
             ("sam", "mask head", MASK_HEAD_FAMILIES, model.sam_family))
    for attribute, part, families, own in parts:
        # The names inside the part: `base_model.model.vlm.model.visual...` -> `model.visual...`.
        inside = [m.group(1) for name in names if (m := re.match(rf"(?:.*?\.)?{attribute}\.(.*)", name))]
        if own.owns(inside):
            continue
        held = [f for f in families.values() if f.owns(inside)]
        if held:
            raise ValueError(f"{source} holds the weights of a {held[0].title} {part}, not of a {own.title} one as the "
                             f"model built for them has")


def is_lisa(version: str) -> bool:
    """Whether `version` (hub id or folder) is a trained LISA (config `model_type` "lisa") or a base to build one on."""
    config, _ = PretrainedConfig.get_config_dict(version)
    return config.get("model_type") == "lisa"


def load_for_training(
    version: str,
    vision_pretrained: str,
    conv_type: str | None = None,
    dtype: torch.dtype | None = None,
    out_dim: int | None = None,
    quantization: str | None = None,
    device: torch.device | None = None,
    max_pixels: int | None = None,
    attn_implementation: str = "sdpa",
    **loss_weights: float,
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """The model a training run starts from, and its processor.

    Args:
        version: a vision-language base (of a family of `model.families.VLM_FAMILIES`): `[SEG]` is added and the
            LISA parts are new, the mask head comes from `vision_pretrained`; or a trained LISA folder: restored
            exactly, nothing re-initialised and `vision_pretrained` unused (its mask head is part of it).
        conv_type: conversation format; None keeps the base family's default (the first of its `chat_templates`) or
            the folder's own.
        out_dim: width of SAM's prompt embeddings, the new projection's output (base only; default: read from the
            SAM weights).
        quantization, device: "4bit" for QLoRA (a frozen NF4 language model under LoRA), loaded onto `device`.
        max_pixels: pixels of one image at most (Qwen families); None: the base's default budget (see
            `build_lisa_from_base`) or the folder's own.
        attn_implementation: see `load_lisa`.
        loss_weights: `ce_loss_weight`, `bce_loss_weight`, `dice_loss_weight` — they replace a LISA folder's
            saved weights, so fine-tuning uses the flags.
    """
    if is_lisa(version):
        model, processor = load_lisa(
            version, dtype=dtype, quantization=quantization, device=device, max_pixels=max_pixels,
            attn_implementation=attn_implementation, **loss_weights,
        )
        if conv_type is not None:
            processor.set_chat_template(conv_type)
    else:
        model, processor = build_lisa_from_base(
            version, vision_pretrained, conv_type=conv_type, dtype=dtype, out_dim=out_dim, quantization=quantization,
            device=device, max_pixels=max_pixels, attn_implementation=attn_implementation, **loss_weights,
        )
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            # In eval mode under no_grad (validation), bitsandbytes' CPU backend repacks a 4-bit weight for an
            # inference kernel that has no backward, and keeps it so for the training steps that follow.
            module.support_avx512bf16_for_cpu = False
    return model, processor


def load_for_inference(
    version: str,
    precision: str = "bf16",
    quantization: str | None = None,
    conv_type: str | None = None,
    device: torch.device | None = None,
    max_pixels: int | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[LisaForCausalLM, LisaProcessor]:
    """A LISA folder ready to answer: weights in `precision` on `device` (default `use_local_device()`: GPU `LOCAL_RANK`, else the CPU), eval mode.

    Args:
        precision: "fp32", "bf16" or "fp16"; with quantisation, the dtype of the unquantised parts and of
            the computation.
        quantization: None, "8bit" or "4bit": the language model's linear layers quantised by bitsandbytes.
        conv_type: a `model.families.CHAT_TEMPLATES` name overriding the folder's chat template.
        max_pixels, attn_implementation: see `load_lisa`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    device = device or use_local_device()
    model, processor = load_lisa(
        version, dtype=PRECISIONS[precision], quantization=quantization, device=device, max_pixels=max_pixels,
        attn_implementation=attn_implementation,
    )
    if quantization is None:
        model.to(device)
    if conv_type is not None:
        processor.set_chat_template(conv_type)
    return model.eval(), processor
