"""The LISA model on the tiny base: shapes, [SEG] handling, generation, persistence, precision."""

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from model.loading import add_seg_token, load_lisa, save_lisa
from model.inference import answer
from model.losses import dice_per_mask, mean_over_masks, sigmoid_ce_per_mask

QUESTION = "<image>\nWhat is the red circle in this image? Please output segmentation mask."


def user(text=QUESTION):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def random_image(seed, height=48, width=60):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_masks(seed, n, height=48, width=60):
    return np.random.default_rng(seed).random((n, height, width)) > 0.5


@pytest.fixture(scope="module")
def lisa(tiny_dir):
    model, processor = load_lisa(str(tiny_dir / "lisa"))
    return model.eval(), processor


class ForceTokens(LogitsProcessor):
    """Forces given tokens at given generation steps, so a random model emits [SEG] where a test needs it.

    The token forced at the last given step (the stop token) is suppressed before it, so the random model cannot
    end the answer early whatever its weights.
    """

    def __init__(self, prompt_length, forced):
        self.prompt_length, self.forced = prompt_length, forced
        self.last = max(forced)

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        if step in self.forced:
            scores = torch.full_like(scores, -1e9)
            scores[:, self.forced[step]] = 0
        elif step < self.last:
            scores = scores.clone()
            scores[:, self.forced[self.last]] = -1e9
        return scores


def test_forward_shapes_and_losses(lisa):
    model, processor = lisa
    conversations = [[user(), assistant("Sure, [SEG] and [SEG].")], [user(), assistant("Nothing here.")]]
    items = [
        processor.process_sample(random_image(0), conversations, random_masks(0, 2), "two-seg"),
        processor.process_sample(random_image(1, 30, 20), [[user(), assistant("It is [SEG].")]], random_masks(1, 1, 30, 20), "one-seg"),
        processor.process_sample(random_image(2), [[user("<image>\nDescribe it."), assistant("A picture.")]], np.zeros((0, 48, 60), bool), "vqa"),
    ]
    batch = processor.collate(items)
    out = model(**batch)
    rows, length = batch["input_ids"].shape
    assert rows == 4
    assert out.logits.shape == (rows, length, model.config.llava_config.text_config.vocab_size)
    assert [tuple(p.shape) for p in out.pred_masks] == [(2, 48, 60), (1, 30, 20), (0, 48, 60)]
    for name in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss", "mask_loss"):
        assert torch.isfinite(getattr(out, name)), name
    expected = model.config.ce_loss_weight * out.ce_loss + 2.0 * out.mask_bce_loss + 0.5 * out.mask_dice_loss
    torch.testing.assert_close(out.loss, expected)


def test_mask_count_mismatch_names_the_sample(lisa):
    _, processor = lisa
    with pytest.raises(ValueError, match="img_007.jpg: 2 \\[SEG\\] tokens .* but 1 ground-truth"):
        processor([random_image(0)], [[[user(), assistant("[SEG] and [SEG].")]]], [random_masks(0, 1)], ["img_007.jpg"])


def test_vqa_batch_adds_only_ce(lisa):
    model, processor = lisa
    item = processor.process_sample(random_image(0), [[user("<image>\nDescribe it."), assistant("A picture.")]], np.zeros((0, 48, 60), bool), "vqa")
    out = model(**processor.collate([item]))
    torch.testing.assert_close(out.mask_loss, torch.tensor(0.0))
    torch.testing.assert_close(out.loss, out.ce_loss)


