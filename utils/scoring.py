"""Scoring a data set: validation samples -> predicted masks -> metrics, batched and split across processes.

The loop knows nothing of the model: a *predictor* turns a batch of samples into masks. `model.evaluation`
provides the model's predictors (generated or teacher-forced answers); `PredictionFiles` reads saved masks.

A sample is duck-typed (e.g. `datasets.common.ValSample`): `sample_id` (its name; the last path component is
its stem), `gt` ((n, H, W) uint8 ground truth per query: 1 target, 0 background, 255 ignored) and
`is_sentence` (n bools); predictors may read more (`image`, `conversations`). A data set may list records it
refused while reading its index in `bad_records` ("file:line: reason"); they join the report's `skipped`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.distributed import gather_lists, rank_and_world
from utils.metrics import SegMetrics

logger = logging.getLogger(__name__)

# Per sample of a batch, one (H, W) bool mask per query of the sample.
Predictor = Callable[[list[Any]], list[list[np.ndarray]]]


@dataclass
class EvalReport:
    """summary: `SegMetrics.summary()`; skipped: "name: reason" of every record or sample that could not be used."""

    summary: dict
    skipped: list[str]


def sample_stem(sample_id: str) -> str:
    """`"reason_seg/val/abc"` -> `"abc"`: the name of the sample's prediction file and `per_sample` key."""
    return os.path.basename(sample_id)


def pair_key(sample_id: str, query: int, num_queries: int) -> str:
    """`per_sample` key: the stem for a sample with one query, `"{stem}#{k}"` for query k of several."""
    stem = sample_stem(sample_id)
    return stem if num_queries == 1 else f"{stem}#{query}"


class _Guarded(Dataset):
    """Reads samples, turning a bad one into its error message instead of stopping the run.

    Data sets raise `ValueError` (their `SampleError`, an undecodable image) or `OSError` for bad files.
    """

    def __init__(self, dataset: Sequence, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None]:
        index = self.indices[position]
        try:
            return index, self.dataset[index], None
        except (ValueError, OSError) as error:
            return index, None, str(error)


def run_evaluation(
    dataset: Sequence,
    predict: Predictor,
    batch_size: int = 1,
    workers: int = 0,
    progress: bool = True,
    description: str = "eval",
) -> EvalReport:
    """Scores every sample of `dataset` with the masks `predict` gives.

    Under `torch.distributed`, rank r takes samples r, r + world, ... and every rank returns the same report
    for the whole data set: the figures do not depend on the batch size or the number of processes.

    Args:
        batch_size: samples (images) per call of `predict`.
        workers: `DataLoader` worker processes reading samples (0 reads in this process).
    """
    rank, world = rank_and_world()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(
        _Guarded(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=list, shuffle=False
    )
    metrics = SegMetrics()
    skipped: list[tuple[int, str]] = []
    for batch in tqdm(loader, desc=description, disable=not progress or rank != 0, dynamic_ncols=True):
        good = []
        for index, sample, error in batch:
            if error is None:
                good.append((index, sample))
            else:
                logger.warning("skipped an unreadable sample: %s", error)
                skipped.append((index, error))
        if not good:
            continue
        for (index, sample), masks in zip(good, predict([sample for _, sample in good])):
            count = len(sample.gt)
            if len(masks) != count:
                raise ValueError(f"{sample.sample_id}: {len(masks)} predicted masks for {count} queries")
            for k, (mask, gt, is_sentence) in enumerate(zip(masks, sample.gt, sample.is_sentence)):
                metrics.add(mask, gt, (index, k), pair_key(sample.sample_id, k, count), is_sentence)

    skipped = gather_lists(skipped)
    bad_records = list(getattr(dataset, "bad_records", []))
    return EvalReport(summary=metrics.summary(), skipped=bad_records + [error for _, error in sorted(skipped)])


class PredictionFiles:
    """A predictor reading saved masks: `{pred_dir}/{stem}.png`, foreground = nonzero, one per image (used
    for every query of the image). A missing, unreadable or wrongly sized file is named in a warning and
    scores as an empty mask; `problems` lists them."""

    def __init__(self, pred_dir: str):
        if not os.path.isdir(pred_dir):
            raise FileNotFoundError(f"{pred_dir}: no such prediction folder")
        self.pred_dir = pred_dir
        self.problems: list[str] = []

    def read(self, sample_id: str, size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool mask of one sample; all False when there is no usable file."""
        path = os.path.join(self.pred_dir, sample_stem(sample_id) + ".png")
        problem = None
        if not os.path.isfile(path):
            problem = "missing prediction file"
        else:
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image)
            except OSError as error:
                problem = f"unreadable prediction file ({error})"
            else:
                mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
                if mask.shape == tuple(size):
                    return mask
                problem = f"prediction of size {mask.shape} for an image of size {tuple(size)}"
        logger.warning("%s: %s; scored as an empty mask", path, problem)
        self.problems.append(f"{path}: {problem}")
        return np.zeros(size, dtype=bool)

    def __call__(self, samples: list[Any]) -> list[list[np.ndarray]]:
        masks = []
        for sample in samples:
            mask = self.read(sample.sample_id, sample.gt.shape[1:])
            masks.append([mask] * len(sample.gt))
        return masks
