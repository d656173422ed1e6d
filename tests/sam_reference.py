"""segment-anything's own `Sam`, tiny, as a reference for our SAM loading (tests only).

`segment_anything.modeling` comes from the `sam_modeling` fixture of conftest.py (imported without the
package `__init__`, which needs torchvision).
"""

from __future__ import annotations

import types
from functools import partial

import torch


def build_original_sam(sam_modeling: types.ModuleType, sizes: dict, seed: int = 0) -> torch.nn.Module:
    """A `Sam` built as segment-anything's `_build_sam` builds ViT-H, at `sizes`, every tensor perturbed.

    SAM zero-initialises pos_embed and the rel-pos tables and its LayerNorms start at identity: perturbing every
    tensor makes a swapped or skipped weight show in the outputs.

    Args:
        sizes: embed_dim, depth, num_heads, global_attn_indexes, window_size, image_size, patch_size,
            prompt_dim, mask_in_chans, decoder_mlp_dim, iou_head_hidden_dim.
    """
    torch.manual_seed(seed)
    grid = sizes["image_size"] // sizes["patch_size"]
    sam = sam_modeling.Sam(
        image_encoder=sam_modeling.ImageEncoderViT(
            depth=sizes["depth"],
            embed_dim=sizes["embed_dim"],
            img_size=sizes["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=sizes["num_heads"],
            patch_size=sizes["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=sizes["global_attn_indexes"],
            window_size=sizes["window_size"],
            out_chans=sizes["prompt_dim"],
        ),
        prompt_encoder=sam_modeling.PromptEncoder(
            embed_dim=sizes["prompt_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(sizes["image_size"], sizes["image_size"]),
            mask_in_chans=sizes["mask_in_chans"],
        ),
        mask_decoder=sam_modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam_modeling.TwoWayTransformer(
                depth=2, embedding_dim=sizes["prompt_dim"], mlp_dim=sizes["decoder_mlp_dim"], num_heads=8
            ),
            transformer_dim=sizes["prompt_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=sizes["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():
        for tensor in sam.state_dict().values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    return sam.eval()
