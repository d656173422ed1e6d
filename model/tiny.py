"""A tiny random LISA base in the real layouts, built offline in seconds.

    python -m model.tiny --out DIR [--vlm VLM] [--sam SAM]

writes the vision-language base of family VLM to `DIR/<vlm>`, the mask head of family SAM to `DIR/<sam>` (any pair of
`model.families`; each family builds its own, `build_tiny`) and an untrained LISA built from those two by the
training-init builder to `DIR/lisa`. This module holds what the families' tiny bases share (the tokenizers trained on
an offline corpus, the widths) and the command. Of the families:
* `llava`: a llava-hf style folder (config, weights, LLaMA-style BPE tokenizer with byte fallback, CLIP image
  processor, chat template);
* `qwen2_5_vl`: a Qwen2.5-VL folder (config, weights, Qwen-style byte-level BPE tokenizer with Qwen's special
  tokens, dynamic-resolution image processor, chat template);
* `qwen3_vl`: a Qwen3-VL folder (the same files; a vision transformer with learnt position embeddings and two
  DeepStack layers, a language model with query/key norms);
* `qwen3_5`: a Qwen3.5 folder (the same files; Qwen3-VL's vision transformer without DeepStack, a language model of
  two Gated DeltaNet layers alternating with two gated full-attention layers);
* `internvl`: an InternVL3 folder (the Qwen-style tokenizer with InternVL's `<img>`, `</img>`, `<IMG_CONTEXT>`, the PIL
  tiling image processor, `processor_config.json` with the tokens of a tile; InternViT, pixel-shuffle projector, Qwen2);
* `sam`: a `SamModel` folder; `sam2`: a `Sam2Model` folder (Hiera image encoder with its feature pyramid);
  `sam3_tracker`: a `Sam3TrackerModel` folder (SAM 3's ViT in 14-px patches under its feature pyramid). Beside the
  last two, `DIR/<sam>_video`: the same weights with random memory modules in a `Sam2VideoModel` /
  `Sam3TrackerVideoModel` folder, as the released checkpoints hold them (the video model of `model.video`).
The language models have more embedding rows than their tokenizers have tokens, as the real bases do.
Tests, the toy training run and a first try use them in place of the 7B (or 3B) bases.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaTokenizer, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from model.families import MASK_HEAD_FAMILIES, VLM_FAMILIES, mask_head_family, vlm_family
from model.families.llava import LLAMA_2_SYSTEM, LLAVA_V1_SYSTEM
from model.families.qwen2_5_vl import QWEN_SYSTEM
from model.loading import build_lisa_from_base, save_lisa
from utils.cli import HelpFormatter

# Sizes the tiny bases of all families share; each family's own sizes are in its file (`model.families.*`).
SAM_WIDTH = 64  # the mask heads' width, also their prompt width, i.e. LISA's out_dim for the tiny model
LLM_HIDDEN_SIZE = 64
QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
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


def build_qwen_tokenizer(tokenizer_class: type = Qwen2Tokenizer, pretokenize_regex: str = PRETOKENIZE_REGEX):
    """A Qwen-style byte-level BPE tokenizer (Qwen's pre-tokenizer and special tokens) trained on the offline corpus,
    of `tokenizer_class` with its pre-tokenizer's `pretokenize_regex` (Qwen2's by default)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated"),
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
    tokenizer = tokenizer_class(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    return tokenizer


def set_generation_tokens(model: torch.nn.Module, tokenizer) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def write_tiny(out: str, seed: int = 0, vlm: str = "llava", sam: str = "sam") -> None:
    """Writes `out/<vlm>`, `out/<sam>`, `out/<sam>_video` (for mask heads with a video model) and `out/lisa` (see the
    module docstring)."""
    base, base_processor = vlm_family(vlm).build_tiny(seed)
    base.save_pretrained(os.path.join(out, vlm))
    base_processor.save_pretrained(os.path.join(out, vlm))
    sam_family = mask_head_family(sam)
    mask_head = sam_family.build_tiny(seed)
    mask_head.save_pretrained(os.path.join(out, sam))
    if sam_family.video_model_class is not None:
        sam_family.build_tiny_video(mask_head, seed).save_pretrained(os.path.join(out, f"{sam}_video"))
    torch.manual_seed(seed)
    model, processor = build_lisa_from_base(os.path.join(out, vlm), os.path.join(out, sam))
    save_lisa(model, processor, os.path.join(out, "lisa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write <vlm>/, <sam>/ and lisa/ into")
    parser.add_argument("--vlm", default="llava", choices=sorted(VLM_FAMILIES), help="vision-language model family")
    parser.add_argument("--sam", default="sam", choices=sorted(MASK_HEAD_FAMILIES), help="mask head family")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    write_tiny(args.out, args.seed, args.vlm, args.sam)
    print(f"wrote {args.out}/{args.vlm}, {args.out}/{args.sam}, {args.out}/lisa")


if __name__ == "__main__":
    main()
