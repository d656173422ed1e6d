"""The training mixture of LISA's four data families (and custom data), and the validation data sets by name
(the original's `HybridDataset` and `ValDataset`, `utils/dataset.py`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from datasets.common import SampleError, Sample, sample_rng, split_names
from datasets.custom import CustomDataset, CustomValDataset
from datasets.reason_seg import REASON_SEG_DATA, ReasonSegDataset, ReasonSegValDataset
from datasets.refer_seg import REFER_SEG_DATA, REFER_SEG_SETS, ReferSegDataset, ReferSegValDataset
from datasets.sem_seg import SEM_SEG_DATA, SemSegDataset
from datasets.vos import VOS_DATA, VideoSegDataset
from datasets.vqa import VQA_DATA, VQADataset

logger = logging.getLogger(__name__)

# Default relative rate of each family: LISA's 9,3,3,1 for its four; custom data weighs as ReasonSeg, the other
# small set one fine-tunes on (give --sample_rates when mixing it in); videos ("vos": Ref-YouTube-VOS, MeViS, ReVOS)
# too, when asked for.
DEFAULT_RATES = {"sem_seg": 9, "refer_seg": 3, "vqa": 3, "reason_seg": 1, "custom": 1, "vos": 1}
FAMILIES = tuple(DEFAULT_RATES)
DATASET = "sem_seg||refer_seg||vqa||reason_seg"  # LISA's four; custom data only when asked for


def parse_rates(sample_rates: str | Sequence[float], count: int) -> np.ndarray:
    """"9,3,3,1" or [9, 3, 3, 1] -> probabilities summing to 1 (one per family)."""
    rates = [float(r) for r in sample_rates.split(",")] if isinstance(sample_rates, str) else [float(r) for r in sample_rates]
    if len(rates) != count or min(rates) < 0 or sum(rates) <= 0:
        raise ValueError(f"sample_rates {sample_rates!r}: need {count} non-negative rates, not all zero")
    rates = np.asarray(rates)
    return rates / rates.sum()


class HybridDataset(torch.utils.data.Dataset):
    """LISA's training data: each item draws a family by `sample_rates` (default: `DEFAULT_RATES` of the families in
    `dataset`), then a sample of that family. The family "custom" reads the folders of `custom_data`; the family "vos"
    the video sets of `vos_data` (its samples hold `num_frames` frames: see `VideoSegDataset`).

    `__len__` is `samples_per_epoch`. Item `index` is a pure function of (seed, epoch, index): the random
    generator is derived from them, not from global state, so workers, ranks and resumed runs see the same
    data at the same position. Call `set_epoch` (as with `DistributedSampler`) to draw new data each epoch.

    A sample whose files are bad is skipped with a warning naming the file and replaced by a fresh draw
    (the next attempt's generator); `num_skipped` counts skips in this process and each returned `Sample`
    lists the files skipped before it, so a training loop can total them across workers. `check`, if given, sees
    every drawn sample and skips it the same way by raising `SampleError` (e.g. `LisaCollator.check`: a sample
    with no conversation that fits the length limit).
    """

    max_attempts = 100

    def __init__(
        self,
        dataset_dir: str,
        samples_per_epoch: int = 500 * 8 * 2 * 10,
        num_classes_per_sample: int = 3,
        dataset: str = DATASET,
        sample_rates: str | Sequence[float] | None = None,
        sem_seg_data: str = SEM_SEG_DATA,
        refer_seg_data: str = REFER_SEG_DATA,
        vqa_data: str = VQA_DATA,
        reason_seg_data: str = REASON_SEG_DATA,
        explanatory: float = 0.1,
        custom_data: str = "",
        vos_data: str = VOS_DATA,
        num_frames: int = 8,
        seed: int = 0,
        check: Callable[[Sample], None] | None = None,
    ):
        builders = {
            "sem_seg": lambda: SemSegDataset(dataset_dir, sem_seg_data, num_classes_per_sample),
            "refer_seg": lambda: ReferSegDataset(dataset_dir, refer_seg_data, num_classes_per_sample),
            "vqa": lambda: VQADataset(dataset_dir, vqa_data),
            "reason_seg": lambda: ReasonSegDataset(dataset_dir, reason_seg_data, num_classes_per_sample, explanatory),
            "custom": lambda: CustomDataset(custom_data, num_classes_per_sample),
            "vos": lambda: VideoSegDataset(dataset_dir, vos_data, num_frames, num_classes_per_sample),
        }
        self.family_names = split_names(dataset)
        unknown = [n for n in self.family_names if n not in builders]
        if unknown:
            raise ValueError(f"unknown data families {unknown}; choose from {', '.join(FAMILIES)}")
        self.families = [builders[name]() for name in self.family_names]
        if sample_rates is None:
            sample_rates = [DEFAULT_RATES[name] for name in self.family_names]
        self.rates = parse_rates(sample_rates, len(self.families))
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.check = check
        self.epoch = 0
        self.num_skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def draw_family(self, index: int, attempt: int = 0) -> tuple[int, np.random.Generator]:
        """The family item `index` draws on a given attempt, and the generator that then draws its sample."""
        rng = sample_rng(self.seed, self.epoch, index, attempt)
        return int(rng.choice(len(self.families), p=self.rates)), rng

    def __getitem__(self, index: int) -> Sample:
        skipped = []
        for attempt in range(self.max_attempts):
            family, rng = self.draw_family(index, attempt)
            try:
                sample = self.families[family].sample(rng)
                if self.check is not None:
                    self.check(sample)
            except SampleError as error:
                self.num_skipped += 1
                skipped.append(error.path)
                logger.warning("skipping a bad sample (%d skipped so far in this process): %s", self.num_skipped, error)
                continue
            sample.skipped = skipped
            return sample
        raise RuntimeError(f"{self.max_attempts} bad samples in a row at index {index}; last: {skipped[-1]}")


def build_val_dataset(
    dataset_dir: str, name: str, all_texts: bool = False
) -> ReasonSegValDataset | ReferSegValDataset | CustomValDataset:
    """A validation data set by the original's names: "ReasonSeg|val", "ReasonSeg|test" (2 parts) or a
    referring split "refcoco|unc|val", "refcocog|umd|test", "grefcoco|unc|val" (3 parts); or a custom folder's
    split "custom|DIR|val" (DIR is not under `dataset_dir`).

    `__getitem__` returns a `ValSample` or raises `SampleError` for a bad file, for the caller to count.
    `all_texts` (ReasonSeg, custom) scores every text / question of an image instead of only the first.
    """
    parts = name.split("|")
    if len(parts) == 3 and parts[0] == "custom":
        return CustomValDataset(parts[1], parts[2], all_texts=all_texts)
    if len(parts) == 2:
        return ReasonSegValDataset(dataset_dir, name, all_texts=all_texts)
    if len(parts) == 3 and parts[0] in REFER_SEG_SETS:
        return ReferSegValDataset(dataset_dir, name)
    raise ValueError(
        f"validation data set {name!r}: not a supported one; expected 'ReasonSeg|split', a referring split "
        f"'dataset|splitBy|split' of {', '.join(REFER_SEG_SETS)}, or 'custom|DIR|split'"
    )

