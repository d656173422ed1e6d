"""What differs between the families of vision-language models and mask heads (`model/families/`), checked against
transformers' own models; and how a base or checkpoint of the wrong family is refused."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Sam2Model, Sam3TrackerModel, SamModel

from model.families import CHAT_TEMPLATES, MASK_HEAD_FAMILIES, VLM_FAMILIES, mask_head_family_at, vlm_family
from model.loading import build_lisa_from_base, check_weights_fit
from model.sam import load_sam


def build_sam(seed=0):
    return MASK_HEAD_FAMILIES["sam"].build_tiny(seed)


def build_sam2(seed=0):
    return MASK_HEAD_FAMILIES["sam2"].build_tiny(seed)


def build_sam3_tracker(seed=0):
    return MASK_HEAD_FAMILIES["sam3_tracker"].build_tiny(seed)


def load_mask_head(path):
    """A mask head loaded by the family its folder names, as `build_lisa_from_base` loads it."""
    return mask_head_family_at(path).load(path)


@pytest.fixture(scope="module")
def sams():
    """The tiny SAM, SAM 2 and SAM 3 tracker, in eval mode, as LISA uses them."""
    models = {"sam": build_sam().eval(), "sam2": build_sam2().eval(), "sam3_tracker": build_sam3_tracker().eval()}
    for name, model in models.items():
        MASK_HEAD_FAMILIES[name].prepare(model)
    return models


@pytest.mark.parametrize("name", ["sam", "sam2", "sam3_tracker"])
def test_decoding_one_image_equals_transformers_pipeline(sams, name):
    """Our split — image encoder once per image, then the decoder per image with one prompt token per [SEG] — gives
    the masks and predicted IoUs of transformers' own: `get_image_embeddings` (for SAM 2 and the SAM 3 tracker: the
    decoder's projections of the two high-resolution maps and the "no memory" embedding applied there), then the mask
    decoder."""
    family, sam = MASK_HEAD_FAMILIES[name], sams[name]
    size = family.image_size(sam.config)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(3, sam.config.prompt_encoder_config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, our_scores = family.decode(sam, family.embed(sam, pixels)[1], queries)

        embeddings = sam.get_image_embeddings(pixels[1:])
        image_embedding = embeddings if name == "sam" else embeddings[-1]
        extra = {} if name == "sam" else {"high_resolution_features": embeddings[:-1]}
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *image_embedding.shape[-2:])
        expected, expected_scores = sam.mask_decoder(
            image_embeddings=image_embedding,
            image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=queries[None, :, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
            **extra,
        )[:2]
    # The decoder upscales its embedding 4 x (64 -> 256 for the released models).
    assert ours.shape == (3, 4 * image_embedding.shape[-2], 4 * image_embedding.shape[-1])
    torch.testing.assert_close(ours, expected[0, :, 0])
    assert our_scores.shape == (3,)
    torch.testing.assert_close(our_scores, expected_scores[0, :, 0])


def test_sam2_answers_with_its_single_mask_output_in_eval_mode_too(sams):
    """SAM 2's decoder would swap in one of its multimask outputs at inference where the single mask looks unstable;
    LISA trains the single-mask output and must answer with it."""
    family, sam = MASK_HEAD_FAMILIES["sam2"], sams["sam2"]
    features = family.embed(sam, torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2)))[0]
    queries = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sam.train()
        trained_output = family.decode(sam, features, queries)
        sam.eval()
        answered = family.decode(sam, features, queries)
    torch.testing.assert_close(answered, trained_output)


def test_mask_head_inputs_and_masks_back_to_the_image():
    """SAM: longest side to the input size, SAM's statistics on 0-255, zero padding; SAM 2: a square resize, ImageNet
    statistics on 0-1. Masks come back at the original size either way."""
    image = np.zeros((30, 60, 3), np.uint8)
    image[...] = (255, 0, 128)
    sam, sam2 = MASK_HEAD_FAMILIES["sam"], MASK_HEAD_FAMILIES["sam2"]

    pixels, resized = sam.preprocess(image, 64)
    assert resized == (32, 64) and pixels.shape == (3, 64, 64)
    expected = (torch.tensor([255.0, 0.0, 128.0]) - torch.tensor(sam.pixel_mean)) / torch.tensor(sam.pixel_std)
    torch.testing.assert_close(pixels[:, :32].mean((1, 2)), expected)
    assert torch.equal(pixels[:, 32:], torch.zeros(3, 32, 64))

    pixels, resized = sam2.preprocess(image, 128)
    assert resized == (128, 128) and pixels.shape == (3, 128, 128)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(sam2.pixel_mean)) / torch.tensor(sam2.pixel_std)
    torch.testing.assert_close(pixels.mean((1, 2)), expected)

    low_res = torch.randn(2, 32, 32)
    assert sam2.postprocess(low_res, 128, (128, 128), (30, 60)).shape == (2, 30, 60)
    # A mask covering the left half of SAM 2's square input covers the left half of the image.
    half = torch.full((1, 32, 32), -10.0)
    half[..., :16] = 10.0
    assert torch.equal(sam2.postprocess(half, 128, (128, 128), (30, 60))[0] > 0, torch.arange(60).expand(30, 60) < 30)


def test_sam3_tracker_decoding_equals_its_own_forward(sams):
    """The SAM 3 tracker's `embed` + `decode` of N prompt tokens give the masks and IoUs of
    `Sam3TrackerModel.forward` on the pixels, its prompt encoder answering with the same N tokens (one per point-batch
    entry) and "no mask": the neck's levels, the "no memory" embedding and the high-resolution projections are the
    model's own, not a copy of SAM 2's."""
    family, sam = MASK_HEAD_FAMILIES["sam3_tracker"], sams["sam3_tracker"]
    size = family.image_size(sam.config)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    queries = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))

    def prompt_encoder(input_points=None, input_labels=None, input_boxes=None, input_masks=None):
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return queries[None, :, None, :], dense.expand(1, -1, *sam.prompt_encoder.image_embedding_size)

    with torch.no_grad(), mock.patch.object(sam.prompt_encoder, "forward", prompt_encoder):
        ours, our_scores = family.decode(sam, family.embed(sam, pixels)[0], queries)
        theirs = sam(pixel_values=pixels, multimask_output=False)
    assert ours.shape == (3, size // 14 * 4, size // 14 * 4)  # 14-px patches, upscaled 4 x: 288² at 1008 px
    torch.testing.assert_close(ours, theirs.pred_masks[0, :, 0])
    torch.testing.assert_close(our_scores, theirs.iou_scores[0, :, 0])


def test_sam3_tracker_input_and_masks_back_to_the_image():
    """The SAM 3 tracker's input: the square resize of SAM 2, 0-1 values with mean = std = 0.5, within one uint8
    level of the processor's antialiased bilinear resize (here torch's, for the torchvision one it needs); its
    288²-style low-resolution masks come back at the original size."""
    family = MASK_HEAD_FAMILIES["sam3_tracker"]
    rng = np.random.default_rng(0)
    image = np.array(Image.fromarray(rng.integers(0, 256, (45, 75, 3), dtype=np.uint8)).resize((150, 90), Image.BICUBIC))
    pixels, resized = family.preprocess(image, 112)
    assert resized == (112, 112) and pixels.shape == (3, 112, 112)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), (112, 112), mode="bilinear", antialias=True
    ).round().clamp(0, 255)[0] / 255 * 2 - 1
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1.01 * 2 / 255)
    assert pixels.min() >= -1 and pixels.max() <= 1

    half = torch.full((1, 32, 32), -10.0)
    half[..., 16:] = 10.0
    masks = family.postprocess(half, 112, resized, (90, 150))
    assert masks.shape == (1, 90, 150) and torch.equal(masks[0] > 0, torch.arange(150).expand(90, 150) >= 75)


def write_facebook_sam3(folder, tracker):
    """A tiny folder in `facebook/sam3`'s layout (a `Sam3VideoModel`: the detector with the ViT, `tracker_model.*`,
    the tracker's own neck `tracker_neck.*`, the neck at its 4 levels), with `tracker`'s sizes."""
    from transformers import CLIPTextConfig, Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig, Sam3VideoModel

    vision = {**tracker.config.vision_config.to_dict(), "scale_factors": [4.0, 2.0, 1.0, 0.5]}
    width, size = tracker.config.mask_decoder_config.hidden_size, MASK_HEAD_FAMILIES["sam3_tracker"].image_size(tracker.config)
    part = dict(hidden_size=width, num_attention_heads=2)
    layers = dict(part, num_layers=1, intermediate_size=2 * width)
    detector = Sam3Config(
        vision_config=vision,
        text_config=CLIPTextConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=32).to_dict(),
        geometry_encoder_config=layers, detr_encoder_config=layers, detr_decoder_config=dict(layers, num_queries=8),
        mask_decoder_config=part,
    )
    video_tracker = Sam3TrackerVideoConfig(
        vision_config=vision, prompt_encoder_config=tracker.config.prompt_encoder_config.to_dict(),
        mask_decoder_config=tracker.config.mask_decoder_config.to_dict(), image_size=size,
        memory_attention_hidden_size=width, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=2 * width,
        memory_attention_rope_feat_sizes=[size // 14] * 2, memory_encoder_hidden_size=width, memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=width, memory_fuser_embed_dim=width, memory_fuser_intermediate_dim=2 * width,
        memory_fuser_num_layers=1,
    )
    config = Sam3VideoConfig(detector_config=detector, tracker_config=video_tracker)
    torch.manual_seed(3)
    video = Sam3VideoModel(config).eval()
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in video.state_dict().items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return video


def test_the_sam3_tracker_loads_from_the_facebook_sam3_layout(tmp_path):
    """`facebook/sam3` is a `Sam3VideoModel` folder ("sam3_video"): the tracker family claims it, loads the detector's
    ViT, the tracker's neck and decoder into a plain tracker config (its own `model_type`, the 3 neck levels it reads),
    and gives the image features SAM 3's own video model gives its tracker. A lost tensor is refused."""
    folder = tmp_path / "sam3"
    video = write_facebook_sam3(folder, build_sam3_tracker())
    family = mask_head_family_at(str(folder))
    assert family is MASK_HEAD_FAMILIES["sam3_tracker"]
    sam = family.load(str(folder))
    assert type(sam) is Sam3TrackerModel and sam.config.model_type == "sam3_tracker"
    assert len(sam.vision_encoder.neck.fpn_layers) == 3

    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        s0, _, embedding = family.embed(sam, pixels)[0]
        maps, _ = video.get_vision_features_for_tracker(video.detector_model.get_vision_features(pixel_values=pixels))
        # (h·w, N, C) maps, high to low resolution
        expected_s0 = maps[0].permute(1, 2, 0).reshape(1, -1, 32, 32)
        expected = maps[2].permute(1, 2, 0).reshape(1, -1, 8, 8) + video.tracker_model.no_memory_embedding.view(1, -1, 1, 1)
        torch.testing.assert_close(sam.mask_decoder.conv_s0(s0[None]), expected_s0)
    torch.testing.assert_close(embedding[None], expected)

    weights = load_file(folder / "model.safetensors")
    del weights["tracker_model.mask_decoder.iou_token.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight.*mask_decoder\.iou_token\.weight"):
        family.load(str(folder))


