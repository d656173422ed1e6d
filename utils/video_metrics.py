"""Video object segmentation metrics J, F and J&F, as the MeViS and ReVOS evaluation scripts compute them (both
take the per-frame measures of the DAVIS benchmark toolkit, Perazzi et al. 2016 / Pont-Tuset et al. 2017).

* per frame J: region IoU of prediction and ground truth, 1.0 when both are empty;
* per frame F: the boundary F-measure. Each mask's boundary map marks a pixel that differs from its right, bottom
  or bottom-right neighbour (neighbours outside the image are not looked at, so the image edge is no boundary);
  a boundary pixel is matched when the other mask's boundary lies within a disk of radius
  ceil(0.008 * image diagonal); F = 2PR / (P + R) of the matched shares;
* per expression: the means of its frames' J and F; over a split: the means over expressions, J&F = (J + F) / 2;
* ReVOS: expressions of type 0 ("referring") and 1 ("reasoning") are scored in two groups and the overall J and F
  are the means of the two groups' values; type 2 is left out.

A prediction that is missing (no file for a frame or for a whole expression) scores 0 on its frames and is
named in the summary's "missing", so a partial run cannot pass for a complete one.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from utils.distributed import gather_lists, is_main

BOUND_TH = 0.008  # DAVIS's boundary tolerance, a fraction of the image diagonal (>= 1: pixels)
GROUPS = {0: "referring", 1: "reasoning"}  # ReVOS type_id -> group; type 2 is not scored
SKIPPED_TYPE = 2


def _as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as (H, W) bool (any non-zero value is foreground); raises ValueError on a shape mismatch."""
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"prediction of shape {pred.shape} for a ground truth of shape {gt.shape}")
    return pred, gt


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J of one frame: |pred & gt| / |pred | gt| of two (H, W) masks; 1.0 when both are empty (DAVIS)."""
    pred, gt = _as_masks(pred, gt)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool boundary of an (H, W) mask, DAVIS's `seg2bmap` at the mask's own size.

    A pixel (foreground or background) is on the boundary when it differs from its right, bottom or bottom-right
    neighbour; neighbours outside the image are ignored, so an all-foreground mask has no boundary.
    """
    mask = np.asarray(mask) != 0
    boundary = np.zeros_like(mask)
    boundary[:, :-1] |= mask[:, :-1] != mask[:, 1:]  # right
    boundary[:-1, :] |= mask[:-1, :] != mask[1:, :]  # bottom
    boundary[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]  # bottom-right
    return boundary


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element: 1 where y^2 + x^2 <= r^2 (scikit-image's `disk`, used by DAVIS)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (y * y + x * x <= radius * radius).astype(np.uint8)


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F of one frame: DAVIS's boundary F-measure of two (H, W) masks.

    `bound_th` < 1 is a fraction of the image diagonal, rounded up to pixels; >= 1 is a number of pixels.
    """
    pred, gt = _as_masks(pred, gt)
    radius = int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape)))
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    # DAVIS's cases for empty boundaries (an empty or an all-foreground mask has none).
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # (P, R) = (1, 0) or (0, 1): F = 0
    kernel = disk(radius)
    # cv2.dilate pads with the background, as the brute-force distance check would.
    pred_near = cv2.dilate(pred_b.astype(np.uint8), kernel) != 0
    gt_near = cv2.dilate(gt_b.astype(np.uint8), kernel) != 0
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def frame_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(J, F) of one frame's (H, W) prediction and ground truth."""
    return float(region_similarity(pred, gt)), boundary_f_measure(pred, gt)


def _score_pairs(pairs: Iterable[tuple[np.ndarray | None, np.ndarray]]) -> tuple[float, float, int]:
    """(mean J, mean F, missing frames) over (prediction or None, ground truth) pairs, read one at a time."""
    js, fs, missing = [], [], 0
    for pred, gt in pairs:
        if pred is None:
            j, f, missing = 0.0, 0.0, missing + 1
        else:
            j, f = frame_scores(pred, gt)
        js.append(j), fs.append(f)
    if not js:
        raise ValueError("an expression without frames")
    return math.fsum(js) / len(js), math.fsum(fs) / len(fs), missing


def score_expression(
    pred_frames: Iterable[np.ndarray | None], gt_frames: Iterable[np.ndarray]
) -> tuple[float, float, int]:
    """(J, F, missing frames) of one expression: per-frame means over its (H, W) frames.

    A None prediction is a missing frame and scores 0 for J and F. The two iterables must be equally long.
    """
    return _score_pairs(zip(pred_frames, gt_frames, strict=True))


def _group_scores(entries: list[tuple[float, float]]) -> dict:
    """{J, F, JF, n} of (J, F) pairs; zeros for none."""
    if not entries:
        return {"J": 0.0, "F": 0.0, "JF": 0.0, "n": 0}
    # fsum: exactly rounded, so the figures do not depend on the order in which ranks delivered expressions.
    j = math.fsum(e[0] for e in entries) / len(entries)
    f = math.fsum(e[1] for e in entries) / len(entries)
    return {"J": j, "F": f, "JF": (j + f) / 2, "n": len(entries)}


class VideoScores:
    """Accumulates per-expression J and F, then summarises (also across processes).

    Expressions are keyed "video/exp_id"; adding a key again replaces it, and `gather` keeps one copy of a key that
    several ranks scored (a distributed sampler pads its last batch with repeats).
    """

    def __init__(self) -> None:
        self.scores: dict[str, tuple[float, float, str | None]] = {}
        self.missing: list[str] = []

    def add(self, key: str, j: float, f: float, group: str | None = None) -> None:
        """One expression's J and F; `group` "referring" / "reasoning" (ReVOS) or None."""
        if group not in (None, *GROUPS.values()):
            raise ValueError(f"unknown group {group!r} for {key}")
        self.scores[key] = (float(j), float(f), group)

    def add_missing(self, name: str) -> None:
        """Names a missing prediction: "video/exp_id" (the whole expression) or "video/exp_id/frame"."""
        self.missing.append(name)

    def gather(self) -> None:
        """Merges every rank's expressions and missing names into each rank (no-op in a single process)."""
        merged: dict[str, tuple[float, float, str | None]] = {}
        for key, value in gather_lists(sorted(self.scores.items())):
            merged.setdefault(key, value)
        self.scores = dict(sorted(merged.items()))
        self.missing = sorted(set(gather_lists(self.missing)))

    def summary(self, groups: bool = False) -> dict:
        """{"J", "F", "JF", "n", "per_expression": {key: {"J", "F"}}, "missing": [...]}, fractions in [0, 1].

        With `groups` (ReVOS) also "referring" and "reasoning" {J, F, JF, n}; the overall J and F are then the
        means of the groups' values (of the non-empty ones; of all expressions when both are empty) and "n" counts
        all scored expressions.
        """
        keys = sorted(self.scores)
        summary = _group_scores([self.scores[k][:2] for k in keys])
        if groups:
            parts = {g: _group_scores([self.scores[k][:2] for k in keys if self.scores[k][2] == g])
                     for g in GROUPS.values()}
            scored = [p for p in parts.values() if p["n"]]
            if scored:
                j = math.fsum(p["J"] for p in scored) / len(scored)
                f = math.fsum(p["F"] for p in scored) / len(scored)
                summary.update(J=j, F=f, JF=(j + f) / 2)
            summary.update(parts)
        summary["per_expression"] = {k: {"J": self.scores[k][0], "F": self.scores[k][1]} for k in keys}
        summary["missing"] = sorted(set(self.missing))
        return summary


def read_prediction_png(path: str) -> np.ndarray | None:
    """(H, W) bool mask of a prediction PNG (any non-zero value of any channel is foreground); None when the file
    does not exist. Raises ValueError naming a file that cannot be decoded."""
    if not os.path.isfile(path):
        return None
    # imdecode of the bytes rather than imread: imread answers None alike for "absent" and "corrupt".
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim not in (2, 3):
        raise ValueError(f"cannot read the prediction image {path}")
    return image != 0 if image.ndim == 2 else (image != 0).any(axis=2)


def score_prediction_folder(expressions: Iterable, pred_dir: str, progress: bool = True) -> VideoScores:
    """Scores the predictions saved as `pred_dir/<video>/<exp_id>/<frame>.png` (the benchmarks' submission layout).

    Each expression has `video`, `exp_id`, `frames` (names without extension), `type_id` (0 / 1: ReVOS group,
    2: skipped, None: no group) and `mask(k)` -> (H, W) bool ground truth of frame k. An expression without a
    folder, or a frame without a file, scores 0 and is named as missing. Raises ValueError for a prediction whose
    size differs from the ground truth's, or a corrupt file.
    """
    scores = VideoScores()
    for exp in tqdm(expressions, desc="J&F", disable=not progress or not is_main(), dynamic_ncols=True):
        type_id = getattr(exp, "type_id", None)
        if type_id == SKIPPED_TYPE:
            continue
        if type_id is not None and type_id not in GROUPS:
            raise ValueError(f"{exp.video}/{exp.exp_id}: unknown type_id {type_id!r}")
        key = f"{exp.video}/{exp.exp_id}"
        folder = os.path.join(pred_dir, exp.video, exp.exp_id)
        if not os.path.isdir(folder):
            # Nothing predicted: every frame scores 0; the ground truth need not be read.
            scores.add(key, 0.0, 0.0, GROUPS.get(type_id))
            scores.add_missing(key)
            continue

        def pairs(exp=exp, key=key, folder=folder) -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
            for k, frame in enumerate(exp.frames):
                gt, path = np.asarray(exp.mask(k)) != 0, os.path.join(folder, f"{frame}.png")
                pred = read_prediction_png(path)
                if pred is None:
                    scores.add_missing(f"{key}/{frame}")
                elif pred.shape != gt.shape:
                    raise ValueError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} (W x H), "
                                     f"its ground truth {gt.shape[1]}x{gt.shape[0]}")
                yield pred, gt

        j, f, _ = _score_pairs(pairs())
        scores.add(key, j, f, GROUPS.get(type_id))
    return scores


