"""LLaVA-1.5 (`LlavaForConditionalGeneration`): a CLIP vision tower and projector before a LLaMA-style language model.

Every image is resized and centre-cropped to CLIP's square, so it always takes the same number of tokens (576 at
336 px); the language model counts tokens (1-D RoPE). Its chat formats are LLaVA's and the original LISA's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from model.families.base import ATTN_IMPLEMENTATIONS, ImageInputs, VlmFamily, holds_all, load_image_processor

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

_VICUNA_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# * `llava_1_5` — the llava-1.5 (llava-hf) format: `USER: <image>\n{q} ASSISTANT: {a}</s>`.
# * `llava_v1` — the original LISA default: the Vicuna v1 system prompt, then the same turns.
# * `llava_llama_2` — the LLaMA-2 chat format of the original's `llava_llama_2`.
# * `llava_v1_im_start_end` — `llava_v1` with every `<image>` of a user message written `<im_start><image><im_end>`
#   (the original's `mm_use_im_start_end`): the prompt format of the released LISA checkpoints
#   (`model/convert_lisa.py`). The space after "ASSISTANT:" belongs to the answer, as in the original's labels: their
#   legacy tokenizer may give it a "▁" token of its own, the first one to be predicted.
CHAT_TEMPLATES = {
    "llava_1_5": "{{ bos_token }}" + _VICUNA_TURNS,
    "llava_v1": (
        "{{ bos_token }}{% if messages[0]['role'] != 'system' %}{{ \"" + LLAVA_V1_SYSTEM + " \" }}{% endif %}"
        + _VICUNA_TURNS
    ),
    "llava_llama_2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = \"" + LLAMA_2_SYSTEM + "\" %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if loop.first %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' }}{% generation %}{{ message['content'] + ' ' + eos_token }}{% endgeneration %}"
        "{% endif %}{% endfor %}"
    ),
    "llava_v1_im_start_end": (
        "{{ bos_token }}{% if messages[0]['role'] != 'system' %}{{ \"" + LLAVA_V1_SYSTEM + " \" }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
        "{% elif message['role'] == 'user' %}"
        "{{ 'USER: ' + message['content'] | replace('<image>', '<im_start><image><im_end>') + ' ' }}"
        "{% else %}{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
}

# The tiny base (`model.tiny`): 32-px CLIP images in 8-px patches, 16 image tokens.
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8


@dataclass
class LlavaImageInputs(ImageInputs):
    """pixel_values: (N, 3, h, w) CLIP pixels."""

    pixel_values: torch.Tensor


class LlavaFamily(VlmFamily):
    name = "llava"
    title = "LLaVA-1.5"
    model_class = LlavaForConditionalGeneration
    image_encoder_modules = ("vision_tower", "multi_modal_projector")
    processor_class = LlavaProcessor
    chat_templates = CHAT_TEMPLATES
    attn_implementations = ATTN_IMPLEMENTATIONS  # CLIPVisionModel and LlamaModel support all three

    def owns(self, weight_names: Iterable[str]) -> bool:
        # CLIP's class embedding and its (misspelt) pre-layer norm, and LLaVA's two-layer projector.
        return holds_all(
            weight_names, r"model\.vision_tower\.(vision_model\.)?embeddings\.class_embedding",
            r"model\.vision_tower\.(vision_model\.)?pre_layrnorm\.weight", r"model\.multi_modal_projector\.linear_2\.weight",
        )

    def load_processor(self, path: str) -> LlavaProcessor:
        processor = AutoProcessor.from_pretrained(path)
        # Not `AutoProcessor.from_pretrained(path, backend="pil")`: it hands its keywords to the tokenizer too, which
        # then takes "pil" for its own `backend`.
        processor.image_processor = load_image_processor(path)
        return processor

    def set_max_pixels(self, processor: LlavaProcessor, max_pixels: int | None) -> None:
        if max_pixels is not None:
            crop = processor.image_processor.crop_size
            raise ValueError(
                f"max_pixels does not apply to {self.title} models: every image is resized and cropped to "
                f"{crop['height']}×{crop['width']} px ({self.image_seq_length(processor)} tokens)"
            )

    def preprocess_image(self, processor: LlavaProcessor, image: np.ndarray) -> LlavaImageInputs:
        out = processor.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")
        return LlavaImageInputs(token_counts=(self.image_seq_length(processor),), pixel_values=out["pixel_values"])

    def image_seq_length(self, processor: LlavaProcessor) -> int:
        """576 for llava-1.5 (336 px, patch 14), 256 for LISA v1 (224 px)."""
        crop = processor.image_processor.crop_size
        count = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
        count += processor.num_additional_image_tokens
        if processor.vision_feature_select_strategy == "default":
            count -= 1  # the CLS token's feature is dropped
        return count

    def encode_images(self, vlm: LlavaForConditionalGeneration, images: LlavaImageInputs) -> BaseModelOutputWithPooling:
        return vlm.model.get_image_features(pixel_values=images.pixel_values.to(vlm.dtype))

    def build_tiny(self, seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
        from model import tiny  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        tokenizer = tiny.build_tokenizer()
        vision_config = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, projection_dim=32,
        )
        text_config = LlamaConfig(
            vocab_size=tiny.padded_vocab_size(tokenizer), hidden_size=tiny.LLM_HIDDEN_SIZE, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        config = LlavaConfig(
            vision_config=vision_config, text_config=text_config,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2, vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration(config)
        tiny.set_generation_tokens(model, tokenizer)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATES["llava_1_5"],
        )
        return model, processor