# ------------------------------------------------------------------------------------------ wrong families
def test_mask_heads_are_loaded_by_the_family_their_config_names(tmp_path):
    build_sam().save_pretrained(tmp_path / "sam")
    build_sam2().save_pretrained(tmp_path / "sam2")
    assert type(load_mask_head(str(tmp_path / "sam"))) is SamModel
    assert type(load_mask_head(str(tmp_path / "sam2"))) is Sam2Model

    config = json.loads((tmp_path / "sam2" / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "model_type": "sam_hq"}))
    with pytest.raises(ValueError, match=r"holds a 'sam_hq' model, not a supported mask head; supported families: "
                                         r"sam \(SAM\), sam2 \(SAM 2\)"):
        load_mask_head(str(tmp_path / "other"))


def test_a_sam2_checkpoint_where_sam_is_expected_says_so(tmp_path):
    build_sam2().save_pretrained(tmp_path / "sam2")
    with pytest.raises(ValueError, match="is a SAM 2 checkpoint, not a SAM \\(SamModel\\) one"):
        load_sam(str(tmp_path / "sam2"))
    # facebookresearch/sam2's own checkpoint files: {"model": {"image_encoder.trunk...": ...}}.
    torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1)}}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(ValueError, match="is an original SAM 2 checkpoint .* not a SAM one: give SAM 2 as a Sam2Model folder"):
        load_mask_head(str(tmp_path / "sam2.1_hiera_tiny.pt"))