def test_mask_losses_match_the_original_formula():
    """LISA's per-image averaging (sum/n per image, times n, summed, over the batch count), recomputed in numpy."""
    rng = np.random.default_rng(0)
    per_image = [(rng.normal(size=(n, 50)), rng.random((n, 50)) > 0.5) for n in (2, 1, 3)]
    bce_total, dice_total, count = 0.0, 0.0, 0
    for logits, targets in per_image:
        p = 1 / (1 + np.exp(-logits))
        bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)
        numerator = 2 * (p / 1000 * targets).sum(1)
        denominator = (p / 1000).sum(1) + (targets / 1000).sum(1)
        dice = 1 - (numerator + 1e-6) / (denominator + 1e-6)
        n = len(logits)
        bce_total += bce.sum() / (n + 1e-8) * n
        dice_total += dice.sum() / (n + 1e-8) * n
        count += n
    pairs = [(torch.tensor(l).view(len(l), 5, 10), torch.tensor(t).view(len(t), 5, 10)) for l, t in per_image]
    bce = mean_over_masks(torch.cat([sigmoid_ce_per_mask(l, t) for l, t in pairs]))
    dice = mean_over_masks(torch.cat([dice_per_mask(l, t) for l, t in pairs]))
    assert bce.item() == pytest.approx(bce_total / (count + 1e-8), rel=1e-5)
    assert dice.item() == pytest.approx(dice_total / (count + 1e-8), rel=1e-5)


def test_mask_query_is_the_position_before_seg(lisa):
    """Recompute the mask from the hidden state at the position before [SEG]; the [SEG] position gives another."""
    model, processor = lisa
    item = processor.process_sample(random_image(3), [[user(), assistant("Sure, it is [SEG].")]], None, "q")
    batch = processor.collate([item])
    with torch.no_grad():
        pred = model(**batch).pred_masks[0]
        hidden = model.llava(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
            output_hidden_states=True,
        ).hidden_states[-1][0]
        seg = (batch["input_ids"][0] == processor.seg_token_id).nonzero().item()
        embedding = model.embed_images(batch["sam_pixel_values"])[0]
        size = (batch["resized_sizes"][0].tolist(), batch["original_sizes"][0].tolist())
        before = model.decode_masks(embedding, model.text_hidden_fcs(hidden[seg - 1 : seg]), *size)
        at_seg = model.decode_masks(embedding, model.text_hidden_fcs(hidden[seg : seg + 1]), *size)
    torch.testing.assert_close(pred, before)
    assert not torch.allclose(pred, at_seg, atol=1e-4)


def test_seg_token_must_encode_to_one_id(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir / "llava"))
    seg_id = add_seg_token(tokenizer)
    assert tokenizer("[SEG]", add_special_tokens=False).input_ids == [seg_id]
    assert tokenizer("Sure, it is [SEG].", add_special_tokens=False).input_ids.count(seg_id) == 1

    class SpacePieceFirst(type(tokenizer)):
        """What LLaMA-2 tokenizers did in the original's issue #55: a lone space piece before [SEG]."""

        def __call__(self, text, **kwargs):
            encoded = super().__call__(text, **kwargs)
            encoded["input_ids"] = [self.convert_tokens_to_ids("▁")] + encoded["input_ids"]
            return encoded

    tokenizer.__class__ = SpacePieceFirst
    with pytest.raises(ValueError, match="not to the single id"):
        add_seg_token(tokenizer)


def generate_inputs(processor, images, prompts):
    return processor(images, [[[user(p)]] for p in prompts], add_generation_prompt=True)


