"""The LISA model on the tiny bases of every pair of families (`tests/conftest.py: PAIRS`): shapes,
[SEG] handling, generation (batched, left-padded, KV-cached), persistence, precision."""

import copy
import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from model.loading import add_seg_token, load_lisa, save_lisa
from model.inference import answer
from model.losses import dice_per_mask, mean_over_masks, sigmoid_ce_per_mask
from model.peft_setup import setup_trainable

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
def lisa(tiny_base):
    model, processor = load_lisa(str(tiny_base.lisa_dir))
    return model.eval(), processor


def vlm_image_inputs(model, batch, rows=None):
    """The image inputs of the vision-language model's own forward / generate for the rows (default: row r about
    image r): Qwen2.5-VL also takes the patch grids and which tokens are image tokens, from which it computes its
    3-D positions itself; InternVL3 takes each row's tiles, row after row."""
    rows = torch.arange(batch["input_ids"].shape[0]) if rows is None else rows
    images = batch["image_inputs"]
    if hasattr(images, "tiles"):
        tiles = images.pixel_values.split(images.tiles.tolist())
        return {"pixel_values": torch.cat([tiles[i] for i in rows.tolist()])}
    if not hasattr(images, "image_grid_thw"):
        return {"pixel_values": images.pixel_values[rows]}
    patches = images.pixel_values.split(images.image_grid_thw.prod(-1).tolist())
    return {
        "pixel_values": torch.cat([patches[i] for i in rows.tolist()]),
        "image_grid_thw": images.image_grid_thw[rows],
        "mm_token_type_ids": (batch["input_ids"] == model.config.vlm_config.image_token_id).int(),
    }


@contextmanager
def recorded_queries(model):
    """Yields a list that fills with the hidden states read as mask queries, (n, h) per call of `text_hidden_fcs`.

    The tiny random SAM answers with logits of ~1e-4, too close to 0 for its masks to tell hidden states apart: the
    queries themselves are compared."""
    calls = []
    handle = model.text_hidden_fcs.register_forward_hook(lambda module, args, output: calls.append(args[0].detach()))
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def image_encoder_calls(model):
    """Yields a list that fills with (pixel values, output) of each call of the VLM's image encoder (the output's
    `pooler_output`: the features)."""
    outputs = []
    encode = model.vlm.model.get_image_features

    def recording(*args, **kwargs):
        outputs.append((kwargs["pixel_values"] if "pixel_values" in kwargs else args[0], encode(*args, **kwargs)))
        return outputs[-1][1]

    model.vlm.model.get_image_features = recording
    try:
        yield outputs
    finally:
        del model.vlm.model.get_image_features


@contextmanager
def language_model_outputs(model):
    """Yields a list that fills with the output of every call of the language model."""
    outputs = []
    handle = model.vlm.model.language_model.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


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
    out = model(**batch, return_logits=True)
    rows, length = batch["input_ids"].shape
    assert rows == 4
    assert out.logits.shape == (rows, length, model.config.vlm_config.text_config.vocab_size)
    assert model(**batch).logits is None  # not asked for: the loss reads the labelled positions only
    assert [tuple(p.shape) for p in out.pred_masks] == [(2, 48, 60), (1, 30, 20), (0, 48, 60)]
    for name in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss", "mask_loss"):
        assert torch.isfinite(getattr(out, name)), name
    expected = model.config.ce_loss_weight * out.ce_loss + 2.0 * out.mask_bce_loss + 0.5 * out.mask_dice_loss
    torch.testing.assert_close(out.loss, expected)


