"""What a family of models is to LISA: one base for both parts (`Family`), and what each part's families answer
their own way (`VlmFamily` for the vision-language model, `MaskHeadFamily` for the mask head).

LISA asks five things of its vision-language model (VLM), and the families answer them differently:

* **Image inputs.** What the VLM takes of an image is the family's own `ImageInputs`: LLaVA-1.5's square CLIP pixels
  (every image the same number of tokens), Qwen's patches and patch grid (a number of tokens that depends on the
  image). The processor batches them and `LisaForCausalLM` carries them, without looking inside.
* **Position ids.** Computed by the family from the tokens, the image inputs and the padding, or left to the model.
* **Generation inputs.** What the VLM's own `generate` needs besides the image features.
* **Image encoder.** The modules that turn pixels into image features (frozen in LISA's recipe).
* **Chat templates.** Each family's conversation formats (see `model.families` for what they share).

The rest is alike in all, so the code outside the families does not ask which family it runs: image features are
scattered over the image tokens (`mm_encoder_outputs`), the language model is `vlm.model.language_model` (LoRA's
`q_proj`/`v_proj` and the quantised linears live there), the output head is `vlm.lm_head`, and `[SEG]` is an added
token of the family's tokenizer.

A mask head takes the projected `[SEG]` hidden state as one sparse prompt token and "no mask" as the dense prompt, and
answers with low-resolution mask logits; its families differ in their input (size, statistics, padding), the features
their decoder reads, and how masks go back to the image. The image encoder runs once per image (`embed`), the decoder
once per image for all its `[SEG]` (`decode`), so several conversations about one image share one encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from model.pretrained import load_pretrained

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


class TextImageProcessor:
    """A tokenizer (with its chat template) and a PIL image processor: the part of a vision-language processor LISA
    uses, for families whose own transformers processor cannot be built without torchvision (it holds a video
    processor that needs it). Loads and saves the same files, so a hub folder of the family loads as it is.

    image_token: the token an image's features replace (one per feature), set by each family."""

    image_token: str

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
    def from_pretrained(cls, path: str) -> "TextImageProcessor":
        return cls(AutoTokenizer.from_pretrained(path), load_image_processor(path))

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def holds_all(weight_names: Iterable[str], *patterns: str) -> bool:
    """Whether every regex of `patterns` matches some name of `weight_names` whole (for `Family.owns`)."""
    names = list(weight_names)
    return all(any(re.fullmatch(pattern, name) for name in names) for pattern in patterns)


class Family:
    """One family of models LISA can use for a part; its registry (`model.families`) looks it up by `name`."""

    name: str  # the `model_type` of the family's configs
    aliases: tuple[str, ...] = ()  # other `model_type`s of folders that hold the family's weights (a larger model's)
    title: str  # for messages: "Qwen2.5-VL"
    model_class: type[PreTrainedModel]

    def owns(self, weight_names: Iterable[str]) -> bool:
        """Whether weights named as in a model of the part (`model.visual.merger.ln_q.weight`; no LISA or PEFT prefix)
        are those of a model of this family: names only its models have, whole, so that a family does not claim
        another's weights (LLaVA's `model.vision_tower.*` names also start InternVL's)."""
        raise NotImplementedError

    def build_tiny(self, seed: int = 0) -> Any:
        """The family's tiny random base (`model.tiny`): the model for a mask head, (model, processor) for a VLM."""
        raise NotImplementedError


