"""Segmentation metrics of LISA's evaluation, exactly as the original computes them (`intersectionAndUnionGPU` in
`utils/utils.py`, `validate` in `train_ds.py`).

For every (image, query) pair, one predicted mask is compared with the ground truth (1 target, 0 background,
255 ignored):

* per pair: foreground IoU = I / (U + 1e-5), plus 1.0 when U == 0 (ground truth and prediction both empty
  outside the ignored pixels: a correctly answered "no object" query scores 1);
* gIoU = mean of the per-pair IoUs; cIoU = sum I / (sum U + 1e-10) over the split;
* no-target accuracy (gRefCOCO, and any set with empty targets): share of the queries whose ground truth is
  empty that are answered with an empty mask (outside the ignored pixels, as the IoU rule counts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from utils.distributed import gather_lists

IGNORE_PIXEL = 255  # ground-truth value of a pixel no metric counts (ReasonSeg "ignore" regions, unlabeled)
IOU_EPS = 1e-5  # the original's `intersection / (union + 1e-5)`
CIOU_EPS = 1e-10


def intersection_and_union(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int = 2,
    ignore_index: int = IGNORE_PIXEL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel counts of one prediction, the original `intersectionAndUnionGPU`.

    Prediction pixels where the target is `ignore_index` are dropped from every count, so predicting there is
    free. Values outside [0, num_classes) count for no class.

    Args:
        pred: (...) integer class map (for LISA: 1 = mask, 0 = background), any shape equal to `target`'s.
        target: (...) integer class map with `ignore_index` for ignored pixels.

    Returns:
        intersection, union and target area, each (num_classes,) int64 on `pred`'s device; index 1 is the
        foreground of a binary mask.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target, device=pred.device).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction of {pred.numel()} pixels for a target of {target.numel()}")
    pred = torch.where(target == ignore_index, ignore_index, pred)

    def area(values: torch.Tensor) -> torch.Tensor:
        # histc(bins=K, min=0, max=K-1) of the original: out-of-range values (255) land in no bin.
        return torch.bincount(values[(values >= 0) & (values < num_classes)], minlength=num_classes)

    intersection = area(pred[pred == target])
    area_pred, area_target = area(pred), area(target)
    return intersection, area_pred + area_target - intersection, area_target


def pair_iou(intersection: int, union: int) -> float:
    """Foreground IoU of one pair as the original scores it (1.0 for an empty/empty pair)."""
    return intersection / (union + IOU_EPS) + (1.0 if union == 0 else 0.0)


@dataclass
class PairResult:
    """The score of one (image, query) pair.

    order: the pair's place in the split (sample index, query index); results are reported in this order
        whatever the batching or the number of processes.
    key: its name in `per_sample`.
    """

    order: tuple[int, int]
    key: str
    intersection: int
    union: int
    iou: float
    is_sentence: bool
    no_target: bool
    pred_empty: bool


class SegMetrics:
    """Accumulates per-pair scores; `summary()` gives gIoU/cIoU overall and by query length.

    Every process adds its own pairs; `summary()` gathers all of them (when `torch.distributed` is
    initialised) and reduces them in the split's order, so the figures are bit-identical for any batch size
    and any number of processes. The pairs themselves are gathered, not all-reduced sums: floating-point
    sums taken in a different order would differ in the last bits.
    """

    def __init__(self) -> None:
        self.results: list[PairResult] = []

    def add(
        self,
        pred: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        order: tuple[int, int],
        key: str,
        is_sentence: bool = False,
    ) -> PairResult:
        """Scores one pair.

        Args:
            pred: (H, W) bool or {0, 1} predicted mask.
            target: (H, W) ground truth in {0, 1, 255}.
        """
        target = torch.as_tensor(target)
        pred = torch.as_tensor(pred, device=target.device)
        intersection, union, area_target = intersection_and_union(pred, target)
        i, u, t = int(intersection[1]), int(union[1]), int(area_target[1])
        # "Empty" as the IoU rule sees it: a prediction only inside ignored pixels is empty (union - target + I).
        result = PairResult(
            order=tuple(order), key=key, intersection=i, union=u, iou=pair_iou(i, u), is_sentence=bool(is_sentence),
            no_target=t == 0, pred_empty=u - t + i == 0,
        )
        self.results.append(result)
        return result

    def gather(self) -> list[PairResult]:
        """All processes' pairs, in the split's order (each process's own when not distributed)."""
        return sorted(gather_lists(self.results), key=lambda r: r.order)

    def summary(self) -> dict:
        """`{"giou", "ciou", "n", "short": {...}, "long": {...}, "per_sample": {key: iou}}`, fractions in [0, 1].

        "short"/"long" hold the queries with `is_sentence` False/True. When some queries have an empty ground
        truth (gRefCOCO no-target expressions), `"no_target_acc"` and `"n_no_target"` are added.
        """
        results = self.gather()
        summary = {
            **_scores(results),
            "short": _scores([r for r in results if not r.is_sentence]),
            "long": _scores([r for r in results if r.is_sentence]),
            "per_sample": {r.key: r.iou for r in results},
        }
        no_target = [r for r in results if r.no_target]
        if no_target:
            summary["no_target_acc"] = sum(r.pred_empty for r in no_target) / len(no_target)
            summary["n_no_target"] = len(no_target)
        return summary


def _scores(results: list[PairResult]) -> dict:
    """gIoU, cIoU and the number of pairs (0.0 for no pairs)."""
    if not results:
        return {"giou": 0.0, "ciou": 0.0, "n": 0}
    # fsum: the exactly rounded sum, independent of the order in which pairs arrived.
    giou = math.fsum(r.iou for r in results) / len(results)
    ciou = sum(r.intersection for r in results) / (sum(r.union for r in results) + CIOU_EPS)
    return {"giou": giou, "ciou": ciou, "n": len(results)}


def format_table(summary: dict, title: str = "") -> str:
    """The summary as a small text table (percentages), rows overall / short / long."""
    rows = [("overall", summary), ("short", summary["short"]), ("long", summary["long"])]
    lines = [title] if title else []
    lines.append(f"{'queries':<10}{'n':>7}{'gIoU':>9}{'cIoU':>9}")
    for name, scores in rows:
        lines.append(f"{name:<10}{scores['n']:>7}{100 * scores['giou']:>9.2f}{100 * scores['ciou']:>9.2f}")
    if "no_target_acc" in summary:
        lines.append(f"no-target accuracy: {100 * summary['no_target_acc']:.2f} ({summary['n_no_target']} queries)")
    return "\n".join(lines)
