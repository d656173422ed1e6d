"""SAM 3's promptable tracker (`Sam3TrackerModel`), on single images.

SAM 3's Perception-Encoder ViT (1024 wide, 32 layers, 14-px patches, windows of 24 with 4 global layers, 2-D RoPE)
under a feature-pyramid neck, with SAM 2's prompt encoder and mask decoder. Its input: the image resized to the
1008 x 1008 square (the aspect ratio is not kept), 0-1 values normalised with mean = std = 0.5 (`facebook/sam3`'s
processor config). Its decoder reads the 72 x 72 embedding (plus the "no memory" embedding of a single image) and two
higher-resolution maps (288², 144²) which it projects (`conv_s0`, `conv_s1`) while upscaling the mask to 288². Masks go
back by resizing the logits to the image at once, as SAM 2's.

Its weights load from a `Sam3TrackerModel` folder, a `Sam3TrackerVideoModel` folder, or `facebook/sam3` itself (a
`Sam3VideoModel`: transformers' conversion mapping for "sam3_tracker" takes the detector's ViT, the tracker's own neck
`tracker_neck.*` and `tracker_model.*`, and drops the detector, text encoder and memory modules).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import (
    PretrainedConfig,
    Sam3TrackerConfig,
    Sam3TrackerMaskDecoderConfig,
    Sam3TrackerModel,
    Sam3TrackerPromptEncoderConfig,
    Sam3TrackerVideoConfig,
    Sam3TrackerVideoInferenceSession,
    Sam3TrackerVideoModel,
    Sam3ViTConfig,
    Sam3VisionConfig,
)

from model.families.base import holds_all
from model.families.sam2 import Sam2Family
from model.pretrained import load_pretrained

# The neck's levels the tracker reads. SAM 3's neck is built for four (scale factors 4, 2, 1, 0.5) and the tracker
# drops the last: built with three, the 36² level is not computed and no parameter goes without gradient when the
# image encoder trains (`--train_sam_encoder`; DDP would also stop on an unused parameter).
TRACKER_SCALE_FACTORS = [4.0, 2.0, 1.0]
# The tiny base: 112 px in 14-px patches, an 8 x 8 embedding as the tiny SAM's and SAM 2's.
TINY_IMAGE_SIZE = 112
TINY_PATCH_SIZE = 14


def _sub(config: PretrainedConfig | dict) -> dict:
    """A sub-config's values, without the keys that name its class (the config classes set them)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values.pop("model_type", None)
    values.pop("transformers_version", None)
    return values


def tracker_config(config: PretrainedConfig | dict) -> Sam3TrackerConfig:
    """A plain `Sam3TrackerConfig` from a sam3_tracker, sam3_tracker_video or sam3_video config (or its dict).

    `Sam3TrackerModel.from_pretrained("facebook/sam3")` alone gives a config whose `model_type` says
    "sam3_tracker_video" (it keeps the video config's) with the memory settings in it; this one is the tracker's only,
    with the neck cut to the levels the tracker reads.
    """
    values = config if isinstance(config, dict) else config.to_dict()
    if values.get("tracker_config") is not None:  # sam3_video: detector + tracker
        values = _sub(values["tracker_config"])
    vision = _sub(values["vision_config"])
    vision["backbone_config"] = Sam3ViTConfig(**_sub(vision["backbone_config"]))
    vision["scale_factors"] = TRACKER_SCALE_FACTORS
    return Sam3TrackerConfig(
        vision_config=Sam3VisionConfig(**vision),
        prompt_encoder_config=Sam3TrackerPromptEncoderConfig(**_sub(values["prompt_encoder_config"])),
        mask_decoder_config=Sam3TrackerMaskDecoderConfig(**_sub(values["mask_decoder_config"])),
    )