def test_an_unsupported_base_names_the_supported_families(tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "llava" / "config.json").read_text())
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_vl"}))
    message = r"holds a 'qwen2_vl' model, not a supported vision-language model; supported families: llava \(LLaVA-1.5\), qwen2_5_vl \(Qwen2.5-VL\), qwen3_vl \(Qwen3-VL\), qwen3_5 \(Qwen3.5\)"
    with pytest.raises(ValueError, match=message):
        build_lisa_from_base(str(tmp_path / "base"), str(tiny_dir / "sam"))
    with pytest.raises(ValueError, match="got a 'llama' model, not a supported vision-language model"):
        vlm_family({"model_type": "llama"})


@pytest.mark.parametrize("registry", [VLM_FAMILIES, MASK_HEAD_FAMILIES], ids=["vlm", "mask_head"])
def test_each_family_owns_its_weights_and_no_other_does(registry):
    """Every registered family claims its own tiny model's weights, and no other family claims them: the check that
    names wrong-family weights (`check_weights_fit`) cannot mistake one family for another."""
    for name, family in registry.items():
        built = family.build_tiny()
        model = built[0] if isinstance(built, tuple) else built
        owners = [other for other, f in registry.items() if f.owns(model.state_dict())]
        assert owners == [name], f"the weights of a tiny {family.title} are claimed by {owners}"


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_weights_of_other_families_are_named(tiny_base, tiny_dir):
    """A LISA checkpoint of one pair loaded into a model built for another says which part differs."""
    from model.loading import load_lisa

    qwen_sam2, _ = load_lisa(str(tiny_base.lisa_dir))
    llava_sam, _ = load_lisa(str(tiny_dir / "lisa"))
    with pytest.raises(ValueError, match="run/ckpt holds the weights of a Qwen2.5-VL vision-language model, not of a LLaVA-1.5 one"):
        check_weights_fit(llava_sam, [f"base_model.model.{n}" for n in qwen_sam2.state_dict()], "run/ckpt")
    mixed = [n for n in llava_sam.state_dict() if n.startswith("vlm.")] + [n for n in qwen_sam2.state_dict() if n.startswith("sam.")]
    with pytest.raises(ValueError, match="holds the weights of a SAM 2 mask head, not of a SAM one"):
        check_weights_fit(llava_sam, mixed, "run/ckpt")
    check_weights_fit(llava_sam, llava_sam.state_dict(), "run/ckpt")  # its own weights fit


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_qwen3_and_qwen2_5_weights_are_told_apart(tiny_base):
    """Both Qwen families name their vision tower `model.visual`; Qwen3-VL's has DeepStack mergers, Qwen2.5-VL's merger
    an `ln_q`."""
    from model.lisa import LisaConfig, LisaForCausalLM
    from model.loading import load_lisa

    qwen2_5, _ = load_lisa(str(tiny_base.lisa_dir))
    vlm, processor = VLM_FAMILIES["qwen3_vl"].build_tiny()
    sam = build_sam2()
    qwen3 = LisaForCausalLM(LisaConfig(vlm_config=vlm.config, sam_config=sam.config, seg_token_id=0), vlm=vlm, sam=sam)
    with pytest.raises(ValueError, match="ckpt holds the weights of a Qwen3-VL vision-language model, not of a Qwen2.5-VL one"):
        check_weights_fit(qwen2_5, qwen3.state_dict(), "ckpt")
    with pytest.raises(ValueError, match="ckpt holds the weights of a Qwen2.5-VL vision-language model, not of a Qwen3-VL one"):
        check_weights_fit(qwen3, qwen2_5.state_dict(), "ckpt")
    check_weights_fit(qwen3, qwen3.state_dict(), "ckpt")


def saved_weight(folder, suffix):
    """The one weight of a folder's checkpoint whose name ends with `suffix` (transformers 5 saves each family in its
    released layout: `language_model.model.embed_tokens.weight` for LLaVA, `model.embed_tokens.weight` for Qwen2.5-VL)."""
    (name,) = [name for name in load_file(folder / "model.safetensors") if name.endswith(suffix)]
    return name, load_file(folder / "model.safetensors")[name]