def test_text_loss_reads_only_the_labelled_positions(lisa):
    """The text loss equals next-token cross-entropy over the full-vocabulary logits of the VLM's own forward (label
    t + 1 predicted at position t), while the output head runs on the labelled positions only. Rows of different
    lengths, right-padded, one without any label; a batch without labels has loss 0, still in the graph."""
    model, processor = lisa
    items = [
        processor.process_sample(random_image(0), [[user(), assistant("Sure, it is [SEG] and [SEG].")], [user(), assistant("No.")]], random_masks(0, 2), "a"),
        processor.process_sample(random_image(1, 30, 20), [[user("<image>\nDescribe it."), assistant("A picture of noise.")]], np.zeros((0, 30, 20), bool), "b"),
    ]
    batch = processor.collate(items)
    batch["labels"][1] = -100
    head_rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            loss = model(**batch).ce_loss
    finally:
        hook.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert head_rows == [labelled]

    rows = batch["image_index"]
    with torch.no_grad():
        logits = model.vlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **vlm_image_inputs(model, batch, rows)).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)

    unlabelled = replace(batch, labels=torch.full_like(batch["labels"], -100), masks=None)
    out = model(**unlabelled)
    assert out.ce_loss.item() == 0.0
    out.loss.backward()
    assert model.get_output_embeddings().weight.grad is not None
    model.zero_grad(set_to_none=True)


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
    with torch.no_grad(), recorded_queries(model) as queries:
        pred = model(**batch).pred_masks[0]
        hidden = model.vlm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **vlm_image_inputs(model, batch),
            output_hidden_states=True,
        ).hidden_states[-1][0]
        seg = (batch["input_ids"][0] == processor.seg_token_id).nonzero().item()
        embedding = model.embed_images(batch["sam_pixel_values"])[0]
        size = (batch["resized_sizes"][0].tolist(), batch["original_sizes"][0].tolist())
        before, _ = model.decode_masks(embedding, model.text_hidden_fcs(hidden[seg - 1 : seg]), *size)
        at_seg, _ = model.decode_masks(embedding, model.text_hidden_fcs(hidden[seg : seg + 1]), *size)
    torch.testing.assert_close(pred, before)
    torch.testing.assert_close(queries[0], hidden[seg - 1 : seg])
    # The tiny random SAM's logits are ~1e-4 (Qwen3.5's two masks differ by 9e-5), float noise ~1e-9.
    assert not torch.allclose(pred, at_seg, atol=1e-6)


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
    with recorded_queries(model) as cached_queries, language_model_outputs(model) as steps:
        cached = model.generate(**inputs, max_new_tokens=12, logits_processor=force)[0]
    # The language model's other layers are not kept (LLaVA-7B: 33 layers of the whole prompt, ~166 MB a prompt).
    assert len(steps) == len(cached.token_ids) and all(step.hidden_states is None for step in steps)
    uncached_ids = model.vlm.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **vlm_image_inputs(model, inputs),
        max_new_tokens=12, use_cache=False, do_sample=False, logits_processor=force,
    )[0, prompt_length:].tolist()
    assert cached.token_ids == uncached_ids[: len(cached.token_ids)]
    assert cached.token_ids.count(seg) == 2 and cached.token_ids[-1] == eos

    full = torch.cat([inputs["input_ids"], torch.tensor([cached.token_ids])], dim=1)
    with torch.no_grad(), recorded_queries(model) as recomputed_queries:
        recomputed = model(**replace(inputs, input_ids=full, attention_mask=torch.ones_like(full))).pred_masks[0]
    torch.testing.assert_close(cached_queries[0], recomputed_queries[0], rtol=1e-4, atol=1e-5)
    assert len(cached.masks) == 2
    for mask, logits in zip(cached.masks, recomputed):
        # Equal wherever the logit is not within float noise of the threshold.
        assert torch.equal(mask[logits.abs() > 1e-4], (logits > 0)[logits.abs() > 1e-4])


def test_prompts_beyond_the_context_are_refused_and_answers_capped_visibly(lisa, monkeypatch, caplog):
    model, processor = lisa
    inputs = generate_inputs(processor, [random_image(4)], [QUESTION])
    prompt_length = inputs["input_ids"].shape[1]
    text_config = model.config.vlm_config.text_config
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
        with recorded_queries(model) as queries:
            predictions = model.generate(**inputs, max_new_tokens=8, logits_processor=force)
        return predictions, queries

    batched, batched_queries = run([0, 1])
    for i in range(2):
        (single,), single_queries = run([i])
        torch.testing.assert_close(batched_queries[i], single_queries[0], rtol=1e-4, atol=1e-5)
        assert batched[i].token_ids == single.token_ids
        assert len(batched[i].masks) == len(single.masks) == len(single.scores) == 2
        for a, b in zip(batched[i].masks, single.masks):
            assert (a != b).float().mean() < 1e-3
        assert batched[i].scores == pytest.approx(single.scores, abs=1e-4)  # the mask decoder's predicted IoU


