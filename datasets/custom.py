"""Bring your own data: one simple folder format, its training and validation readers, a checker and converters.

    python -m datasets.custom check DIR
    python -m datasets.custom from_coco --instances instances.json --images IMAGE_DIR --out DIR [--val_fraction F]
    python -m datasets.custom from_labelme --src LABELME_OR_REASONSEG_DIR --out DIR [--val_fraction F]

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

import argparse
import json
import logging
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from datasets.common import SampleError, Sample, ValSample, choose_up_to, read_image, read_json, split_names
from datasets.reason_seg import TARGET, get_mask_from_json, shapes_to_mask
from datasets.refer_seg import decode_segmentation
from datasets.templates import IMAGE_PLACEHOLDER, VAL_ANSWER, long_question, seg_answer, short_question, turn
from model.processing import SEG_TOKEN

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NO_TARGET_ANSWER = "There is no {name} in this image."  # the converters' "no target" answer
LABELME_AREA_TYPES = (None, "polygon", "rectangle")  # labelme shape types that enclose an area


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
    """(H, W) from the image's header (the pixels are decoded only when the record is used)."""
    if not os.path.isfile(path):
        raise SampleError(source, f"image {path} not found")
    try:
        with Image.open(path) as image:
            return image.height, image.width
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


# ------------------------------------------------------------------------------------------------ writing
def seg_answers(rng: np.random.Generator, count: int) -> str:
    """A LISA answer with one `[SEG]` (count 1), or "Sure, they are [SEG], [SEG] and [SEG]." for several."""
    if count == 1:
        return seg_answer(rng)
    return f"Sure, they are {', '.join([SEG_TOKEN] * (count - 1))} and {SEG_TOKEN}."


def written(question: str) -> str:
    """A template question as the files hold it: without LISA's `<image>` line, which the readers put back."""
    return question.removeprefix(f"{IMAGE_PLACEHOLDER}\n")