def test_cached_generation_equals_uncached_recomputation(lisa):
    """Cached generation collecting hidden states == the original's way: no cache, then the full sequence again."""
    model, processor = lisa
    inputs = generate_inputs(processor, [random_image(4)], [QUESTION])
    prompt_length = inputs["input_ids"].shape[1]
    seg, eos = processor.seg_token_id, processor.tokenizer.eos_token_id
    force = LogitsProcessorList([ForceTokens(prompt_length, {2: seg, 5: seg, 9: eos})])
    cached = model.generate(**inputs, max_new_tokens=12, logits_processor=force)[0]
    uncached_ids = model.llava.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
        max_new_tokens=12, use_cache=False, do_sample=False, logits_processor=force,
    )[0, prompt_length:].tolist()
    assert cached.token_ids == uncached_ids[: len(cached.token_ids)]
    assert cached.token_ids.count(seg) == 2 and cached.token_ids[-1] == eos

    full = torch.cat([inputs["input_ids"], torch.tensor([cached.token_ids])], dim=1)
    with torch.no_grad():
        recomputed = model(
            input_ids=full, attention_mask=torch.ones_like(full), pixel_values=inputs["pixel_values"],
            sam_pixel_values=inputs["sam_pixel_values"], image_index=torch.tensor([0]),
            resized_sizes=inputs["resized_sizes"], original_sizes=inputs["original_sizes"],
        ).pred_masks[0]
    assert len(cached.masks) == 2
    for mask, logits in zip(cached.masks, recomputed):
        # Equal wherever the logit is not within float noise of the threshold.
        assert torch.equal(mask[logits.abs() > 1e-4], (logits > 0)[logits.abs() > 1e-4])


def test_prompts_beyond_the_context_are_refused_and_answers_capped_visibly(lisa, monkeypatch, caplog):
    model, processor = lisa
    inputs = generate_inputs(processor, [random_image(4)], [QUESTION])
    prompt_length = inputs["input_ids"].shape[1]
    text_config = model.config.llava_config.text_config
    monkeypatch.setattr(text_config, "max_position_embeddings", prompt_length + 3)
    with caplog.at_level("WARNING", logger="model.lisa"):
        prediction = model.generate(**inputs, max_new_tokens=20, min_new_tokens=20)[0]
    assert len(prediction.token_ids) == 3
    assert f"answers limited to 3 new tokens: the prompt takes {prompt_length} of the model's {prompt_length + 3}" in caplog.text

    monkeypatch.setattr(text_config, "max_position_embeddings", prompt_length - 1)
    with pytest.raises(ValueError, match=f"a prompt of {prompt_length} tokens .* does not fit the model's context"):
        model.generate(**inputs)
    batch = processor([random_image(4)], [[[user(), assistant("It is [SEG].")]]])
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(**batch)


def test_batched_generation_equals_one_at_a_time(lisa):
    model, processor = lisa
    images = [random_image(5), random_image(6, 40, 30)]
    prompts = [QUESTION, "<image>\nWhere is the blue square? Please output segmentation mask. Be brief please."]
    seg, eos = processor.seg_token_id, processor.tokenizer.eos_token_id

    def run(indices):
        inputs = generate_inputs(processor, [images[i] for i in indices], [prompts[i] for i in indices])
        force = LogitsProcessorList([ForceTokens(inputs["input_ids"].shape[1], {1: seg, 4: seg, 7: eos})])
        return model.generate(**inputs, max_new_tokens=8, logits_processor=force)

    batched = run([0, 1])
    for i in range(2):
        single = run([i])[0]
        assert batched[i].token_ids == single.token_ids
        assert len(batched[i].masks) == len(single.masks) == 2
        for a, b in zip(batched[i].masks, single.masks):
            assert (a != b).float().mean() < 1e-3


def test_zero_seg_answer_gives_no_mask(lisa):
    model, processor = lisa
    eos = processor.tokenizer.eos_token_id
    inputs = generate_inputs(processor, [random_image(7)], [QUESTION])
    force = LogitsProcessorList([ForceTokens(inputs["input_ids"].shape[1], {3: eos})])
    prediction = model.generate(**inputs, max_new_tokens=8, logits_processor=force)[0]
    assert prediction.masks == [] and len(prediction.token_ids) == 4


def test_answer_returns_text_and_masks_at_image_size(lisa):
    model, processor = lisa
    image = random_image(8, 37, 53)
    inputs_len = generate_inputs(processor, [image], [QUESTION])["input_ids"].shape[1]
    force = LogitsProcessorList([ForceTokens(inputs_len, {0: processor.seg_token_id, 1: processor.tokenizer.eos_token_id})])
    (reply,) = answer(model, processor, [image], [[user()]], max_new_tokens=4, logits_processor=force)
    assert reply.text == "[SEG]"
    assert [tuple(m.shape) for m in reply.masks] == [(37, 53)] and reply.masks[0].dtype == torch.bool