def copy_base(folder, to, config_changes=None, text_config_changes=None, drop=()):
    """A copy of a base or SAM folder, its config changed (a value None removes the key) and the weights whose names
    end with one of `drop` (one each) deleted from its checkpoint."""
    shutil.copytree(folder, to)
    config = json.loads((to / "config.json").read_text())
    for changes, part in ((config_changes, config), (text_config_changes, config.get("text_config"))):
        for key, value in (changes or {}).items():
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value
    (to / "config.json").write_text(json.dumps(config))
    dropped = {saved_weight(to, suffix)[0] for suffix in drop}
    weights = load_file(to / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in dropped}, to / "model.safetensors", metadata={"format": "pt"})
    return to


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_tied_word_embeddings_stay_tied(tiny_base, tmp_path):
    """Qwen2.5-VL-3B ties its output head to its input embeddings and its checkpoint holds no `lm_head` (the tiny base
    does not tie): `[SEG]`'s row, saving and loading keep them one tensor, of the base's padded size."""
    from model.loading import load_lisa, save_lisa

    base = copy_base(tiny_base.vlm_dir, tmp_path / "tied", {"tie_word_embeddings": True}, drop=["lm_head.weight"])
    model, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    rows = saved_weight(base, "embed_tokens.weight")[1].shape[0]
    assert head is embeddings and head.shape[0] == rows > len(processor.tokenizer)

    save_lisa(model, processor, str(tmp_path / "lisa"))
    loaded, _ = load_lisa(str(tmp_path / "lisa"))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.get_input_embeddings().weight, embeddings, rtol=0, atol=0)


@pytest.mark.parametrize("tiny_base", [("qwen3_vl", "sam2")], indirect=True)
def test_a_qwen3_vl_base_tied_in_its_text_config_only_has_its_head_tied(tiny_base, tmp_path):
    """A Qwen3-VL config that ties the head in `text_config` only (where configs saved before transformers 5 keep the
    flag), its checkpoint without `lm_head`: transformers 5.23 lifts the flag for Qwen2.5-VL but not for Qwen3-VL, and
    would start the head from random values. It must be the input embeddings, before and after saving."""
    from model.loading import load_lisa, save_lisa

    base = copy_base(tiny_base.vlm_dir, tmp_path / "tied", {"tie_word_embeddings": None}, {"tie_word_embeddings": True},
                     drop=["lm_head.weight"])
    model, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is embeddings
    _, expected = saved_weight(base, "embed_tokens.weight")
    seg = processor.seg_token_id
    torch.testing.assert_close(head[:seg], expected[:seg], rtol=0, atol=0)

    save_lisa(model, processor, str(tmp_path / "lisa"))
    loaded, _ = load_lisa(str(tmp_path / "lisa"))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight

    # A checkpoint that holds a head of its own keeps it, and says so.
    base = copy_base(tiny_base.vlm_dir, tmp_path / "own_head", {"tie_word_embeddings": None}, {"tie_word_embeddings": True})
    model, _ = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    _, expected = saved_weight(base, "lm_head.weight")
    torch.testing.assert_close(model.get_output_embeddings().weight[:seg], expected[:seg], rtol=0, atol=0)
    assert not model.config.vlm_config.tie_word_embeddings


def test_a_base_or_mask_head_missing_weights_is_refused(tiny_base, tmp_path):
    """A checkpoint without a weight its config describes — an untied head left unsaved, a lost tensor — is refused,
    naming the folder and the weights: transformers would start them from random values, with a log line only."""
    missing = ["lm_head.weight", "layers.1.mlp.down_proj.weight"]
    base = copy_base(tiny_base.vlm_dir, tmp_path / "base", drop=missing)
    with pytest.raises(ValueError, match="lacks 2 weight") as error:
        build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    assert str(base) in str(error.value) and all(name in str(error.value) for name in missing)

    sam = copy_base(tiny_base.sam_dir, tmp_path / "sam", drop=["mask_decoder.iou_token.weight"])
    with pytest.raises(ValueError, match="lacks 1 weight") as error:
        build_lisa_from_base(str(tiny_base.vlm_dir), str(sam))
    assert str(sam) in str(error.value) and "mask_decoder.iou_token.weight" in str(error.value)


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_a_qwen2_5_vl_base_in_the_released_layout_builds_the_same_model(tiny_base, tmp_path):
    """`Qwen/Qwen2.5-VL-*-Instruct` name their weights as before transformers' VLM refactor (`visual.*`, `model.layers.*`,
    `model.embed_tokens.*`): a base saved that way gives the same model as one saved by today's transformers."""

    def released(name: str) -> str:
        if name.startswith("model.visual."):
            return name.removeprefix("model.")
        return name.replace("model.language_model.", "model.", 1)

    base = tmp_path / "released"
    shutil.copytree(tiny_base.vlm_dir, base)
    weights = load_file(base / "model.safetensors")
    save_file({released(name): tensor for name, tensor in weights.items()}, base / "model.safetensors", metadata={"format": "pt"})
    assert any(name.startswith("visual.blocks.") for name in load_file(base / "model.safetensors"))

    torch.manual_seed(0)
    model, _ = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    torch.manual_seed(0)
    reference, _ = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir))
    expected = reference.state_dict()
    assert expected.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("tiny_base", [("qwen3_vl", "sam2")], indirect=True)
def test_a_base_whose_tokenizer_has_no_chat_template_gets_the_familys(tiny_base, tmp_path):
    """Hub folders may keep the chat template in the processor's `chat_template.json` only, where a bare tokenizer
    does not read it: LISA's format of the family replaces it anyway."""
    base = tmp_path / "no_template"
    shutil.copytree(tiny_base.vlm_dir, base)
    (base / "chat_template.jinja").unlink()
    _, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    assert processor.chat_template == CHAT_TEMPLATES["qwen3_vl"]
    ids, _ = processor.encode_conversation([{"role": "user", "content": "<image>\nWhere?"}], add_generation_prompt=True, image_tokens=4)
    assert processor.tokenizer.decode(ids).startswith("<|im_start|>user\n<|vision_start|>")  # no default system turn


