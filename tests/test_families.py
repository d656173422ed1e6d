"""What differs between the families of vision-language models and mask heads (`model/vlm_families.py`,
`model/mask_heads.py`), checked against transformers' own models; and how a base or checkpoint of the wrong family
is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import Sam2Model, SamModel

from model.conversation import CHAT_TEMPLATES
from model.loading import build_lisa_from_base
from model.mask_heads import MASK_HEAD_FAMILIES, load_mask_head
from model.sam import load_sam
from model.tiny import build_qwen3_vl, build_sam, build_sam2
from model.vlm_families import vlm_family


@pytest.fixture(scope="module")
def sams():
    """The tiny SAM and SAM 2, in eval mode, as LISA uses them."""
    models = {"sam": build_sam().eval(), "sam2": build_sam2().eval()}
    for name, model in models.items():
        MASK_HEAD_FAMILIES[name].prepare(model)
    return models


@pytest.mark.parametrize("name", ["sam", "sam2"])
def test_decoding_one_image_equals_transformers_pipeline(sams, name):
    """Our split — image encoder once per image, then the decoder per image with one prompt token per [SEG] — gives
    the masks and predicted IoUs of transformers' own: `get_image_embeddings` (for SAM 2: the decoder's projections of
    the two high-resolution maps and the "no memory" embedding applied there), then the mask decoder."""
    family, sam = MASK_HEAD_FAMILIES[name], sams[name]
    size = family.image_size(sam.config)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(3, sam.config.prompt_encoder_config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, our_scores = family.decode(sam, family.embed(sam, pixels)[1], queries)

        embeddings = sam.get_image_embeddings(pixels[1:])
        image_embedding = embeddings[-1] if name == "sam2" else embeddings
        extra = {"high_resolution_features": embeddings[:-1]} if name == "sam2" else {}
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
    message = r"holds a 'qwen2_vl' model, not a supported vision-language model; supported families: llava \(LLaVA-1.5\), qwen2_5_vl \(Qwen2.5-VL\), qwen3_vl \(Qwen3-VL\)"
    with pytest.raises(ValueError, match=message):
        build_lisa_from_base(str(tmp_path / "base"), str(tiny_dir / "sam"))
    with pytest.raises(ValueError, match="got a 'llama' model, not a supported vision-language model"):
        vlm_family({"model_type": "llama"})


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_weights_of_other_families_are_named(tiny_base, tiny_dir):
    """A LISA checkpoint of one pair loaded into a model built for another says which part differs."""
    from model.loading import load_lisa

    qwen_sam2, _ = load_lisa(str(tiny_base.lisa_dir))
    llava_sam, _ = load_lisa(str(tiny_dir / "lisa"))
    with pytest.raises(ValueError, match="run/ckpt holds the weights of a Qwen2.5-VL vision-language model, not of a LLaVA-1.5 one"):
        llava_sam.check_weights_fit([f"base_model.model.{n}" for n in qwen_sam2.state_dict()], "run/ckpt")
    mixed = [n for n in llava_sam.state_dict() if n.startswith("vlm.")] + [n for n in qwen_sam2.state_dict() if n.startswith("sam.")]
    with pytest.raises(ValueError, match="holds the weights of a SAM 2 mask head, not of a SAM one"):
        llava_sam.check_weights_fit(mixed, "run/ckpt")
    llava_sam.check_weights_fit(llava_sam.state_dict(), "run/ckpt")  # its own weights fit


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_qwen3_and_qwen2_5_weights_are_told_apart(tiny_base):
    """Both Qwen families name their vision tower `model.visual`; Qwen3-VL's has DeepStack mergers, Qwen2.5-VL's merger
    an `ln_q`."""
    from model.lisa import LisaConfig, LisaForCausalLM
    from model.loading import load_lisa

    qwen2_5, _ = load_lisa(str(tiny_base.lisa_dir))
    vlm, processor = build_qwen3_vl()
    sam = build_sam2()
    qwen3 = LisaForCausalLM(LisaConfig(vlm_config=vlm.config, sam_config=sam.config, seg_token_id=0), vlm=vlm, sam=sam)
    with pytest.raises(ValueError, match="ckpt holds the weights of a Qwen3-VL vision-language model, not of a Qwen2.5-VL one"):
        qwen2_5.check_weights_fit(qwen3.state_dict(), "ckpt")
    with pytest.raises(ValueError, match="ckpt holds the weights of a Qwen2.5-VL vision-language model, not of a Qwen3-VL one"):
        qwen3.check_weights_fit(qwen2_5.state_dict(), "ckpt")
    qwen3.check_weights_fit(qwen3.state_dict(), "ckpt")


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_tied_word_embeddings_stay_tied(tiny_base, tmp_path):
    """Qwen2.5-VL-3B ties its output head to its input embeddings (the tiny base does not): `[SEG]`'s new row, saving and
    loading keep them one tensor."""
    from model.loading import load_lisa, save_lisa

    base = tmp_path / "tied"
    shutil.copytree(tiny_base.vlm_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    model, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is embeddings and head.shape[0] == len(processor.tokenizer)

    save_lisa(model, processor, str(tmp_path / "lisa"))
    loaded, _ = load_lisa(str(tmp_path / "lisa"))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.get_input_embeddings().weight, embeddings, rtol=0, atol=0)


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_a_qwen2_5_vl_base_in_the_released_layout_builds_the_same_model(tiny_base, tmp_path):
    """`Qwen/Qwen2.5-VL-*-Instruct` name their weights as before transformers' VLM refactor (`visual.*`, `model.layers.*`,
    `model.embed_tokens.*`): a base saved that way gives the same model as one saved by today's transformers."""
    from safetensors.torch import load_file, save_file

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
