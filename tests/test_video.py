"""Videos in the model: a row shows every sampled frame, `[SEG]` is decoded on each, and the masks reach every frame of
the video by per-frame decoding or by the mask head's memory (`model.video`)."""

import numpy as np
import pytest
import torch

from model.loading import load_lisa
from model.tiny import write_tiny
from model.video import (
    LazyVideoModel, ask_video, decode_every_frame, frames_that_fit, key_frames, load_video_model, segment_video,
)
from tests.lisa_fixtures import write_seg_emitter

QUESTION = "<image>\nWhich shape moves to the left? Please output segmentation mask."


class ListFrames:
    """A video held as a list of frames; counts its reads."""

    def __init__(self, frames):
        self.frames, self.reads = frames, 0

    def __len__(self):
        return len(self.frames)

    def read(self, index):
        self.reads += 1
        return self.frames[index]


def moving_square(length, height=40, width=56, seed=0):
    """A white square moving right over noise; its true masks."""
    rng = np.random.default_rng(seed)
    frames, masks = [], []
    for t in range(length):
        frame = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), bool)
        mask[12:28, 4 + 2 * t: 20 + 2 * t] = True
        frame[mask] = 255
        frames.append(frame)
        masks.append(mask)
    return frames, np.stack(masks)


@pytest.fixture(scope="module", params=[("llava", "sam"), ("qwen2_5_vl", "sam2"), ("qwen2_5_vl", "sam3_tracker")], ids="+".join)
def emitter(request, tmp_path_factory):
    """A tiny LISA of the pair that always answers "[SEG] . [SEG] ...", its base folder and mask-head family name."""
    vlm, sam = request.param
    root = tmp_path_factory.mktemp(f"video_{vlm}_{sam}")
    write_tiny(str(root), vlm=vlm, sam=sam)
    model, processor = load_lisa(write_seg_emitter(str(root / "lisa"), str(root / "emitter")))
    return model.eval(), processor, root, sam


def test_a_video_row_shows_every_frame_in_order(emitter):
    """The processor writes each frame's image tokens, and the model's hidden states equal those of the vision-language
    model's own forward over the same frames."""
    model, processor, _, _ = emitter
    frames, _ = moving_square(3)
    clip = np.stack(frames)
    batch = processor([clip], [[[{"role": "user", "content": QUESTION}]]], add_generation_prompt=True)
    counts = [processor.preprocess_image(f).token_counts[0] for f in frames]
    assert (batch.input_ids[0] == processor.image_token_id).sum() == sum(counts)
    assert batch.frame_image.tolist() == [0, 0, 0] and batch.sam_pixel_values.shape[0] == 3

    images = batch.image_inputs
    own = {"pixel_values": images.pixel_values}
    if hasattr(images, "image_grid_thw"):
        own["image_grid_thw"] = images.image_grid_thw
        own["mm_token_type_ids"] = (batch.input_ids == model.vlm.config.image_token_id).int()
    with torch.no_grad():
        expected = model.vlm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **own).last_hidden_state
        ours = model._language_forward(batch.input_ids, batch.attention_mask, images,
                                       model.row_frames(batch.image_index, batch.frame_image))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_training_forward_decodes_every_seg_on_every_frame(emitter):
    """A video sample of T frames trains the decoder on each frame: one predicted mask per [SEG] and frame, the loss
    the mean over those (mask, frame) pairs, gradients reaching the mask decoder."""
    model, processor, _, _ = emitter
    frames, truth = moving_square(3)
    conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "It is [SEG]."}]
    batch = processor([np.stack(frames)], [[conversation]], masks=[truth[None]])
    model.train()
    try:
        output = model(**batch)
    finally:
        model.eval()
    assert [tuple(p.shape) for p in output.pred_masks] == [(1, 40, 56)] * 3
    output.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sam.mask_decoder.parameters())
    model.zero_grad()


def test_answer_masks_on_key_frames_equal_per_frame_decoding(emitter):
    """The masks generate gives on the key frames are the answer's queries decoded on those frames alone."""
    model, processor, _, _ = emitter
    frames, _ = moving_square(9)
    video = ListFrames(frames)
    reply, = ask_video(model, processor, video, [[{"role": "user", "content": QUESTION}]], num_frames=3, max_new_tokens=3)
    assert reply.key_frames == [1, 4, 7]
    assert reply.answer.queries.shape[0] == len(reply.answer.masks) >= 1
    per_frame = dict(decode_every_frame(model, video, reply.answer.queries, batch_size=1))
    for t, k in enumerate(reply.key_frames):
        for n, mask in enumerate(reply.answer.masks):
            np.testing.assert_array_equal(mask[t].numpy(), per_frame[k][n])


def test_per_frame_propagation_yields_every_frame_in_order_whatever_the_batch(emitter):
    model, processor, _, _ = emitter
    frames, _ = moving_square(7)
    reply, = ask_video(model, processor, ListFrames(frames), [[{"role": "user", "content": QUESTION}]], num_frames=2,
                       max_new_tokens=3)
    one = list(segment_video(model, ListFrames(frames), [reply], "per_frame", batch_size=1))
    three = list(segment_video(model, ListFrames(frames), [reply], "per_frame", batch_size=3))
    assert [i for i, _ in one] == list(range(7)) == [i for i, _ in three]
    for (_, (a,)), (_, (b,)) in zip(one, three):
        assert a.shape == (len(reply.answer.masks), 40, 56)
        np.testing.assert_array_equal(a, b)


