"""`VideoChatSession`: a conversation about a video, its follow-ups on the same key frames, masks numbered across it."""

import pytest

import model.session as session_module
from model.loading import load_lisa
from model.session import VideoChatSession
from model.tiny import write_tiny
from model.video import LazyVideoModel
from tests.lisa_fixtures import write_seg_emitter
from tests.test_video import ListFrames, moving_square

MAX_NEW_TOKENS = 3  # the emitter answers "[SEG] . [SEG]": two masks a turn


@pytest.fixture(scope="module")
def emitter(tmp_path_factory):
    """A tiny Qwen2.5-VL + SAM 2 LISA that always answers with [SEG], and its base folder."""
    root = tmp_path_factory.mktemp("video_session")
    write_tiny(str(root), vlm="qwen2_5_vl", sam="sam2")
    model, processor = load_lisa(write_seg_emitter(str(root / "lisa"), str(root / "emitter")))
    return model.eval(), processor, root


@pytest.fixture
def calls(monkeypatch):
    """The arguments of every `ask_video` the session makes (the real one answers)."""
    seen = []
    real = session_module.ask_video

    def spy(model, processor, frames, conversations, **kwargs):
        assert len(conversations) == 1
        seen.append({"messages": [dict(m) for m in conversations[0]], **kwargs})
        return real(model, processor, frames, conversations, **kwargs)

    monkeypatch.setattr(session_module, "ask_video", spy)
    return seen


def test_follow_up_sees_the_first_turn_on_the_same_key_frames(emitter, calls):
    model, processor, _ = emitter
    chat = VideoChatSession(model, processor, MAX_NEW_TOKENS, num_frames=3, propagate="per_frame")
    chat.set_video(ListFrames(moving_square(9)[0]))
    first = chat.ask("Which shape moves? Please output segmentation mask.")
    second = chat.ask("<image> And where does it go?")

    assert first.answer.key_frames == [1, 4, 7] == second.answer.key_frames
    assert calls[0]["key"] is None and calls[1]["key"] == [1, 4, 7]
    assert calls[0]["num_frames"] == 3 and calls[0]["max_new_tokens"] == MAX_NEW_TOKENS
    assert calls[1]["messages"] == [
        {"role": "user", "content": "<image>\nWhich shape moves? Please output segmentation mask."},
        {"role": "assistant", "content": first.answer.text},
        {"role": "user", "content": "And where does it go?"},  # the image goes once, with the first question
    ]
    assert len(chat.messages) == 4 and chat.messages[-1]["content"] == second.answer.text
    n = len(first.answer.answer.masks)
    assert n == 2 and first.first_mask_index == 0 and second.first_mask_index == n
    assert chat.mask_count == n + len(second.answer.answer.masks)
    assert all(m.shape == (3, 40, 56) for m in second.answer.answer.masks)


def test_masks_reach_every_frame_and_a_new_video_starts_over(emitter, calls):
    model, processor, root = emitter
    video_model = LazyVideoModel(model, str(root / "sam2_video"))
    chat = VideoChatSession(model, processor, MAX_NEW_TOKENS, num_frames=2, propagate="memory", video_model=video_model)
    assert VideoChatSession(model, processor).propagate == "memory"  # SAM 2 has a video model: the default
    with pytest.raises(ValueError, match="no video"):
        chat.ask("Which shape moves?")
    chat.set_video(ListFrames(moving_square(6)[0]))
    with pytest.raises(ValueError, match="empty prompt"):
        chat.ask("<image>  ")
    assert chat.messages == [] and not calls
    turn = chat.ask("Which shape moves? Please output segmentation mask.")
    out = list(chat.masks(turn))
    assert sorted(i for i, _ in out) == list(range(6))
    assert all(m.shape == (2, 40, 56) and m.dtype == bool for _, m in out)

    chat.set_video(ListFrames(moving_square(5, height=32, width=48)[0]))
    assert chat.messages == [] and chat.mask_count == 0
    turn = chat.ask("Which shape moves? Please output segmentation mask.")
    assert turn.first_mask_index == 0 and calls[-1]["key"] is None
    assert calls[-1]["messages"][0]["content"].startswith("<image>\n")
    # A video model that cannot be loaded is named when the masks are asked for; the answer stands.
    nowhere = VideoChatSession(model, processor, MAX_NEW_TOKENS, num_frames=2,
                               video_model=LazyVideoModel(model, str(root / "nowhere")))
    nowhere.set_video(turn.frames)
    with pytest.raises(ValueError, match="cannot load the video model for memory propagation from .*nowhere"):
        list(nowhere.masks(nowhere.ask("Which shape moves? Please output segmentation mask.")))
    assert len(nowhere.messages) == 2
    per_frame = VideoChatSession(model, processor, MAX_NEW_TOKENS, num_frames=2, propagate="per_frame")
    per_frame.set_video(turn.frames)
    assert [i for i, _ in per_frame.masks(turn)] == list(range(5))
