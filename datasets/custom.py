"""Bring your own data: one simple folder format, its training and validation readers, and a full check
(`datasets.custom_tools` holds the command line: `check` and the converters into the format).

The format (docs/custom_data.md): a folder DIR with `train.jsonl`, `val.jsonl` and/or `test.jsonl`, one JSON object
per line, every path relative to DIR:

    {"image": "images/0001.jpg",
     "conversations": [{"question": "...", "answer": "It is [SEG].", "masks": [M]}, ...]}

A mask M is a PNG path (nonzero = foreground), a COCO RLE `{"size": [h, w], "counts": ...}` (compressed string or
uncompressed list) or `{"polygons": [[x1, y1, x2, y2, ...], ...]}` rasterised by pycocotools, as COCO does. An
answer holds one `[SEG]` per mask, in order; an answer without `[SEG]` and `"masks": []` is a "no target" answer.
Several conversations about one image are several queries about it.

A bad record (malformed JSON line, missing fields, `[SEG]` count different from the mask count, image missing or
unreadable, mask missing, of the wrong size or empty) never stops a run: it is named by file and line with its
reason, in a warning and in the data set's `bad_records`, and the other records are used. A split with no usable
record is an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.common import SampleError, Sample, ValSample, choose_up_to, decode_segmentation, read_image, split_names
from datasets.reason_seg import TARGET
from datasets.templates import IMAGE_PLACEHOLDER, VAL_ANSWER, turn
from model.processing import SEG_TOKEN
from utils.images import displayed_size

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Conversation:
    """One query about an image: `masks` are the mask specifications of the file, one per `[SEG]` of `answer`."""

    question: str
    answer: str
    masks: list


@dataclass
class Record:
    """One line of a split file.

    source: `"{jsonl path}:{line}"`, the name of the record in every message.
    image_path: the image file (joined with the folder).
    size: (H, W) of the image, from its header.
    """

    source: str
    folder: str
    image_path: str
    size: tuple[int, int]
    conversations: list[Conversation]

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.image_path))[0]


def split_path(folder: str, split: str) -> str:
    return os.path.join(folder, f"{split}.jsonl")


def _question(source: str, question: str) -> str:
    """The question with LISA's `<image>` placeholder in front, unless the user placed it."""
    count = question.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise SampleError(source, f"a question holds {IMAGE_PLACEHOLDER} {count} times; at most once")
    return question if count else f"{IMAGE_PLACEHOLDER}\n{question}"


def _parse_conversation(source: str, k: int, item: object) -> Conversation:
    if not isinstance(item, dict) or not {"question", "answer", "masks"} <= item.keys():
        raise SampleError(source, f"conversation {k} needs 'question', 'answer' and 'masks'")
    question, answer, masks = item["question"], item["answer"], item["masks"]
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str) or not answer.strip():
        raise SampleError(source, f"conversation {k}: 'question' and 'answer' must be non-empty strings")
    if not isinstance(masks, list):
        raise SampleError(source, f"conversation {k}: 'masks' must be a list")
    if answer.count(SEG_TOKEN) != len(masks):
        raise SampleError(source, f"conversation {k}: {answer.count(SEG_TOKEN)} {SEG_TOKEN} in the answer for {len(masks)} mask(s)")
    return Conversation(_question(source, question.strip()), answer.strip(), masks)


def image_size(path: str, source: str) -> tuple[int, int]:
    """(H, W) of the image as displayed (turned by its EXIF orientation), from its header (the pixels are decoded
    only when the record is used)."""
    if not os.path.isfile(path):
        raise SampleError(source, f"image {path} not found")
    try:
        with Image.open(path) as image:
            return displayed_size(image)
    except (OSError, SyntaxError) as error:
        raise SampleError(source, f"image {path} unreadable ({error})") from None


