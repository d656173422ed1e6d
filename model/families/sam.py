"""SAM (`SamModel`), the original LISA's mask head.

Its input: the image's longest side scaled to the input size (1024), 0-255 values normalised with its own mean/std and
the bottom and right zero-padded to a square. Its decoder reads one embedding (256 x 64 x 64). Masks go back by
upsampling to the padded input, cropping the padding and resizing to the image. Its weights also load from original
segment-anything checkpoints (`model.sam`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PretrainedConfig, SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from model.families.base import MaskHeadFamily, holds_all
from model.sam import load_sam

# The tiny base (`model.tiny`): a 64-px input in 8-px patches, so an 8 x 8 image embedding.
TINY_IMAGE_SIZE = 64
TINY_PATCH_SIZE = 8


def sam_resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Size of an image whose longest side is scaled to `image_size` (segment-anything's rounding)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamFamily(MaskHeadFamily):
    name = "sam"
    title = "SAM"
    model_class = SamModel
    pixel_mean = (123.675, 116.28, 103.53)  # on the 0-255 scale
    pixel_std = (58.395, 57.12, 57.375)

    def owns(self, weight_names: Iterable[str]) -> bool:
        # A plain ViT (`vision_encoder.layers`) with SAM's convolutional neck; SAM 2's encoder is a Hiera `backbone`.
        return holds_all(weight_names, r"vision_encoder\.layers\.\d+\.attn\.qkv\.weight", r"vision_encoder\.neck\.conv1\.weight")

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

    def build_tiny(self, seed: int = 0) -> SamModel:
        from model.tiny import SAM_WIDTH  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        config = SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=SAM_WIDTH, output_channels=SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
                image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, window_size=4, global_attn_indexes=[1],
                mlp_dim=2 * SAM_WIDTH, num_pos_feats=SAM_WIDTH // 2,
                # SamVisionConfig's default (1e-10, for a model always loaded from weights) leaves a random encoder
                # at ~0: its features carry nothing and it barely trains. Use the usual 0.02.
                initializer_range=0.02,
            ),
            prompt_encoder_config=SamPromptEncoderConfig(
                hidden_size=SAM_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, mask_input_channels=4
            ),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=SAM_WIDTH, mlp_dim=2 * SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
                iou_head_hidden_dim=SAM_WIDTH,
            ),
        )
        return SamModel(config)
