"""What every data set yields, how bad input is reported, and the small readers they share."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from utils.errors import FileProblem
from utils.images import ImageError, load_image

logger = logging.getLogger(__name__)


class SampleError(FileProblem):
    """A sample that cannot be used: a missing or unreadable file, or an annotation that yields no valid mask; `path`
    names the offending file."""


@dataclass
class Sample:
    """One training image, or video, with the conversations about it.

    sample_id: `"{dataset}/{image name}"` (`"{dataset}/{video}"` for a video).
    image: (H, W, 3) uint8 RGB; for a video, (T, H, W, 3): its T sampled frames in order.
    conversations: lists of chat messages `{"role": "user"|"assistant", "content": str}`; the first user
        message of each contains `<image>` once (for a video, it stands for all T frames).
    masks: (n, H, W) bool, one per `[SEG]` across the conversations in order; n = 0 for text-only answers. For a
        video (n, T, H, W): each `[SEG]`'s object on every sampled frame (empty on frames without it).
    queries: what each conversation asks about (class name, referring sentence, ReasonSeg text, VQA question).
    skipped: files of bad samples skipped before this one was drawn (training resamples on bad input).
    """

    sample_id: str
    image: np.ndarray
    conversations: list[list[dict[str, str]]]
    masks: np.ndarray
    queries: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class ValSample(Sample):
    """A validation image: one teacher-forced conversation per query.

    gt: (n, H, W) uint8 ground truth per query: 1 target, 0 background, 255 ignored by the metric.
    is_sentence: per query, True for a long (sentence) query, False for a short phrase (ReasonSeg's flag;
        always False for referring expressions).
    """

    gt: np.ndarray | None = None
    is_sentence: list[bool] = field(default_factory=list)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB image; a missing or undecodable file raises `SampleError` naming it."""
    try:
        return load_image(path)
    except ImageError as error:
        raise SampleError(path, str(error).removeprefix(f"{path}: ")) from None


def read_json(path: str) -> object:
    """Parses a JSON file as UTF-8, falling back to cp1252 (some ReasonSeg files are cp1252-encoded)."""
    if not os.path.isfile(path):
        raise SampleError(path, "file not found")
    with open(path, "rb") as f:
        raw = f.read()
    for encoding in ("utf-8", "cp1252"):
        try:
            return json.loads(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
        except json.JSONDecodeError as error:
            raise SampleError(path, f"invalid JSON ({error})") from None
    raise SampleError(path, "neither UTF-8 nor cp1252 text")


def check_size(path: str, mask_size: tuple[int, int], image: np.ndarray, image_path: str) -> None:
    """Refuses an annotation whose size differs from its image's: its mask would be silently misplaced."""
    if tuple(mask_size) != image.shape[:2]:
        raise SampleError(path, f"annotation size {tuple(mask_size)} differs from {image_path} {image.shape[:2]}")


def decode_segmentation(segmentation: object, height: int, width: int, path: str) -> np.ndarray:
    """A COCO segmentation (polygons, an RLE dict with compressed or uncompressed counts, or a list of RLE
    dicts) as a (height, width) bool mask; overlapping parts are OR-ed, never summed.

    `path` names the annotation file in errors. An empty segmentation is an error: it carries no mask.
    """
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not isinstance(segmentation, list) or not segmentation:
        raise SampleError(path, "empty or malformed segmentation")
    if all(isinstance(p, list) for p in segmentation):
        for polygon in segmentation:
            # pycocotools reads a 4-number "polygon" as a box: refuse anything below 3 points.
            if len(polygon) < 6 or len(polygon) % 2 or not np.isfinite(np.asarray(polygon, dtype=float)).all():
                raise SampleError(path, f"degenerate polygon with {len(polygon)} coordinates")
            xy = np.asarray(polygon, dtype=float).reshape(-1, 2)
            if (xy < 0).any() or (xy[:, 0] > width).any() or (xy[:, 1] > height).any():
                logger.warning("%s: polygon partly outside the %dx%d image; clipped", path, width, height)
        rles = mask_utils.frPyObjects(segmentation, height, width)
    elif all(isinstance(r, dict) and {"counts", "size"} <= r.keys() for r in segmentation):
        rles = []
        for rle in segmentation:
            if list(rle["size"]) != [height, width]:
                raise SampleError(path, f"RLE of size {rle['size']} for an image of size {[height, width]}")
            if isinstance(rle["counts"], list):  # uncompressed RLE
                rles.append(mask_utils.frPyObjects(rle, height, width))
            else:
                counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
                rles.append({"size": rle["size"], "counts": counts})
    else:
        raise SampleError(path, "segmentation is neither polygons nor RLE")
    return mask_utils.decode(rles).any(axis=2)


def sample_rng(*keys: int) -> np.random.Generator:
    """A generator fixed by integer keys such as (seed, epoch, index, attempt): independent of global state,
    so a sample is reproduced in any worker, on any rank, after a resume."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in keys])))


def choose_up_to(rng: np.random.Generator, count: int, k: int) -> list[int]:
    """Up to `k` distinct indices of `range(count)` without replacement (all of them, in order, if count <= k)."""
    if count <= k:
        return list(range(count))
    return rng.choice(count, size=k, replace=False).tolist()


def split_names(spec: str) -> list[str]:
    """`"a||b||c"` -> ["a", "b", "c"], the original's syntax for data set lists."""
    return [name for name in spec.split("||") if name]
