"""Answering questions about images: the inference path shared by `chat.py`, `eval_reasonseg.py`, `app.py` and
`serve.py`."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from model.lisa import LisaForCausalLM
from model.processing import LisaBatch, LisaProcessor


@dataclass
class Answer:
    """The model's reply: its text (with `[SEG]` kept), the generated ids, one bool mask per `[SEG]` ((H, W) on a
    picture, (T, H, W) on a video's T frames), the mask decoder's predicted IoU of each mask and the (n, C) mask
    queries (to decode on other frames of a video)."""

    text: str
    token_ids: list[int]
    masks: list[torch.Tensor]
    scores: list[float]
    queries: torch.Tensor


def image_key(image: np.ndarray) -> bytes:
    """A digest of an image's pixels: images of equal pixels, however they were encoded, have the same key."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    return digest.digest()


class ImageEmbeddingCache:
    """The mask head's image features (`LisaForCausalLM.embed_images`) of the last `capacity` images answered, by
    `image_key`: an image asked about again skips the mask head's image encoder, the largest part of an answer's
    image work (SAM ViT-H at 1024 px). Each entry stays on the model's device: 2 MiB for SAM in bf16, 42 MiB for
    SAM 2 (whose decoder also reads two higher-resolution maps)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[bytes, tuple[torch.Tensor, ...]] = OrderedDict()

    def embeddings(self, model: LisaForCausalLM, keys: list[bytes], sam_pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """`model.embed_images(sam_pixel_values)`, the mask head encoding (in one batch) only the images it does not
        hold, each once; the images answered become the most recent entries, the least recently used ones go.

        Args:
            keys: the `image_key` of each of the N images whose mask-head pixel values are `sam_pixel_values`
                (N, 3, S, S); an image may come more than once.
        """
        missing: dict[bytes, int] = {}  # the first index of each image not held
        for i, key in enumerate(keys):
            if key not in self.entries:
                missing.setdefault(key, i)
        if missing:
            fresh = model.embed_images(sam_pixel_values[list(missing.values())])
            self.entries.update(zip(missing, fresh))
        embeddings = [self.entries[key] for key in keys]
        for key in keys:
            self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return embeddings


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
    image_cache: ImageEmbeddingCache | None = None,
    **generate_kwargs,
) -> list[Answer]:
    """Generates the next assistant turn of each conversation, batched with left padding.

    Args:
        images: (H, W, 3) uint8 RGB.
        conversations: chat messages ending with a user turn; the first user turn holds `<image>`.
        image_index: the image of each conversation; None means one image per conversation, in order. Several
            conversations about one image share its image preprocessing and SAM embedding.
        image_cache: where the mask head's image features of images answered before are kept; None: every image is
            encoded.

    Returns:
        one `Answer` per conversation, in the order given.
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
    keys = None if image_cache is None else [image_key(image) for image in images]
    answers = [None] * len(conversations)
    for row, reply in zip(rows, answer_batch(model, processor, batch, max_new_tokens, image_cache, keys, **generate_kwargs)):
        answers[row] = reply
    return answers


@torch.no_grad()
def answer_batch(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    batch: LisaBatch,
    max_new_tokens: int = 512,
    image_cache: ImageEmbeddingCache | None = None,
    image_keys: list[bytes] | None = None,
    **generate_kwargs,
) -> list[Answer]:
    """The answers of a batch of generation prompts (made with `add_generation_prompt`, left-padded), in row order;
    never an id of `unused_token_ids` (their logits are masked).

    Args:
        image_cache, image_keys: where the mask head's features of images answered before are kept, and the
            `image_key` of each image of the batch; None: every image is encoded.
    """
    batch = batch.to(model.device, model.dtype)
    padding = unused_token_ids(model, processor)
    if padding:
        generate_kwargs.setdefault("suppress_tokens", padding)
    if image_cache is not None:
        generate_kwargs["image_embeddings"] = image_cache.embeddings(model, image_keys, batch.sam_pixel_values)
    predictions = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    return [
        Answer(
            text=processor.decode_answer(prediction.token_ids),
            token_ids=prediction.token_ids,
            masks=[m.cpu() for m in prediction.masks],
            scores=prediction.scores,
            queries=prediction.queries,
        )
        for prediction in predictions
    ]
