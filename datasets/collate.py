"""Batches of samples as model inputs, through the model's `LisaProcessor` (reference/lisa.md §3.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model.processing import LisaProcessor

from datasets.common import Sample


class LisaCollator:
    """`collate_fn` for `torch.utils.data.DataLoader`: `processor.process_sample` on every sample, then
    `processor.collate`. Picklable, so it runs in DataLoader workers and beside a `DistributedSampler`.

    The batch's keys are `LisaForCausalLM.forward`'s arguments. `keep` names further `Sample` attributes
    to pass through as per-image lists (e.g. `("skipped",)` in training, `("gt", "is_sentence", "queries")`
    in evaluation); the caller pops them before calling the model.
    """

    def __init__(
        self,
        processor: LisaProcessor,
        padding_side: str = "right",
        add_generation_prompt: bool = False,
        keep: Sequence[str] = (),
    ):
        self.processor = processor
        self.padding_side = padding_side
        self.add_generation_prompt = add_generation_prompt
        self.keep = tuple(keep)

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        items = [
            self.processor.process_sample(s.image, s.conversations, s.masks, s.sample_id, self.add_generation_prompt)
            for s in samples
        ]
        batch = self.processor.collate(items, padding_side=self.padding_side)
        for name in self.keep:
            batch[name] = [getattr(s, name) for s in samples]
        return batch
