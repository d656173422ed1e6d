"""Convert a released LISA v1 checkpoint into this project's format.

    python -m model.convert_lisa --src LISA-7B-v1 --clip openai/clip-vit-large-patch14 --out lisa-7b-v1

The released checkpoints (`xinlai/LISA-7B-v1`, `LISA-7B-v1-explanatory`, `LISA-13B-llama2-v1`,
`LISA-13B-llama2-v1-explanatory`) are LLaVA v1 models saved by the original code (transformers 4.31,
`LISAForCausalLM`): sharded `pytorch_model-*.bin` with an index, LLaMA weights under `model.`, a single-Linear
`model.mm_projector`, SAM in segment-anything naming under `model.visual_model.`, the `[SEG]` projection under
`model.text_hidden_fcs.0.`, no CLIP weights (the tower is `openai/clip-vit-large-patch14`), and a slow
sentencepiece LLaMA tokenizer. The output folder loads with
`model.loading.load_lisa`, so `chat.py`, `eval_reasonseg.py` and `train_ds.py --version` use it as is.

The conversion is exact, not approximate:
* Projector: llava-hf's two-layer projector with `projector_hidden_act="linear"` and an identity second layer
  (zero bias), which returns the first layer's output bit for bit in fp32, bf16 and fp16.
* Image token: LISA never wrote LLaVA's `<im_patch>` into a prompt (`mm_use_im_patch_token=False`), so in the
  7B tokenizer its id (32000) becomes the image token, renamed `<image>`. The 13B tokenizer has no such slot:
  `<image>` gets a new id (32003) and the embedding matrices one more row. That input row is never read (image
  positions take CLIP features); the output row copies `<unk>`'s, so the extra logit equals `<unk>`'s: argmax
  ties go to the lower id, and greedy answers are those of the original.
* Prompt: the `llava_v1_im_start_end` chat template writes `<image>` as `<im_start><image><im_end>`, as the
  original's `mm_use_im_start_end` did.
* Tokenization: the original used the slow tokenizer in legacy mode, which strips whitespace around the added
  tokens and gives every text run between added tokens its own leading "▁". The saved fast tokenizer does the
  same (Metaspace `prepend_scheme="always"`, added tokens with `lstrip`/`rstrip`), so the chat template and the
  training labels of this project produce the original's ids (tests/test_convert_lisa.py checks them against
  sentencepiece itself).
* Weights keep their dtypes (LLM and projector bf16, SAM, `[SEG]` projection and CLIP fp32); SAM's sizes come
  from its weight shapes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

import torch
from tokenizers import Tokenizer
from torch import Tensor
from transformers import CLIPImageProcessorPil, CLIPVisionModel, LlamaConfig, LlamaTokenizer, LlavaConfig, LlavaProcessor

from model.families import MASK_HEAD_FAMILIES, VLM_FAMILIES
from model.families.llava import CHAT_TEMPLATES
from model.loading import save_lisa
from model.lisa import LisaConfig, LisaForCausalLM
from model.processing import SEG_TOKEN, LisaProcessor
from model.sam import convert_original_sam_state_dict, sam_config_from_original_state_dict
from utils.cli import HelpFormatter

__all__ = ["convert_lisa", "load_original_state_dict", "convert_tokenizer", "CONV_TYPE"]

CONV_TYPE = "llava_v1_im_start_end"
IMAGE_TOKEN = "<image>"
IM_PATCH_TOKEN, IM_START_TOKEN, IM_END_TOKEN = "<im_patch>", "<im_start>", "<im_end>"
ORIGINAL_ARCHITECTURE = "LISAForCausalLM"

INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
SAM_PREFIX = "model.visual_model."
PROJECTOR_PREFIX = "model.mm_projector."
FCS_PREFIX = "model.text_hidden_fcs.0."
# Buffers the original's index lists but that are not weights: recomputed by the model.
NON_PERSISTENT_SUFFIXES = (".rotary_emb.inv_freq",)
# LLaMA names of the original (LlavaLlamaModel is a LlamaModel under `model.`) -> llava-hf names.
LLM_RENAMES = (("model.", "model.language_model."), ("lm_head.", "lm_head."))
# LlamaConfig fields a transformers-4.31 LLaVA config carries.
LLAMA_CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)


class NotReleasedLisaError(ValueError):
    """A folder that is not a released LISA v1 checkpoint."""


# ------------------------------------------------------------------------------------------------ reading
def read_original_config(src: str) -> dict:
    """The released `config.json`, checked to be a LISA v1 (LLaVA v1, start/end image tokens) checkpoint."""
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise NotReleasedLisaError(f"{path}: not found; --src must be a released LISA checkpoint folder")
    with open(path) as f:
        config = json.load(f)
    if ORIGINAL_ARCHITECTURE not in config.get("architectures", []):
        raise NotReleasedLisaError(
            f"{path}: architectures {config.get('architectures')} lack {ORIGINAL_ARCHITECTURE}; not a released LISA "
            "checkpoint (a folder of this project's format needs no conversion)"
        )
    if not config.get("mm_use_im_start_end", False) or config.get("mm_use_im_patch_token", False):
        raise NotReleasedLisaError(
            f"{path}: mm_use_im_start_end={config.get('mm_use_im_start_end')}, mm_use_im_patch_token="
            f"{config.get('mm_use_im_patch_token')}; only the v1 prompt format (start/end tokens, no patch tokens) is supported"
        )
    return config


def load_original_state_dict(src: str) -> dict[str, Tensor]:
    """All weights of a released checkpoint: the shards listed by `pytorch_model.bin.index.json` (or one
    `pytorch_model.bin`), without the non-persistent buffers the index also lists (`rotary_emb.inv_freq`)."""
    index_path = os.path.join(src, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(src, SINGLE_FILE)):
        weight_map, shard_names = {}, [SINGLE_FILE]
    else:
        raise NotReleasedLisaError(f"{src}: neither {INDEX_FILE} nor {SINGLE_FILE}; not a released LISA checkpoint")
    state_dict: dict[str, Tensor] = {}
    for name in shard_names:
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            raise NotReleasedLisaError(f"{path}: listed in {INDEX_FILE} but missing")
        # mmap: a 7B checkpoint is read lazily instead of being held twice in memory.
        state_dict.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    missing = sorted(key for key in weight_map if key not in state_dict and not key.endswith(NON_PERSISTENT_SUFFIXES))
    if missing:
        raise NotReleasedLisaError(f"{index_path}: {len(missing)} indexed weight(s) not in the shards: {missing[:10]}")
    return {key: value for key, value in state_dict.items() if not key.endswith(NON_PERSISTENT_SUFFIXES)}


def read_added_tokens(src: str) -> dict[str, int]:
    """The original's added tokens (`added_tokens.json`): `<im_start>`, `<im_end>`, `[SEG]`, and `<im_patch>` in 7B."""
    path = os.path.join(src, "added_tokens.json")
    if not os.path.isfile(path):
        raise NotReleasedLisaError(f"{path}: not found; a released LISA tokenizer lists [SEG] and the image tokens there")
    with open(path) as f:
        added = json.load(f)
    missing = [token for token in (IM_START_TOKEN, IM_END_TOKEN, SEG_TOKEN) if token not in added]
    if missing:
        raise NotReleasedLisaError(f"{path}: lacks {missing}")
    return added