def test_batched_left_padded_generation_equals_recomputation(lisa):
    """Prompts of different lengths, left-padded (with Qwen2.5-VL the two images also take different numbers of image
    tokens), answered together with the KV cache == one teacher-forced forward over the same padded rows without
    cache. The trap is Qwen's multimodal RoPE: each row's 3-D positions start after its padding and text after the
    image continues from the image's largest position, in the first step and in every cached step after it."""
    model, processor = lisa
    images = [random_image(5), random_image(6, 40, 30)]
    prompts = [QUESTION, "<image>\nWhere is the blue square? Please output segmentation mask. Be brief please."]
    seg, eos = processor.seg_token_id, processor.tokenizer.eos_token_id
    inputs = generate_inputs(processor, images, prompts)
    assert inputs["attention_mask"].sum(1).tolist()[0] != inputs["attention_mask"].sum(1).tolist()[1]
    force = LogitsProcessorList([ForceTokens(inputs["input_ids"].shape[1], {1: seg, 4: seg, 7: eos})])
    with recorded_queries(model) as generated_queries:
        generated = model.generate(**inputs, max_new_tokens=8, logits_processor=force)

    new_tokens = torch.tensor([prediction.token_ids for prediction in generated])
    full = replace(
        inputs,
        input_ids=torch.cat([inputs["input_ids"], new_tokens], dim=1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(new_tokens)], dim=1),
    )
    with torch.no_grad(), recorded_queries(model) as recomputed_queries:
        recomputed = model(**full).pred_masks
    # Generation decodes row by row, the forward image by image: the same rows here, one per image.
    torch.testing.assert_close(torch.cat(generated_queries), torch.cat(recomputed_queries), rtol=1e-4, atol=1e-5)
    for prediction, logits in zip(generated, recomputed):
        assert len(prediction.masks) == logits.shape[0] == 2
        for mask, mask_logits in zip(prediction.masks, logits):
            # Equal wherever the logit is not within float noise of the threshold.
            sure = mask_logits.abs() > 1e-4
            assert torch.equal(mask[sure], (mask_logits > 0)[sure])


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
    for key in ("input_ids", "labels", "sam_pixel_values"):
        torch.testing.assert_close(batch[key], again[key])
    torch.testing.assert_close(vars(batch["image_inputs"]), vars(again["image_inputs"]))
    with torch.no_grad():
        a, b = model(**batch, return_logits=True), loaded.eval()(**again, return_logits=True)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pred_masks[0], b.pred_masks[0])
    torch.testing.assert_close(a.loss, b.loss)
    assert loaded.config.seg_token_id == processor.seg_token_id == loaded_processor.seg_token_id


def test_a_folder_saved_in_bf16_loads_in_bf16_throughout(lisa, tmp_path):
    """A folder saved in bf16 (as `merge_lora_weights.py --precision bf16` writes it) and loaded without a dtype comes
    back in bf16 in every part: the parts' sub-configs keep the dtype they were built in, and a float32 language model
    beside a bf16 projector fails at the first forward."""
    model, processor = lisa
    save_lisa(copy.deepcopy(model).to(torch.bfloat16), processor, str(tmp_path / "bf16"))
    loaded, _ = load_lisa(str(tmp_path / "bf16"))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


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


