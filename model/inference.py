"""Answering questions about images: the inference path shared by `chat.py`, `eval_reasonseg.py` and `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor

GENERATE_INPUTS = (
    "input_ids", "attention_mask", "pixel_values", "sam_pixel_values", "resized_sizes", "original_sizes", "image_index",
)


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
    image_index: list[int] | None = None,
    max_new_tokens: int = 512,
    **generate_kwargs,
) -> list[Answer]:
    """Generates the next assistant turn of each conversation, batched with left padding.

    Args:
        images: (H, W, 3) uint8 RGB.
        conversations: chat messages ending with a user turn; the first user turn holds `<image>`.
        image_index: the image of each conversation; None means one image per conversation, in order. Several
            conversations about one image share its image preprocessing and SAM embedding.

    Returns:
        one `Answer` per conversation, in the order given.
    """
    if image_index is None:
        image_index = list(range(len(conversations)))
    # Batch rows come out grouped by image; remember where each conversation went.
    rows = [c for i in range(len(images)) for c, j in enumerate(image_index) if j == i]
    items = [
        processor.process_sample(image, [conversations[c] for c, j in enumerate(image_index) if j == i], add_generation_prompt=True)
        for i, image in enumerate(images)
    ]
    batch = processor.collate(items, padding_side="left")
    batch = move_batch({k: batch[k] for k in GENERATE_INPUTS}, model.device, model.dtype)
    predictions = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    answers = [None] * len(conversations)
    for row, prediction in zip(rows, predictions):
        answers[row] = Answer(
            text=processor.decode_answer(prediction.token_ids),
            token_ids=prediction.token_ids,
            masks=[m.cpu() for m in prediction.masks],
        )
    return answers
