"""Tests of model/sam.py: loading original segment-anything weights into transformers' `SamModel`.

The equivalence tests run a tiny segment-anything `Sam` (the package's own modeling code, random weights)
next to the `SamModel` that `load_sam` builds from its saved state dict. They need `segment-anything==1.0`
(test-only requirement) and skip without it; the key-map, config and error tests run on meta tensors and
need nothing but transformers.
"""

import types
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import SamModel

from model.sam import (
    convert_original_sam_state_dict,
    load_sam,
    sam_config_from_original_state_dict,
    sam_from_original_state_dict,
)
from tests.sam_reference import build_original_sam

ATOL = 1e-5
RTOL = 1e-5


def original_sam_shapes(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: Sequence[int],
    window_size: int,
    image_size: int = 1024,
    patch_size: int = 16,
    prompt_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    downsample_rate: int = 2,
    num_mask_tokens: int = 4,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Every key of segment-anything's `Sam.state_dict()` with its shape, for the given sizes."""
    grid, head_dim, mlp_dim = image_size // patch_size, embed_dim // num_heads, 4 * embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "image_encoder.pos_embed": (1, grid, grid, embed_dim),
        "image_encoder.patch_embed.proj.weight": (embed_dim, 3, patch_size, patch_size),
        "image_encoder.patch_embed.proj.bias": (embed_dim,),
    }
    for i in range(depth):
        block = f"image_encoder.blocks.{i}"
        table = 2 * (grid if i in global_attn_indexes else window_size) - 1
        shapes |= {
            f"{block}.norm1.weight": (embed_dim,),
            f"{block}.norm1.bias": (embed_dim,),
            f"{block}.attn.rel_pos_h": (table, head_dim),
            f"{block}.attn.rel_pos_w": (table, head_dim),
            f"{block}.attn.qkv.weight": (3 * embed_dim, embed_dim),
            f"{block}.attn.qkv.bias": (3 * embed_dim,),
            f"{block}.attn.proj.weight": (embed_dim, embed_dim),
            f"{block}.attn.proj.bias": (embed_dim,),
            f"{block}.norm2.weight": (embed_dim,),
            f"{block}.norm2.bias": (embed_dim,),
            f"{block}.mlp.lin1.weight": (mlp_dim, embed_dim),
            f"{block}.mlp.lin1.bias": (mlp_dim,),
            f"{block}.mlp.lin2.weight": (embed_dim, mlp_dim),
            f"{block}.mlp.lin2.bias": (embed_dim,),
        }
    shapes |= {
        "image_encoder.neck.0.weight": (prompt_dim, embed_dim, 1, 1),
        "image_encoder.neck.1.weight": (prompt_dim,),
        "image_encoder.neck.1.bias": (prompt_dim,),
        "image_encoder.neck.2.weight": (prompt_dim, prompt_dim, 3, 3),
        "image_encoder.neck.3.weight": (prompt_dim,),
        "image_encoder.neck.3.bias": (prompt_dim,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, prompt_dim // 2),
        **{f"prompt_encoder.point_embeddings.{i}.weight": (1, prompt_dim) for i in range(4)},
        "prompt_encoder.not_a_point_embed.weight": (1, prompt_dim),
        "prompt_encoder.mask_downscaling.0.weight": (mask_in_chans // 4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.0.bias": (mask_in_chans // 4,),
        "prompt_encoder.mask_downscaling.1.weight": (mask_in_chans // 4,),
        "prompt_encoder.mask_downscaling.1.bias": (mask_in_chans // 4,),
        "prompt_encoder.mask_downscaling.3.weight": (mask_in_chans, mask_in_chans // 4, 2, 2),
        "prompt_encoder.mask_downscaling.3.bias": (mask_in_chans,),
        "prompt_encoder.mask_downscaling.4.weight": (mask_in_chans,),
        "prompt_encoder.mask_downscaling.4.bias": (mask_in_chans,),
        "prompt_encoder.mask_downscaling.6.weight": (prompt_dim, mask_in_chans, 1, 1),
        "prompt_encoder.mask_downscaling.6.bias": (prompt_dim,),
        "prompt_encoder.no_mask_embed.weight": (1, prompt_dim),
    }

    def attention(name: str, internal_dim: int) -> dict[str, tuple[int, ...]]:
        return {
            **{f"{name}.{p}_proj.weight": (internal_dim, prompt_dim) for p in "qkv"},
            **{f"{name}.{p}_proj.bias": (internal_dim,) for p in "qkv"},
            f"{name}.out_proj.weight": (prompt_dim, internal_dim),
            f"{name}.out_proj.bias": (prompt_dim,),
        }

    def mlp(name: str, hidden_dim: int, output_dim: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        dims = [prompt_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        return {
            key: shape
            for j in range(num_layers)
            for key, shape in (
                (f"{name}.layers.{j}.weight", (dims[j + 1], dims[j])),
                (f"{name}.layers.{j}.bias", (dims[j + 1],)),
            )
        }

    cross_dim = prompt_dim // downsample_rate
    for i in range(decoder_depth):
        layer = f"mask_decoder.transformer.layers.{i}"
        shapes |= attention(f"{layer}.self_attn", prompt_dim)
        shapes |= attention(f"{layer}.cross_attn_token_to_image", cross_dim)
        shapes |= attention(f"{layer}.cross_attn_image_to_token", cross_dim)
        shapes |= {f"{layer}.norm{n}.{p}": (prompt_dim,) for n in range(1, 5) for p in ("weight", "bias")}
        shapes |= {
            f"{layer}.mlp.lin1.weight": (decoder_mlp_dim, prompt_dim),
            f"{layer}.mlp.lin1.bias": (decoder_mlp_dim,),
            f"{layer}.mlp.lin2.weight": (prompt_dim, decoder_mlp_dim),
            f"{layer}.mlp.lin2.bias": (prompt_dim,),
        }
    shapes |= attention("mask_decoder.transformer.final_attn_token_to_image", cross_dim)
    shapes |= {
        "mask_decoder.transformer.norm_final_attn.weight": (prompt_dim,),
        "mask_decoder.transformer.norm_final_attn.bias": (prompt_dim,),
        "mask_decoder.iou_token.weight": (1, prompt_dim),
        "mask_decoder.mask_tokens.weight": (num_mask_tokens, prompt_dim),
        "mask_decoder.output_upscaling.0.weight": (prompt_dim, prompt_dim // 4, 2, 2),
        "mask_decoder.output_upscaling.0.bias": (prompt_dim // 4,),
        "mask_decoder.output_upscaling.1.weight": (prompt_dim // 4,),
        "mask_decoder.output_upscaling.1.bias": (prompt_dim // 4,),
        "mask_decoder.output_upscaling.3.weight": (prompt_dim // 4, prompt_dim // 8, 2, 2),
        "mask_decoder.output_upscaling.3.bias": (prompt_dim // 8,),
    }
    for i in range(num_mask_tokens):
        shapes |= mlp(f"mask_decoder.output_hypernetworks_mlps.{i}", prompt_dim, prompt_dim // 8, 3)
    shapes |= mlp("mask_decoder.iou_prediction_head", iou_head_hidden_dim, num_mask_tokens, iou_head_depth)
    return shapes


# segment-anything's `_build_sam` sizes for ViT-H / L / B.
VIT_H = dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14)
VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14)
VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14)
# A tiny SAM: 64 px images, 8 px patches -> 8x8 grid, windows of 4, block 1 global; 32-d prompts.
TINY = dict(
    embed_dim=32,
    depth=3,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=4,
    image_size=64,
    patch_size=8,
    prompt_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=24,
)


def meta_state_dict(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Shape-only tensors: the full ViT-H layout without allocating its 2.5 GB."""
    return {prefix + key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


# ----------------------------------------------------------------------------------- config and key map
def test_config_of_vit_h_matches_reference_numbers():
    """SAM ViT-H (`sam_vit_h_4b8939.pth`): embed 1280, depth 32, 16 heads, global [7,15,23,31], window 14, patch 16, 1024 px ->
    256x64x64 embedding; prompt dim 256; two-way depth 2, MLP 2048, 8 heads; 4 mask tokens; IoU head 3 x 256."""
    config = sam_config_from_original_state_dict(meta_state_dict(original_sam_shapes(**VIT_H)))
    vision, prompt, decoder = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1280, 32, 16)
    assert list(vision.global_attn_indexes) == [7, 15, 23, 31]
    assert (vision.window_size, vision.patch_size, vision.image_size) == (14, 16, 1024)
    assert (vision.mlp_dim, vision.output_channels, vision.num_pos_feats) == (5120, 256, 128)
    assert vision.qkv_bias and vision.use_rel_pos and vision.use_abs_pos
    assert (prompt.hidden_size, prompt.image_size, prompt.image_embedding_size) == (256, 1024, 64)
    assert (prompt.mask_input_channels, prompt.num_point_embeddings) == (16, 4)
    assert (decoder.hidden_size, decoder.num_hidden_layers, decoder.mlp_dim) == (256, 2, 2048)
    assert decoder.num_attention_heads == 8
    assert (decoder.attention_downsample_rate, decoder.num_multimask_outputs) == (2, 3)
    assert (decoder.iou_head_depth, decoder.iou_head_hidden_dim) == (3, 256)


@pytest.mark.parametrize(
    "sizes, num_parameters",
    # Parameter counts of SAM ViT-H / L / B (the positional-encoding matrix is a buffer in the original).
    [(VIT_H, 641_090_608), (VIT_L, 312_342_832), (VIT_B, 93_735_472)],
    ids=["vit_h", "vit_l", "vit_b"],
)
def test_key_map_covers_sammodel_exactly(sizes: dict, num_parameters: int):
    state_dict = meta_state_dict(original_sam_shapes(**sizes))
    config = sam_config_from_original_state_dict(state_dict)
    with torch.device("meta"):
        reference = SamModel(config).state_dict()
    converted = convert_original_sam_state_dict(state_dict)
    assert sorted(converted) == sorted(reference)
    assert {key: tuple(t.shape) for key, t in converted.items()} == {k: tuple(t.shape) for k, t in reference.items()}

    model = sam_from_original_state_dict(state_dict)
    assert not model.training
    # Tied again after loading: one parameter shared by the image-wide and the prompt positional encodings.
    shared = model.shared_image_embedding.positional_embedding
    assert shared is model.prompt_encoder.shared_embedding.positional_embedding
    assert sum(p.numel() for p in model.parameters()) - shared.numel() == num_parameters


def test_prefix_selects_sam_weights_of_a_larger_checkpoint():
    shapes = original_sam_shapes(**TINY)
    state_dict = meta_state_dict(shapes, prefix="model.visual_model.")
    # The rest of a released LISA checkpoint is not SAM's business.
    state_dict["model.layers.0.self_attn.q_proj.weight"] = torch.empty(8, 8, device="meta")
    state_dict["model.text_hidden_fcs.0.0.weight"] = torch.empty(8, 8, device="meta")
    converted = convert_original_sam_state_dict(state_dict, prefix="model.visual_model.")
    assert converted.keys() == convert_original_sam_state_dict(meta_state_dict(shapes)).keys()
    config = sam_config_from_original_state_dict(state_dict, prefix="model.visual_model.")
    assert config.vision_config.image_size == 64

    with pytest.raises(ValueError, match=r"prefix='model\.visual_model\.'"):
        convert_original_sam_state_dict(state_dict)


def test_pixel_normalisation_buffers_are_dropped():
    state_dict = meta_state_dict(original_sam_shapes(**TINY))
    state_dict["pixel_mean"] = torch.empty(3, 1, 1, device="meta")
    state_dict["pixel_std"] = torch.empty(3, 1, 1, device="meta")
    converted = convert_original_sam_state_dict(state_dict)
    assert not any("pixel" in key for key in converted)


def test_unmapped_key_is_an_error():
    state_dict = meta_state_dict(original_sam_shapes(**TINY), prefix="model.visual_model.")
    state_dict["model.visual_model.image_encoder.blocks.0.attn.extra_scale"] = torch.empty(1, device="meta")
    state_dict["model.visual_model.mask_decoder.unknown.weight"] = torch.empty(1, device="meta")
    with pytest.raises(ValueError) as error:
        sam_from_original_state_dict(state_dict, prefix="model.visual_model.")
    assert "model.visual_model.image_encoder.blocks.0.attn.extra_scale" in str(error.value)
    assert "model.visual_model.mask_decoder.unknown.weight" in str(error.value)


def test_missing_key_is_an_error():
    state_dict = meta_state_dict(original_sam_shapes(**TINY))
    del state_dict["mask_decoder.iou_prediction_head.layers.1.bias"]
    del state_dict["prompt_encoder.no_mask_embed.weight"]
    with pytest.raises(ValueError) as error:
        sam_from_original_state_dict(state_dict)
    assert "mask_decoder.iou_prediction_head.layers.0.bias" in str(error.value)
    assert "prompt_encoder.no_mask_embed.weight" in str(error.value)


def test_missing_size_source_is_an_error():
    state_dict = meta_state_dict(original_sam_shapes(**TINY))
    del state_dict["image_encoder.pos_embed"]
    with pytest.raises(ValueError, match=r"image_encoder\.pos_embed is missing"):
        sam_config_from_original_state_dict(state_dict)


def test_load_sam_names_the_path_it_cannot_use(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="sam_vit_h_missing.pth"):
        load_sam(str(tmp_path / "sam_vit_h_missing.pth"))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="notes.txt"):
        load_sam(str(tmp_path / "notes.txt"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="empty_folder"):
        load_sam(str(tmp_path / "empty_folder"))


def test_load_sam_names_the_file_that_lacks_weights(tmp_path: Path):
    """An original-layout file (`sam_vit_h_4b8939.pth`) without a weight is refused naming the file and the weight."""
    state_dict = {key: torch.zeros(shape) for key, shape in original_sam_shapes(**TINY).items()}
    del state_dict["prompt_encoder.no_mask_embed.weight"]
    torch.save(state_dict, tmp_path / "sam_vit_tiny.pth")
    with pytest.raises(ValueError, match=r"sam_vit_tiny\.pth: .*lacks 1 SamModel weight.*prompt_encoder\.no_mask_embed\.weight"):
        load_sam(str(tmp_path / "sam_vit_tiny.pth"))


# -------------------------------------------------------------------- equivalence with segment-anything
@pytest.fixture(scope="module")
def original_sam(sam_modeling: types.ModuleType) -> torch.nn.Module:
    """A tiny segment-anything `Sam` (sizes `TINY`) with random weights."""
    return build_original_sam(sam_modeling, TINY, seed=0)


@pytest.fixture(scope="module")
def converted_sam(original_sam: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> SamModel:
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(original_sam.state_dict(), path)
    return load_sam(str(path))


def test_helper_shapes_match_segment_anything(original_sam: torch.nn.Module):
    """`original_sam_shapes` (used by the meta-tensor tests) describes the real layout."""
    actual = {key: tuple(tensor.shape) for key, tensor in original_sam.state_dict().items()}
    assert actual == original_sam_shapes(**TINY)


def test_image_embeddings_match(original_sam: torch.nn.Module, converted_sam: SamModel):
    pixels = torch.randn(2, 3, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        expected = original_sam.image_encoder(pixels)
    actual = converted_sam.get_image_embeddings(pixels)
    assert actual.shape == (2, TINY["prompt_dim"], 8, 8)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_dense_positional_encoding_matches(original_sam: torch.nn.Module, converted_sam: SamModel):
    with torch.no_grad():
        torch.testing.assert_close(
            converted_sam.get_image_wide_positional_embeddings(),
            original_sam.prompt_encoder.get_dense_pe(),
            atol=ATOL,
            rtol=RTOL,
        )


def _image_embedding(seed: int) -> torch.Tensor:
    """[1, C, 8, 8] image embedding; the decoder tests start from embeddings to isolate the decoder."""
    return torch.randn(1, TINY["prompt_dim"], 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("multimask_output", [False, True])
def test_point_prompts_match(original_sam: torch.nn.Module, converted_sam: SamModel, multimask_output: bool):
    """Three prompts of three points each, in input-image pixels; labels 1 (fg), 0 (bg), -1 (ignored).

    Both implementations add 0.5 (pixel centre) and divide by the input image size themselves, so the same
    coordinates go in unchanged; `SamModel` only wants an extra leading image-batch axis.
    """
    embedding = _image_embedding(1)
    coords = torch.tensor(
        [
            [[10.0, 20.0], [40.5, 3.0], [63.0, 63.0]],
            [[0.0, 0.0], [31.0, 32.0], [5.0, 60.0]],
            [[50.0, 12.0], [12.0, 50.0], [7.0, 7.0]],
        ]
    )
    labels = torch.tensor([[1, 0, 1], [1, 1, -1], [0, 1, 0]])
    with torch.no_grad():
        sparse, dense = original_sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        expected_masks, expected_iou = original_sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=original_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        output = converted_sam(
            image_embeddings=embedding,
            input_points=coords[None],
            input_labels=labels[None],
            multimask_output=multimask_output,
        )
    assert output.pred_masks.shape == (1, 3, 3 if multimask_output else 1, 32, 32)
    torch.testing.assert_close(output.pred_masks[0], expected_masks, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.iou_scores[0], expected_iou, atol=ATOL, rtol=RTOL)


def test_box_and_point_prompts_match(original_sam: torch.nn.Module, converted_sam: SamModel):
    embedding = _image_embedding(2)
    boxes = torch.tensor([[4.0, 8.0, 40.0, 50.0], [20.0, 1.0, 63.0, 30.0]])
    coords = torch.tensor([[[22.0, 30.0]], [[40.0, 15.0]]])
    labels = torch.tensor([[1], [0]])
    for points in (None, (coords, labels)):
        with torch.no_grad():
            sparse, dense = original_sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            expected_masks, expected_iou = original_sam.mask_decoder(
                embedding, original_sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
            )
            output = converted_sam(
                image_embeddings=embedding,
                input_points=None if points is None else coords[None],
                input_labels=None if points is None else labels[None],
                input_boxes=boxes[None],
                multimask_output=True,
            )
        torch.testing.assert_close(output.pred_masks[0], expected_masks, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(output.iou_scores[0], expected_iou, atol=ATOL, rtol=RTOL)


def test_mask_prompt_matches(original_sam: torch.nn.Module, converted_sam: SamModel):
    """A low-res mask prompt [1, 1, 32, 32] (4x the embedding grid) with one point."""
    embedding = _image_embedding(3)
    mask = torch.randn(1, 1, 32, 32)
    coords, labels = torch.tensor([[[30.0, 30.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        sparse, dense = original_sam.prompt_encoder(points=(coords, labels), boxes=None, masks=mask)
        expected_masks, expected_iou = original_sam.mask_decoder(
            embedding, original_sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
        )
        output = converted_sam(
            image_embeddings=embedding,
            input_points=coords[None],
            input_labels=labels[None],
            input_masks=mask,
            multimask_output=False,
        )
    torch.testing.assert_close(output.pred_masks[0], expected_masks, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.iou_scores[0], expected_iou, atol=ATOL, rtol=RTOL)


def test_lisa_text_embedding_prompts_match(original_sam: torch.nn.Module, converted_sam: SamModel):
    """LISA's use (the original's `model/LISA.py`): each [SEG] embedding [C] is a one-token sparse prompt, dense = no_mask_embed.

    The original decodes image by image with the n [SEG] of an image as the prompt batch `[n, 1, C]`; with
    `SamModel` they are the point batch `[B, n, 1, C]`, so two images go through in one call. The image-wide
    positional embedding `[1, C, h, w]` must then be repeated to the image batch: the decoder repeats it per
    prompt, not per image (`SamModel.forward` does the same).
    """
    embeddings = torch.cat([_image_embedding(4), _image_embedding(5)])
    text = torch.randn(2, 3, 1, TINY["prompt_dim"], generator=torch.Generator().manual_seed(6))
    expected = []
    with torch.no_grad():
        for image in range(2):
            no_mask = original_sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(3, -1, 8, 8)
            expected.append(
                original_sam.mask_decoder(
                    image_embeddings=embeddings[image : image + 1],
                    image_pe=original_sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=text[image],
                    dense_prompt_embeddings=no_mask,
                    multimask_output=False,
                )
            )
        masks, iou = converted_sam.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=converted_sam.get_image_wide_positional_embeddings().repeat(2, 1, 1, 1),
            sparse_prompt_embeddings=text,
            dense_prompt_embeddings=converted_sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1),
            multimask_output=False,
        )
    assert masks.shape == (2, 3, 1, 32, 32)
    torch.testing.assert_close(masks, torch.stack([m for m, _ in expected]), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(iou, torch.stack([i for _, i in expected]), atol=ATOL, rtol=RTOL)


def test_load_sam_dtype_and_sammodel_folder(original_sam: torch.nn.Module, converted_sam: SamModel, tmp_path: Path):
    path = tmp_path / "sam_tiny.pt"
    torch.save({"model.visual_model." + k: v for k, v in original_sam.state_dict().items()}, path)
    bf16 = load_sam(str(path), dtype=torch.bfloat16, prefix="model.visual_model.")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}

    converted_sam.save_pretrained(tmp_path / "sam_folder")
    reloaded = load_sam(str(tmp_path / "sam_folder"))
    assert not reloaded.training
    for key, value in converted_sam.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0)


def test_original_weights_survive_a_parent_models_init(converted_sam: SamModel):
    """`build_lisa_from_base` with a `.pth` SAM: `LisaForCausalLM.__init__` (`post_init`) must not re-initialise
    the SAM it is given."""
    from model.lisa import LisaConfig, LisaForCausalLM
    from model.families import VLM_FAMILIES

    expected = {key: value.clone() for key, value in converted_sam.state_dict().items()}
    llava, _ = VLM_FAMILIES["llava"].build_tiny()
    config = LisaConfig(vlm_config=llava.config, sam_config=converted_sam.config, seg_token_id=0, out_dim=TINY["prompt_dim"])
    model = LisaForCausalLM(config, vlm=llava, sam=converted_sam)
    for key, value in model.sam.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0)
