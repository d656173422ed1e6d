"""ReasonSeg: `reason_seg/ReasonSeg/{train,val,test}/*.jpg` + LabelMe-like `*.json`, and explanatory answers
(the original's `utils/reason_seg_dataset.py` and `utils/data_processing.py`)."""

from __future__ import annotations

import enum
import glob
import logging
import os

import cv2
import numpy as np
import torch

from datasets.common import SampleError, Sample, ValSample, choose_up_to, read_image, read_json
from datasets.templates import (
    EXPLANATORY_QUESTION_LIST,
    IMAGE_PLACEHOLDER,
    long_question,
    seg_answer,
    short_question,
    turn,
    val_conversation,
)
from utils.metrics import IGNORE_PIXEL

logger = logging.getLogger(__name__)

REASON_SEG_DATA = "ReasonSeg|train"  # the split LISA trains on
REASON_SEG_VAL = "ReasonSeg|val"  # and validates on
TARGET = 1


class AnswerKind(enum.Enum):
    """What a training ReasonSeg answer holds."""

    MASK = "mask"  # "It is [SEG]."
    MASK_AND_EXPLANATION = "mask_and_explanation"  # "It is [SEG]. {explanation}", to a question asking why
    EXPLANATION_ONLY = "explanation_only"  # the explanation alone: no [SEG], no mask


def _label(path: str, shape: object) -> str:
    if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or "points" not in shape:
        raise SampleError(path, f"shape without a string 'label' and 'points': {str(shape)[:80]}")
    return shape["label"]


def _polygon(path: str, shape: dict) -> np.ndarray:
    """(1, k, 2) int32 vertices of one shape; coordinates are truncated toward zero, as the original's
    `np.array(points, dtype=np.int32)` does."""
    try:
        points = np.asarray(shape["points"], dtype=np.float64)
    except (TypeError, ValueError):
        raise SampleError(path, f"non-numeric points in shape {shape['label']!r}") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise SampleError(path, f"degenerate polygon {shape['label']!r}: {len(points)} point(s); need >= 2 (x, y)")
    if not np.isfinite(points).all() or np.abs(points).max() > 2**31 - 1:
        raise SampleError(path, f"non-finite or out-of-range coordinates in shape {shape['label']!r}")
    return np.trunc(points).astype(np.int32)[None]


def _draw(mask: np.ndarray, polygon: np.ndarray, value: int) -> None:
    # A 1-px closed outline, then the fill: a 2-point polygon still leaves a line, as in the original.
    cv2.polylines(mask, polygon, True, value, 1)
    cv2.fillPoly(mask, polygon, value)