def compressed_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask as COCO's compressed RLE, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class FolderWriter:
    """Writes records into a custom folder: image references (relative paths or copies) and PNG masks."""

    def __init__(self, out: str, copy_images: bool):
        self.out = out
        self.copy_images = copy_images
        os.makedirs(out, exist_ok=True)

    def image(self, path: str) -> str:
        """The record's "image" for a source image: a path relative to the folder (the image copied into
        `images/` with `copy_images`)."""
        if self.copy_images:
            target = os.path.join(self.out, "images", os.path.basename(path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)
            path = target
        return os.path.relpath(path, self.out)

    def png(self, name: str, mask: np.ndarray) -> str:
        """Saves a (H, W) bool mask as `masks/{name}.png` (0 / 255); returns its relative path."""
        relative = os.path.join("masks", f"{name}.png")
        os.makedirs(os.path.dirname(os.path.join(self.out, relative)), exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(self.out, relative))
        return relative

    def write(self, records: list[dict], split: str, val_fraction: float, seed: int) -> dict[str, int]:
        """Writes `records` to `{split}.jsonl`, or a seeded random `val_fraction` of them to `val.jsonl` and the
        rest to `{split}.jsonl`. Returns the number written per file."""
        order = np.random.default_rng(seed).permutation(len(records))
        count_val = int(val_fraction * len(records) + 0.5)
        parts = {"val": sorted(order[:count_val]), split: sorted(order[count_val:])} if count_val else {split: range(len(records))}
        for name, indices in parts.items():
            with open(split_path(self.out, name), "w") as f:
                for i in indices:
                    f.write(json.dumps(records[i]) + "\n")
        return {split_path(self.out, name): len(indices) for name, indices in parts.items()}


# ----------------------------------------------------------------------------------------- COCO converter
def _coco_mask(segmentation: object, height: int, width: int, where: str) -> tuple[object, np.ndarray] | None:
    """An annotation's mask spec and (H, W) mask, or None (with a warning) when nothing usable is left.

    Polygons with fewer than 3 points are dropped (pycocotools would read 4 numbers as a box); RLE, crowd regions'
    uncompressed counts included, is written compressed.
    """
    polygons = None
    if isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if len(polygons) < len(segmentation):
            logger.warning("%s: %d polygon(s) with fewer than 3 points dropped", where, len(segmentation) - len(polygons))
        if not polygons:
            return None
        segmentation = polygons
    try:
        mask = decode_segmentation(segmentation, height, width, where)
    except (SampleError, TypeError, ValueError) as error:
        logger.warning("%s: unusable segmentation dropped (%s)", where, error)
        return None
    if not mask.any():
        logger.warning("%s: segmentation without any pixel dropped", where)
        return None
    return ({"polygons": polygons} if polygons else compressed_rle(mask)), mask


def coco_records(instances_path: str, image_dir: str, writer: FolderWriter, absent: int = 0, seed: int = 0) -> list[dict]:
    """Records from a COCO instances file: per image, one conversation per category present (a LISA short question
    on the category name; one `[SEG]` per instance, crowd regions included), plus `absent` no-target questions on
    categories that are not in the image. Images without annotations get only those (none when `absent` is 0).
    """
    coco = read_json(instances_path)
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= coco.keys():
        raise SampleError(instances_path, "not a COCO instances file (needs 'images', 'annotations', 'categories')")
    names = {c["id"]: c["name"].replace("_", " ") for c in coco["categories"]}  # ids need not be contiguous
    by_image: dict[int, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        if ann.get("category_id") not in names:
            logger.warning("%s: annotation %s has an unknown category %s; dropped", instances_path, ann.get("id"), ann.get("category_id"))
            continue
        by_image[ann["image_id"]][ann["category_id"]].append(ann)
    rng = np.random.default_rng(seed)
    records = []
    for info in tqdm(sorted(coco["images"], key=lambda i: i["id"]), desc="COCO images", dynamic_ncols=True):
        path = os.path.join(image_dir, info["file_name"])
        if not os.path.isfile(path):
            logger.warning("%s: image %s not found; skipped", instances_path, path)
            continue
        conversations = []
        for category_id, anns in sorted(by_image[info["id"]].items()):
            specs = [
                _coco_mask(a["segmentation"], info["height"], info["width"], f"{instances_path} annotation {a['id']}")
                for a in anns
            ]
            specs = [spec for spec, _ in filter(None, specs)]
            if specs:
                conversations.append({
                    "question": written(short_question(rng, names[category_id])),
                    "answer": seg_answers(rng, len(specs)),
                    "masks": specs,
                })
        missing = sorted(set(names) - set(by_image[info["id"]]))
        for category_id in (rng.choice(missing, size=min(absent, len(missing)), replace=False) if absent else []):
            name = names[int(category_id)]
            conversations.append({"question": written(short_question(rng, name)), "answer": NO_TARGET_ANSWER.format(name=name), "masks": []})
        if conversations:
            records.append({"image": writer.image(path), "conversations": conversations})
    return records


# ------------------------------------------------------------------------------- ReasonSeg / labelme converter
def _labelme_image(json_path: str, anno: dict) -> str | None:
    """The image of a labelme / ReasonSeg JSON: its `imagePath`, else the same stem with a usual extension."""
    candidates = [os.path.join(os.path.dirname(json_path), anno["imagePath"])] if anno.get("imagePath") else []
    stem = os.path.splitext(json_path)[0]
    candidates += [stem + ext for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")]
    return next((c for c in candidates if os.path.isfile(c)), None)


def _area_shapes(json_path: str, shapes: list) -> list[dict]:
    """Shapes as polygons: a labelme rectangle (2 corners) becomes its 4 corners; points, lines and circles, which
    enclose no polygon, are dropped with a warning."""
    result = []
    for shape in shapes:
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise SampleError(json_path, f"shape without a string 'label': {str(shape)[:80]}")
        kind = shape.get("shape_type")
        if kind not in LABELME_AREA_TYPES:
            logger.warning("%s: %s shape %r is not a polygon; dropped", json_path, kind, shape.get("label"))
            continue
        if kind == "rectangle" and len(shape.get("points", [])) == 2:
            (x0, y0), (x1, y1) = shape["points"]
            shape = {**shape, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}
        result.append(shape)
    return result


def labelme_records(src: str, writer: FolderWriter, seed: int = 0) -> list[dict]:
    """Records from a folder of LabelMe-like JSON files beside their images (`*.json` directly in `src`); the masks
    are written as `masks/{name of src}/{stem}_{j}.png`.

    A ReasonSeg file (with "text" and "is_sentence") gives one conversation per text, LISA's short or long question
    around it, and one mask: its target polygons rasterised exactly as ReasonSeg's reader does ("ignore" regions
    and "flag" shapes are not part of the target; the format has no ignore value). A plain labelme file gives one
    conversation per label (short question on the label; the label's shapes form one mask; labels containing
    "ignore" and "flag" are skipped). A file whose target is empty, or whose image is missing, is skipped with a
    warning.
    """
    rng = np.random.default_rng(seed)
    records = []
    json_paths = sorted(os.path.join(src, n) for n in os.listdir(src) if n.endswith(".json"))
    if not json_paths:
        raise FileNotFoundError(f"{src}: no *.json annotations")
    for json_path in tqdm(json_paths, desc="annotations", dynamic_ncols=True):
        try:
            anno = read_json(json_path)
            if not isinstance(anno, dict) or not isinstance(anno.get("shapes"), list):
                raise SampleError(json_path, "not a labelme / ReasonSeg annotation (needs 'shapes')")
            image_path = _labelme_image(json_path, anno)
            if image_path is None:
                raise SampleError(json_path, "no image beside it (imagePath, or the same name with .jpg/.png)")
            height, width = image_size(image_path, json_path)
            stem = os.path.join(os.path.basename(os.path.normpath(src)), os.path.splitext(os.path.basename(json_path))[0])
            if "text" in anno:
                mask, texts, is_sentence = get_mask_from_json(json_path, height, width)
                queries = [(texts, mask == TARGET, is_sentence)]
            else:
                shapes = _area_shapes(json_path, anno["shapes"])
                labels = dict.fromkeys(s["label"] for s in shapes if s["label"].lower() != "flag" and "ignore" not in s["label"].lower())
                queries = [
                    ([label], shapes_to_mask(json_path, [s for s in shapes if s["label"] == label], height, width) == TARGET, False)
                    for label in labels
                ]
        except SampleError as error:
            logger.warning("skipped: %s", error)
            continue
        conversations = []
        for j, (texts, mask, is_sentence) in enumerate(queries):
            if not mask.any():
                logger.warning("%s: %r has no target pixel; skipped", json_path, texts[0])
                continue
            png = writer.png(f"{stem}_{j}", mask)
            for text in texts:
                question = long_question(rng, text) if is_sentence else short_question(rng, text)
                conversations.append({"question": written(question), "answer": seg_answer(rng), "masks": [png]})
        if conversations:
            records.append({"image": writer.image(image_path), "conversations": conversations})
    return records


# -------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="read every record of a folder's splits in full; list the bad ones")
    check.add_argument("folder", help="a custom data folder (train.jsonl / val.jsonl / test.jsonl)")

    def output_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", required=True, help="custom data folder to write (created if needed)")
        sub.add_argument("--split", default="train", choices=SPLITS, help="split file to write, {split}.jsonl")
        sub.add_argument("--val_fraction", type=float, default=0.0,
                         help="put this seeded random fraction of the images into val.jsonl instead (0: none)")
        sub.add_argument("--copy_images", action="store_true",
                         help="copy the images into OUT/images/ (default: refer to them by a path relative to OUT)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the question/answer templates and the val split")

    coco = commands.add_parser("from_coco", help="a COCO instances JSON: one question per category present")
    coco.add_argument("--instances", required=True, help="COCO instances file (e.g. instances_train2017.json)")
    coco.add_argument("--images", required=True, help="folder the images' file_name is relative to")
    coco.add_argument("--absent", type=int, default=0,
                      help="per image, also ask about this many categories that are absent, with a no-target answer")
    output_flags(coco)

    labelme = commands.add_parser("from_labelme", help="a folder of ReasonSeg or labelme JSON files beside their images")
    labelme.add_argument("--src", required=True, help="folder with NAME.json + NAME.jpg (e.g. ReasonSeg/train)")
    output_flags(labelme)
    args = parser.parse_args(argv)
    if args.command != "check" and not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val_fraction must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "check":
        status = 0
        for split, (usable, bad) in check_folder(args.folder).items():
            print(f"{split_path(args.folder, split)}: {usable} usable record(s), {len(bad)} bad")
            for line in bad:
                print(f"  {line}")
            status = status or int(bool(bad))
        return status
    writer = FolderWriter(args.out, args.copy_images)
    if args.command == "from_coco":
        records = coco_records(args.instances, args.images, writer, args.absent, args.seed)
    else:
        records = labelme_records(args.src, writer, args.seed)
    if not records:
        print("nothing to write: no usable image", file=sys.stderr)
        return 1
    for path, count in writer.write(records, args.split, args.val_fraction, args.seed).items():
        print(f"wrote {count} record(s) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