@dataclass
class ImageInputs:
    """N images as one family's VLM takes them. Each family subclasses it as a dataclass of its tensors, all
    concatenated along their first dimension when images are batched (`cat`); only the family looks inside.

    token_counts: per image, the image tokens it takes in a conversation.
    """

    token_counts: tuple[int, ...]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ImageInputs":
        """The inputs on `device`; floating-point tensors (pixels) also in `dtype`."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
        return replace(self, **moved)

    @classmethod
    def cat(cls, inputs: Sequence["ImageInputs"]) -> "ImageInputs":
        """The inputs of several batches (often one image each) as one batch, in order."""
        values = {}
        for f in fields(cls):
            parts = [getattr(batch, f.name) for batch in inputs]
            values[f.name] = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else sum(parts, ())
        return cls(**values)

    def __len__(self) -> int:
        return len(self.token_counts)


class VlmFamily(Family):
    """What one family of vision-language models does its own way (see the module docstring)."""

    image_encoder_modules: tuple[str, ...]  # the modules of `vlm.model` that turn pixels into image features
    processor_class: type  # the class of its tokenizer + image processor (`load_processor`)
    chat_templates: dict[str, str]  # conversation formats its tokens fit, by name; the first is the default
    attn_implementations: tuple[str, ...]  # those of `ATTN_IMPLEMENTATIONS` its vision tower and language model support
    # The language model's linears that get LoRA by default (`model.peft_setup`): LISA's query and value projections.
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # Names of language-model linears that stay unquantised (`model.quantization`): those bitsandbytes cannot take.
    unquantized_linears: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------ processor side
    def load_processor(self, path: str) -> Any:
        """The tokenizer, image processor (PIL) and chat template of a base or LISA folder (or hub id) of the family,
        as one object with `tokenizer`, `image_processor`, `image_token_id`, a settable `chat_template` and
        `save_pretrained`."""
        raise NotImplementedError

    def set_max_pixels(self, processor: Any, max_pixels: int | None) -> None:
        """Caps the pixels an image is resized to, in place; None: `IMAGE_TOKEN_BUDGET` tokens' worth, or the
        processor's own cap where lower. Saved with the image processor's config.

        Raises:
            ValueError: a cap below one image token, or a family whose images all take one size.
        """
        raise NotImplementedError

    def preprocess_image(self, processor: Any, image: np.ndarray) -> ImageInputs:
        """(H, W, 3) uint8 RGB -> the inputs of that one image.

        The layout is given to the image processor: on an image a few pixels high, transformers cannot tell
        (H, W, 3) from (3, H, W) and guesses the latter (with a warning), which gives wrong pixel values."""
        raise NotImplementedError

    def image_seq_length(self, processor: Any) -> int:
        """Image tokens of every image, for families where it does not depend on the image."""
        raise ValueError(f"{self.title} images take a number of tokens that depends on their size")

    # ---------------------------------------------------------------------------------------------- model side
    def image_encoder_parameters(self, vlm: PreTrainedModel) -> Iterator[nn.Parameter]:
        """The weights of the image encoder (vision tower and projector), frozen in LISA's recipe."""
        for name in self.image_encoder_modules:
            yield from getattr(vlm.model, name).parameters()

    def encode_images(self, vlm: PreTrainedModel, images: ImageInputs) -> BaseModelOutputWithPooling:
        """The VLM's image features of N images: per image, its (n_i, h) features in `pooler_output`."""
        raise NotImplementedError

    def image_encoder_outputs(
        self, vlm: PreTrainedModel, images: ImageInputs, image_index: torch.Tensor
    ) -> BaseModelOutputWithPooling:
        """What the image encoder gives the language model for the images `image_index` that R rows show, row after
        row (one per row about a picture, a video's frames in order): per image shown, its (n_i, h) features in
        `pooler_output` (the VLM's `mm_encoder_outputs["image"]`). The encoder runs once per image, however many rows
        show it."""
        features = self.encode_images(vlm, images).pooler_output
        return BaseModelOutputWithPooling(pooler_output=[features[i] for i in image_index.tolist()])

    def position_ids(
        self,
        vlm: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: ImageInputs,
        image_index: torch.Tensor,
    ) -> torch.Tensor | None:
        """Position ids of (R, L) rows showing the images `image_index`, row after row; None: the model counts
        tokens."""
        return None

    def generation_inputs(
        self, vlm: PreTrainedModel, input_ids: torch.Tensor, images: ImageInputs, image_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What the VLM's own `generate` needs besides the image features (given it as `mm_encoder_outputs`) for
        (B, L) prompts showing the images `image_index`, prompt after prompt."""
        return {}


class MaskHeadFamily(Family):
    """What one family of segmentation models does its own way (see the module docstring)."""

    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    # Its video model (image model + memory modules that carry a mask through a video), None if it has none; the
    # session holding a video's frames, prompts and outputs for it.
    video_model_class: type[PreTrainedModel] | None = None
    video_session_class: type | None = None

    def load_video_model(self, sam: PreTrainedModel, source: str) -> PreTrainedModel:
        """The family's video model with the memory modules of `source` (a folder or hub id of the video model, such
        as the checkpoint the mask head came from) and every weight `sam` has taken from `sam` (LISA's trained mask
        decoder), in `sam`'s dtype and on its device, in eval mode.

        Raises:
            ValueError: a family without a video model, a checkpoint lacking weights, or one whose image model does
                not fit `sam` (naming `source` and the weights).
        """
        if self.video_model_class is None:
            raise ValueError(f"{self.title} has no video model: decode on every frame instead (per_frame)")
        video = load_pretrained(self.video_model_class, source, dtype=sam.dtype)
        try:
            result = video.load_state_dict(sam.state_dict(), strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"{source}: its {self.title} video model does not fit this mask head: {error}") from None
        if result.unexpected_keys:
            raise ValueError(
                f"{source}: its {self.title} video model lacks {len(result.unexpected_keys)} weight(s) of this mask "
                f"head: {sorted(result.unexpected_keys)[:5]}"
            )
        if video.mem_dim == video.hidden_dim:
            # transformers 5.23 stacks the object pointers, (B, 1, C) each, into a 4-D tensor it cannot attend to when
            # the memories are as wide as the model (the released models' are narrower, 64 of 256, and get split into
            # 3-D): such a model (the tiny bases) gets them as (pointers, B, C).
            process = video._process_object_pointers

            def three_d_pointers(*args, **kwargs):
                pointers, positions = process(*args, **kwargs)
                return (pointers.flatten(1, 2) if pointers is not None and pointers.dim() == 4 else pointers), positions

            video._process_object_pointers = three_d_pointers
        return video.to(sam.device).eval()

    def build_tiny_video(self, sam: PreTrainedModel, seed: int = 0) -> PreTrainedModel:
        """The tiny base's video model (`model.tiny`), for families that have one."""
        raise ValueError(f"{self.title} has no video model")

    def image_size(self, config: PretrainedConfig) -> int:
        """The square input size (1024 for the released models)."""
        return config.prompt_encoder_config.image_size

    def prepare(self, sam: PreTrainedModel) -> None:
        """Settings of the model that LISA's use of it needs (applied whenever a LISA model is built)."""

    def load(self, path_or_id: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """The family's model of a folder or hub id, in eval mode."""
        return load_pretrained(self.model_class, path_or_id, dtype=dtype).eval()

    def preprocess(self, image: np.ndarray, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> (3, S, S) float32 pixel values, and the (h', w') the image fills of the S x S."""
        raise NotImplementedError

    def embed(self, sam: PreTrainedModel, pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """(N, 3, S, S) pixel values -> per image, the feature maps its mask decoder reads."""
        raise NotImplementedError

    def decode(
        self, sam: PreTrainedModel, features: tuple[torch.Tensor, ...], queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's feature maps and its (n, C) prompt tokens -> (n, h, w) low-resolution mask logits and the
        decoder's (n,) prediction of each mask's IoU with the true mask (its own confidence score)."""
        raise NotImplementedError

    def postprocess(
        self, low_res_logits: torch.Tensor, image_size: int, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(n, h, w) decoder logits -> (n, H, W) float32 logits on the original image; > 0 is inside the mask."""
        raise NotImplementedError

    @staticmethod
    def _decoder_prompts(sam: PreTrainedModel, embedding: torch.Tensor, queries: torch.Tensor) -> dict[str, object]:
        """The mask decoder's inputs for one (C, s, s) image embedding and its (n, C) `[SEG]` queries, alike in the
        SAM families: every query is one entry of the decoder's point batch ([1, n, 1, C]), with "no mask" as the dense
        prompt and a single mask out."""
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return dict(
            image_embeddings=embedding[None],
            image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=queries[None, :, None, :].to(embedding.dtype),
            dense_prompt_embeddings=dense.expand(1, -1, *embedding.shape[-2:]),
            multimask_output=False,
        )

    def _normalise(self, pixels: np.ndarray, scale: float) -> torch.Tensor:
        """(h, w, 3) uint8 -> (3, h, w) float32, `(pixels / scale - mean) / std`."""
        values = torch.from_numpy(pixels).permute(2, 0, 1).float() / scale
        return (values - torch.tensor(self.pixel_mean).view(3, 1, 1)) / torch.tensor(self.pixel_std).view(3, 1, 1)
