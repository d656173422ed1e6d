"""Training batches: samples through the model's `LisaProcessor`."""

from __future__ import annotations

from model.processing import LisaBatch, LisaProcessor

from datasets.common import Sample


class LisaCollator:
    """`collate_fn` for `torch.utils.data.DataLoader`: samples -> (`LisaBatch`, files of bad samples skipped
    while drawing them). Picklable, so it runs in DataLoader workers."""

    def __init__(self, processor: LisaProcessor):
        self.processor = processor

    def __call__(self, samples: list[Sample]) -> tuple[LisaBatch, list[str]]:
        batch = self.processor(
            [s.image for s in samples],
            [s.conversations for s in samples],
            [s.masks for s in samples],
            [s.sample_id for s in samples],
        )
        return batch, [path for s in samples for path in s.skipped]