@pytest.mark.parametrize("tiny_base", [("llava", "sam")], indirect=True)
def test_a_folder_of_the_first_format_loads_and_one_without_parts_is_refused(tiny_base, tmp_path):
    """Folders written before other backbone families existed name the LLaVA part `llava_config`; a config naming no
    vision-language model is refused by name — built from defaults it would be a random 7B model."""
    folder = tmp_path / "first_format"
    shutil.copytree(tiny_base.lisa_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["llava_config"] = config.pop("vlm_config")
    (folder / "config.json").write_text(json.dumps(config))
    loaded, _ = load_lisa(str(folder))
    reference, _ = load_lisa(str(tiny_base.lisa_dir))
    assert loaded.config.vlm_config.to_dict() == reference.config.vlm_config.to_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    del config["llava_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{folder}: a LISA config without vlm_config"):
        load_lisa(str(folder))


def test_loss_weights_are_configurable_at_load(tiny_base):
    model, _ = load_lisa(str(tiny_base.lisa_dir), ce_loss_weight=0.25, dice_loss_weight=1.5)
    assert (model.config.ce_loss_weight, model.config.bce_loss_weight, model.config.dice_loss_weight) == (0.25, 2.0, 1.5)


def test_bf16_forward_and_generate(tiny_base):
    model, processor = load_lisa(str(tiny_base.lisa_dir), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    item = processor.process_sample(random_image(10), [[user(), assistant("It is [SEG].")]], random_masks(10, 1), "bf16")
    batch = processor.collate([item])
    batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    (reply,) = answer(model, processor, [random_image(10)], [[user()]], max_new_tokens=3)
    assert len(reply.token_ids) <= 3


@pytest.mark.parametrize(
    "tiny_base, conv_type",
    [(("llava", "sam"), "llava_1_5"), (("llava", "sam"), "llava_v1"), (("llava", "sam"), "llava_llama_2"),
     (("qwen2_5_vl", "sam2"), "qwen2_5_vl"), (("qwen3_vl", "sam2"), "qwen3_vl")],
    indirect=["tiny_base"],
)
def test_labels_cover_exactly_the_answers(lisa, conv_type):
    model, processor = lisa
    default = next(iter(processor.vlm_family.chat_templates))
    processor.set_chat_template(conv_type)
    try:
        messages = [user(), assistant("It is [SEG]."), user("And the square?"), assistant("Sure, [SEG].")]
        (image_tokens,) = processor.preprocess_image(random_image(0)).token_counts
        ids, labels = processor.encode_conversation(messages, image_tokens=image_tokens)
        text = processor.tokenizer.decode([i for i, l in zip(ids, labels) if l != -100])
        eos = processor.tokenizer.eos_token
        assert text.replace(" ", "") == f"It is [SEG].{eos}Sure, [SEG].{eos}".replace(" ", "")
        assert ids.count(processor.image_token_id) == image_tokens
        prompt, _ = processor.encode_conversation(messages[:1], add_generation_prompt=True, image_tokens=image_tokens)
        assert ids[: len(prompt)] == prompt  # training rows start exactly as a generation prompt does
    finally:
        processor.set_chat_template(default)


@pytest.mark.parametrize("tiny_base", [("llava", "sam")], indirect=True)
def test_llava_images_take_a_fixed_number_of_tokens(lisa):
    _, processor = lisa
    messages = [user(), assistant("It is [SEG].")]
    for size in ((48, 60), (90, 20)):
        assert processor.preprocess_image(random_image(0, *size)).token_counts == (processor.image_seq_length,) == (16,)
    ids, _ = processor.encode_conversation(messages)
    assert ids.count(processor.image_token_id) == processor.image_seq_length


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam")], indirect=True)
def test_qwen_images_take_tokens_by_their_size(lisa):
    """Dynamic resolution: an image's token count is its patch grid (t, h, w) over the 2 x 2 merge, and the grid
    follows the image's shape (sides rounded to the 16-px merged patch, at most 64 x 64 pixels in the tiny base)."""
    _, processor = lisa
    grids = {}
    for size in ((48, 64), (32, 32), (96, 24)):
        image = processor.preprocess_image(random_image(0, *size))
        (grid,) = image.image_grid_thw.tolist()
        grids[size] = grid
        assert image.token_counts == (math.prod(grid) // 4,) == (image.pixel_values.shape[0] // 4,)
    assert grids == {(48, 64): [1, 6, 8], (32, 32): [1, 4, 4], (96, 24): [1, 12, 4]}
    with pytest.raises(ValueError, match="depends on their size"):
        processor.image_seq_length
    with pytest.raises(ValueError, match="conv_type 'llava_1_5' is not a format of Qwen2.5-VL models; choose from qwen2_5_vl"):
        processor.set_chat_template("llava_1_5")


def test_training_init_keeps_the_pretrained_weights(tiny_base):
    """The builder must not re-initialise the base and SAM it was given (the original's users got random SAM)."""
    from transformers import AutoModel, AutoModelForImageTextToText

    from model.loading import build_lisa_from_base

    model, processor = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir), out_dim=64)
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_base.vlm_dir))
    sam = AutoModel.from_pretrained(str(tiny_base.sam_dir))
    assert (type(model.vlm), type(model.sam)) == (type(base), type(sam))
    for name, tensor in sam.state_dict().items():
        torch.testing.assert_close(model.sam.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in base.state_dict().items():
        built = model.vlm.state_dict()[name]
        if "embed_tokens" in name or "lm_head" in name:
            # [SEG] took a row of the base's padding (see test_vocab_padding_is_kept_and_seg_rows_are_the_mean).
            others = torch.arange(len(tensor)) != processor.seg_token_id
            built, tensor = built[others], tensor[others]
        torch.testing.assert_close(built, tensor, rtol=0, atol=0, msg=name)


def test_vocab_padding_is_kept_and_seg_rows_are_the_mean(tiny_base):
    """Real bases pad their vocabulary (llava-1.5-7b-hf: 32064 rows for 32002 tokens), as the tiny ones: `[SEG]` takes
    the first padded row — the size stays, a multiple of 64 — and its input and output rows start as the mean of the
    real tokens' rows (not what the checkpoint's unused row held)."""
    from transformers import AutoModelForImageTextToText

    from model.loading import build_lisa_from_base

    base = AutoModelForImageTextToText.from_pretrained(str(tiny_base.vlm_dir))
    model, processor = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir))
    seg = processor.seg_token_id
    assert seg == len(processor.tokenizer) - 1  # every earlier id is a token of the base
    for built, original in ((model.get_input_embeddings(), base.get_input_embeddings()),
                            (model.get_output_embeddings(), base.get_output_embeddings())):
        assert built.weight.shape == original.weight.shape
        assert original.weight.shape[0] % 64 == 0 and original.weight.shape[0] > len(processor.tokenizer)
        torch.testing.assert_close(built.weight[seg], original.weight[:seg].mean(0))
        assert not torch.allclose(original.weight[seg], original.weight[:seg].mean(0))


