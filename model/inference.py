"""Answering questions about images: the inference path shared by `chat.py`, `eval_reasonseg.py` and `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor

GENERATE_INPUTS = ("input_ids", "attention_mask", "pixel_values", "sam_pixel_values", "resized_sizes", "original_sizes")


@dataclass
class Answer:
    """The model's reply: its text (with `[SEG]` kept), the generated ids, one (H, W) bool mask per `[SEG]`."""

    text: str
    token_ids: list[int]
    masks: list[torch.Tensor]


def move_batch(batch: dict, device: torch.device | str, dtype: torch.dtype) -> dict:
    """Tensors to `device`; floating-point image tensors also to `dtype`."""
    moved = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None)
        moved[key] = value
    return moved


@torch.no_grad()
def answer(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    images: list[np.ndarray],
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 512,
    **generate_kwargs,
) -> list[Answer]:
    """Generates the next assistant turn of each conversation, batched with left padding.

    Args:
        images: (H, W, 3) uint8 RGB, one per conversation.
        conversations: chat messages ending with a user turn; the first user turn holds `<image>`.
    """
    items = [
        processor.process_sample(image, [conversation], add_generation_prompt=True)
        for image, conversation in zip(images, conversations)
    ]
    batch = processor.collate(items, padding_side="left")
    batch = move_batch({k: batch[k] for k in GENERATE_INPUTS}, model.device, model.dtype)
    predictions = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    return [
        Answer(text=processor.decode_answer(p.token_ids), token_ids=p.token_ids, masks=[m.cpu() for m in p.masks])
        for p in predictions
    ]