# ------------------------------------------------------------------------------------------- pixel budget
# The image processor configs of the released Qwen bases, whose pixel caps let a photo take tens of thousands of tokens.
HUB_QWEN_IMAGE_PROCESSORS = {
    # Qwen/Qwen2.5-VL-*-Instruct: the pixel bounds in the legacy keys.
    "qwen2_5_vl": {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    },
    # Qwen/Qwen3-VL-*-Instruct.
    "qwen3_vl": {
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor",
    },
}
PHOTO = np.zeros((3024, 4032, 3), np.uint8)  # a 12-megapixel phone photo


def capped_grid(height: int, width: int, tokens: int) -> tuple[int, int]:
    """(rows, cols) of merged patches of a height × width image scaled, aspect kept, so that rows · cols ≤ tokens:
    rows / cols = height / width, so rows = floor(sqrt(tokens · height / width)) and likewise cols."""
    return math.floor(math.sqrt(tokens * height / width)), math.floor(math.sqrt(tokens * width / height))


def with_image_processor(base: Path, out: Path, config: dict) -> Path:
    """A copy of a base folder whose preprocessor_config.json is `config`."""
    shutil.copytree(base, out)
    (out / "preprocessor_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "tiny_base, side, uncapped",
    # Nearest multiples of patch·merge px: 3024 / 28 = 108, 4032 / 28 = 144 (15,552 tokens, within 12,845,056 px);
    # 3024 / 32 = 94.5 -> 94, 4032 / 32 = 126 (11,844 tokens, within 16,777,216 px).
    [(("qwen2_5_vl", "sam2"), 28, (108, 144)), (("qwen3_vl", "sam2"), 32, (94, 126))],
    indirect=["tiny_base"], ids=["qwen2_5_vl", "qwen3_vl"],
)
def test_a_photo_takes_at_most_1280_tokens_by_default_under_the_hubs_pixel_caps(tiny_base, side, uncapped, tmp_path):
    family = vlm_family({"model_type": tiny_base.vlm})
    base = with_image_processor(tiny_base.vlm_dir, tmp_path / "hub", HUB_QWEN_IMAGE_PROCESSORS[tiny_base.vlm])
    processor = family.load_processor(str(base))
    image = family.preprocess_image(processor, PHOTO)
    assert image.token_counts[0] == uncapped[0] * uncapped[1]

    family.set_max_pixels(processor, None)
    assert processor.image_processor.size["longest_edge"] == 1280 * side**2  # 1,003,520 px; 1,310,720 px
    rows, cols = capped_grid(*PHOTO.shape[:2], 1280)
    assert (rows, cols) == (30, 41)
    image = family.preprocess_image(processor, PHOTO)
    assert image.image_grid_thw[0].tolist() == [1, 2 * rows, 2 * cols] and image.token_counts[0] == rows * cols


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_the_pixel_budget_is_set_at_build_saved_and_replaced_at_load(tiny_base, tmp_path):
    """The tiny base (8-px patches merged 2 × 2: 16 × 16 px a token) with Qwen2.5-VL's hub pixel bounds."""
    from model.loading import load_for_inference, load_lisa, save_lisa

    hub = HUB_QWEN_IMAGE_PROCESSORS["qwen2_5_vl"]
    config = {**json.loads((tiny_base.vlm_dir / "preprocessor_config.json").read_text()), "min_pixels": hub["min_pixels"],
              "max_pixels": hub["max_pixels"]}
    config.pop("size")
    base = with_image_processor(tiny_base.vlm_dir, tmp_path / "base", config)
    height, width = PHOTO.shape[:2]
    family = vlm_family({"model_type": "qwen2_5_vl"})
    uncapped = family.preprocess_image(family.load_processor(str(base)), PHOTO).token_counts[0]
    assert uncapped == (height // 16) * (width // 16) == 47628  # 12,192,768 px, within the hub's cap

    model, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    assert processor.preprocess_image(PHOTO).token_counts[0] == math.prod(capped_grid(height, width, 1280))
    save_lisa(model, processor, str(tmp_path / "lisa"))
    saved = json.loads((tmp_path / "lisa" / "preprocessor_config.json").read_text())
    assert saved["size"]["longest_edge"] == 1280 * 16**2
    _, loaded = load_lisa(str(tmp_path / "lisa"))
    assert loaded.preprocess_image(PHOTO).token_counts[0] == math.prod(capped_grid(height, width, 1280))

    # Given at load, a budget replaces the folder's (which stays as saved).
    _, processor = load_for_inference(str(tmp_path / "lisa"), "fp32", device=torch.device("cpu"), max_pixels=100 * 16**2)
    assert processor.preprocess_image(PHOTO).token_counts[0] == math.prod(capped_grid(height, width, 100)) == 8 * 11
    assert json.loads((tmp_path / "lisa" / "preprocessor_config.json").read_text()) == saved
    # A budget of one token holds for small images too, though the hub's floor (3136 px) is above it.
    processor.set_max_pixels(16**2)
    assert processor.preprocess_image(PHOTO).token_counts[0] == processor.preprocess_image(PHOTO[:20, :20]).token_counts[0] == 1
    with pytest.raises(ValueError, match=r"max_pixels 255 is below one image token of Qwen2.5-VL \(16×16 = 256 px"):
        processor.set_max_pixels(255)
    with pytest.raises(ValueError, match="max_pixels 100 is below one image token"):
        build_lisa_from_base(str(base), str(tiny_base.sam_dir), max_pixels=100)


def test_a_pixel_budget_for_llava_is_an_error(tiny_dir):
    """LLaVA-1.5 resizes and crops every image to one square: a budget would do nothing, so it is refused."""
    from model.loading import load_for_inference

    message = r"max_pixels does not apply to LLaVA-1.5 models: every image is resized and cropped to 32×32 px \(16 tokens\)"
    with pytest.raises(ValueError, match=message):
        build_lisa_from_base(str(tiny_dir / "llava"), str(tiny_dir / "sam"), max_pixels=4096)
    with pytest.raises(ValueError, match=message):
        load_for_inference(str(tiny_dir / "lisa"), "fp32", max_pixels=4096)


# ------------------------------------------------------------------------------------- image processor backend
@pytest.fixture
def torchvision_host(monkeypatch):
    """transformers' image-processor auto classes as on a host with torchvision, where they pick the torchvision
    version of each image processor. This host has no torchvision: a subclass of the PIL version, under the name of
    the torchvision one, stands in for it."""
    from transformers.models.auto import image_processing_auto

    resolve = image_processing_auto.get_image_processor_class_from_name

    def torchvision_version(name: str):
        found = resolve(name)
        return found if found is None or name.endswith("Pil") else type(name, (found,), {})

    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(image_processing_auto, "get_image_processor_class_from_name", torchvision_version)


@pytest.mark.parametrize("tiny_base", [("llava", "sam"), ("qwen2_5_vl", "sam2")], indirect=True)
def test_images_are_processed_by_the_pil_image_processor_on_every_host(tiny_base, torchvision_host, tmp_path):
    from transformers import AutoImageProcessor, CLIPImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from model.processing import LisaProcessor

    pil = {"llava": CLIPImageProcessorPil, "qwen2_5_vl": Qwen2VLImageProcessorPil}[tiny_base.vlm]
    assert type(AutoImageProcessor.from_pretrained(str(tiny_base.lisa_dir))) is not pil  # what the host would pick
    assert type(vlm_family({"model_type": tiny_base.vlm}).load_processor(str(tiny_base.vlm_dir)).image_processor) is pil
    assert type(LisaProcessor.from_pretrained(str(tiny_base.lisa_dir)).image_processor) is pil
    if tiny_base.vlm == "qwen2_5_vl":
        # Qwen3-VL's hub config names the torchvision version ("...Fast").
        base = with_image_processor(tiny_base.vlm_dir, tmp_path / "fast", HUB_QWEN_IMAGE_PROCESSORS["qwen3_vl"])
        assert type(vlm_family({"model_type": "qwen3_vl"}).load_processor(str(base)).image_processor) is pil


# ------------------------------------------------------------------------------------------ attention
def test_an_attention_implementation_a_family_lacks_is_named():
    from model.loading import attention_implementations

    with pytest.raises(ValueError, match="attn_implementation 'flex_attention' is not supported by Qwen2.5-VL models; "
                                         "choose from sdpa, flash_attention_2, eager"):
        attention_implementations(vlm_family({"model_type": "qwen2_5_vl"}), "flex_attention")
    assert attention_implementations(vlm_family({"model_type": "llava"}), "eager") == {"vlm_config": "eager", "sam_config": "sdpa"}


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_without_flash_attn_is_an_error_before_loading(tiny_dir, monkeypatch):
    from model.loading import LisaForCausalLM, load_for_inference

    monkeypatch.setattr(LisaForCausalLM, "from_pretrained", lambda *args, **kwargs: pytest.fail("weights loaded"))
    with pytest.raises(RuntimeError, match="attn_implementation flash_attention_2 needs the flash_attn package"):
        load_for_inference(str(tiny_dir / "lisa"), "bf16", attn_implementation="flash_attention_2")
    with pytest.raises(RuntimeError, match="needs the flash_attn package"):
        build_lisa_from_base(str(tiny_dir / "llava"), str(tiny_dir / "sam"), attn_implementation="flash_attention_2")


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_the_processor_config_names_its_families_and_must_agree_with_the_model(tiny_base, tmp_path):
    """`lisa_processor.json` keeps each family by name, as every folder since other families exist has it (the loaded
    processor holds the registry's objects); a name of no family, or families other than the config's, are named."""
    from model.loading import load_lisa

    folder = tmp_path / "lisa"
    shutil.copytree(tiny_base.lisa_dir, folder)
    saved = json.loads((folder / "lisa_processor.json").read_text())
    assert (saved["vlm_family"], saved["sam_family"]) == ("qwen2_5_vl", "sam2")
    model, processor = load_lisa(str(folder))
    assert processor.vlm_family is model.vlm_family is VLM_FAMILIES["qwen2_5_vl"]
    assert processor.sam_family is model.sam_family is MASK_HEAD_FAMILIES["sam2"]

    (folder / "lisa_processor.json").write_text(json.dumps({**saved, "sam_family": "sam_hq"}))
    with pytest.raises(ValueError, match=r"lisa_processor.json holds a 'sam_hq' model, not a supported mask head; "
                                         r"supported families: sam \(SAM\), sam2 \(SAM 2\)"):
        load_lisa(str(folder))
    (folder / "lisa_processor.json").write_text(json.dumps({**saved, "sam_family": "sam"}))
    with pytest.raises(ValueError, match="its processor is of a Qwen2.5-VL and a SAM model, its config of a Qwen2.5-VL "
                                         "and a SAM 2 one"):
        load_lisa(str(folder))


@pytest.mark.parametrize("tiny_base", [("qwen3_5", "sam2")], indirect=True)
def test_qwen3_5_linear_attention_layers_keep_left_padding_out_of_their_state(tiny_base, monkeypatch):
    """Rows left-padded to one length give each row's states alone. The tiny base's padding embedding is not zero (as
    a trained checkpoint's), so that a padding leak shows: with the DeltaNet layers' padding mask off, the padded row's
    states differ (the check `test_model.py`'s left-padded generation test relies on)."""
    from transformers.models.qwen3_5 import modeling_qwen3_5

    from model.loading import load_lisa
    from tests.test_model import random_image

    model, processor = load_lisa(str(tiny_base.lisa_dir))
    model.eval()
    pad_id = processor.tokenizer.pad_token_id
    assert model.vlm.get_input_embeddings().weight[pad_id].abs().sum() > 0
    questions = ["<image>\nWhat is the red circle in this image? Please output segmentation mask.", "<image>\nIt?"]
    image = processor.preprocess_image(random_image(0))
    rows = [processor.encode_conversation([{"role": "user", "content": q}], add_generation_prompt=True,
                                          image_tokens=image.token_counts[0])[0] for q in questions]
    length = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    vlm, family = model.vlm, model.vlm_family
    index = torch.zeros(2, dtype=torch.long)

    def states(input_ids, attention_mask, rows_index):
        with torch.no_grad():
            return vlm.model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                position_ids=family.position_ids(vlm, input_ids, attention_mask, image, rows_index),
                mm_encoder_outputs={"image": family.image_encoder_outputs(vlm, image, rows_index)},
            ).last_hidden_state

    short = len(rows[1])
    alone = states(ids[1:, -short:], mask[1:, -short:], index[:1])[0]
    torch.testing.assert_close(states(ids, mask, index)[1, -short:], alone, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(modeling_qwen3_5, "apply_mask_to_padding_states", lambda hidden_states, attention_mask: hidden_states)
    assert (states(ids, mask, index)[1, -short:] - alone).abs().max() > 1e-3


@pytest.mark.parametrize("tiny_base", [("qwen3_5", "sam2")], indirect=True)
def test_qwen3_5_prompts_are_its_non_thinking_format(tiny_base):
    """No default system turn; the generation prompt and the last answer open with the empty reasoning block, which is
    not trained; an earlier answer goes without it (as the hub template writes history)."""
    from model.loading import load_lisa

    _, processor = load_lisa(str(tiny_base.lisa_dir))
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": "<image>\nq1"}, {"role": "assistant", "content": "a1 [SEG]."},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2 [SEG]."}]
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nq1<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.endswith("<|im_start|>assistant\na1 [SEG].<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
                         "<|im_start|>assistant\n<think>\n\n</think>\n\na2 [SEG].<|im_end|>\n")
    ids, labels = processor.encode_conversation(messages, image_tokens=4)
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert trained.replace(" ", "") == "a1[SEG].<|im_end|>a2[SEG].<|im_end|>"


