"""The vision-language models LISA can stand on, and what differs between them.

LISA asks five things of its vision-language model (VLM), and the families answer them differently:

* **Image input.** LLaVA-1.5 resizes and centre-crops every image to CLIP's square, so an image is always the same
  number of tokens (576 at 336 px). Qwen2.5-VL and Qwen3-VL keep the image's aspect ratio and (up to a pixel budget)
  its resolution: an image becomes a sequence of patches and a patch grid `image_grid_thw` (t, h, w), and takes
  `t·h·w / merge²` tokens — a count that depends on the image ("dynamic resolution"). Qwen3-VL also adds features
  of three of its vision layers to the image tokens' hidden states in the first language-model layers (DeepStack).
* **Position ids.** LLaVA's language model counts tokens (1-D RoPE). The Qwen families give image tokens 3-D
  (t, h, w) positions and let the text after an image continue from the image's largest position (multimodal
  RoPE), so positions are computed from the tokens, the grids and the padding (`position_ids`).
* **Generation inputs.** The Qwen families' `generate` needs the grids and which tokens are image tokens
  (`mm_token_type_ids`) to compute those positions itself, under left padding and with the KV cache.
* **Image encoder.** The modules that turn pixels into image features: LLaVA's CLIP tower and projector, Qwen's
  vision transformer with its patch merger (`image_encoder_modules`).
* **Chat templates.** Each family has its own conversation formats (`model.conversation.CHAT_TEMPLATES`).

The rest is alike in all, so the code outside this module does not ask which family it runs: image features are
scattered over the image tokens (`mm_encoder_outputs`), the language model is `vlm.model.language_model` (LoRA's
`q_proj`/`v_proj` and the quantised linears live there), the output head is `vlm.lm_head`, and `[SEG]` is an
added token of the family's tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import SizeDict
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from model.families import family_of

# The attention implementations `--attn_implementation` offers; each family lists those its sub-models support.
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
# Image tokens an image takes at most by default in the dynamic-resolution families: the budget Qwen's README suggests
# for Qwen2.5-VL (max_pixels = 1280·28·28). The hub configs allow 12,845,056 px (Qwen2.5-VL) and 16,777,216 px
# (Qwen3-VL): a 4032×3024 photo would take 15,552 tokens in every conversation row about it.
IMAGE_TOKEN_BUDGET = 1280


def load_image_processor(path: str) -> BaseImageProcessor:
    """The image processor of a folder or hub id, always in its PIL version.

    transformers picks the torchvision version whenever torchvision is installed (common on CUDA hosts) and the PIL one
    otherwise; their resize kernels differ, so a model trained on one host would see other pixels on another. The PIL
    one is the one this project tests (and the one a host without torchvision runs)."""
    return AutoImageProcessor.from_pretrained(path, backend="pil")


@dataclass
class ImageInput:
    """One image as its VLM takes it.

    pixel_values: LLaVA (3, h, w) CLIP pixels; Qwen (patches, C·t·p·p) flattened patches.
    grid_thw: Qwen's (3,) patch grid (t, h, w); None for LLaVA.
    token_count: image tokens the image takes in the sequence.
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor | None
    token_count: int


class QwenVLTextImageProcessor:
    """A Qwen2.5-VL or Qwen3-VL tokenizer and image processor, the part of `Qwen2_5_VLProcessor` / `Qwen3VLProcessor`
    LISA uses.

    transformers' Qwen processors cannot be built, nor loaded, without their video processor, which needs
    torchvision — which this project does not install (it breaks CPU-only installs). This holds the same files
    (tokenizer with its chat template, `preprocessor_config.json`), so a `Qwen/Qwen2.5-VL-*` or `Qwen/Qwen3-VL-*`
    folder loads as it is.
    """

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: BaseImageProcessor):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    @chat_template.setter
    def chat_template(self, template: str) -> None:
        self.tokenizer.chat_template = template

    @classmethod
    def from_pretrained(cls, path: str) -> "QwenVLTextImageProcessor":
        return cls(AutoTokenizer.from_pretrained(path), load_image_processor(path))

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


VlmProcessor = LlavaProcessor | QwenVLTextImageProcessor