def write_mask_png(path: str, mask: np.ndarray) -> None:
    """Writes an (H, W) bool mask as an 8-bit PNG, 255 foreground, creating the parent folders."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ok, data = cv2.imencode(".png", (np.asarray(mask) != 0).astype(np.uint8) * 255)
    if not ok:
        raise ValueError(f"cannot encode a mask of shape {np.shape(mask)} as PNG for {path}")
    data.tofile(path)


def write_submission_zip(pred_dir: str, zip_path: str) -> int:
    """Zips `pred_dir`'s `<video>/<exp_id>/<frame>.png` files as the MeViS / Ref-YouTube-VOS servers take them
    (names inside the zip relative to `pred_dir`, no prefix); returns the number of files.

    Other files (a summary, logs) are left out. Raises ValueError when there is no such PNG.
    """
    names = []
    for root, _, files in os.walk(pred_dir):
        rel = os.path.relpath(root, pred_dir)
        if rel.count(os.sep) == 1:  # <video>/<exp_id>
            names += [os.path.join(rel, name) for name in files if name.lower().endswith(".png")]
    if not names:
        raise ValueError(f"no <video>/<exp_id>/<frame>.png predictions under {pred_dir}")
    # PNG data is already compressed: storing is as small and much faster.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(names):
            archive.write(os.path.join(pred_dir, name), name.replace(os.sep, "/"))
    return len(names)


def format_video_table(summary: dict, title: str = "") -> str:
    """The summary as a small text table (percentages): rows overall, then referring / reasoning when present."""
    rows = [("overall", summary)] + [(g, summary[g]) for g in GROUPS.values() if g in summary]
    lines = [title] if title else []
    lines.append(f"{'expressions':<12}{'n':>7}{'J':>9}{'F':>9}{'J&F':>9}")
    for name, s in rows:
        lines.append(f"{name:<12}{s['n']:>7}{100 * s['J']:>9.2f}{100 * s['F']:>9.2f}{100 * s['JF']:>9.2f}")
    if summary.get("missing"):
        lines.append(f"missing predictions (scored 0): {len(summary['missing'])}")
    return "\n".join(lines)
