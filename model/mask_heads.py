"""The segmentation models LISA's `[SEG]` tokens prompt — SAM (`SamModel`) and SAM 2 (`Sam2Model`) — and what
differs between them.

Both take the projected `[SEG]` hidden state as one sparse prompt token and "no mask" as the dense prompt, and
answer with low-resolution mask logits and the decoder's prediction of their IoU. They differ in three places:

* **Input.** SAM scales the image's longest side to its input size (1024), normalises 0-255 values with its own
  mean/std and zero-pads the bottom and right to a square. SAM 2 resizes the image to the square (the aspect ratio
  is not kept) and normalises 0-1 values with ImageNet's mean/std.
* **Features the decoder takes.** SAM's decoder reads one embedding (256 x 64 x 64). SAM 2's also reads two
  higher-resolution feature maps of its image encoder (256², 128²), which it projects (`conv_s0`, `conv_s1`) and
  adds while upscaling the mask; and its last map gets the "no memory" embedding of a single image.
* **Masks back to the image.** SAM upsamples to its padded input, crops the padding and resizes to the image; SAM 2
  resizes the logits to the image at once.

The image encoder runs once per image (`embed`), the decoder once per image for all its `[SEG]` (`decode`), so
several conversations about one image share one encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PretrainedConfig, PreTrainedModel, Sam2Model, SamModel

from model.families import family_of
from model.pretrained import load_pretrained
from model.sam import load_sam


class MaskHeadFamily:
    """What one family of segmentation models does its own way (see the module docstring)."""

    name: str  # the `model_type` of the family's configs
    title: str
    model_class: type[PreTrainedModel]
    weights_marker: str  # the start of weight names only this family's models have
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def image_size(self, config: PretrainedConfig) -> int:
        """The square input size (1024 for the released models)."""
        return config.prompt_encoder_config.image_size

    def prepare(self, sam: PreTrainedModel) -> None:
        """Settings of the model that LISA's use of it needs (applied whenever a LISA model is built)."""

    def load(self, path_or_id: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
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
        """The mask decoder's inputs for one (C, s, s) image embedding and its (n, C) `[SEG]` queries, alike in both
        families: every query is one entry of the decoder's point batch ([1, n, 1, C]), with "no mask" as the dense
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


def sam_resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Size of an image whose longest side is scaled to `image_size` (segment-anything's rounding)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamFamily(MaskHeadFamily):
    name = "sam"
    title = "SAM"
    model_class = SamModel
    weights_marker = "vision_encoder.layers."  # a ViT; SAM 2's encoder is a Hiera `backbone` with a feature pyramid
    pixel_mean = (123.675, 116.28, 103.53)  # on the 0-255 scale
    pixel_std = (58.395, 57.12, 57.375)

    def image_size(self, config: PretrainedConfig) -> int:
        return config.vision_config.image_size

    def load(self, path_or_id: str, dtype: torch.dtype | None = None) -> SamModel:
        return load_sam(path_or_id, dtype=dtype)  # also original segment-anything checkpoints

    def preprocess(self, image: np.ndarray, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        resized_h, resized_w = sam_resized_size(image.shape[0], image.shape[1], image_size)
        # PIL bilinear, as the original's ResizeLongestSide (torchvision on a PIL image) did.
        resized = np.array(Image.fromarray(image).resize((resized_w, resized_h), Image.BILINEAR))
        # Pad after normalisation, so the padding is zero in normalised space, as in segment-anything.
        pixels = F.pad(self._normalise(resized, 1.0), (0, image_size - resized_w, 0, image_size - resized_h))
        return pixels, (resized_h, resized_w)

    def embed(self, sam: SamModel, pixel_values: torch.Tensor) -> list[tuple[torch.Tensor]]:
        embeddings = sam.vision_encoder(pixel_values.to(sam.dtype)).last_hidden_state  # (N, C, s, s)
        return [(embedding,) for embedding in embeddings]

    def decode(self, sam: SamModel, features: tuple[torch.Tensor], queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (embedding,) = features
        low_res, iou = sam.mask_decoder(**self._decoder_prompts(sam, embedding, queries))
        return low_res[0, :, 0], iou[0, :, 0]

    def postprocess(
        self, low_res_logits: torch.Tensor, image_size: int, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        masks = low_res_logits.float().unsqueeze(1)
        masks = F.interpolate(masks, (image_size, image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : resized_size[0], : resized_size[1]]
        masks = F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
        return masks.squeeze(1)


class Sam2Family(MaskHeadFamily):
    name = "sam2"
    title = "SAM 2"
    model_class = Sam2Model
    weights_marker = "vision_encoder.backbone."
    pixel_mean = (0.485, 0.456, 0.406)  # ImageNet's, on the 0-1 scale
    pixel_std = (0.229, 0.224, 0.225)

    def prepare(self, sam: Sam2Model) -> None:
        # At inference SAM 2's decoder swaps its single-mask output for one of its three multimask outputs when the
        # single mask looks unstable. LISA trains the single-mask output on [SEG] prompts and must answer with it.
        sam.mask_decoder.dynamic_multimask_via_stability = False

    def preprocess(self, image: np.ndarray, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = np.array(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
        return self._normalise(resized, 255.0), (image_size, image_size)

    def embed(self, sam: Sam2Model, pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # High to low resolution: (N, C, 4s, 4s), (N, C, 2s, 2s), (N, C, s, s); s = 64 for a 1024 input.
        s0, s1, embedding = sam.vision_encoder(pixel_values.to(sam.dtype)).fpn_hidden_states
        embedding = embedding + sam.no_memory_embedding.view(1, -1, 1, 1)
        return list(zip(s0, s1, embedding))

    def decode(
        self, sam: Sam2Model, features: tuple[torch.Tensor, ...], queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s0, s1, embedding = features
        decoder = sam.mask_decoder
        # The decoder's own projections of the high-resolution maps run here, not in `embed`: they are part of the
        # trained mask decoder, while `embed` runs without gradient when the image encoder is frozen.
        high_resolution = [decoder.conv_s0(s0[None]), decoder.conv_s1(s1[None])]
        low_res, iou, *_ = decoder(**self._decoder_prompts(sam, embedding, queries), high_resolution_features=high_resolution)
        return low_res[0, :, 0], iou[0, :, 0]

    def postprocess(
        self, low_res_logits: torch.Tensor, image_size: int, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        masks = low_res_logits.float().unsqueeze(1)
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False).squeeze(1)


MASK_HEAD_FAMILIES: dict[str, MaskHeadFamily] = {family.name: family for family in (SamFamily(), Sam2Family())}


def mask_head_family(config: PretrainedConfig | dict, source: str = "") -> MaskHeadFamily:
    """The family of a segmentation-model config (or config dict); `source` names where it came from.

    Raises:
        ValueError: a model of no supported family, naming the supported ones.
    """
    return family_of(MASK_HEAD_FAMILIES, config, "mask head", source)


def load_mask_head(path_or_id: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """SAM or SAM 2 weights (eval mode), the family read from the folder's (or hub id's) config.

    Args:
        path_or_id: a `SamModel` or `Sam2Model` folder or hub id (`facebook/sam-vit-huge`,
            `facebook/sam2.1-hiera-tiny`), or an original segment-anything checkpoint file (`sam_vit_h_4b8939.pth`).

    Raises:
        ValueError: a model of no supported family (naming them), or what `model.sam.load_sam` refuses.
    """
    if Path(path_or_id).is_file():
        return load_sam(path_or_id, dtype=dtype)
    try:
        config, _ = PretrainedConfig.get_config_dict(str(path_or_id))
    except OSError:
        return load_sam(path_or_id, dtype=dtype)  # no config to read: load_sam says what the path is not
    return mask_head_family(config, source=str(path_or_id)).load(str(path_or_id), dtype)
