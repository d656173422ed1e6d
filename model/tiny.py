"""A tiny random LISA base in the real layouts, built offline in seconds.

    python -m model.tiny --out DIR [--vlm llava|qwen2_5_vl|qwen3_vl] [--sam sam|sam2]

writes the vision-language base to `DIR/<vlm>`, the mask head to `DIR/<sam>` and an untrained LISA built from
those two by the training-init builder to `DIR/lisa`:
* `llava`: a llava-hf style folder (config, weights, LLaMA-style BPE tokenizer with byte fallback, CLIP image
  processor, chat template);
* `qwen2_5_vl`: a Qwen2.5-VL folder (config, weights, Qwen-style byte-level BPE tokenizer with Qwen's special
  tokens, dynamic-resolution image processor, chat template);
* `qwen3_vl`: a Qwen3-VL folder (the same files; a vision transformer with learnt position embeddings and two
  DeepStack layers, a language model with query/key norms);
* `sam`: a `SamModel` folder; `sam2`: a `Sam2Model` folder (Hiera image encoder with its feature pyramid).
The language models have more embedding rows than their tokenizers have tokens, as the real bases do.
Tests, the toy training run and a first try use them in place of the 7B (or 3B) bases.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from model.conversation import CHAT_TEMPLATES, LLAMA_2_SYSTEM, LLAVA_V1_SYSTEM, QWEN_SYSTEM
from model.loading import build_lisa_from_base, save_lisa
from model.vlm_families import QwenVLTextImageProcessor
from utils.cli import HelpFormatter

CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
SAM_IMAGE_SIZE = 64
SAM_PATCH_SIZE = 8
SAM_WIDTH = 64  # also the prompt width, i.e. LISA's out_dim for the tiny model
LLM_HIDDEN_SIZE = 64
# Qwen2.5-VL and Qwen3-VL: 8-px patches merged 2 x 2 into one token, at most 64 x 64 pixels per image (16 tokens, as
# many as the tiny CLIP gives); the toy corpus's 64-96 px images come out at 12-16 tokens, depending on their shape.
QWEN_PATCH_SIZE = 8
QWEN_MERGE_SIZE = 2
QWEN_MAX_PIXELS = 64 * 64
QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# SAM 2: a 128-px input, so that its decoder's embedding (input / 16) is 8 x 8 as the tiny SAM's (input / 8).
SAM2_IMAGE_SIZE = 128
# An upper bound for the BPE trainer, high enough that every word of _CORPUS ends up one token (832 tokens in all),
# as common English words are for a real LLaMA tokenizer. At 600 the toy queries' words were split into shared
# pieces ("red" = "▁re" "d", and "coloured" ended in the piece "red").
VOCAB_SIZE = 1024
# The language models' embedding rows come in multiples of this, past the tokenizer's size, as real bases pad their
# vocabulary (llava-1.5-7b-hf: 32064 rows for 32002 tokens; Qwen2.5-VL-3B: 151936 for 151665): LISA's `[SEG]` then
# takes a padded row, and some rows stay without a token, as there.
VOCAB_ROWS_MULTIPLE = 64

# Words the tokenizer should hold whole: LISA's templates and the toy corpus's vocabulary.
_CORPUS = [
    LLAVA_V1_SYSTEM,
    LLAMA_2_SYSTEM,
    "USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>>",
    "Can you segment the {} in this image? Please segment the {} in this image.",
    "What is {} in this image? Please respond with segmentation mask. Please output segmentation mask.",
    "Please output segmentation mask and explain why. Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
    "It is. Sure, it is. Sure, the segmentation result is. There is no such object in the image.",
    "red green blue yellow orange purple white black gray brown pink cyan magenta",
    "circle square triangle star diamond rectangle ellipse hexagon shape shapes object objects",
    "left right top bottom leftmost rightmost topmost bottommost largest smallest biggest middle center corner",
    "the a an of in on with which where what who is are has have three four five corners sides round",
    "coloured colored like grass sky sun fire blood snow night sea banana cherry leaf ocean lemon",
    "image picture photo this that these those it its one two part wall building floor person car road",
    "because the shape looks describe explain why reason answer question please thanks yes no",
    "Which Where What Can Sure It There The find colour color points point has and no one ones picture",
    "ball box tent flag kite book sports wall Circle Square Triangle Star Unlabeled",
]
# For the Qwen tokenizer, also the words of Qwen's chat format. A byte-level BPE keeps a word's leading space in the
# token ("Ġred"), so every line comes once as it is (a word after a newline) and once after a space: otherwise the first
# word of each line ("red green blue ...") is learnt only without it, and " red" in a query splits into " re" "d".
_QWEN_LINES = _CORPUS + [f"system user assistant {QWEN_SYSTEM}"]
_QWEN_CORPUS = _QWEN_LINES + [" " + line for line in _QWEN_LINES]


def padded_vocab_size(tokenizer) -> int:
    """The embedding rows of a tiny base: the next multiple of `VOCAB_ROWS_MULTIPLE` above the tokenizer's size."""
    return (len(tokenizer) // VOCAB_ROWS_MULTIPLE + 1) * VOCAB_ROWS_MULTIPLE


def build_tokenizer() -> LlamaTokenizer:
    """A LLaMA-style BPE tokenizer (Metaspace, byte fallback) trained on a small offline corpus."""
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = LlamaTokenizer(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.image_token = "<image>"
    return tokenizer


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A Qwen-style byte-level BPE tokenizer (Qwen's pre-tokenizer and special tokens) trained on the offline corpus."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_QWEN_CORPUS * 4, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # As Qwen2.5-VL-Instruct's: "<|im_end|>" ends a turn, "<|endoftext|>" pads.
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    return tokenizer


def qwen_token_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    """The image and video token ids a Qwen VLM config holds."""
    return {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))
    }


def build_qwen_processor(tokenizer: Qwen2Tokenizer, chat_template: str, **image_processor_kwargs) -> QwenVLTextImageProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH_SIZE, merge_size=QWEN_MERGE_SIZE, temporal_patch_size=2,
        min_pixels=(QWEN_PATCH_SIZE * QWEN_MERGE_SIZE) ** 2, max_pixels=QWEN_MAX_PIXELS, **image_processor_kwargs,
    )
    tokenizer.chat_template = CHAT_TEMPLATES[chat_template]
    return QwenVLTextImageProcessor(tokenizer, image_processor)