@pytest.mark.parametrize("tiny_base", [("qwen3_5", "sam2")], indirect=True)
def test_qwen3_5_lora_reaches_every_layer_and_no_vision_linear(tiny_base):
    """The family's default targets: q_proj and v_proj in its full-attention layers, in_proj_qkv (fused query, key and
    value) in its linear-attention ones; LISA's q_proj and v_proj alone would miss 3 layers in 4."""
    from model.loading import load_lisa
    from model.peft_setup import setup_trainable

    model, _ = load_lisa(str(tiny_base.lisa_dir))
    layer_types = model.config.vlm_config.text_config.layer_types
    peft_model = setup_trainable(model)
    adapted = {name.split(".lora_A")[0] for name, _ in peft_model.named_parameters() if ".lora_A." in name}
    expected = set()
    for i, kind in enumerate(layer_types):
        prefix = f"base_model.model.vlm.model.language_model.layers.{i}"
        names = ("self_attn.q_proj", "self_attn.v_proj") if kind == "full_attention" else ("linear_attn.in_proj_qkv",)
        expected |= {f"{prefix}.{name}" for name in names}
    assert adapted == expected and layer_types == ["linear_attention", "full_attention"] * 2

# ------------------------------------------------------------------------------------------------- InternVL3
@pytest.mark.parametrize("tiny_base", [("internvl", "sam")], indirect=True)
def test_an_internvl_base_whose_config_omits_the_tie_flag_keeps_its_own_head(tiny_base, tmp_path):
    """`InternVLConfig` ties the head by default; InternVL3's heads are their own (2.09B parameters for the 2B, 1.86B
    tied). A config.json without the flag (as transformers 4 wrote one whose value equalled its default) loads with the
    checkpoint's head, but `[SEG]`'s row would then tie it to the embeddings and lose it: InternVL3's vocabulary has
    exactly its tokenizer's 151,674 rows, so `[SEG]` grows the matrices, and resizing ties what the config says."""
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(str(tiny_base.vlm_dir)))
    base = copy_base(tiny_base.vlm_dir, tmp_path / "no_flag", {"tie_word_embeddings": None}, {"vocab_size": tokens})
    weights = load_file(base / "model.safetensors")
    for name in [n for n in weights if n.endswith(("embed_tokens.weight", "lm_head.weight"))]:
        weights[name] = weights[name][:tokens].clone()  # no padded rows, as InternVL3's
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})

    model, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head.shape[0] > tokens  # grown for [SEG]
    assert head is not embeddings and not model.config.vlm_config.tie_word_embeddings
    torch.testing.assert_close(head[:tokens], saved_weight(base, "lm_head.weight")[1], rtol=0, atol=0)


