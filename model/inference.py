"""Answering questions about images: the inference path shared by `chat.py`, `eval_reasonseg.py` and `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor


@dataclass
class Answer:
    """The model's reply: its text (with `[SEG]` kept), the generated ids, one (H, W) bool mask per `[SEG]`."""

    text: str
    token_ids: list[int]
    masks: list[torch.Tensor]


def unused_token_ids(model: LisaForCausalLM, processor: LisaProcessor) -> list[int]:
    """The output rows past the tokenizer: the padding of the base's vocabulary (61 rows in llava-1.5-7b-hf, 270 in
    Qwen2.5-VL-3B once `[SEG]` took one). No text decodes from them, and nothing bounds their logits (padding rows of
    a checkpoint may be untrained; training only pushes them down), so a sampled, or even a greedy, answer could
    hold one."""
    return list(range(len(processor.tokenizer), model.config.vlm_config.get_text_config().vocab_size))


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
        one `Answer` per conversation, in the order given; never an id of `unused_token_ids` (their logits are masked).
    """
    if image_index is None:
        image_index = list(range(len(conversations)))
    # Batch rows come out grouped by image; remember where each conversation went.
    rows = [c for i in range(len(images)) for c, j in enumerate(image_index) if j == i]
    batch = processor(
        images,
        [[conversations[c] for c, j in enumerate(image_index) if j == i] for i in range(len(images))],
        add_generation_prompt=True,
    )
    padding = unused_token_ids(model, processor)
    if padding:
        generate_kwargs.setdefault("suppress_tokens", padding)
    predictions = model.generate(**batch.to(model.device, model.dtype), max_new_tokens=max_new_tokens, **generate_kwargs)
    answers = [None] * len(conversations)
    for row, prediction in zip(rows, predictions):
        answers[row] = Answer(
            text=processor.decode_answer(prediction.token_ids),
            token_ids=prediction.token_ids,
            masks=[m.cpu() for m in prediction.masks],
        )
    return answers