def _set_generation_tokens(model: torch.nn.Module, tokenizer) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


# The tiny Qwen language models, as the tiny LLaMA: 4 heads of 16 (no grouped keys and values) and RoPE base 10000.
# With Qwen's base (1e6, for 128-wide heads), 6 of the 8 rotary pairs of a 16-wide head hardly turn, and in the toy run
# the [SEG] queries did not learn to follow the question (colour queries 0.31 gIoU after 2100 steps, against 0.86 with
# these settings and 0.68 with 2 key-value heads).
QWEN_TEXT = dict(
    hidden_size=LLM_HIDDEN_SIZE, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=1024, bos_token_id=None,
)


def build_qwen2_5_vl(seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, QwenVLTextImageProcessor]:
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **QWEN_TEXT, vocab_size=padded_vocab_size(tokenizer), eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # Multimodal RoPE: the head's rotary frequency pairs split between the t, h and w positions, in Qwen's
            # proportions (16, 24, 24 of 64 pairs).
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN_PATCH_SIZE,
            spatial_merge_size=QWEN_MERGE_SIZE, temporal_patch_size=2, window_size=2 * QWEN_PATCH_SIZE * QWEN_MERGE_SIZE,
            fullatt_block_indexes=[1], out_hidden_size=LLM_HIDDEN_SIZE,
        ),
        **qwen_token_ids(tokenizer),
        # Untied, as Qwen2.5-VL-7B (3B ties them): trained in full from random weights at the toy run's learning rate,
        # tied embeddings grew to 30 times their norm, and the frequent template tokens took over the attention.
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_tokens(model, tokenizer)
    return model, build_qwen_processor(tokenizer, "qwen2_5_vl")