# ---------------------------------------------------------------------------------------------- tokenizer
def convert_tokenizer(src: str) -> LlamaTokenizer:
    """A fast tokenizer that gives the original's ids (slow LLaMA tokenizer, legacy mode, transformers 4.31).

    Added tokens keep their ids and strip the whitespace on both sides, as the slow tokenizer did for tokens
    without their own `AddedToken` flags; every text run gets its own "▁" (`legacy=True` → Metaspace
    `prepend_scheme="always"`). `<im_patch>` (7B) is renamed `<image>`; without it `<image>` is appended.
    """
    added = read_added_tokens(src)
    tokenizer = LlamaTokenizer.from_pretrained(src, legacy=True)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["pre_tokenizer"].get("prepend_scheme") != "always":
        raise RuntimeError(f"expected a legacy Metaspace pre-tokenizer, got {state['pre_tokenizer']}")
    ids = {entry["content"]: entry["id"] for entry in state["added_tokens"]}
    for token, token_id in added.items():
        if ids.get(token) != token_id:
            raise NotReleasedLisaError(f"{src}: {token} has id {ids.get(token)} in the tokenizer, {token_id} in added_tokens.json")
    for entry in state["added_tokens"]:
        if entry["content"] in added:
            entry.update(lstrip=True, rstrip=True, normalized=False, special=True)
            if entry["content"] == IM_PATCH_TOKEN:
                entry["content"] = IMAGE_TOKEN
    if IM_PATCH_TOKEN not in added:
        state["added_tokens"].append(
            {"id": len(tokenizer), "content": IMAGE_TOKEN, "single_word": False, "lstrip": True, "rstrip": True,
             "normalized": False, "special": True}
        )
    converted = LlamaTokenizer(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        legacy=True,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.unk_token,  # the original padded with <unk> (id 0)
        model_max_length=tokenizer.model_max_length,
    )
    # `legacy` is not passed on to the base class, so it would not be saved; reloading without it rebuilds the
    # pre-tokenizer with prepend_scheme="first" (no "▁" after `<s>` or an added token: different ids).
    converted.init_kwargs["legacy"] = True
    return converted


