"""InternVL3 (`InternVLForConditionalGeneration`, the `OpenGVLab/InternVL3-*-hf` models): an InternViT vision tower and
a pixel-shuffle projector before a Qwen2 language model.

An image is cut into tiles of 448 px: the grid of at most `max_patches` tiles whose aspect ratio is closest to the
image's (InternVL's "dynamic resolution"), plus a thumbnail of the whole image when there is more than one tile. Every
tile takes 256 tokens (`image_seq_length`: 32 × 32 patches of 14 px, pixel-shuffled 2 × 2), so an image takes
256 · tiles tokens, written `<img><IMG_CONTEXT>…</img>`; the language model counts tokens (1-D RoPE). Its chat format
is the -hf models' ChatML without a default system turn (`internvl3`), or with InternVL's own system prompt, the one
its original `chat()` writes (`internvl3_chat`).

The hub's image processor allows 12 tiles (13 with the thumbnail: 3,328 tokens for a 640 × 480 photo, in every
conversation row about it); `set_max_pixels` caps the grid at `IMAGE_TOKEN_BUDGET` tokens' worth by default (4 tiles
+ thumbnail = 1,280 tokens).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedModel,
    Qwen2Config,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import cached_file

from model.families.base import (
    ATTN_IMPLEMENTATIONS,
    IMAGE_TOKEN_BUDGET,
    ImageInputs,
    TextImageProcessor,
    VlmFamily,
    holds_all,
    load_image_processor,
)

START_IMAGE, CONTEXT_IMAGE, END_IMAGE = "<img>", "<IMG_CONTEXT>", "</img>"
# The system prompt of InternVL3's original `model.chat()` (conversation template "internvl2_5").
INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
# The file of `InternVLProcessor`'s own settings in a hub folder; of them, LISA reads `image_seq_length`.
PROCESSOR_SETTINGS = "processor_config.json"


def internvl_chatml(default_system: str | None) -> str:
    """InternVL3's ChatML turns for string contents, every `<image>` written `<img><IMG_CONTEXT></img>` (its one
    `<IMG_CONTEXT>` is repeated 256 · tiles times when encoded, as `InternVLProcessor` does); a conversation without a
    system message gets `default_system`'s turn, if any. The newline after `<|im_end|>` opens the next turn and is not
    part of the answer."""
    system = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        if default_system else ""
    )
    return system + (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}"
        "{{ message['content'] | replace('<image>', '" + START_IMAGE + CONTEXT_IMAGE + END_IMAGE + "') + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


CHAT_TEMPLATES = {"internvl3": internvl_chatml(None), "internvl3_chat": internvl_chatml(INTERNVL_SYSTEM)}

# The tiny base (`model.tiny`): 32-px tiles of 8-px patches, 4 tokens a tile (4 × 4 patches, pixel-shuffled 2 × 2), at
# most 4 tiles + thumbnail: the toy corpus's 64-96 px images take a 2 × 2 grid (most) or 2 × 1 and a thumbnail, 20 or
# 12 tokens — about the 16 of the other tiny bases, the grid at the tiny CLIP's resolution and the thumbnail beside it.
TINY_TILE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_MAX_PATCHES = 4


@dataclass
class InternVLImageInputs(ImageInputs):
    """pixel_values: (T, 3, S, S) the tiles of the N images, image after image (each image's grid row-major, then its
    thumbnail); tiles: (N,) the tiles of each image."""

    pixel_values: torch.Tensor
    tiles: torch.Tensor


class InternVLTextImageProcessor(TextImageProcessor):
    """An InternVL3 tokenizer and image processor (`GotOcr2ImageProcessorPil`), the part of `InternVLProcessor` LISA
    uses, and the image tokens of a tile.

    `InternVLProcessor` can be neither built nor loaded without its video processor, which needs torchvision — which
    this project does not install. This holds the same files (tokenizer with its chat template,
    `preprocessor_config.json`, `processor_config.json` with `image_seq_length`), so an `OpenGVLab/InternVL3-*-hf`
    folder loads as it is."""

    image_token = CONTEXT_IMAGE

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: BaseImageProcessor, image_seq_length: int):
        super().__init__(tokenizer, image_processor)
        self.image_seq_length = image_seq_length

    @classmethod
    def from_pretrained(cls, path: str) -> "InternVLTextImageProcessor":
        """Raises ValueError: a folder or hub id without `image_seq_length` in its `processor_config.json`."""
        settings_file = cached_file(path, PROCESSOR_SETTINGS, _raise_exceptions_for_missing_entries=False)
        settings = {}
        if settings_file is not None:
            with open(settings_file) as f:
                settings = json.load(f)
        if "image_seq_length" not in settings:
            raise ValueError(f"{path}: no image_seq_length (the image tokens of one tile) in its {PROCESSOR_SETTINGS}")
        return cls(AutoTokenizer.from_pretrained(path), load_image_processor(path), settings["image_seq_length"])

    def save_pretrained(self, path: str) -> None:
        super().save_pretrained(path)
        with open(os.path.join(path, PROCESSOR_SETTINGS), "w") as f:
            json.dump({"image_seq_length": self.image_seq_length, "processor_class": "InternVLProcessor"}, f, indent=2)


class InternVLFamily(VlmFamily):
    name = "internvl"
    title = "InternVL3"
    model_class = InternVLForConditionalGeneration
    image_encoder_modules = ("vision_tower", "multi_modal_projector")
    processor_class = InternVLTextImageProcessor
    chat_templates = CHAT_TEMPLATES
    attn_implementations = ATTN_IMPLEMENTATIONS  # InternViT and the Qwen2 model support all three

    def owns(self, weight_names: Iterable[str]) -> bool:
        # InternViT's CLS token (CLIP's is `class_embedding`) and the projector's norm (LLaVA's projector has none).
        return holds_all(
            weight_names, r"model\.vision_tower\.embeddings\.cls_token", r"model\.multi_modal_projector\.layer_norm\.weight"
        )

    def load_processor(self, path: str) -> InternVLTextImageProcessor:
        return InternVLTextImageProcessor.from_pretrained(path)

    def set_max_pixels(self, processor: InternVLTextImageProcessor, max_pixels: int | None) -> None:
        """The tiles of an image's grid (`max_patches`) hold at most `max_pixels` px: `max_pixels // S²` tiles of
        S × S px (448² = 200,704 px on the hub), the thumbnail aside. None: `IMAGE_TOKEN_BUDGET` tokens' worth with the
        thumbnail (1280 // 256 - 1 = 4 tiles), or the processor's own cap where lower."""
        image_processor = processor.image_processor
        tile_pixels = image_processor.size["height"] * image_processor.size["width"]
        if max_pixels is None:
            max_tiles = min(image_processor.max_patches, max(1, IMAGE_TOKEN_BUDGET // processor.image_seq_length - 1))
        elif max_pixels < tile_pixels:
            raise ValueError(
                f"max_pixels {max_pixels} is below one tile of {self.title} ({image_processor.size['height']}×"
                f"{image_processor.size['width']} = {tile_pixels} px, {processor.image_seq_length} tokens)"
            )
        else:
            max_tiles = max_pixels // tile_pixels
        image_processor.max_patches = max_tiles
        image_processor.min_patches = min(image_processor.min_patches, max_tiles)

    def preprocess_image(self, processor: InternVLTextImageProcessor, image: np.ndarray) -> InternVLImageInputs:
        # Tiling is asked for here: the hub's preprocessor_config.json says `crop_to_patches: false`, and only
        # InternVLProcessor's own defaults turn it on (without it every image is squashed into one tile).
        out = processor.image_processor(
            images=image, return_tensors="pt", input_data_format="channels_last", crop_to_patches=True
        )
        tiles = torch.as_tensor(out["num_patches"], dtype=torch.long)
        return InternVLImageInputs(
            token_counts=(int(tiles[0]) * processor.image_seq_length,), pixel_values=out["pixel_values"], tiles=tiles
        )

    def encode_images(self, vlm: PreTrainedModel, images: InternVLImageInputs) -> BaseModelOutputWithPooling:
        """All tiles of all images go through the vision tower as one batch; each image's (tiles_i · 256, h) features
        are its tiles' in order."""
        features = vlm.model.get_image_features(pixel_values=images.pixel_values.to(vlm.dtype)).pooler_output
        return BaseModelOutputWithPooling(
            pooler_output=[f.reshape(-1, f.shape[-1]) for f in features.split(images.tiles.tolist())]
        )

    def image_encoder_outputs(
        self, vlm: PreTrainedModel, images: InternVLImageInputs, image_index: torch.Tensor
    ) -> BaseModelOutputWithPooling:
        """The rows' features as one (Σ n_i, h) tensor, row after row: InternVL's forward moves `pooler_output` as a
        tensor (a per-row list fails) before scattering it over the image tokens in row-major order."""
        features = self.encode_images(vlm, images).pooler_output
        return BaseModelOutputWithPooling(pooler_output=torch.cat([features[i] for i in image_index.tolist()]))

    def build_tiny(self, seed: int = 0) -> tuple[InternVLForConditionalGeneration, InternVLTextImageProcessor]:
        from model import tiny  # the shared tiny-base parts; `model.tiny` itself builds on the families
        from model.families.qwen2_5_vl import tiny_qwen_text

        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        image_seq_length = (TINY_TILE_SIZE // TINY_PATCH_SIZE) ** 2 // 4  # pixel shuffle 0.5 halves each side
        config = InternVLConfig(
            vision_config=InternVLVisionConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=TINY_TILE_SIZE, patch_size=TINY_PATCH_SIZE, attention_bias=True, use_qk_norm=False,
                norm_type="layer_norm", layer_scale_init_value=0.1, use_mean_pooling=True,
            ),
            text_config=Qwen2Config(
                **tiny_qwen_text(), vocab_size=tiny.padded_vocab_size(tokenizer), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            image_token_id=tokenizer.convert_tokens_to_ids(CONTEXT_IMAGE), image_seq_length=image_seq_length,
            downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
            # Untied, as InternVL3-1B/2B/8B (see Qwen2_5_VLFamily.build_tiny for the toy run's reason).
            tie_word_embeddings=False,
        )
        model = InternVLForConditionalGeneration(config)
        tiny.set_generation_tokens(model, tokenizer)
        # InternVL3's statistics (ImageNet's) and bicubic resize; tiling off in the file, as on the hub.
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": TINY_TILE_SIZE, "width": TINY_TILE_SIZE}, image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225], resample=3, crop_to_patches=False, min_patches=1,
            max_patches=TINY_MAX_PATCHES,
        )
        tokenizer.chat_template = CHAT_TEMPLATES["internvl3"]
        return model, InternVLTextImageProcessor(tokenizer, image_processor, image_seq_length)


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The tiny Qwen tokenizer (`model.tiny`) with InternVL's image tokens, as InternVL3's adds them to Qwen2.5's."""
    from model import tiny

    tokenizer = tiny.build_qwen_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [START_IMAGE, END_IMAGE, CONTEXT_IMAGE]},
                                 replace_extra_special_tokens=False)
    return tokenizer
