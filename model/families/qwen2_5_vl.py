"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`), and what Qwen3-VL (`model.families.qwen3_vl`) shares with it.

The image keeps its aspect ratio and (up to a pixel budget) its resolution: it becomes a sequence of patches and a
patch grid (t, h, w), and takes `t·h·w / merge²` tokens — a count that depends on the image ("dynamic resolution").
Image tokens get 3-D (t, h, w) positions and the text after an image continues from the image's largest position
(multimodal RoPE), so positions are computed from the tokens, the grids and the padding; Qwen's `generate` needs the
grids and which tokens are image tokens (`mm_token_type_ids`) to compute them itself, under left padding and with the
KV cache. Its chat format is Qwen's ChatML.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, PreTrainedModel
from transformers.image_utils import SizeDict
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from model.families.base import (
    ATTN_IMPLEMENTATIONS,
    IMAGE_TOKEN_BUDGET,
    ImageInputs,
    TextImageProcessor,
    VlmFamily,
    holds_all,
)

# Qwen2.5-VL-Instruct's and Qwen3-VL-Instruct's own formats for string contents; their templates write an image as the
# content item {"type": "image"}, which LISA's data writes as `<image>` in the text. The newline after `<|im_end|>`
# opens the next turn and is not part of the answer.
QWEN_SYSTEM = "You are a helpful assistant."


def chatml(default_system: str | None) -> str:
    """Qwen's ChatML turns, every `<image>` written `<|vision_start|><|image_pad|><|vision_end|>`; a conversation
    without a system message gets `default_system`'s turn, if any."""
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
        "{{ message['content'] | replace('<image>', '<|vision_start|><|image_pad|><|vision_end|>') + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


# The tiny bases (`model.tiny`): 8-px patches merged 2 x 2 into one token, at most 64 x 64 pixels per image (16 tokens,
# as many as the tiny CLIP gives); the toy corpus's 64-96 px images come out at 12-16 tokens, depending on their shape.
TINY_PATCH_SIZE = 8
TINY_MERGE_SIZE = 2
TINY_MAX_PIXELS = 64 * 64