def get_mask_from_json(json_path: str, height: int, width: int) -> tuple[np.ndarray, list[str], bool]:
    """Rasterizes a ReasonSeg annotation exactly as the original `get_mask_from_json`.

    "flag" shapes are skipped; labels containing "ignore" paint 255; all others paint 1 (target). Polygons
    are painted largest first (area = pixels of the polygon drawn alone), each as outline + fill, so smaller
    ones win. A polygon partly outside the image is clipped, with a warning; one wholly outside is an error.

    Returns:
        mask (height, width) uint8 in {0, 1, 255}, the list of texts, and `is_sentence`.
    """
    anno = read_json(json_path)
    if not isinstance(anno, dict) or not {"shapes", "text", "is_sentence"} <= anno.keys():
        raise SampleError(json_path, "not a ReasonSeg annotation (needs 'shapes', 'text', 'is_sentence')")
    texts = [anno["text"]] if isinstance(anno["text"], str) else anno["text"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SampleError(json_path, "'text' must be a non-empty list of non-empty strings")
    if not isinstance(anno["shapes"], list):
        raise SampleError(json_path, "'shapes' must be a list")
    return shapes_to_mask(json_path, anno["shapes"], height, width), texts, bool(anno["is_sentence"])


def shapes_to_mask(json_path: str, shapes: list, height: int, width: int) -> np.ndarray:
    """Rasterizes LabelMe-like shapes `[{"label", "points"}, ...]` by the rules of `get_mask_from_json`.

    Returns:
        (height, width) uint8 in {0, 1, 255}.
    """
    polygons, areas = [], []
    for shape in shapes:
        label = _label(json_path, shape)
        if label.lower() == "flag":  # deprecated annotations, skipped by the original
            continue
        polygon = _polygon(json_path, shape)
        alone = np.zeros((height, width), dtype=np.uint8)
        _draw(alone, polygon, 1)
        area = int(alone.sum())
        inside = ((polygon[0] >= 0) & (polygon[0] < (width, height))).all()
        if area == 0:
            raise SampleError(json_path, f"polygon {label!r} lies wholly outside the {width}x{height} image")
        if not inside:
            logger.warning("%s: polygon %r partly outside the %dx%d image; clipped", json_path, label, width, height)
        polygons.append((IGNORE_PIXEL if "ignore" in label.lower() else TARGET, polygon))
        areas.append(area)

    mask = np.zeros((height, width), dtype=np.uint8)
    # The original sorts with np.argsort (stable for so few items) and reverses: ties go latest-first.
    for i in np.argsort(np.asarray(areas, dtype=np.int64), kind="stable")[::-1]:
        value, polygon = polygons[i]
        _draw(mask, polygon, value)
    return mask


def _load(image_path: str, require_target: bool) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """Image, mask {0,1,255}, texts and is_sentence of one ReasonSeg image.

    `require_target`: an image without any target pixel is an error (training). Evaluation scores such an image
    as the original does: IoU 1 when the prediction is empty outside the ignored pixels, else 0.
    """
    image = read_image(image_path)
    json_path = os.path.splitext(image_path)[0] + ".json"
    mask, texts, is_sentence = get_mask_from_json(json_path, *image.shape[:2])
    if require_target and not (mask == TARGET).any():
        reason = "no shapes" if not read_json(json_path)["shapes"] else "no target pixels"
        raise SampleError(json_path, f"{reason}: nothing to train the mask on")
    return image, mask, texts, is_sentence


def sample_id(image_path: str) -> str:
    """"reason_seg/{split}/{stem}"."""
    split = os.path.basename(os.path.dirname(image_path))
    return f"reason_seg/{split}/{os.path.splitext(os.path.basename(image_path))[0]}"


def list_reason_seg_images(dataset_dir: str, name: str, splits: list[str]) -> list[str]:
    """Sorted `*.jpg` of `reason_seg/{name}/{split}` for each split; an empty result is an error."""
    images = []
    for split in splits:
        images += sorted(glob.glob(os.path.join(dataset_dir, "reason_seg", name, split, "*.jpg")))
    if not images:
        raise FileNotFoundError(f"no images in {os.path.join(dataset_dir, 'reason_seg', name)}/{{{','.join(splits)}}}")
    return images


class ReasonSegDataset:
    """Training ReasonSeg, `reason_seg_data` like "ReasonSeg|train" or "ReasonSeg|train_val".

    Each draw takes a random image and up to `num_classes_per_sample` of its texts (all share the mask;
    ignore regions count as background). With `explanatory` != -1, images listed in
    `explanatory/train.json` get, with probability `explanatory`, a question without the mask request and
    the explanation as the only answer (no `[SEG]`, no mask); otherwise 50/50 a plain `[SEG]` answer or
    the explanatory question with "{answer} {explanation}".
    """

    def __init__(
        self,
        dataset_dir: str,
        reason_seg_data: str = REASON_SEG_DATA,
        num_classes_per_sample: int = 3,
        explanatory: float = 0.1,
    ):
        name, splits = reason_seg_data.split("|")
        self.images = list_reason_seg_images(dataset_dir, name, splits.split("_"))
        self.num_classes_per_sample = num_classes_per_sample
        self.explanatory = explanatory
        self.explanations: dict[str, str] = {}
        if explanatory != -1:
            path = os.path.join(dataset_dir, "reason_seg", name, "explanatory", "train.json")
            items = read_json(path)
            if not isinstance(items, list) or not all(isinstance(i, dict) and {"image", "outputs"} <= i.keys() for i in items):
                raise SampleError(path, "expected a list of {'image', 'query', 'outputs'}")
            self.explanations = {item["image"]: item["outputs"] for item in items}

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, rng: np.random.Generator) -> Sample:
        image_path = self.images[rng.integers(len(self.images))]
        # The original trains an image without target pixels with "[SEG]" and an all-background mask; we skip it.
        # A ReasonSeg text always describes something in the image, so an empty target is a missing annotation
        # ("shapes": []) or a wholly ignored one, not a "no target" answer: training it would teach the mask
        # decoder to output nothing for an object that is there, and its ignored pixels as background.
        image, mask, texts, is_sentence = _load(image_path, require_target=True)
        texts = [texts[i] for i in choose_up_to(rng, len(texts), self.num_classes_per_sample)]

        explanation = self.explanations.get(os.path.basename(image_path))
        kind = AnswerKind.MASK
        if explanation is not None:
            # The original's draws, in its order: explanation only with probability `explanatory`, else 50/50.
            if rng.random() < self.explanatory:
                kind = AnswerKind.EXPLANATION_ONLY
            else:
                kind = (AnswerKind.MASK, AnswerKind.MASK_AND_EXPLANATION)[int(rng.integers(2))]

        conversations = []
        for text in texts:
            question = long_question(rng, text) if is_sentence else short_question(rng, text)
            answer = seg_answer(rng)
            if kind is AnswerKind.MASK_AND_EXPLANATION:
                explain = EXPLANATORY_QUESTION_LIST[rng.integers(len(EXPLANATORY_QUESTION_LIST))]
                question = f"{IMAGE_PLACEHOLDER}\n{text} {explain}"
                answer = f"{answer} {explanation}"
            elif kind is AnswerKind.EXPLANATION_ONLY:
                question, answer = f"{IMAGE_PLACEHOLDER}\n{text}", explanation
            conversations.append(turn(question, answer))

        count = 0 if kind is AnswerKind.EXPLANATION_ONLY else len(texts)
        masks = np.repeat((mask == TARGET)[None], count, axis=0)
        return Sample(sample_id(image_path), image, conversations, masks, queries=texts)


class ReasonSegValDataset(torch.utils.data.Dataset):
    """ReasonSeg validation/test split, `name` like "ReasonSeg|val".

    One teacher-forced conversation per query: only the first text of each image by default (the
    original's protocol), every text with `all_texts=True`. The ground truth keeps 255 for ignore regions;
    an image without target pixels is scored too (an empty target), as the original scores it.
    """

    def __init__(self, dataset_dir: str, name: str = REASON_SEG_VAL, all_texts: bool = False):
        ds, split = name.split("|")
        self.images = list_reason_seg_images(dataset_dir, ds, [split])
        self.all_texts = all_texts

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ValSample:
        image_path = self.images[index]
        image, mask, texts, is_sentence = _load(image_path, require_target=False)
        texts = [t.strip() for t in (texts if self.all_texts else texts[:1])]
        return ValSample(
            sample_id=sample_id(image_path),
            image=image,
            conversations=[val_conversation(t, is_sentence) for t in texts],
            masks=np.repeat((mask == TARGET)[None], len(texts), axis=0),
            queries=texts,
            gt=np.repeat(mask[None], len(texts), axis=0),
            is_sentence=[is_sentence] * len(texts),
        )