def test_vocab_without_room_for_seg_grows_to_a_multiple_of_64(tiny_dir, tmp_path):
    """A base whose embedding matrices have exactly one row per token grows them to the next multiple of 64 for
    `[SEG]`: its rows, and the new unused ones, are the mean of the real tokens' rows; the base's rows are kept."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from model.loading import build_lisa_from_base

    base = AutoModelForImageTextToText.from_pretrained(str(tiny_dir / "llava"))
    tokens = len(AutoProcessor.from_pretrained(str(tiny_dir / "llava")).tokenizer)
    base.resize_token_embeddings(tokens)
    base.save_pretrained(str(tmp_path / "unpadded"))
    AutoProcessor.from_pretrained(str(tiny_dir / "llava")).save_pretrained(str(tmp_path / "unpadded"))
    model, processor = build_lisa_from_base(str(tmp_path / "unpadded"), str(tiny_dir / "sam"))
    rows = -(-(tokens + 1) // 64) * 64
    assert processor.seg_token_id == tokens and model.config.vlm_config.text_config.vocab_size == rows
    for built, original in ((model.get_input_embeddings(), base.get_input_embeddings()),
                            (model.get_output_embeddings(), base.get_output_embeddings())):
        assert built.weight.shape[0] == rows
        torch.testing.assert_close(built.weight[:tokens], original.weight, rtol=0, atol=0)
        torch.testing.assert_close(built.weight[tokens:], original.weight.mean(0).expand(rows - tokens, -1))


def test_vocab_padding_rows_are_never_generated(tiny_dir, tmp_path):
    """An output row past the tokenizer (the base's padding) is no token: an answer never holds its id, however high
    its logit. Here it outscores `[SEG]`, which the model otherwise answers first."""
    from tests.lisa_fixtures import write_seg_emitter

    model, processor = load_lisa(write_seg_emitter(str(tiny_dir / "lisa"), str(tmp_path / "emitter")))
    padding_row = len(processor.tokenizer)
    assert model.get_output_embeddings().weight.shape[0] > padding_row
    (before,) = answer(model.eval(), processor, [random_image(0)], [[user()]], max_new_tokens=3)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[padding_row] = 2 * head[processor.seg_token_id]
    (after,) = answer(model, processor, [random_image(0)], [[user()]], max_new_tokens=3)
    assert before.token_ids[0] == processor.seg_token_id
    assert after.token_ids == before.token_ids


def test_training_init_behaves_like_its_saved_folder(tiny_base, tmp_path):
    """Same outputs before and after a save/load: catches e.g. a lost (causal) attention implementation."""
    from model.loading import build_lisa_from_base

    model, processor = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir), out_dim=64)
    save_lisa(model, processor, str(tmp_path / "built"))
    loaded, _ = load_lisa(str(tmp_path / "built"))
    item = processor.process_sample(random_image(11), [[user(), assistant("It is [SEG].")]], random_masks(11, 1), "b")
    batch = processor.collate([item])
    with torch.no_grad():
        a, b = model.eval()(**batch, return_logits=True), loaded.eval()(**batch, return_logits=True)
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


def test_generation_encodes_each_image_once_and_refuses_several_answers_per_prompt(lisa):
    """Three prompts about two images: the vision tower encodes two images, once. Beam search or several answers per
    prompt are refused: the [SEG] states are read along one answer per row."""
    model, processor = lisa
    images = [random_image(13), random_image(14, 40, 30)]
    questions = [[user()], [user("<image>\nWhere is the blue square?")], [user("<image>\nAnd the circle?")]]
    with image_encoder_calls(model) as calls:
        replies = answer(model, processor, images, questions, image_index=[0, 1, 0], max_new_tokens=3)
    assert len(calls) == 1 and len(replies) == 3
    encoded = type(processor.preprocess_image(images[0])).cat([processor.preprocess_image(image) for image in images])
    torch.testing.assert_close(calls[0][0], encoded.pixel_values, rtol=0, atol=0)  # the two images, not three rows
    inputs = generate_inputs(processor, images[:1], [QUESTION])
    for kwargs in ({"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}):
        with pytest.raises(ValueError, match="num_beams and num_return_sequences must be 1"):
            model.generate(**inputs, max_new_tokens=3, **kwargs)


def vision_patch_embeddings(model):
    """The input embeddings of the VLM's vision tower that `enable_input_require_grads` hooks (CLIP's, Qwen2.5-VL's;
    Qwen3-VL's tower names none)."""
    text, found = model.get_input_embeddings(), []
    for module in model.vlm.modules():
        try:
            embedding = module.get_input_embeddings() if isinstance(module, PreTrainedModel) else None
        except NotImplementedError:
            continue
        if embedding is not None and embedding is not text:
            found.append(embedding)
    return found


@pytest.mark.parametrize("train_tower", [False, True], ids=["frozen", "trained"])
def test_the_frozen_vision_tower_runs_without_gradient_in_training(tiny_base, train_tower):
    """Set up as `train_ds.make_trainable` does (gradient checkpointing, `enable_input_require_grads`, LoRA): the frozen
    vision tower gives features that require no grad, and no gradient flows back into it; made trainable, it trains."""
    model, processor = load_lisa(str(tiny_base.lisa_dir))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    peft_model = setup_trainable(model).train()
    vision = [p for name, p in model.vlm.model.named_parameters() if not name.startswith("language_model.")]
    for param in vision:
        param.requires_grad_(train_tower)
    patch_outputs = []
    for embedding in vision_patch_embeddings(model):
        embedding.register_forward_hook(lambda module, args, output: patch_outputs.append(output))
    item = processor.process_sample(random_image(15), [[user(), assistant("It is [SEG].")]], random_masks(15, 1), "t")
    with image_encoder_calls(model) as calls:
        peft_model(**processor.collate([item])).loss.backward()
    assert len(calls) == 1
    assert all(features.requires_grad == train_tower for features in calls[0][1].pooler_output)
    if train_tower:
        patch_weights = [p for name, p in model.vlm.model.named_parameters() if "patch_embed" in name]
        assert patch_weights and all(p.grad is not None for p in patch_weights)
    else:
        assert all(output.grad is None for output in patch_outputs)
        assert all(p.grad is None for p in vision)


def test_decoding_is_the_same_in_validation_and_after_export(tiny_base, tmp_path):
    """A base whose generation config decodes otherwise (Qwen2.5-VL-Instruct's: sampling settings, two end-of-answer
    ids; here with repetition penalty 1.3) answers greedily without penalty — as the VLM's plain greedy `generate` —,
    stops at either end id, and answers alike when built for training (validation) and after save/load."""
    from model.loading import build_lisa_from_base

    base = tmp_path / "base"
    shutil.copytree(tiny_base.vlm_dir, base)
    generation = json.loads((base / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    second_eos = eos - 1
    generation.update(eos_token_id=[eos, second_eos], repetition_penalty=1.3, do_sample=True, temperature=0.1, top_p=0.001, top_k=1)
    del generation["_from_model_config"]
    (base / "generation_config.json").write_text(json.dumps(generation))
    built, processor = build_lisa_from_base(str(base), str(tiny_base.sam_dir))
    save_lisa(built, processor, str(tmp_path / "lisa"))
    loaded, _ = load_lisa(str(tmp_path / "lisa"))

    inputs = generate_inputs(processor, [random_image(16)], [QUESTION])
    prompt_length = inputs["input_ids"].shape[1]

    def vlm_greedy(repetition_penalty):
        with torch.no_grad():
            return built.vlm.generate(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **vlm_image_inputs(built, inputs),
                max_new_tokens=16, do_sample=False, repetition_penalty=repetition_penalty, eos_token_id=[eos, second_eos],
            )[0, prompt_length:].tolist()

    greedy = vlm_greedy(1.0)
    assert vlm_greedy(1.3) != greedy  # the base's penalty would change the answer
    for model in (built.eval(), loaded.eval()):
        assert model.generate(**inputs, max_new_tokens=16)[0].token_ids == greedy
        # The second end id ends the answer, as in the base.
        stop = LogitsProcessorList([ForceTokens(prompt_length, {5: second_eos})])
        assert model.generate(**inputs, max_new_tokens=16, logits_processor=stop)[0].token_ids[5:] == [second_eos]


def test_projection_width_comes_from_sam(tiny_base):
    from model.loading import build_lisa_from_base

    model, _ = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir))
    assert model.config.out_dim == model.config.sam_config.prompt_encoder_config.hidden_size == 64
    assert model.text_hidden_fcs[2].out_features == 64
    with pytest.raises(ValueError, match="out_dim 256 must equal the prompt width 64"):
        build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir), out_dim=256)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 4)])
