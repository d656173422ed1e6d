"""A multi-turn conversation about one image, as `chat.py` and the web demo hold it, and the user messages of every
conversation about an image (the server's too)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.inference import Answer, answer
from model.lisa import LisaForCausalLM
from model.processing import IMAGE_PLACEHOLDER, LisaProcessor


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


class ChatSession:
    """Chat messages about the current image: each question sees the earlier turns until `set_image` starts
    a new conversation. Masks are numbered across the conversation, so later answers' files do not
    overwrite earlier ones."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int = 512):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.image: np.ndarray | None = None
        self.messages: list[dict[str, str]] = []
        self.mask_count = 0

    def set_image(self, image: np.ndarray) -> None:
        """Starts a new conversation about `image`, (H, W, 3) uint8 RGB."""
        self.image, self.messages, self.mask_count = image, [], 0

    def ask(self, prompt: str) -> ChatTurn:
        """Answers `prompt` about the current image.

        Raises:
            ValueError: an empty prompt, or no image set yet.
        """
        question = user_message(prompt, with_image=not self.messages)
        if self.image is None:
            raise ValueError("no image yet: give an image first")
        messages = self.messages + [question]
        reply = answer(self.model, self.processor, [self.image], [messages], max_new_tokens=self.max_new_tokens)[0]
        self.messages = messages + [{"role": "assistant", "content": reply.text}]
        turn = ChatTurn(reply, self.mask_count)
        self.mask_count += len(reply.masks)
        return turn
