"""SAM weights for transformers' `SamModel`.

LISA's segmentation model is transformers' `SamModel` (layout of `facebook/sam-vit-huge`). Its weights come
either from a `SamModel` folder / hub id, or from a checkpoint in the layout of Meta's `segment-anything`
package (`sam_vit_h_4b8939.pth`: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`), possibly nested
under a prefix inside a larger checkpoint (the released LISA models keep SAM under `model.visual_model.`).
The original layout is translated by our own key map, and the architecture sizes are read from the weight
shapes, because the original code hard-codes them (ViT-H) instead of storing a config.

Public API:
* `convert_original_sam_state_dict`: original key names -> `SamModel` key names.
* `sam_config_from_original_state_dict`: a `SamConfig` whose sizes match an original state dict.
* `sam_from_original_state_dict`: a `SamModel` loaded from an original state dict in memory.
* `load_sam`: a `SamModel` from an original checkpoint file, a `SamModel` folder or a hub id.
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import PretrainedConfig, SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from model.pretrained import load_pretrained

__all__ = [
    "convert_original_sam_state_dict",
    "load_sam",
    "sam_config_from_original_state_dict",
    "sam_from_original_state_dict",
]

# File suffixes of checkpoints in the original (segment-anything) layout.
ORIGINAL_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")

# Sizes the weights cannot tell, fixed by segment-anything's `_build_sam` for ViT-B/L/H alike.
# The two-way transformer's head count leaves no trace in the weight shapes (no relative-position tables).
MASK_DECODER_NUM_HEADS = 8
# The image encoder is built with `partial(nn.LayerNorm, eps=1e-6)` and LayerNorm2d defaults to 1e-6 (neck,
# mask downscaling, output upscaling), but the two-way transformer uses plain `nn.LayerNorm` (eps 1e-5), while
# `SamMaskDecoderConfig` defaults to 1e-6.
VISION_LAYER_NORM_EPS = 1e-6
PROMPT_ENCODER_LAYER_NORM_EPS = 1e-6
MASK_DECODER_LAYER_NORM_EPS = 1e-5

# Buffers of segment-anything's `Sam` that `SamModel` does not have: pixel normalisation happens in our
# preprocessing, outside the model (released LISA checkpoints do not store them at all).
_DROPPED_KEYS = frozenset({"pixel_mean", "pixel_std"})

# The positional-encoding matrix of the original prompt encoder. `SamModel` keeps it twice, tied:
# `shared_image_embedding` (dense image positional embedding) and the prompt encoder's `shared_embedding`.
_GAUSSIAN_MATRIX_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_GAUSSIAN_MATRIX_TARGETS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)

# One-to-one renames: (original regex, `SamModel` template). `_P` is a weight-or-bias suffix.
_P = r"(weight|bias)"
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        # Image encoder (ViTDet backbone).
        (rf"image_encoder\.patch_embed\.proj\.{_P}", r"vision_encoder.patch_embed.projection.\1"),
        (r"image_encoder\.pos_embed", r"vision_encoder.pos_embed"),
        (rf"image_encoder\.blocks\.(\d+)\.norm([12])\.{_P}", r"vision_encoder.layers.\1.layer_norm\2.\3"),
        (rf"image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_P}", r"vision_encoder.layers.\1.attn.\2.\3"),
        (r"image_encoder\.blocks\.(\d+)\.attn\.(rel_pos_[hw])", r"vision_encoder.layers.\1.attn.\2"),
        (rf"image_encoder\.blocks\.(\d+)\.mlp\.(lin[12])\.{_P}", r"vision_encoder.layers.\1.mlp.\2.\3"),
        # neck = Sequential(Conv2d 1x1, LayerNorm2d, Conv2d 3x3, LayerNorm2d).
        (r"image_encoder\.neck\.0\.weight", r"vision_encoder.neck.conv1.weight"),
        (rf"image_encoder\.neck\.1\.{_P}", r"vision_encoder.neck.layer_norm1.\1"),
        (r"image_encoder\.neck\.2\.weight", r"vision_encoder.neck.conv2.weight"),
        (rf"image_encoder\.neck\.3\.{_P}", r"vision_encoder.neck.layer_norm2.\1"),
        # Prompt encoder.
        (r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
        (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
        # mask_downscaling = Sequential(Conv2d, LayerNorm2d, GELU, Conv2d, LayerNorm2d, GELU, Conv2d 1x1).
        (rf"prompt_encoder\.mask_downscaling\.0\.{_P}", r"prompt_encoder.mask_embed.conv1.\1"),
        (rf"prompt_encoder\.mask_downscaling\.1\.{_P}", r"prompt_encoder.mask_embed.layer_norm1.\1"),
        (rf"prompt_encoder\.mask_downscaling\.3\.{_P}", r"prompt_encoder.mask_embed.conv2.\1"),
        (rf"prompt_encoder\.mask_downscaling\.4\.{_P}", r"prompt_encoder.mask_embed.layer_norm2.\1"),
        (rf"prompt_encoder\.mask_downscaling\.6\.{_P}", r"prompt_encoder.mask_embed.conv3.\1"),
        # Mask decoder: two-way transformer.
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\."
            rf"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.(q_proj|k_proj|v_proj|out_proj)\.{_P}",
            r"mask_decoder.transformer.layers.\1.\2.\3.\4",
        ),
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_P}",
            r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
        ),
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_P}",
            r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
        ),
        (
            rf"mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.{_P}",
            r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
        ),
        (rf"mask_decoder\.transformer\.norm_final_attn\.{_P}", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
        # Mask decoder: output tokens and upscaling = Sequential(ConvT, LayerNorm2d, GELU, ConvT, GELU).
        (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
        (rf"mask_decoder\.output_upscaling\.0\.{_P}", r"mask_decoder.upscale_conv1.\1"),
        (rf"mask_decoder\.output_upscaling\.1\.{_P}", r"mask_decoder.upscale_layer_norm.\1"),
        (rf"mask_decoder\.output_upscaling\.3\.{_P}", r"mask_decoder.upscale_conv2.\1"),
    )
)

# The mask decoder's MLPs: the original keeps all linears in `layers.{0..n-1}`, `SamFeedForward` splits them
# into `proj_in`, `layers.{0..n-3}` and `proj_out`, so the new name depends on the MLP's depth.
_MLP_PATTERN = re.compile(rf"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.{_P}")

# The first weight of the image encoder, used to recognise SAM weights stored under an unexpected prefix.
_ANCHOR_KEY = "image_encoder.patch_embed.proj.weight"


def _select_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `state_dict` under `prefix`, with the prefix removed.

    Keys outside the prefix belong to the rest of a larger model (e.g. LISA's LLM) and are not SAM's to
    judge; every key inside it must be mapped.
    """
    selected = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if _ANCHOR_KEY not in selected:
        nested = sorted(key[: -len(_ANCHOR_KEY)] for key in state_dict if key.endswith("." + _ANCHOR_KEY))
        hint = f"; the weights look like SAM under prefix={nested[0]!r}" if nested else ""
        raise ValueError(f"No original-layout SAM weights under prefix {prefix!r} (no {prefix}{_ANCHOR_KEY}){hint}")
    return selected