def test_clip_input_of_an_image_a_few_pixels_high(lisa, size):
    """A one-colour image gives the same vision input at any size: its (H, W, 3) layout is not mistaken for
    (3, H, W). (Qwen2.5-VL's patches of a one-colour image are all alike, whatever their number.)"""
    _, processor = lisa
    colour = np.array([200, 30, 90], np.uint8)
    tiny = processor.preprocess_image(np.broadcast_to(colour, (*size, 3)).copy()).pixel_values
    large = processor.preprocess_image(np.broadcast_to(colour, (64, 64, 3)).copy()).pixel_values
    torch.testing.assert_close(tiny[: len(large)], large[: len(tiny)])


def test_decoded_answer_is_the_answer_text(lisa):
    """With this project's tokenizers ([SEG] keeps the spaces beside it) an answer decodes to its own text."""
    _, processor = lisa
    text = "Sure, it is [SEG]. And [SEG] , [SEG][SEG] too."
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.decode_answer(ids + [processor.tokenizer.eos_token_id]) == text


def attention_census(module):
    """{implementation each attention layer of `module` reads at its forward: its count}."""
    found = {}
    for layer in module.modules():
        if type(layer).__name__.endswith("Attention") and hasattr(layer, "config"):
            found[layer.config._attn_implementation] = found.get(layer.config._attn_implementation, 0) + 1
    return found