# ---------------------------------------------------------------------------------------------- weights
def _split(state_dict: Mapping[str, Tensor], src: str) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(LLM weights under llava-hf names, projector weights, `[SEG]` projection weights); SAM keys are skipped
    (converted by `model.sam`), any other key is an error."""
    llm, projector, fcs, unknown = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(SAM_PREFIX):
            continue
        if key.startswith(PROJECTOR_PREFIX):
            projector[key[len(PROJECTOR_PREFIX) :]] = value
        elif key.startswith(FCS_PREFIX):
            fcs[key[len(FCS_PREFIX) :]] = value
        elif key.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")):
            old, new = next((old, new) for old, new in LLM_RENAMES if key.startswith(old))
            llm[new + key[len(old) :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise NotReleasedLisaError(f"{src}: weights a released LISA checkpoint does not have: {sorted(unknown)[:10]}")
    for name, part, keys in (
        ("mm_projector", projector, {"weight", "bias"}),
        ("text_hidden_fcs", fcs, {"0.weight", "0.bias", "2.weight", "2.bias"}),
    ):
        if set(part) != keys:
            raise NotReleasedLisaError(f"{src}: {name} weights {sorted(part)}, expected {sorted(keys)}")
    return llm, projector, fcs


def _llama_config(original: dict, vocab_size: int) -> LlamaConfig:
    kwargs = {key: original[key] for key in LLAMA_CONFIG_KEYS if original.get(key) is not None}
    kwargs.setdefault("pad_token_id", 0)
    return LlamaConfig(vocab_size=vocab_size, **kwargs)


def convert_lisa(src: str, clip: str, out: str) -> None:
    """Writes a released LISA v1 checkpoint as a folder of this project's format (see the module docstring);
    `model.loading.load_lisa(out)` loads it.

    Args:
        src: folder of the released checkpoint (config.json, index + shards, tokenizer files).
        clip: CLIP tower folder or hub id (`openai/clip-vit-large-patch14`), a `CLIPModel` or `CLIPVisionModel`
            with its `CLIPImageProcessor`.
        out: folder to write.

    Raises:
        NotReleasedLisaError: `src` is not a released LISA v1 checkpoint (the offending file is named).
    """
    original = read_original_config(src)
    state_dict = load_original_state_dict(src)
    tokenizer = convert_tokenizer(src)
    llm, projector, fcs = _split(state_dict, src)

    clip_model = CLIPVisionModel.from_pretrained(clip)
    image_processor = CLIPImageProcessorPil.from_pretrained(clip)
    vision_config = clip_model.config
    if original.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise ValueError(f"{src}: mm_hidden_size {original['mm_hidden_size']} but {clip} has width {vision_config.hidden_size}")

    embed_key, head_key = "model.language_model.embed_tokens.weight", "lm_head.weight"
    vocab_size = len(tokenizer)
    if vocab_size > llm[embed_key].shape[0]:
        # 13B: one row for the new <image> token. Input row: never read. Output row: a copy of <unk>'s (see above).
        llm[embed_key] = torch.cat([llm[embed_key], llm[embed_key].new_zeros(1, llm[embed_key].shape[1])])
        llm[head_key] = torch.cat([llm[head_key], llm[head_key][tokenizer.unk_token_id][None]])
    if llm[embed_key].shape[0] != vocab_size:
        raise NotReleasedLisaError(f"{src}: {llm[embed_key].shape[0]} embedding rows for a tokenizer of {vocab_size} tokens")

    hidden_size = llm[embed_key].shape[1]
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llava_config = LlavaConfig(
        vision_config=vision_config,
        text_config=_llama_config(original, vocab_size),
        image_token_id=image_token_id,
        projector_hidden_act="linear",
        multimodal_projector_bias=True,
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default",  # the original's "patch": CLS dropped
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
    )
    identity = torch.eye(hidden_size, dtype=projector["weight"].dtype)
    llm |= {
        "model.multi_modal_projector.linear_1.weight": projector["weight"],
        "model.multi_modal_projector.linear_1.bias": projector["bias"],
        "model.multi_modal_projector.linear_2.weight": identity,
        "model.multi_modal_projector.linear_2.bias": torch.zeros_like(projector["bias"]),
    }
    sam_config = sam_config_from_original_state_dict(state_dict, prefix=SAM_PREFIX)
    config = LisaConfig(
        vlm_config=llava_config,
        sam_config=sam_config,
        seg_token_id=tokenizer.convert_tokens_to_ids(SEG_TOKEN),
        out_dim=original.get("out_dim", 256),
    )
    weights = {f"vlm.{key}": value for key, value in llm.items()}
    weights |= {f"vlm.model.vision_tower.{key}": value for key, value in clip_model.state_dict().items()}
    weights |= {f"sam.{key}": value for key, value in convert_original_sam_state_dict(state_dict, SAM_PREFIX).items()}
    weights |= {f"text_hidden_fcs.{key}": value for key, value in fcs.items()}
    # Every weight comes from the checkpoints: build on the meta device (no random 7B/13B init, which would also
    # run again in `post_init`), then adopt the tensors. The non-persistent buffers (rotary frequencies, CLIP
    # position ids) stay on the meta device: this model is saved, never run; `load_lisa` of the saved folder
    # rebuilds them.
    with torch.device("meta"):
        model = LisaForCausalLM(config)
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()  # SAM's positional-encoding matrix is one parameter used twice
    model.vlm.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )

    llava_processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATES[CONV_TYPE],
    )
    processor = LisaProcessor(
        llava_processor, sam_image_size=sam_config.vision_config.image_size, vlm_family=VLM_FAMILIES["llava"],
        sam_family=MASK_HEAD_FAMILIES["sam"],
    )
    if processor.image_seq_length != llava_config.image_seq_length:
        raise ValueError(f"{clip}: its image processor gives {processor.image_seq_length} patches, the tower {llava_config.image_seq_length}")
    save_lisa(model, processor, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--src", required=True, help="folder of a released LISA v1 checkpoint (e.g. a download of xinlai/LISA-7B-v1)")
    parser.add_argument(
        "--clip", default="openai/clip-vit-large-patch14",
        help="CLIP tower the checkpoint was trained with: folder or hub id (the released models: openai/clip-vit-large-patch14)",
    )
    parser.add_argument("--out", required=True, help="folder to write the converted model to (loadable with --version)")
    args = parser.parse_args()
    convert_lisa(args.src, args.clip, args.out)
    print(f"wrote {args.out}; use it as --version of chat.py, eval_reasonseg.py and train_ds.py")


if __name__ == "__main__":
    main()