def internvl_tiles(image: np.ndarray, tile: int, max_tiles: int, mean, std) -> torch.Tensor:
    """InternVL's own tiling (`dynamic_preprocess` + `build_transform` of its model card), written afresh: of the grids
    of cols × rows ≤ `max_tiles` tiles, by area, the one whose aspect ratio is closest to the image's (on a tie the
    larger, while the image has more than half its pixels); a bicubic resize to it, its tiles row-major, and a
    thumbnail of the whole image when there is more than one; 0-1 pixels under the statistics `mean` / `std`."""
    from PIL import Image

    height, width = image.shape[:2]
    grids = sorted({(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles},
                   key=lambda grid: grid[0] * grid[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    cols, rows = best
    pil = Image.fromarray(image)
    resized = pil.resize((cols * tile, rows * tile), Image.BICUBIC)
    crops = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    if len(crops) > 1:
        crops.append(pil.resize((tile, tile), Image.BICUBIC))
    pixels = np.stack([np.asarray(crop, np.float32) / 255 for crop in crops])
    return torch.from_numpy((pixels - np.float32(mean)) / np.float32(std)).permute(0, 3, 1, 2)


# InternVL3-*-hf's preprocessor_config.json: 448-px tiles, at most 12, tiling off (only InternVLProcessor turns it on).
HUB_INTERNVL_IMAGE_PROCESSOR = {
    "size": {"height": 448, "width": 448}, "crop_to_patches": False, "min_patches": 1, "max_patches": 12,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "do_resize": True, "do_convert_rgb": True,
    "image_processor_type": "GotOcr2ImageProcessorFast", "processor_class": "InternVLProcessor",
}


@pytest.mark.parametrize("tiny_base", [("internvl", "sam")], indirect=True)
def test_internvl_images_are_tiled_as_internvl_tiles_them(tiny_base):
    """The tiny base's 32-px tiles, at most 4 + thumbnail: a landscape image takes a 2 × 2 grid, a portrait one
    1 × 2 (InternVL's tie rule is not symmetric), a small square one tile; 4 tokens a tile."""
    family = VLM_FAMILIES["internvl"]
    processor = family.load_processor(str(tiny_base.vlm_dir))
    image_processor = processor.image_processor
    rng = np.random.default_rng(0)
    for (height, width), tiles in {(64, 96): 5, (96, 64): 3, (80, 80): 5, (30, 30): 1, (40, 150): 5}.items():
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        inputs = family.preprocess_image(processor, image)
        expected = internvl_tiles(image, 32, 4, image_processor.image_mean, image_processor.image_std)
        assert inputs.tiles.tolist() == [tiles] == [len(expected)], (height, width)
        assert inputs.token_counts == (4 * tiles,)
        torch.testing.assert_close(inputs.pixel_values, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tiny_base", [("internvl", "sam")], indirect=True)
def test_a_photo_takes_at_most_1280_tokens_by_default_under_internvls_tile_cap(tiny_base, tmp_path):
    """With the hub's 12 tiles a 640 × 480 photo takes a 4 × 3 grid and a thumbnail, 13 × 256 = 3,328 tokens; the
    default cap is 4 tiles + thumbnail (1,280 tokens), which takes it to one tile (its 4:3 is as far from 1:1 as from
    2:1, and it has less than half of 2 tiles' pixels). `max_pixels` caps the grid's pixels in whole tiles."""
    family = VLM_FAMILIES["internvl"]
    base = with_image_processor(tiny_base.vlm_dir, tmp_path / "hub", HUB_INTERNVL_IMAGE_PROCESSOR)
    settings = {**json.loads((base / "processor_config.json").read_text()), "image_seq_length": 256}
    (base / "processor_config.json").write_text(json.dumps(settings))
    processor = family.load_processor(str(base))
    photo, portrait = np.zeros((480, 640, 3), np.uint8), np.zeros((640, 480, 3), np.uint8)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    assert len(internvl_tiles(photo, 448, 12, mean, std)) == 13
    assert family.preprocess_image(processor, photo).token_counts == (13 * 256,)

    family.set_max_pixels(processor, None)
    assert processor.image_processor.max_patches == 4
    for image in (photo, portrait, PHOTO):
        tiles = len(internvl_tiles(image, 448, 4, mean, std))
        assert family.preprocess_image(processor, image).token_counts == (tiles * 256,) and tiles * 256 <= 1280
    assert family.preprocess_image(processor, portrait).token_counts == (3 * 256,)  # 1 × 2 + thumbnail

    family.set_max_pixels(processor, 6 * 448**2 + 1)
    assert processor.image_processor.max_patches == 6
    assert family.preprocess_image(processor, photo).token_counts == (7 * 256,)  # 3 × 2 + thumbnail
    with pytest.raises(ValueError, match=r"max_pixels 200703 is below one tile of InternVL3 \(448×448 = 200704 px, 256 tokens\)"):
        family.set_max_pixels(processor, 448**2 - 1)

    (base / "processor_config.json").unlink()  # the tokens of a tile are read from it, not guessed
    with pytest.raises(ValueError, match=r"no image_seq_length \(the image tokens of one tile\) in its processor_config.json"):
        family.load_processor(str(base))


@pytest.mark.parametrize("tiny_base", [("internvl", "sam")], indirect=True)
def test_internvl_weights_are_not_taken_for_llavas(tiny_base, tiny_dir):
    """Both name their vision tower and projector `model.vision_tower` / `model.multi_modal_projector` (a prefix test
    took InternVL's for LLaVA's); InternViT's CLS token and the projector's norm tell them apart."""
    from model.loading import load_lisa

    internvl, _ = load_lisa(str(tiny_base.lisa_dir))
    llava, _ = load_lisa(str(tiny_dir / "lisa"))
    names = list(internvl.state_dict())
    assert any(n.startswith("vlm.model.vision_tower.") for n in names)
    with pytest.raises(ValueError, match="ckpt holds the weights of a InternVL3 vision-language model, not of a LLaVA-1.5 one"):
        check_weights_fit(llava, names, "ckpt")
    with pytest.raises(ValueError, match="ckpt holds the weights of a LLaVA-1.5 vision-language model, not of a InternVL3 one"):
        check_weights_fit(internvl, llava.state_dict(), "ckpt")