def test_eager_attention_reaches_the_vision_language_model_and_answers_as_sdpa(tiny_base, tmp_path):
    """Every attention layer of the vision tower and the language model runs eager, the mask head's SDPA; the answers
    are sdpa's; and the choice is not saved."""
    from model.loading import build_lisa_from_base

    model, processor = build_lisa_from_base(str(tiny_base.vlm_dir), str(tiny_base.sam_dir), attn_implementation="eager")
    language = model.vlm.model.language_model
    vision = getattr(model.vlm.model, "vision_tower", None) or model.vlm.model.visual
    assert set(attention_census(vision)) == set(attention_census(language)) == {"eager"}
    assert set(attention_census(model.sam)) == {"sdpa"}
    save_lisa(model, processor, str(tmp_path / "built"))
    assert "attn_implementation" not in (tmp_path / "built" / "config.json").read_text()
    assert set(attention_census(load_lisa(str(tmp_path / "built"))[0])) == {"sdpa"}

    sdpa, _ = load_lisa(str(tiny_base.lisa_dir))
    eager, _ = load_lisa(str(tiny_base.lisa_dir), attn_implementation="eager")
    layers = attention_census(eager)
    assert layers["eager"] == sum(attention_census(eager.vlm).values()) and set(layers) == {"eager", "sdpa"}
    conversations = [[user(), assistant("It is [SEG].")], [user(), assistant("Sure, [SEG] and [SEG].")]]
    items = [processor.process_sample(random_image(12), conversations, random_masks(12, 3), "a"),
             processor.process_sample(random_image(13, 30, 40), conversations[:1], random_masks(13, 1, 30, 40), "b")]
    batch = processor.collate(items)
    with torch.no_grad():
        expected, actual = sdpa.eval()(**batch), eager.eval()(**batch)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-5)
    for e, a in zip(expected.pred_masks, actual.pred_masks):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