@dataclass
class QwenImageInputs(ImageInputs):
    """pixel_values: (patches, C·t·p·p) the flattened patches of the N images, image after image;
    image_grid_thw: (N, 3) each image's patch grid (t, h, w)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


class QwenVLTextImageProcessor(TextImageProcessor):
    """A Qwen2.5-VL, Qwen3-VL or Qwen3.5 tokenizer and image processor, the part of `Qwen2_5_VLProcessor` /
    `Qwen3VLProcessor` LISA uses (those cannot be built, nor loaded, without their torchvision video processor), so a
    `Qwen/Qwen2.5-VL-*` or `Qwen/Qwen3-VL-*` folder loads as it is."""

    image_token = "<|image_pad|>"


class Qwen2_5_VLFamily(VlmFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_class = Qwen2_5_VLForConditionalGeneration
    image_encoder_modules = ("visual",)
    processor_class = QwenVLTextImageProcessor
    chat_templates = {"qwen2_5_vl": chatml(QWEN_SYSTEM)}
    attn_implementations = ATTN_IMPLEMENTATIONS  # the vision transformer and the text model support all three

    def owns(self, weight_names: Iterable[str]) -> bool:
        # The patch merger's `ln_q` (Qwen3-VL's merger has a `norm` instead).
        return holds_all(weight_names, r"model\.visual\.patch_embed\.proj\.weight", r"model\.visual\.merger\.ln_q\.weight")

    def load_processor(self, path: str) -> QwenVLTextImageProcessor:
        return QwenVLTextImageProcessor.from_pretrained(path)

    def set_max_pixels(self, processor: QwenVLTextImageProcessor, max_pixels: int | None) -> None:
        """The image processor resizes each image to multiples of patch·merge px (one token each) whose product stays
        within `size["longest_edge"]` px (Qwen's `max_pixels`); `size["shortest_edge"]` (`min_pixels`) is the floor."""
        image_processor = processor.image_processor
        side = image_processor.patch_size * image_processor.merge_size  # px of one token's side
        size = dict(image_processor.size)
        if max_pixels is None:
            max_pixels = min(size["longest_edge"], IMAGE_TOKEN_BUDGET * side**2)
        if max_pixels < side**2:
            raise ValueError(
                f"max_pixels {max_pixels} is below one image token of {self.title} ({side}×{side} = {side**2} px: "
                f"patch {image_processor.patch_size} · merge {image_processor.merge_size})"
            )
        # A floor above the cap would enlarge small images past it.
        floor = min(size["shortest_edge"], max_pixels)
        image_processor.size = SizeDict(**{**size, "longest_edge": max_pixels, "shortest_edge": floor})

    def preprocess_image(self, processor: QwenVLTextImageProcessor, image: np.ndarray) -> QwenImageInputs:
        out = processor.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")
        tokens = int(out["image_grid_thw"][0].prod()) // processor.image_processor.merge_size**2
        return QwenImageInputs(token_counts=(tokens,), pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])

    def encode_images(self, vlm: PreTrainedModel, images: QwenImageInputs) -> BaseModelOutputWithPooling:
        return vlm.model.get_image_features(images.pixel_values.to(vlm.dtype), images.image_grid_thw)

    def position_ids(
        self,
        vlm: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: QwenImageInputs,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """(3, R, L) multimodal RoPE positions, counted over each row's unpadded tokens (0 on padding).

        Computed here and passed to the model rather than left to it: the model would otherwise keep the rows'
        offsets (`rope_deltas`) as state between calls."""
        positions, _ = vlm.model.get_rope_index(
            input_ids, self._image_token_types(vlm, input_ids), image_grid_thw=images.image_grid_thw[image_index],
            attention_mask=attention_mask,
        )
        return positions

    def generation_inputs(
        self, vlm: PreTrainedModel, input_ids: torch.Tensor, images: QwenImageInputs, image_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "image_grid_thw": images.image_grid_thw[image_index],
            # With these, Qwen's generate computes the 3-D positions of the left-padded prompts and continues them
            # step by step from the KV cache.
            "mm_token_type_ids": self._image_token_types(vlm, input_ids),
        }

    @staticmethod
    def _image_token_types(vlm: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        """(R, L) 1 on image tokens, 0 on text (Qwen's `mm_token_type_ids`)."""
        return (input_ids == vlm.config.image_token_id).int()

    def build_tiny(self, seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, QwenVLTextImageProcessor]:
        from model import tiny  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        tokenizer = tiny.build_qwen_tokenizer()
        config = Qwen2_5_VLConfig(
            text_config=dict(
                **tiny_qwen_text(), vocab_size=tiny.padded_vocab_size(tokenizer), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                # Multimodal RoPE: the head's rotary frequency pairs split between the t, h and w positions, in Qwen's
                # proportions (16, 24, 24 of 64 pairs).
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH_SIZE,
                spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2, window_size=2 * TINY_PATCH_SIZE * TINY_MERGE_SIZE,
                fullatt_block_indexes=[1], out_hidden_size=tiny.LLM_HIDDEN_SIZE,
            ),
            **qwen_token_ids(tokenizer),
            # Untied, as Qwen2.5-VL-7B (3B ties them): trained in full from random weights at the toy run's learning
            # rate, tied embeddings grew to 30 times their norm, and the frequent template tokens took over the attention.
            tie_word_embeddings=False,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        tiny.set_generation_tokens(model, tokenizer)
        return model, tiny_qwen_processor(tokenizer, self.chat_templates["qwen2_5_vl"])


def qwen_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The image and video token ids a Qwen VLM config holds."""
    return {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))
    }


def tiny_qwen_text() -> dict:
    """The tiny Qwen language models, as the tiny LLaMA: 4 heads of 16 (no grouped keys and values) and RoPE base 10000.
    With Qwen's base (1e6, for 128-wide heads), 6 of the 8 rotary pairs of a 16-wide head hardly turn, and in the toy
    run the [SEG] queries did not learn to follow the question (colour queries 0.31 gIoU after 2100 steps, against 0.86
    with these settings and 0.68 with 2 key-value heads)."""
    from model import tiny

    return dict(
        hidden_size=tiny.LLM_HIDDEN_SIZE, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=None,
    )


def tiny_qwen_processor(tokenizer: PreTrainedTokenizerBase, chat_template: str, **image_processor_kwargs) -> QwenVLTextImageProcessor:
    """The tiny Qwen bases' processor: the tiny patch and merge sizes and pixel cap."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=TINY_PATCH_SIZE, merge_size=TINY_MERGE_SIZE, temporal_patch_size=2,
        min_pixels=(TINY_PATCH_SIZE * TINY_MERGE_SIZE) ** 2, max_pixels=TINY_MAX_PIXELS, **image_processor_kwargs,
    )
    tokenizer.chat_template = chat_template
    return QwenVLTextImageProcessor(tokenizer, image_processor)
