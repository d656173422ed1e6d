"""A tiny random LISA base in the real layouts, built offline in seconds.

    python -m model.tiny --out DIR

writes `DIR/llava` (a llava-hf style folder: config, weights, LLaMA-style BPE tokenizer with byte fallback,
CLIP image processor, chat template), `DIR/sam` (a `SamModel` folder) and `DIR/lisa` (an untrained LISA
built from those two by the training-init builder). Tests, the toy training run and a first try use it in
place of the 7B base.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

from model.loading import build_lisa_from_llava, save_lisa
from model.conversation import CHAT_TEMPLATES, LLAMA_2_SYSTEM, LLAVA_V1_SYSTEM
from utils.cli import HelpFormatter

CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
SAM_IMAGE_SIZE = 64
SAM_PATCH_SIZE = 8
SAM_WIDTH = 64  # also the prompt width, i.e. LISA's out_dim for the tiny model
LLM_HIDDEN_SIZE = 64
# An upper bound for the BPE trainer, high enough that every word of _CORPUS ends up one token (832 tokens in all),
# as common English words are for a real LLaMA tokenizer. At 600 the toy queries' words were split into shared
# pieces ("red" = "▁re" "d", and "coloured" ended in the piece "red").
VOCAB_SIZE = 1024

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


def build_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN_SIZE, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(
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


def write_tiny(out: str, seed: int = 0) -> None:
    llava, llava_processor = build_llava(seed)
    llava.save_pretrained(os.path.join(out, "llava"))
    llava_processor.save_pretrained(os.path.join(out, "llava"))
    build_sam(seed).save_pretrained(os.path.join(out, "sam"))
    torch.manual_seed(seed)
    model, processor = build_lisa_from_llava(os.path.join(out, "llava"), os.path.join(out, "sam"))
    save_lisa(model, processor, os.path.join(out, "lisa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write llava/, sam/ and lisa/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    write_tiny(args.out, args.seed)
    print(f"wrote {args.out}/llava, {args.out}/sam, {args.out}/lisa")


if __name__ == "__main__":
    main()
