"""Semantic and part segmentation: ADE20K, COCO-Stuff, Mapillary Vistas v2.0 (label maps) and PACO-LVIS,
PASCAL-Part (COCO json), read from their real layouts (the original's `utils/sem_seg_dataset.py`)."""

from __future__ import annotations

import glob
import os
from collections import defaultdict

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.class_names import ADE20K_CLASSES, COCOSTUFF_CLASSES
from datasets.common import (
    SampleError,
    Sample,
    check_size,
    choose_up_to,
    decode_segmentation,
    read_image,
    read_json,
    split_names,
)
from datasets.templates import seg_answer, short_question, turn
from utils.metrics import IGNORE_PIXEL


def read_label_map(path: str) -> np.ndarray:
    """A single-channel label PNG (grey or palette indices) as (H, W) int64."""
    try:
        with Image.open(path) as label:
            label.load()
            if label.mode not in ("L", "P", "I", "I;16"):
                raise SampleError(path, f"label map must be single-channel, got mode {label.mode}")
            return np.asarray(label).astype(np.int64)
    except FileNotFoundError:
        raise SampleError(path, "label map not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise SampleError(path, f"cannot read label map ({error})") from None


class LabelMapSet:
    """A data set of `(image, label PNG)` pairs with a class list; `transform` maps file values to class ids
    (255 = ignore)."""

    def __init__(self, name: str, images: list[str], labels: list[str], classes: list[str], ignored: set[int] = frozenset()):
        if not labels:
            raise FileNotFoundError(f"{name}: no label maps found")
        self.name, self.images, self.labels, self.classes, self.ignored = name, images, labels, classes, ignored

    def __len__(self) -> int:
        return len(self.labels)

    def transform(self, label: np.ndarray) -> np.ndarray:
        if self.name == "ade20k":
            # 0 ("other") is ignored and 1..150 become 0..149.
            label = np.where((label == 0) | (label == IGNORE_PIXEL), IGNORE_PIXEL, label - 1)
        for class_id in self.ignored:
            label[label == class_id] = IGNORE_PIXEL
        return label

    def load(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        image_path, label_path = self.images[index], self.labels[index]
        label = self.transform(read_label_map(label_path))
        image = read_image(image_path)
        check_size(label_path, label.shape, image, image_path)
        values = np.unique(label)
        bad = values[(values != IGNORE_PIXEL) & ((values < 0) | (values >= len(self.classes)))]
        if len(bad):
            raise SampleError(label_path, f"label values {bad.tolist()[:5]} outside the {len(self.classes)} classes")
        if (values == IGNORE_PIXEL).all():
            raise SampleError(label_path, "no usable class (every pixel ignored)")
        return image_path, image, label


def ade20k(dataset_dir: str) -> LabelMapSet:
    images = sorted(glob.glob(os.path.join(dataset_dir, "ade20k", "images", "training", "*.jpg")))
    labels = [os.path.join(dataset_dir, "ade20k", "annotations", "training", os.path.basename(p)[:-4] + ".png") for p in images]
    return LabelMapSet("ade20k", images, labels, list(ADE20K_CLASSES))


def cocostuff(dataset_dir: str) -> LabelMapSet:
    labels = sorted(glob.glob(os.path.join(dataset_dir, "cocostuff", "train2017", "*.png")))
    images = [os.path.join(dataset_dir, "coco", "train2017", os.path.basename(p)[:-4] + ".jpg") for p in labels]
    # The original ignores the 28 merged stuff classes whose names contain "-" (wall-brick, floor-wood, ...).
    ignored = {i for i, name in enumerate(COCOSTUFF_CLASSES) if "-" in name}
    return LabelMapSet("cocostuff", images, labels, list(COCOSTUFF_CLASSES), ignored)


def mapillary(dataset_dir: str) -> LabelMapSet:
    root = os.path.join(dataset_dir, "mapillary")
    config_path = os.path.join(root, "config_v2.0.json")
    config = read_json(config_path)
    try:
        classes = [label["readable"].lower() for label in config["labels"]]
    except (TypeError, KeyError, AttributeError):
        raise SampleError(config_path, "expected {'labels': [{'readable': ...}, ...]}") from None
    labels = sorted(glob.glob(os.path.join(root, "training", "v2.0", "labels", "*.png")))
    images = [os.path.join(root, "training", "images", os.path.basename(p)[:-4] + ".jpg") for p in labels]
    return LabelMapSet("mapillary", images, labels, classes)


class CocoPartSet:
    """A COCO-format json of objects and parts (PACO-LVIS, PASCAL-Part); only images with annotations."""

    def __init__(self, name: str, json_path: str, image_root: str):
        data = read_json(json_path)
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
            raise SampleError(json_path, "not a COCO json (needs 'images', 'annotations', 'categories')")
        self.name, self.json_path, self.image_root = name, json_path, image_root
        self.classes = {cat["id"]: self._class_name(cat["name"]) for cat in data["categories"]}
        self.anns = defaultdict(list)
        for ann in data["annotations"]:
            self.anns[ann["image_id"]].append(ann)
        self.images = [image for image in sorted(data["images"], key=lambda i: i["id"]) if image["id"] in self.anns]
        if not self.images:
            raise SampleError(json_path, "no annotated image")

    def _class_name(self, name: str) -> str | tuple[str, str]:
        """PACO: "obj" or ("obj", "part") with LVIS "_(...)" suffixes stripped; PASCAL-Part: always ("obj", "part")."""
        parts = name.strip().split(":")
        if self.name == "paco_lvis":
            parts = [p.split("_(")[0] for p in parts]
            if len(parts) == 1:
                return parts[0]
        if len(parts) != 2:
            raise SampleError(self.json_path, f"category {name!r} is not 'object:part'")
        return parts[0], parts[1]

    def __len__(self) -> int:
        return len(self.images)


def paco_lvis(dataset_dir: str) -> CocoPartSet:
    path = os.path.join(dataset_dir, "vlpart", "paco", "annotations", "paco_lvis_v1_train.json")
    return CocoPartSet("paco_lvis", path, os.path.join(dataset_dir, "coco"))


def pascal_part(dataset_dir: str) -> CocoPartSet:
    root = os.path.join(dataset_dir, "vlpart", "pascal_part")
    return CocoPartSet("pascal_part", os.path.join(root, "train.json"), os.path.join(root, "VOCdevkit", "VOC2010", "JPEGImages"))


SEM_SEG_SETS = {"ade20k": ade20k, "cocostuff": cocostuff, "mapillary": mapillary, "paco_lvis": paco_lvis, "pascal_part": pascal_part}
SEM_SEG_DATA = "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"  # LISA's training mix of them


def render_part(rng: np.random.Generator, name: str | tuple[str, str]) -> str:
    """A part as "obj part" or "the part of the obj" (50/50); an object name as is."""
    if isinstance(name, str):
        return name
    obj, part = name
    return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"


class SemSegDataset:
    """Training semantic/part segmentation over `sem_seg_data` (default `SEM_SEG_DATA`).

    Each draw: a data set uniformly (not by size), a random image, up to `num_classes_per_sample` distinct
    classes present (label maps) or annotations (COCO json), one short question per class.
    """

    def __init__(
        self,
        dataset_dir: str,
        sem_seg_data: str = SEM_SEG_DATA,
        num_classes_per_sample: int = 3,
    ):
        names = split_names(sem_seg_data)
        unknown = [n for n in names if n not in SEM_SEG_SETS]
        if unknown:
            raise ValueError(f"unknown semantic segmentation data {unknown}; choose from {', '.join(SEM_SEG_SETS)}")
        self.sets = [SEM_SEG_SETS[name](dataset_dir) for name in names]
        self.num_classes_per_sample = num_classes_per_sample

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)

    def sample(self, rng: np.random.Generator) -> Sample:
        data = self.sets[rng.integers(len(self.sets))]
        index = int(rng.integers(len(data)))
        if isinstance(data, LabelMapSet):
            image_path, image, label = data.load(index)
            present = [int(v) for v in np.unique(label) if v != IGNORE_PIXEL]
            class_ids = [present[i] for i in choose_up_to(rng, len(present), self.num_classes_per_sample)]
            names = [data.classes[c] for c in class_ids]
            masks = np.stack([label == c for c in class_ids])
        else:
            info = data.images[index]
            image_path = os.path.join(data.image_root, info["file_name"])
            image = read_image(image_path)
            check_size(data.json_path, (info["height"], info["width"]), image, image_path)
            anns = data.anns[info["id"]]
            anns = [anns[i] for i in choose_up_to(rng, len(anns), self.num_classes_per_sample)]
            unknown = [a["category_id"] for a in anns if a["category_id"] not in data.classes]
            if unknown:
                raise SampleError(data.json_path, f"annotations of unknown categories {unknown}")
            names = [render_part(rng, data.classes[ann["category_id"]]) for ann in anns]
            masks = np.stack([decode_segmentation(a["segmentation"], *image.shape[:2], data.json_path) for a in anns])
        conversations = [turn(short_question(rng, name), seg_answer(rng)) for name in names]
        stem = os.path.splitext(os.path.basename(image_path))[0]
        return Sample(f"{data.name}/{stem}", image, conversations, masks, queries=[n.lower() for n in names])