def test_save_load_round_trip(lisa, tmp_path):
    model, processor = lisa
    save_lisa(model, processor, str(tmp_path / "copy"))
    loaded, loaded_processor = load_lisa(str(tmp_path / "copy"))
    item = processor.process_sample(random_image(9), [[user(), assistant("It is [SEG].")]], random_masks(9, 1), "rt")
    batch = processor.collate([item])
    again = loaded_processor.collate([loaded_processor.process_sample(random_image(9), [[user(), assistant("It is [SEG].")]], random_masks(9, 1), "rt")])
    for key in ("input_ids", "labels", "pixel_values", "sam_pixel_values"):
        torch.testing.assert_close(batch[key], again[key])
    with torch.no_grad():
        a, b = model(**batch), loaded.eval()(**again)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pred_masks[0], b.pred_masks[0])
    torch.testing.assert_close(a.loss, b.loss)
    assert loaded.config.seg_token_id == processor.seg_token_id == loaded_processor.seg_token_id


def test_loading_a_folder_with_missing_weights_fails(lisa, tmp_path):
    from safetensors.torch import load_file, save_file

    model, processor = lisa
    folder = tmp_path / "broken"
    save_lisa(model, processor, str(folder))
    weights = load_file(str(folder / "model.safetensors"))
    removed = [k for k in weights if "text_hidden_fcs" in k]
    save_file({k: v for k, v in weights.items() if k not in removed}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*text_hidden_fcs"):
        load_lisa(str(folder))


def test_loss_weights_are_configurable_at_load(tiny_dir):
    model, _ = load_lisa(str(tiny_dir / "lisa"), ce_loss_weight=0.25, dice_loss_weight=1.5)
    assert (model.config.ce_loss_weight, model.config.bce_loss_weight, model.config.dice_loss_weight) == (0.25, 2.0, 1.5)


def test_bf16_forward_and_generate(tiny_dir):
    model, processor = load_lisa(str(tiny_dir / "lisa"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    item = processor.process_sample(random_image(10), [[user(), assistant("It is [SEG].")]], random_masks(10, 1), "bf16")
    batch = processor.collate([item])
    batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    (reply,) = answer(model, processor, [random_image(10)], [[user()]], max_new_tokens=3)
    assert len(reply.token_ids) <= 3


@pytest.mark.parametrize("conv_type", ["llava_1_5", "llava_v1", "llava_llama_2"])
def test_labels_cover_exactly_the_answers(lisa, conv_type):
    model, processor = lisa
    processor.set_chat_template(conv_type)
    try:
        messages = [user(), assistant("It is [SEG]."), user("And the square?"), assistant("Sure, [SEG].")]
        ids, labels = processor.encode_conversation(messages)
        text = processor.tokenizer.decode([i for i, l in zip(ids, labels) if l != -100])
        eos = processor.tokenizer.eos_token
        assert text.replace(" ", "") == f"It is [SEG].{eos}Sure, [SEG].{eos}".replace(" ", "")
        assert ids.count(processor.image_token_id) == processor.image_seq_length
        prompt, _ = processor.encode_conversation(messages[:1], add_generation_prompt=True)
        assert ids[: len(prompt)] == prompt  # training rows start exactly as a generation prompt does
    finally:
        processor.set_chat_template("llava_1_5")


def test_training_init_keeps_the_pretrained_weights(tiny_dir):
    """The builder must not re-initialise the LLaVA and SAM it was given (the original's users got random SAM)."""
    from transformers import LlavaForConditionalGeneration, SamModel

    from model.loading import build_lisa_from_llava

    model, processor = build_lisa_from_llava(str(tiny_dir / "llava"), str(tiny_dir / "sam"), out_dim=64)
    llava = LlavaForConditionalGeneration.from_pretrained(str(tiny_dir / "llava"))
    sam = SamModel.from_pretrained(str(tiny_dir / "sam"))
    for name, tensor in sam.state_dict().items():
        torch.testing.assert_close(model.sam.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in llava.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:
            tensor = tensor[: len(processor.tokenizer) - 1]  # [SEG] is one new row
            assert model.llava.state_dict()[name].shape[0] == len(processor.tokenizer)
        torch.testing.assert_close(model.llava.state_dict()[name][: tensor.shape[0]], tensor, rtol=0, atol=0, msg=name)


def test_training_init_behaves_like_its_saved_folder(tiny_dir, tmp_path):
    """Same outputs before and after a save/load: catches e.g. a lost (causal) attention implementation."""
    from model.loading import build_lisa_from_llava

    model, processor = build_lisa_from_llava(str(tiny_dir / "llava"), str(tiny_dir / "sam"), out_dim=64)
    save_lisa(model, processor, str(tmp_path / "built"))
    loaded, _ = load_lisa(str(tmp_path / "built"))
    item = processor.process_sample(random_image(11), [[user(), assistant("It is [SEG].")]], random_masks(11, 1), "b")
    batch = processor.collate([item])
    with torch.no_grad():
        a, b = model.eval()(**batch), loaded.eval()(**batch)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pred_masks[0], b.pred_masks[0])


def test_prompts_sharing_an_image_equal_separate_images(lisa):
    """Several questions about one image (SAM runs once) answer exactly as with the image repeated per question."""
    model, processor = lisa
    image = random_image(12)
    questions = [[user()], [user("<image>\nWhere is the blue square? Please output segmentation mask.")]]
    prompt_length = generate_inputs(processor, [image, image], [q[0]["content"] for q in questions])["input_ids"].shape[1]
    force = LogitsProcessorList([ForceTokens(prompt_length, {1: processor.seg_token_id, 3: processor.tokenizer.eos_token_id})])
    shared = answer(model, processor, [image], questions, image_index=[0, 0], max_new_tokens=5, logits_processor=force)
    separate = answer(model, processor, [image, image], questions, max_new_tokens=5, logits_processor=force)
    for a, b in zip(shared, separate):
        assert a.token_ids == b.token_ids and len(a.masks) == 1
        assert torch.equal(a.masks[0], b.masks[0])


def test_projection_width_comes_from_sam(tiny_dir):
    from model.loading import build_lisa_from_llava

    model, _ = build_lisa_from_llava(str(tiny_dir / "llava"), str(tiny_dir / "sam"))
    assert model.config.out_dim == model.config.sam_config.prompt_encoder_config.hidden_size == 64
    assert model.text_hidden_fcs[2].out_features == 64
    with pytest.raises(ValueError, match="out_dim 256 must equal the prompt width 64"):
        build_lisa_from_llava(str(tiny_dir / "llava"), str(tiny_dir / "sam"), out_dim=256)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 4)])
def test_clip_input_of_an_image_a_few_pixels_high(lisa, size):
    """A one-colour image gives the same CLIP input at any size: its (H, W, 3) layout is not mistaken for (3, H, W)."""
    _, processor = lisa
    colour = np.array([200, 30, 90], np.uint8)
    tiny = processor.preprocess_clip(np.broadcast_to(colour, (*size, 3)).copy())
    large = processor.preprocess_clip(np.broadcast_to(colour, (64, 64, 3)).copy())
    torch.testing.assert_close(tiny, large)


def test_decoded_answer_is_the_answer_text(lisa):
    """With this project's tokenizers ([SEG] keeps the spaces beside it) an answer decodes to its own text."""
    _, processor = lisa
    text = "Sure, it is [SEG]. And [SEG] , [SEG][SEG] too."
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.decode_answer(ids + [processor.tokenizer.eos_token_id]) == text