def build_qwen3_vl(seed: int = 0) -> tuple[Qwen3VLForConditionalGeneration, QwenVLTextImageProcessor]:
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config=dict(
            **QWEN_TEXT, vocab_size=padded_vocab_size(tokenizer), head_dim=LLM_HIDDEN_SIZE // 4,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            # Qwen3-VL interleaves the t, h and w frequencies (t h w t h w ...); its proportions are 24, 20, 20 of 64.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN_PATCH_SIZE,
            spatial_merge_size=QWEN_MERGE_SIZE, temporal_patch_size=2, out_hidden_size=LLM_HIDDEN_SIZE,
            # Learnt position embeddings on a 4 x 4 grid, interpolated to each image's patch grid (48 x 48 in Qwen3-VL);
            # both vision layers also feed the language model's first two layers (Qwen3-VL: 3 of 24-27 layers).
            num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
        ),
        **qwen_token_ids(tokenizer),
        tie_word_embeddings=False,  # see build_qwen2_5_vl
    )
    model = Qwen3VLForConditionalGeneration(config)
    _set_generation_tokens(model, tokenizer)
    # Qwen3-VL normalises pixels to [-1, 1] (mean and std 0.5), where Qwen2.5-VL uses CLIP's.
    return model, build_qwen_processor(tokenizer, "qwen3_vl", image_mean=[0.5] * 3, image_std=[0.5] * 3)


def build_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=padded_vocab_size(tokenizer), hidden_size=LLM_HIDDEN_SIZE, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    _set_generation_tokens(model, tokenizer)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATES["llava_1_5"],
    )
    return model, processor


def build_sam(seed: int = 0) -> SamModel:
    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=SAM_WIDTH, output_channels=SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
            image_size=SAM_IMAGE_SIZE, patch_size=SAM_PATCH_SIZE, window_size=4, global_attn_indexes=[1],
            mlp_dim=2 * SAM_WIDTH, num_pos_feats=SAM_WIDTH // 2,
            # SamVisionConfig's default (1e-10, for a model always loaded from weights) leaves a random encoder
            # at ~0: its features carry nothing and it barely trains. Use the usual 0.02.
            initializer_range=0.02,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=SAM_WIDTH, image_size=SAM_IMAGE_SIZE, patch_size=SAM_PATCH_SIZE, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=SAM_WIDTH, mlp_dim=2 * SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=SAM_WIDTH
        ),
    )
    return SamModel(config)


def build_sam2(seed: int = 0) -> Sam2Model:
    torch.manual_seed(seed)
    stage_widths = [16, 32, 64, 128]
    # The feature pyramid drops the last (lowest-resolution) stage: inputs / 4, / 8, / 16.
    feature_sizes = [[SAM2_IMAGE_SIZE // stride] * 2 for stride in (4, 8, 16)]
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=stage_widths[0], image_size=[SAM2_IMAGE_SIZE] * 2, blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=stage_widths, num_attention_heads_per_stage=[1, 1, 2, 2],
                window_size_per_stage=[8, 4, 4, 2], global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4],
            ),
            backbone_channel_list=stage_widths[::-1], backbone_feature_sizes=feature_sizes, fpn_hidden_size=SAM_WIDTH,
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=SAM_WIDTH, image_size=SAM2_IMAGE_SIZE, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=SAM_WIDTH, mlp_dim=2 * SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=SAM_WIDTH
        ),
    )
    return Sam2Model(config)


VLM_BUILDERS = {"llava": build_llava, "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl}
SAM_BUILDERS = {"sam": build_sam, "sam2": build_sam2}


def write_tiny(out: str, seed: int = 0, vlm: str = "llava", sam: str = "sam") -> None:
    """Writes `out/<vlm>`, `out/<sam>` and `out/lisa` (see the module docstring)."""
    base, base_processor = VLM_BUILDERS[vlm](seed)
    base.save_pretrained(os.path.join(out, vlm))
    base_processor.save_pretrained(os.path.join(out, vlm))
    SAM_BUILDERS[sam](seed).save_pretrained(os.path.join(out, sam))
    torch.manual_seed(seed)
    model, processor = build_lisa_from_base(os.path.join(out, vlm), os.path.join(out, sam))
    save_lisa(model, processor, os.path.join(out, "lisa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write <vlm>/, <sam>/ and lisa/ into")
    parser.add_argument("--vlm", default="llava", choices=sorted(VLM_BUILDERS), help="vision-language model family")
    parser.add_argument("--sam", default="sam", choices=sorted(SAM_BUILDERS), help="mask head family")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    write_tiny(args.out, args.seed, args.vlm, args.sam)
    print(f"wrote {args.out}/{args.vlm}, {args.out}/{args.sam}, {args.out}/lisa")


if __name__ == "__main__":
    main()