class VlmFamily:
    """What one family of vision-language models does its own way (see the module docstring)."""

    name: str  # the `model_type` of the family's configs
    title: str
    model_class: type[PreTrainedModel]
    weights_marker: str  # the start of weight names only this family's models have
    image_encoder_modules: tuple[str, ...]  # the modules of `vlm.model` that turn pixels into image features
    processor_class: type[VlmProcessor]
    chat_templates: tuple[str, ...]  # names in `CHAT_TEMPLATES` the family's tokens fit; the first is the default
    attn_implementations: tuple[str, ...]  # those of `ATTN_IMPLEMENTATIONS` its vision tower and language model support

    # ------------------------------------------------------------------------------------------ processor side
    def load_processor(self, path: str) -> VlmProcessor:
        """The tokenizer, image processor (PIL) and chat template of a base or LISA folder (or hub id) of the family."""
        raise NotImplementedError

    def set_max_pixels(self, processor: VlmProcessor, max_pixels: int | None) -> None:
        """Caps the pixels an image is resized to, in place; None: `IMAGE_TOKEN_BUDGET` tokens' worth, or the
        processor's own cap where lower. Saved with the image processor's config.

        Raises:
            ValueError: a cap below one image token, or a family whose images all take one size.
        """
        raise NotImplementedError

    def preprocess_image(self, processor: VlmProcessor, image: np.ndarray) -> ImageInput:
        """(H, W, 3) uint8 RGB -> the image as the VLM takes it.

        The layout is given to the image processor: on an image a few pixels high, transformers cannot tell
        (H, W, 3) from (3, H, W) and guesses the latter (with a warning), which gives wrong pixel values."""
        raise NotImplementedError

    def image_seq_length(self, processor: VlmProcessor) -> int:
        """Image tokens of every image, for families where it does not depend on the image."""
        raise ValueError(f"{self.title} images take a number of tokens that depends on their size")

    def batch_images(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N images -> (`pixel_values`, `image_grid_thw` or None) of a batch."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- model side
    def image_encoder_parameters(self, vlm: PreTrainedModel) -> Iterator[nn.Parameter]:
        """The weights of the image encoder (vision tower and projector), frozen in LISA's recipe."""
        for name in self.image_encoder_modules:
            yield from getattr(vlm.model, name).parameters()

    def encode_images(
        self, vlm: PreTrainedModel, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> BaseModelOutputWithPooling:
        """The VLM's image features of N images: per image, its (n_i, h) features in `pooler_output`."""
        raise NotImplementedError

    def image_encoder_outputs(
        self, vlm: PreTrainedModel, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None, image_index: torch.Tensor
    ) -> BaseModelOutputWithPooling:
        """What the image encoder gives the language model for R rows about images `image_index` (R,): per row, its
        image's (n_i, h) features in `pooler_output` (the VLM's `mm_encoder_outputs["image"]`). The encoder runs once
        per image, however many rows are about it."""
        features = self.encode_images(vlm, pixel_values, image_grid_thw).pooler_output
        return BaseModelOutputWithPooling(pooler_output=[features[i] for i in image_index.tolist()])

    def position_ids(
        self,
        vlm: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        row_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Position ids of (R, L) rows whose image grids are `row_grid_thw` (R, 3); None: the model counts tokens."""
        return None

    def generation_inputs(
        self, vlm: PreTrainedModel, input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, image_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What the VLM's own `generate` needs besides the image features (given it as `mm_encoder_outputs`) for
        (B, L) prompts about images `image_index` (B,)."""
        return {}


class LlavaFamily(VlmFamily):
    name = "llava"
    title = "LLaVA-1.5"
    model_class = LlavaForConditionalGeneration
    weights_marker = "model.vision_tower."
    image_encoder_modules = ("vision_tower", "multi_modal_projector")
    processor_class = LlavaProcessor
    chat_templates = ("llava_1_5", "llava_v1", "llava_llama_2", "llava_v1_im_start_end")
    attn_implementations = ATTN_IMPLEMENTATIONS  # CLIPVisionModel and LlamaModel support all three

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

    def preprocess_image(self, processor: LlavaProcessor, image: np.ndarray) -> ImageInput:
        pixel_values = processor.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")["pixel_values"][0]
        return ImageInput(pixel_values, None, self.image_seq_length(processor))

    def image_seq_length(self, processor: LlavaProcessor) -> int:
        """576 for llava-1.5 (336 px, patch 14), 256 for LISA v1 (224 px)."""
        crop = processor.image_processor.crop_size
        count = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
        count += processor.num_additional_image_tokens
        if processor.vision_feature_select_strategy == "default":
            count -= 1  # the CLS token's feature is dropped
        return count

    def batch_images(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, None]:
        return torch.stack([image.pixel_values for image in images]), None

    def encode_images(
        self, vlm: LlavaForConditionalGeneration, pixel_values: torch.Tensor, image_grid_thw: None
    ) -> BaseModelOutputWithPooling:
        return vlm.model.get_image_features(pixel_values=pixel_values.to(vlm.dtype))


class Qwen2_5_VLFamily(VlmFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_class = Qwen2_5_VLForConditionalGeneration
    weights_marker = "model.visual.merger.ln_q."  # Qwen3-VL's merger has a `norm` instead
    image_encoder_modules = ("visual",)
    processor_class = QwenVLTextImageProcessor
    chat_templates = ("qwen2_5_vl",)
    attn_implementations = ATTN_IMPLEMENTATIONS  # the vision transformer and the text model support all three

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

    def preprocess_image(self, processor: QwenVLTextImageProcessor, image: np.ndarray) -> ImageInput:
        out = processor.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")
        grid_thw = out["image_grid_thw"][0]
        return ImageInput(out["pixel_values"], grid_thw, int(grid_thw.prod()) // processor.image_processor.merge_size**2)

    def batch_images(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([image.pixel_values for image in images]), torch.stack([image.grid_thw for image in images])

    def encode_images(
        self, vlm: Qwen2_5_VLForConditionalGeneration, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> BaseModelOutputWithPooling:
        return vlm.model.get_image_features(pixel_values.to(vlm.dtype), image_grid_thw)

    def position_ids(
        self,
        vlm: Qwen2_5_VLForConditionalGeneration,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        row_grid_thw: torch.Tensor,
    ) -> torch.Tensor:
        """(3, R, L) multimodal RoPE positions, counted over each row's unpadded tokens (0 on padding).

        Computed here and passed to the model rather than left to it: the model would otherwise keep the rows'
        offsets (`rope_deltas`) as state between calls."""
        positions, _ = vlm.model.get_rope_index(
            input_ids, self._image_token_types(vlm, input_ids), image_grid_thw=row_grid_thw, attention_mask=attention_mask
        )
        return positions

    def generation_inputs(
        self, vlm: Qwen2_5_VLForConditionalGeneration, input_ids: torch.Tensor, image_grid_thw: torch.Tensor,
        image_index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {
            "image_grid_thw": image_grid_thw[image_index],
            # With these, Qwen's generate computes the 3-D positions of the left-padded prompts and continues them
            # step by step from the KV cache.
            "mm_token_type_ids": self._image_token_types(vlm, input_ids),
        }

    @staticmethod
    def _image_token_types(vlm: Qwen2_5_VLForConditionalGeneration, input_ids: torch.Tensor) -> torch.Tensor:
        """(R, L) 1 on image tokens, 0 on text (Qwen's `mm_token_type_ids`)."""
        return (input_ids == vlm.config.image_token_id).int()


class Qwen3VLFamily(Qwen2_5_VLFamily):
    """Qwen3-VL: Qwen2.5-VL's image input, positions and generation inputs, plus DeepStack features."""

    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_class = Qwen3VLForConditionalGeneration
    weights_marker = "model.visual.deepstack_merger_list."
    chat_templates = ("qwen3_vl",)

    def image_encoder_outputs(
        self, vlm: Qwen3VLForConditionalGeneration, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
        image_index: torch.Tensor,
    ) -> BaseModelOutputWithDeepstackFeatures:
        """Also per row, in `deepstack_features[k]`, its image's (n_i, h) features of the k-th DeepStack vision layer,
        which the language model adds to the image tokens' hidden states after its layer k."""
        output = self.encode_images(vlm, pixel_values, image_grid_thw)
        rows = image_index.tolist()
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=[output.pooler_output[i] for i in rows],
            deepstack_features=[[layer[i] for i in rows] for layer in output.deepstack_features],
        )


VLM_FAMILIES: dict[str, VlmFamily] = {family.name: family for family in (LlavaFamily(), Qwen2_5_VLFamily(), Qwen3VLFamily())}


def vlm_family(config: PretrainedConfig | dict, source: str = "") -> VlmFamily:
    """The family of a VLM config (or config dict); `source` names where it came from, for the error.

    Raises:
        ValueError: a model of no supported family, naming the supported ones.
    """
    return family_of(VLM_FAMILIES, config, "vision-language model", source)
