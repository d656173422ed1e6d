"""Training batches: samples through the model's `LisaProcessor`."""

from __future__ import annotations

from model.processing import LisaBatch, LisaProcessor

from datasets.common import Sample, SampleError


class LisaCollator:
    """`collate_fn` for `torch.utils.data.DataLoader`: samples -> (`LisaBatch`, files of bad samples skipped
    while drawing them). Picklable, so it runs in DataLoader workers.

    `max_text_tokens`: each conversation is cut to this many text tokens, or dropped with its masks where the cut
    would take its image, a `[SEG]` or its whole answer (`LisaProcessor.fit_to_length`); the batch counts both.
    Give `check` to the data set too, so that a sample left without any conversation is drawn again (None: whole
    conversations).
    """

    def __init__(self, processor: LisaProcessor, max_text_tokens: int | None = None):
        self.processor = processor
        self.max_text_tokens = max_text_tokens

    def __call__(self, samples: list[Sample]) -> tuple[LisaBatch, list[str]]:
        batch = self.processor(
            [s.image for s in samples],
            [s.conversations for s in samples],
            [s.masks for s in samples],
            [s.sample_id for s in samples],
            max_text_tokens=self.max_text_tokens,
        )
        return batch, [path for s in samples for path in s.skipped]

    def check(self, sample: Sample) -> None:
        """Refuses a sample none of whose conversations survives `max_text_tokens` (for `HybridDataset`'s `check`).

        Raises:
            SampleError: naming the sample and why each conversation was dropped.
        """
        if self.max_text_tokens is None:
            return
        # The image's token count does not matter: its tokens are not counted.
        encoded = [self.processor.encode_conversation(c, image_tokens=1) for c in sample.conversations]
        _, fitted = self.processor.fit_to_length(encoded, self.max_text_tokens)
        if not fitted.kept:
            raise SampleError(sample.sample_id, "no conversation fits: " + "; ".join(fitted.dropped))