class Sam3TrackerFamily(Sam2Family):
    """SAM 2's input (a square resize; PIL bilinear, antialiased when shrinking, is within one uint8 level of the
    torchvision processor's antialiased resize), decoding and masks back, on SAM 3's encoder and neck."""

    name = "sam3_tracker"
    title = "SAM 3 tracker"
    model_class = Sam3TrackerModel
    # Folders that hold the tracker too: the video tracker's (a superset) and SAM 3's (facebook/sam3).
    aliases = ("sam3_tracker_video", "sam3_video")
    pixel_mean = (0.5, 0.5, 0.5)  # on the 0-1 scale
    pixel_std = (0.5, 0.5, 0.5)
    video_model_class = Sam3TrackerVideoModel
    video_session_class = Sam3TrackerVideoInferenceSession
    video_config_class = Sam3TrackerVideoConfig

    def owns(self, weight_names: Iterable[str]) -> bool:
        # A plain ViT (`layers.N.attention.q_proj`, learnt position embeddings tiled over the grid) under the SAM 3
        # neck (`fpn_layers`). SAM 2's `vision_encoder.backbone.` prefix is shared: only whole names tell them apart.
        return holds_all(weight_names, r"vision_encoder\.backbone\.layers\.\d+\.attention\.q_proj\.weight",
                         r"vision_encoder\.backbone\.embeddings\.position_embeddings",
                         r"vision_encoder\.neck\.fpn_layers\.\d+\.proj1\.weight")

    def load(self, path_or_id: str, dtype: torch.dtype | None = None) -> Sam3TrackerModel:
        config_dict, _ = PretrainedConfig.get_config_dict(str(path_or_id))
        # The checkpoint's 4th neck level (36²), if it has one, is left unread (reported as unexpected, not missing).
        return load_pretrained(self.model_class, path_or_id, config=tracker_config(config_dict), dtype=dtype).eval()

    def feature_maps(self, sam: Sam3TrackerModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C, 4g, 4g), (N, C, 2g, 2g), (N, C, g, g); g = 72 for a 1008 input. `[:3]`: a model built from a 4-level
        config (a plain Sam3TrackerConfig) also returns the 36² level, which the tracker drops."""
        return sam.vision_encoder(pixel_values.to(sam.dtype)).fpn_hidden_states[:3]

    def video_vision_config(self, config: Sam3TrackerConfig) -> dict:
        # The video tracker builds SAM 3's four neck levels and drops the last itself.
        return {**config.vision_config.to_dict(), "scale_factors": [*TRACKER_SCALE_FACTORS, 0.5]}

    def build_tiny(self, seed: int = 0) -> Sam3TrackerModel:
        from model.tiny import SAM_WIDTH  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        grid = TINY_IMAGE_SIZE // TINY_PATCH_SIZE
        config = Sam3TrackerConfig(
            vision_config=Sam3VisionConfig(
                backbone_config=Sam3ViTConfig(
                    # head width 16: the 2-D RoPE needs it a multiple of 4. Windows of 4 on the 8 x 8 grid and one
                    # global layer (the real: 24 on 72, 4 of 32); position embeddings for a 4 x 4 grid, tiled 2 x 2
                    # (the real: 24 x 24 tiled 3 x 3).
                    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, window_size=4, global_attn_indexes=[1],
                    pretrain_image_size=TINY_IMAGE_SIZE // 2,
                ),
                fpn_hidden_size=SAM_WIDTH, scale_factors=TRACKER_SCALE_FACTORS,
                backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
            ),
            prompt_encoder_config=Sam3TrackerPromptEncoderConfig(
                hidden_size=SAM_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE
            ),
            mask_decoder_config=Sam3TrackerMaskDecoderConfig(
                hidden_size=SAM_WIDTH, mlp_dim=2 * SAM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
                iou_head_hidden_dim=SAM_WIDTH,
            ),
        )
        model = Sam3TrackerModel(config)
        # With transformers' init (normal, std 0.02) the random neck shrinks its input ~100x per upsampling stage: the
        # 32² map comes out at std 1e-4, the 16² at 4e-3. PyTorch's default init keeps them at 0.1-0.3, so that the frozen
        # tiny encoder's high-resolution maps carry the image, as a trained one's do.
        for module in model.vision_encoder.neck.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.reset_parameters()
        # transformers starts the "no memory" embedding at zero, where a trained one is not: SAM 2's original starts it
        # at a truncated normal (std 0.02), and so does the tiny base, so that leaving it out changes the masks.
        torch.nn.init.trunc_normal_(model.no_memory_embedding, std=0.02)
        return model
