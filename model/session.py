"""Multi-turn conversations as `chat.py` and the web demo hold them: about one image (`ChatSession`) or one video
(`VideoChatSession`), and the user messages of every conversation about an image (the server's too)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from model.inference import Answer, answer
from model.lisa import LisaForCausalLM
from model.processing import IMAGE_PLACEHOLDER, LisaProcessor
from model.video import (
    ANSWER_FRAMES, PROPAGATIONS, Frames, LazyVideoModel, VideoAnswer, ask_video, default_propagation, segment_video,
)


def user_message(prompt: str, with_image: bool) -> dict[str, str]:
    """A user turn asking `prompt`; `with_image`: the turn that carries the conversation's image.

    The image goes once, at the front of its question (as the original's "<image>\n"); a typed placeholder would add
    a second image slot with no image behind it, so it is dropped.

    Raises:
        ValueError: a prompt that is empty once the placeholder is dropped.
    """
    prompt = prompt.replace(IMAGE_PLACEHOLDER, "").strip()
    if not prompt:
        raise ValueError("empty prompt: please type a question")
    return {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{prompt}" if with_image else prompt}


@dataclass
class ChatTurn:
    """One answer; its masks are numbered from `first_mask_index` on within the conversation."""

    answer: Answer
    first_mask_index: int


class _Conversation:
    """What every conversation keeps: the messages so far and how many masks its answers have had. A subclass sets
    what the conversation is about, then asks through `_question` (the user turn, `<image>` on the first) and
    `_record` (the reply kept, the masks numbered on)."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.messages: list[dict[str, str]] = []
        self.mask_count = 0

    def _restart(self) -> None:
        self.messages, self.mask_count = [], 0

    def _question(self, prompt: str) -> list[dict[str, str]]:
        """The messages to answer: the earlier turns and `prompt`'s.

        Raises:
            ValueError: an empty prompt.
        """
        return self.messages + [user_message(prompt, with_image=not self.messages)]

    def _record(self, messages: list[dict[str, str]], reply: Answer) -> int:
        """Keeps `reply` to the last of `messages`; returns the number of its first mask."""
        self.messages = messages + [{"role": "assistant", "content": reply.text}]
        first = self.mask_count
        self.mask_count += len(reply.masks)
        return first


class ChatSession(_Conversation):
    """Chat messages about the current image: each question sees the earlier turns until `set_image` starts
    a new conversation. Masks are numbered across the conversation, so later answers' files do not
    overwrite earlier ones."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int = 512):
        super().__init__(model, processor, max_new_tokens)
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Starts a new conversation about `image`, (H, W, 3) uint8 RGB."""
        self.image = image
        self._restart()

    def ask(self, prompt: str) -> ChatTurn:
        """Answers `prompt` about the current image.

        Raises:
            ValueError: an empty prompt, or no image set yet.
        """
        messages = self._question(prompt)
        if self.image is None:
            raise ValueError("no image yet: give an image first")
        reply = answer(self.model, self.processor, [self.image], [messages], max_new_tokens=self.max_new_tokens)[0]
        return ChatTurn(reply, self._record(messages, reply))


@dataclass
class VideoTurn:
    """One answer about a video: its masks ((T, H, W) on the key frames, one per `[SEG]`) are numbered from
    `first_mask_index` on within the conversation; `frames` is the video it is about."""

    answer: VideoAnswer
    first_mask_index: int
    frames: Frames = field(repr=False)


class VideoChatSession(_Conversation):
    """Chat messages about the current video, as `ChatSession`'s about an image. The key frames chosen for the first
    question are kept for the follow-ups, so the whole conversation is about the same frames; `set_video` starts a
    new conversation.

    Args:
        num_frames: key frames the model sees (`model.video.key_frames`).
        propagate: how `masks` carries an answer's masks to every frame, one of `PROPAGATIONS` (default:
            `default_propagation`).
        video_model: the mask head's video model for `memory`, loaded when first needed; None: the one of the
            checkpoint the model folder records (`LazyVideoModel(model)`).
    """

    def __init__(
        self,
        model: LisaForCausalLM,
        processor: LisaProcessor,
        max_new_tokens: int = 512,
        num_frames: int = ANSWER_FRAMES,
        propagate: str | None = None,
        video_model: LazyVideoModel | None = None,
    ):
        super().__init__(model, processor, max_new_tokens)
        propagate = propagate or default_propagation(model)
        if propagate not in PROPAGATIONS:
            raise ValueError(f"propagate {propagate!r}: choose from {', '.join(PROPAGATIONS)}")
        self.num_frames, self.propagate = num_frames, propagate
        self.video_model = video_model or LazyVideoModel(model)
        self.frames: Frames | None = None
        self.key_frames: list[int] | None = None

    def set_video(self, frames: Frames) -> None:
        """Starts a new conversation about the video `frames`."""
        self.frames, self.key_frames = frames, None
        self._restart()

    def ask(self, prompt: str) -> VideoTurn:
        """Answers `prompt` about the current video.

        Raises:
            ValueError: an empty prompt, no video set yet, an empty video (`utils.video.VideoError`: a frame that
                cannot be decoded).
        """
        messages = self._question(prompt)
        if self.frames is None:
            raise ValueError("no video yet: give a video first")
        reply, = ask_video(self.model, self.processor, self.frames, [messages], num_frames=self.num_frames,
                           max_new_tokens=self.max_new_tokens, key=self.key_frames)
        self.key_frames = reply.key_frames
        return VideoTurn(reply, self._record(messages, reply.answer), self.frames)

    def masks(self, turn: VideoTurn) -> Iterator[tuple[int, np.ndarray]]:
        """The masks of `turn`'s `[SEG]`s on every frame of its video: (frame index, (n, H, W) bool), as
        `model.video.segment_video` yields them.

        Raises:
            ValueError: the video model cannot be loaded (`LazyVideoModel.get`).
        """
        memory = self.video_model.get() if self.propagate == "memory" and turn.answer.answer.masks else None
        return ((index, masks) for index, (masks,) in segment_video(
            self.model, turn.frames, [turn.answer], self.propagate, video_model=memory))