def parse_record(folder: str, source: str, text: str) -> Record:
    """One line of a split file as a `Record`; PNG masks are checked by their header, RLE and polygon masks decoded."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SampleError(source, f"malformed JSON line ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("image"), str) or not isinstance(data.get("conversations"), list):
        raise SampleError(source, "expected {\"image\": str, \"conversations\": [...]}")
    if not data["conversations"]:
        raise SampleError(source, "no conversations")
    conversations = [_parse_conversation(source, k, c) for k, c in enumerate(data["conversations"])]
    image_path = os.path.join(folder, data["image"])
    record = Record(source, folder, image_path, image_size(image_path, source), conversations)
    for conversation in conversations:
        for k, spec in enumerate(conversation.masks):
            check_mask(record, spec, k)
    return record


def read_split(folder: str, split: str) -> tuple[list[Record], list[str]]:
    """The usable records of `{folder}/{split}.jsonl` and "source: reason" of every bad one (each also logged).

    Blank lines are allowed. A missing file or one without any usable record is an error.
    """
    path = split_path(folder, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (a custom data folder holds {', '.join(s + '.jsonl' for s in SPLITS)})")
    records, bad = [], []
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    for number, raw in enumerate(tqdm(lines, desc=f"reading {path}", disable=len(lines) < 1000), start=1):
        source = f"{path}:{number}"
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            if not text.strip():
                continue
            records.append(parse_record(folder, source, text))
        except UnicodeDecodeError:
            bad.append(f"{source}: not UTF-8 text")
        except SampleError as error:
            bad.append(str(error))
        else:
            continue
        logger.warning("bad record skipped: %s", bad[-1])
    if not records:
        raise ValueError(f"{path}: no usable record ({len(bad)} bad" + (f"; first: {bad[0]})" if bad else ")"))
    return records, bad


# -------------------------------------------------------------------------------------------------- masks
def _mask_error(record: Record, k: int, reason: str) -> SampleError:
    return SampleError(record.source, f"mask {k}: {reason}")


def _png_path(record: Record, spec: str) -> str:
    return os.path.join(record.folder, spec)


def check_mask(record: Record, spec: object, k: int = 0) -> None:
    """Refuses a mask that cannot be used: a PNG by its header (missing, unreadable, wrong size), RLE and polygons
    by decoding them (cheap)."""
    if not isinstance(spec, str):
        decode_mask(record, spec, k)
        return
    path = _png_path(record, spec)
    if not os.path.isfile(path):
        raise _mask_error(record, k, f"{path} not found")
    try:
        with Image.open(path) as image:
            size = (image.height, image.width)
    except (OSError, SyntaxError) as error:
        raise _mask_error(record, k, f"{path} unreadable ({error})") from None
    if size != record.size:
        raise _mask_error(record, k, f"{path} of size {size} for an image of size {record.size}")


def decode_mask(record: Record, spec: object, k: int = 0) -> np.ndarray:
    """(H, W) bool mask of one specification: PNG nonzero, COCO RLE or polygons; an empty mask is an error (a
    question about nothing is a "no target" answer: no `[SEG]`, `"masks": []`)."""
    height, width = record.size
    if isinstance(spec, str):
        path = _png_path(record, spec)
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image)
        except (OSError, SyntaxError) as error:
            raise _mask_error(record, k, f"{path} unreadable ({error})") from None
        mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
        if mask.shape != record.size:
            raise _mask_error(record, k, f"{path} of size {mask.shape} for an image of size {record.size}")
    elif isinstance(spec, dict) and set(spec) == {"polygons"}:
        mask = _decode(record, k, spec["polygons"], height, width)
    elif isinstance(spec, dict) and {"size", "counts"} <= spec.keys():
        mask = _decode(record, k, spec, height, width)
    else:
        raise _mask_error(record, k, "neither a PNG path, a COCO RLE {'size', 'counts'} nor {'polygons': [...]}")
    if not mask.any():
        raise _mask_error(record, k, "no foreground pixel; a question about nothing takes a no-target answer (no [SEG], no mask)")
    return mask


def _decode(record: Record, k: int, segmentation: object, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list) and not segmentation:
        raise _mask_error(record, k, "no polygons")
    try:
        return decode_segmentation(segmentation, height, width, record.source)
    except SampleError as error:
        raise _mask_error(record, k, error.reason) from None
    except (TypeError, ValueError, OverflowError) as error:  # malformed counts / coordinates inside pycocotools
        raise _mask_error(record, k, f"undecodable ({error})") from None


def load_masks(record: Record, conversations: Iterable[Conversation]) -> list[np.ndarray]:
    """Per conversation, its (k, H, W) bool masks (k = 0 for a no-target answer)."""
    height, width = record.size
    return [
        np.stack([decode_mask(record, spec, k) for k, spec in enumerate(c.masks)]) if c.masks else np.zeros((0, height, width), bool)
        for c in conversations
    ]


def load_image(record: Record) -> np.ndarray:
    """(H, W, 3) uint8 RGB; an undecodable image or one whose pixels disagree with its header names the record."""
    try:
        image = read_image(record.image_path)
    except SampleError as error:
        raise SampleError(record.source, str(error)) from None
    if image.shape[:2] != record.size:
        raise SampleError(record.source, f"image {record.image_path} decodes to {image.shape[:2]}, its header says {record.size}")
    return image


# ---------------------------------------------------------------------------------------------- data sets
class CustomDataset:
    """Training data from custom folders, `custom_data` like "DIR" or "DIR1||DIR2" (each folder's `train.jsonl`).

    The records of all folders are pooled (every image equally likely). Each draw takes a random record and up to
    `num_classes_per_sample` of its conversations, trained as written: the question (with `<image>` put in front
    unless it holds it) and the answer, whose `[SEG]` tokens take the masks in order; a no-target answer trains the
    model to answer without `[SEG]`.
    """

    def __init__(self, custom_data: str, num_classes_per_sample: int = 3):
        folders = split_names(custom_data)
        if not folders:
            raise ValueError("the custom data family needs --custom_data DIR (several joined by '||')")
        self.records: list[Record] = []
        self.bad_records: list[str] = []
        for folder in folders:
            records, bad = read_split(folder, "train")
            self.records += records
            self.bad_records += bad
        self.num_classes_per_sample = num_classes_per_sample

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, rng: np.random.Generator) -> Sample:
        record = self.records[rng.integers(len(self.records))]
        chosen = [record.conversations[i] for i in choose_up_to(rng, len(record.conversations), self.num_classes_per_sample)]
        image = load_image(record)
        masks = np.concatenate(load_masks(record, chosen))
        return Sample(
            f"custom/{record.stem}", image, [turn(c.question, c.answer) for c in chosen], masks,
            queries=[c.question.replace(IMAGE_PLACEHOLDER, "").strip() for c in chosen],
        )


def val_answer(conversation: Conversation) -> str:
    """The teacher-forced answer of a validation query.

    A query with masks keeps its own answer: its `[SEG]` tokens, in order, are the ones the model was trained to
    emit. A no-target query is forced to answer the original's "[SEG]." and scores 1 only if that mask is empty:
    forcing its own answer (no `[SEG]`) would give it IoU 1 for free. Whether the model declines by itself is what
    the generate mode measures.
    """
    return conversation.answer if conversation.masks else VAL_ANSWER


class CustomValDataset(torch.utils.data.Dataset):
    """Validation / test split of a custom folder, named "custom|DIR|split".

    Only the first conversation of each image is scored by default (as ReasonSeg's first text); every one with
    `all_texts=True`. A conversation with k masks gives k (query, mask) pairs, its k-th `[SEG]` scored against its
    k-th mask; a no-target conversation gives one pair with an empty target (IoU 1 when the prediction is empty,
    else 0, as the original scores empty targets). Prediction files and per-sample keys are named by image stem, so
    a second record with the same stem is a bad record.
    """

    def __init__(self, folder: str, split: str = "val", all_texts: bool = False):
        records, self.bad_records = read_split(folder, split)
        self.records, seen = [], {}
        for record in records:
            if record.stem in seen:
                self.bad_records.append(f"{record.source}: image stem {record.stem!r} already used at {seen[record.stem]}")
                logger.warning("bad record skipped: %s", self.bad_records[-1])
                continue
            seen[record.stem] = record.source
            self.records.append(record)
        self.split = split
        self.all_texts = all_texts

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ValSample:
        record = self.records[index]
        conversations = record.conversations if self.all_texts else record.conversations[:1]
        image = load_image(record)
        gts = [
            masks.astype(np.uint8) if len(masks) else np.zeros((1, *record.size), np.uint8)
            for masks in load_masks(record, conversations)
        ]
        gt = np.concatenate(gts)
        return ValSample(
            sample_id=f"custom/{self.split}/{record.stem}",
            image=image,
            conversations=[turn(c.question, val_answer(c)) for c in conversations],
            masks=gt == TARGET,
            queries=[c.question.replace(IMAGE_PLACEHOLDER, "").strip() for c in conversations],
            gt=gt,
            is_sentence=[False] * len(gt),  # free-form questions: no short/long split
        )


def check_folder(folder: str) -> dict[str, tuple[int, list[str]]]:
    """Reads every split present in `folder` and decodes every record in full (images and masks).

    Returns:
        per split, (number of usable records, "source: reason" of every bad record).
    """
    results = {}
    for split in SPLITS:
        if not os.path.isfile(split_path(folder, split)):
            continue
        try:
            records, bad = read_split(folder, split)
        except ValueError as error:
            results[split] = (0, [str(error)])
            continue
        usable = 0
        for record in tqdm(records, desc=f"checking {split}", dynamic_ncols=True):
            try:
                load_image(record)
                load_masks(record, record.conversations)
            except SampleError as error:
                bad.append(str(error))
            else:
                usable += 1
        results[split] = (usable, bad)
    if not results:
        raise FileNotFoundError(f"{folder}: none of {', '.join(s + '.jsonl' for s in SPLITS)}")
    return results