def test_memory_propagation_keeps_the_prompt_on_key_frames_and_runs_both_ways(emitter):
    """Each key frame's mask is its conditioning memory: the propagated mask there is the prompt (up to the video
    model's resizing); every frame comes once, forward from the first key frame, then backward."""
    model, processor, root, sam = emitter
    if model.sam_family.video_model_class is None:
        with pytest.raises(ValueError, match="no video model"):
            load_video_model(model, str(root / sam))
        return
    video_model = load_video_model(model, str(root / f"{sam}_video"))
    frames, truth = moving_square(12)
    reply, = ask_video(model, processor, ListFrames(frames), [[{"role": "user", "content": QUESTION}]], num_frames=3,
                       max_new_tokens=3)
    prompts = torch.from_numpy(truth[reply.key_frames])
    reply.answer.masks = [prompts.clone() for _ in reply.answer.masks]
    out = [(i, m) for i, (m,) in segment_video(model, ListFrames(frames), [reply], "memory", video_model=video_model)]
    first = reply.key_frames[0]
    assert [i for i, _ in out] == list(range(first, 12)) + list(range(first - 1, -1, -1))
    masks = dict(out)
    for t, k in enumerate(reply.key_frames):
        for n in range(len(reply.answer.masks)):
            inter = (masks[k][n] & truth[k]).sum()
            union = (masks[k][n] | truth[k]).sum()
            assert inter / union > 0.9


def test_replies_segmented_together_equal_each_alone(emitter):
    """Several answers about one video (ask_video's batch) share the frames' work; each gets the masks it would get
    alone, and an answer without [SEG] gets none."""
    model, processor, root, sam = emitter
    frames, truth = moving_square(8)
    video = ListFrames(frames)
    questions = [[{"role": "user", "content": QUESTION}], [{"role": "user", "content": QUESTION.replace("left", "right")}]]
    first, second = ask_video(model, processor, video, questions, num_frames=2, max_new_tokens=3)
    alone, = ask_video(model, processor, video, questions[1:], num_frames=2, max_new_tokens=3)
    assert second.text == alone.text and second.key_frames == alone.key_frames
    for a, b in zip(second.answer.masks, alone.answer.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Different masks per reply, so that a mix-up between replies would show.
    first.answer.masks = [torch.from_numpy(truth[first.key_frames]) for _ in first.answer.masks]
    second.answer.masks = [torch.from_numpy(np.roll(truth[second.key_frames], 20, axis=-1)) for _ in second.answer.masks]
    silent, = ask_video(model, processor, video, questions[:1], num_frames=2, max_new_tokens=3)
    silent.answer.masks, silent.answer.queries = [], silent.answer.queries[:0]
    ways = {"per_frame": None}
    if model.sam_family.video_model_class is not None:
        ways["memory"] = load_video_model(model, str(root / f"{sam}_video"))
    for propagate, video_model in ways.items():
        together = dict(segment_video(model, video, [first, silent, second], propagate, video_model=video_model))
        assert sorted(together) == list(range(8))
        for k, reply in ((0, first), (2, second)):
            each = dict(segment_video(model, video, [reply], propagate, video_model=video_model))
            for index, (masks,) in each.items():
                np.testing.assert_array_equal(together[index][k], masks)
        assert all(masks[1].shape == (0, 40, 56) for masks in together.values())
        assert not list(segment_video(model, video, [silent], propagate, video_model=video_model))
    with pytest.raises(ValueError, match="different key frames"):
        list(segment_video(model, video, [first, ask_video(model, processor, video, questions[:1], num_frames=3)[0]]))


def test_the_lazy_video_model_loads_once_and_names_its_source(emitter):
    model, _, root, sam = emitter
    lazy = LazyVideoModel(model, str(root / "nowhere"))
    with pytest.raises(ValueError, match=f"from {root / 'nowhere'}"):
        lazy.get()
    if model.sam_family.video_model_class is None:
        return
    lazy = LazyVideoModel(model, str(root / f"{sam}_video"))
    assert lazy.get() is lazy.get()


def test_the_video_model_must_fit_the_mask_head(emitter, tmp_path):
    model, _, root, sam = emitter
    if model.sam_family.video_model_class is None:
        return
    with pytest.raises(ValueError, match="lacks"):
        load_video_model(model, str(root / sam))  # an image-only checkpoint: no memory modules


def test_frames_are_capped_to_the_context(emitter, caplog):
    model, processor, _, _ = emitter
    assert frames_that_fit([576] * 16, 4096) == 6  # LLaVA-1.5: 6 frames of 576 tokens leave 512 positions
    assert frames_that_fit([100] * 4, 300, reserve=512) == 1  # never none
    tokens = processor.preprocess_image(moving_square(1)[0][0]).token_counts[0]
    frames, _ = moving_square(20)
    context = model.context_length
    fit = (context - 512) // tokens
    if fit < 20:
        chosen = key_frames(model, processor, ListFrames(frames), 20)
        assert len(chosen) == max(fit, 1) and "do not fit" in caplog.text
