"""SAM 2 (`Sam2Model`), on single images.

Its input: the image resized to the square (the aspect ratio is not kept), 0-1 values normalised with ImageNet's
mean/std. Its decoder also reads two higher-resolution feature maps of its image encoder (256², 128²), which it
projects (`conv_s0`, `conv_s1`) and adds while upscaling the mask; its last map gets the "no memory" embedding of a
single image. Masks go back by resizing the logits to the image at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2PromptEncoderConfig,
    Sam2VideoConfig,
    Sam2VideoInferenceSession,
    Sam2VideoModel,
    Sam2VisionConfig,
)

from model.families.base import MaskHeadFamily, holds_all

# The tiny base (`model.tiny`): a 128-px input, so that its decoder's embedding (input / 16) is 8 x 8 as the tiny
# SAM's (input / 8).
TINY_IMAGE_SIZE = 128


class Sam2Family(MaskHeadFamily):
    name = "sam2"
    title = "SAM 2"
    model_class = Sam2Model
    pixel_mean = (0.485, 0.456, 0.406)  # ImageNet's, on the 0-1 scale
    pixel_std = (0.229, 0.224, 0.225)
    video_model_class = Sam2VideoModel
    video_session_class = Sam2VideoInferenceSession
    video_config_class = Sam2VideoConfig

    def owns(self, weight_names: Iterable[str]) -> bool:
        # A Hiera backbone (blocks with windowed position embeddings) under a feature pyramid neck.
        return holds_all(weight_names, r"vision_encoder\.backbone\.blocks\.\d+\.attn\.qkv\.weight",
                         r"vision_encoder\.backbone\.pos_embed_window", r"vision_encoder\.neck\.convs\.\d+\.weight")

    def prepare(self, sam: Sam2Model) -> None:
        # At inference SAM 2's decoder swaps its single-mask output for one of its three multimask outputs when the
        # single mask looks unstable. LISA trains the single-mask output on [SEG] prompts and must answer with it.
        sam.mask_decoder.dynamic_multimask_via_stability = False

    def preprocess(self, image: np.ndarray, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = np.array(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
        return self._normalise(resized, 255.0), (image_size, image_size)

    def feature_maps(self, sam: Sam2Model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image encoder's maps the decoder reads, high to low resolution: (N, C, 4s, 4s), (N, C, 2s, 2s),
        (N, C, s, s); s = 64 for a 1024 input."""
        return sam.vision_encoder(pixel_values.to(sam.dtype)).fpn_hidden_states

    def embed(self, sam: Sam2Model, pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        s0, s1, embedding = self.feature_maps(sam, pixel_values)
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

    def build_tiny(self, seed: int = 0) -> Sam2Model:
        from model.tiny import SAM_WIDTH  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        stage_widths = [16, 32, 64, 128]
        # The feature pyramid drops the last (lowest-resolution) stage: inputs / 4, / 8, / 16.
        feature_sizes = [[TINY_IMAGE_SIZE // stride] * 2 for stride in (4, 8, 16)]
        config = Sam2Config(
            vision_config=Sam2VisionConfig(
                backbone_config=Sam2HieraDetConfig(
                    hidden_size=stage_widths[0], image_size=[TINY_IMAGE_SIZE] * 2, blocks_per_stage=[1, 1, 2, 1],
                    embed_dim_per_stage=stage_widths, num_attention_heads_per_stage=[1, 1, 2, 2],
                    window_size_per_stage=[8, 4, 4, 2], global_attention_blocks=[3],
                    window_positional_embedding_background_size=[4, 4],
                ),
                backbone_channel_list=stage_widths[::-1], backbone_feature_sizes=feature_sizes, fpn_hidden_size=SAM_WIDTH,
            ),
            prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=SAM_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=16),
            mask_decoder_config=Sam2MaskDecoderConfig(
                hidden_size=SAM_WIDTH, mlp_dim=2 * SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
                iou_head_hidden_dim=SAM_WIDTH,
            ),
        )
        return Sam2Model(config)

    def video_vision_config(self, config: Sam2Config) -> dict:
        """The vision config of the family's video model around the image model of `config`."""
        return config.vision_config.to_dict()

    def build_tiny_video(self, sam: Sam2Model, seed: int = 0) -> Sam2VideoModel:
        """The tiny base's video model, as the released checkpoints hold one: `sam`'s weights and random memory
        modules as narrow as its features."""
        torch.manual_seed(seed)
        config = sam.config
        video = self.video_model_class(self.video_config_class(
            vision_config=self.video_vision_config(config), prompt_encoder_config=config.prompt_encoder_config.to_dict(),
            mask_decoder_config=config.mask_decoder_config.to_dict(), image_size=config.prompt_encoder_config.image_size,
            **tiny_memory_config(config.vision_config.fpn_hidden_size, config.prompt_encoder_config.image_size // 16),
        ))
        video.load_state_dict(sam.state_dict(), strict=False)
        return video


def tiny_memory_config(width: int, embedding_size: int) -> dict:
    """Memory settings of the tiny video models: attention `width` wide over the `embedding_size`² image embedding, one
    memory-attention layer. The memories stay 64 wide, as the released models' (transformers' memory attention reads
    64-wide memories whatever the config says)."""
    return dict(
        memory_attention_rope_feat_sizes=[embedding_size, embedding_size],
        memory_attention_hidden_size=width, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=2 * width,
        memory_encoder_hidden_size=width, memory_encoder_output_channels=64, mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width, memory_fuser_intermediate_dim=2 * width,
    )