def _count_indexed(state_dict: Mapping[str, Tensor], head: str) -> int:
    """Number of entries `head{i}.` (`head` ends with a dot), i.e. 1 + the largest index `i` found."""
    pattern = re.compile(re.escape(head) + r"(\d+)\.")
    indices = [int(match.group(1)) for key in state_dict if (match := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def _rename(key: str, mlp_depths: Mapping[str, int]) -> tuple[str, ...]:
    """`SamModel` names of one original key (prefix already removed); empty when the key is unknown."""
    if key == _GAUSSIAN_MATRIX_KEY:
        return _GAUSSIAN_MATRIX_TARGETS
    for pattern, template in _RENAMES:
        if match := pattern.fullmatch(key):
            return (match.expand(template),)
    if match := _MLP_PATTERN.fullmatch(key):
        mlp, index, param = match.group(1), int(match.group(2)), match.group(3)
        last = mlp_depths[mlp] - 1
        layer = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
        return (f"mask_decoder.{mlp}.{layer}.{param}",)
    return ()


def convert_original_sam_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename an original segment-anything state dict to `SamModel`'s parameter names.

    Args:
        state_dict: weights in the layout of segment-anything's `Sam` (`sam_vit_h_4b8939.pth`), optionally
            nested under `prefix` in a larger checkpoint.
        prefix: key prefix of the SAM weights, e.g. `"model.visual_model."` for released LISA checkpoints.
            Keys outside it are ignored (they belong to the rest of the model).

    Returns:
        The same tensors (not copied) under `SamModel` names. The prompt encoder's positional-encoding matrix
        `[2, C/2]` appears twice, as `shared_image_embedding.positional_embedding` and
        `prompt_encoder.shared_embedding.positional_embedding`; `pixel_mean`/`pixel_std` are dropped.

    Raises:
        ValueError: no SAM weights under `prefix`, or keys under `prefix` that have no `SamModel` name
            (all of them listed; nothing is dropped silently).
    """
    selected = _select_prefix(state_dict, prefix)
    mlp_depths: dict[str, int] = {}
    for key in selected:
        if match := _MLP_PATTERN.fullmatch(key):
            mlp_depths[match.group(1)] = max(mlp_depths.get(match.group(1), 0), int(match.group(2)) + 1)
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in selected.items():
        if key in _DROPPED_KEYS:
            continue
        new_keys = _rename(key, mlp_depths)
        if not new_keys:
            unmapped.append(prefix + key)
        for new_key in new_keys:
            converted[new_key] = tensor
    if unmapped:
        raise ValueError(f"{len(unmapped)} original SAM key(s) with no SamModel counterpart: {sorted(unmapped)}")
    return converted


def sam_config_from_original_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> SamConfig:
    """A `SamConfig` whose sizes match an original segment-anything state dict (ViT-B/L/H or any other size).

    Everything is read from the weight shapes (tensors on the meta device suffice):
    * image encoder: hidden size, channels and patch size from `patch_embed.proj.weight` `[D, 3, p, p]`;
      image size from `pos_embed` `[1, S/p, S/p, D]`; depth from the block count; head dim from the width of
      the relative-position tables `[2w-1, D/heads]`; global-attention blocks are those whose tables span the
      whole `S/p` grid (`2*S/p - 1` rows), the others give the window size `w`; MLP dim from `mlp.lin1`;
      output channels from the neck's first conv `[C, D, 1, 1]`.
    * prompt encoder: width `C` from `not_a_point_embed` `[1, C]`, positional-encoding features from the
      Gaussian matrix `[2, C/2]`, mask channels from `mask_downscaling.3` `[m, m/4, 2, 2]`.
    * mask decoder: width, number of mask tokens, two-way depth, MLP dim, attention downsample rate
      (`C / q_proj rows` of a cross-attention), IoU head depth and width.
    The decoder's head count (8) and the LayerNorm epsilons are not in the weights and take segment-anything's
    values (see the module constants).

    Raises:
        ValueError: a tensor needed to read a size is missing, or the relative-position tables are inconsistent.
    """
    weights = _select_prefix(state_dict, prefix)

    def shape(key: str) -> torch.Size:
        if key not in weights:
            raise ValueError(f"Cannot infer the SAM architecture: {prefix}{key} is missing")
        return weights[key].shape

    hidden_size, num_channels, patch_size, _ = shape("image_encoder.patch_embed.proj.weight")
    grid_size = shape("image_encoder.pos_embed")[1]
    depth = _count_indexed(weights, "image_encoder.blocks.")
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
    if hidden_size % head_dim:
        raise ValueError(f"Relative-position width {head_dim} does not divide the hidden size {hidden_size}")
    table_lengths = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    # A window as large as the grid is a single window over the whole image: the same as global attention.
    global_attn_indexes = [i for i, length in enumerate(table_lengths) if length == 2 * grid_size - 1]
    window_lengths = {length for length in table_lengths if length != 2 * grid_size - 1}
    if len(window_lengths) > 1:
        raise ValueError(f"Windowed blocks with different window sizes (rel-pos table lengths {table_lengths})")
    window_size = (window_lengths.pop() + 1) // 2 if window_lengths else 0

    vision_config = SamVisionConfig(
        hidden_size=hidden_size,
        output_channels=shape("image_encoder.neck.0.weight")[0],
        num_hidden_layers=depth,
        num_attention_heads=hidden_size // head_dim,
        num_channels=num_channels,
        image_size=grid_size * patch_size,
        patch_size=patch_size,
        layer_norm_eps=VISION_LAYER_NORM_EPS,
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in weights,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
        num_pos_feats=shape(_GAUSSIAN_MATRIX_KEY)[1],
        mlp_dim=shape("image_encoder.blocks.0.mlp.lin1.weight")[0],
    )
    prompt_encoder_config = SamPromptEncoderConfig(
        hidden_size=shape("prompt_encoder.not_a_point_embed.weight")[1],
        image_size=grid_size * patch_size,
        patch_size=patch_size,
        mask_input_channels=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        num_point_embeddings=_count_indexed(weights, "prompt_encoder.point_embeddings."),
        layer_norm_eps=PROMPT_ENCODER_LAYER_NORM_EPS,
    )
    decoder_size = shape("mask_decoder.iou_token.weight")[1]
    cross_attention_size = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    mask_decoder_config = SamMaskDecoderConfig(
        hidden_size=decoder_size,
        mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        num_hidden_layers=_count_indexed(weights, "mask_decoder.transformer.layers."),
        num_attention_heads=MASK_DECODER_NUM_HEADS,
        attention_downsample_rate=decoder_size // cross_attention_size,
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count_indexed(weights, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
        layer_norm_eps=MASK_DECODER_LAYER_NORM_EPS,
    )
    return SamConfig(
        vision_config=vision_config,
        prompt_encoder_config=prompt_encoder_config,
        mask_decoder_config=mask_decoder_config,
    )


def sam_from_original_state_dict(
    state_dict: Mapping[str, Tensor], prefix: str = "", dtype: torch.dtype | None = None
) -> SamModel:
    """A `SamModel` (eval mode) holding the weights of an original segment-anything state dict.

    Args:
        state_dict: original-layout weights, optionally under `prefix` (see `convert_original_sam_state_dict`).
        prefix: key prefix of the SAM weights, e.g. `"model.visual_model."` for released LISA checkpoints.
        dtype: floating-point dtype of the parameters; `None` keeps the checkpoint's.

    Raises:
        ValueError: unmapped keys (see `convert_original_sam_state_dict`), or `SamModel` parameters the
            checkpoint does not provide / names it provides that `SamModel` lacks (all listed).
    """
    config = sam_config_from_original_state_dict(state_dict, prefix)
    weights = convert_original_sam_state_dict(state_dict, prefix)
    if dtype is not None:
        weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
    # Every parameter comes from the checkpoint: build on the meta device so that no random initialisation
    # (and no second copy of ViT-H's 640M parameters) is paid for, then adopt the checkpoint tensors.
    with torch.device("meta"):
        model = SamModel(config)
    result = model.load_state_dict(weights, strict=False, assign=True)
    if result.missing_keys:
        raise ValueError(f"SAM checkpoint lacks {len(result.missing_keys)} SamModel weight(s): {result.missing_keys}")
    if result.unexpected_keys:
        # Reachable when a module is deeper in the checkpoint than SamModel builds it (e.g. a 4-layer
        # hypernetwork MLP): the key map names a parameter that does not exist.
        raise ValueError(
            f"SAM checkpoint has {len(result.unexpected_keys)} weight(s) SamModel does not: {result.unexpected_keys}"
        )
    # `assign=True` gave the two copies of the positional-encoding matrix separate parameters: re-tie them.
    model.tie_weights()
    # Flag the adopted tensors as loaded, as `from_pretrained` does: otherwise the `post_init` of a model built
    # around this one (`LisaForCausalLM(config, sam=...)`) re-initialises them at random.
    for tensor in model.state_dict(keep_vars=True).values():
        tensor._is_hf_initialized = True
    return model.eval()


def load_sam(path_or_id: str | Path, dtype: torch.dtype | None = None, prefix: str = "") -> SamModel:
    """Load SAM as a `SamModel` (eval mode).

    Args:
        path_or_id: one of
            * a `.pth` / `.pt` / `.bin` file in the original segment-anything layout (`sam_vit_h_4b8939.pth`);
            * a `SamModel` folder (`save_pretrained` output, with `config.json`);
            * a Hugging Face hub id such as `facebook/sam-vit-huge`.
        dtype: floating-point dtype of the parameters; `None` keeps the checkpoint's.
        prefix: for original-layout files only, the key prefix of the SAM weights (`"model.visual_model."`
            in a released LISA checkpoint file).

    Raises:
        FileNotFoundError: a local-looking path (checkpoint suffix, absolute or relative path) that does not exist.
        ValueError: a file or folder that is not a SAM checkpoint of a supported kind, or bad weights (missing ones,
            too), naming the file or folder.
        OSError: a hub id that cannot be loaded (the hub's error is chained).
    """
    path = Path(path_or_id)
    if path.is_file():
        if path.suffix not in ORIGINAL_CHECKPOINT_SUFFIXES:
            raise ValueError(
                f"{path} is not an original SAM checkpoint (expected one of {ORIGINAL_CHECKPOINT_SUFFIXES}) "
                "nor a SamModel folder"
            )
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if _is_original_sam2(state_dict):
            raise ValueError(
                f"{path} is an original SAM 2 checkpoint (facebookresearch/sam2 layout), not a SAM one: give SAM 2 as "
                "a Sam2Model folder or hub id, e.g. facebook/sam2.1-hiera-tiny"
            )
        if not isinstance(state_dict, Mapping) or not all(isinstance(value, Tensor) for value in state_dict.values()):
            raise ValueError(f"{path} does not hold a flat state dict (name -> tensor)")
        try:
            return sam_from_original_state_dict(state_dict, prefix=prefix, dtype=dtype)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a folder without config.json, so not a SamModel folder")
    elif path.suffix in ORIGINAL_CHECKPOINT_SUFFIXES or path.is_absolute() or str(path_or_id).startswith("."):
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        config, _ = PretrainedConfig.get_config_dict(str(path_or_id))
    except OSError as error:
        raise OSError(
            f"{path_or_id!r} is neither an original SAM checkpoint file ({', '.join(ORIGINAL_CHECKPOINT_SUFFIXES)}), "
            "nor a SamModel folder, nor a loadable hub id"
        ) from error
    if config.get("model_type") != "sam":
        # `SamModel.from_pretrained` would build a SAM around whatever weights match and leave the rest random.
        kind = "a SAM 2 checkpoint" if config.get("model_type") == "sam2" else f"a {config.get('model_type')!r} model"
        raise ValueError(f"{path_or_id} is {kind}, not a SAM (SamModel) one")
    return load_pretrained(SamModel, str(path_or_id), dtype=dtype).eval()


def _is_original_sam2(checkpoint: object) -> bool:
    """Whether a loaded file is facebookresearch/sam2's: `{"model": {"image_encoder.trunk.…": …}}`."""
    weights = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    return isinstance(weights, Mapping) and any(str(key).startswith("image_encoder.trunk.") for key in weights)
