"""Referring segmentation: refCLEF, refCOCO, refCOCO+, refCOCOg (`refs(unc|umd).p` + `instances.json`) and
gRefCOCO (`grefs(unc).p|.json`, several or no objects per expression), read by our own reader
(the data of the original's `utils/refer_seg_dataset.py`)."""

from __future__ import annotations

import logging
import os
import pickle
from collections import defaultdict

import numpy as np
import torch

from datasets.common import (
    SampleError,
    Sample,
    ValSample,
    check_size,
    choose_up_to,
    decode_segmentation,
    read_image,
    read_json,
    split_names,
)
from datasets.templates import seg_answer, short_question, turn, val_conversation

logger = logging.getLogger(__name__)

NO_TARGET = -1  # gRefCOCO's ann_id for an expression that refers to nothing
REFER_SEG_SETS = ("refclef", "refcoco", "refcoco+", "refcocog", "grefcoco")  # the folders under refer_seg/
REFER_SEG_DATA = "refclef||refcoco||refcoco+||refcocog"  # LISA's training mix of them


class RefDataset:
    """One referring data set under `refer_seg/{name}`: its expressions, images and annotations."""

    def __init__(self, refer_dir: str, name: str, split_by: str):
        self.name = name
        folder = os.path.join(refer_dir, name)
        self.instances_path = os.path.join(folder, "instances.json")
        self.refs_path = self._refs_file(folder, split_by)
        self.refs = self._read_refs(self.refs_path)
        instances = read_json(self.instances_path)
        if not isinstance(instances, dict) or not {"images", "annotations"} <= instances.keys():
            raise SampleError(self.instances_path, "not a COCO instances file (needs 'images', 'annotations')")
        self.images = {image["id"]: image for image in instances["images"]}
        self.anns = {ann["id"]: ann for ann in instances["annotations"]}
        sub = "saiapr_tc-12" if name == "refclef" else os.path.join("mscoco", "images", "train2014")
        self.image_dir = os.path.join(refer_dir, "images", sub)

    @staticmethod
    def _refs_file(folder: str, split_by: str) -> str:
        candidates = [f"refs({split_by}).p", f"grefs({split_by}).p", f"grefs({split_by}).json"]
        for candidate in candidates:
            if os.path.isfile(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
        raise FileNotFoundError(f"{folder}: none of {', '.join(candidates)}")

    @staticmethod
    def _read_refs(path: str) -> list[dict]:
        if path.endswith(".json"):
            refs = read_json(path)
        else:
            try:
                with open(path, "rb") as f:
                    refs = pickle.load(f)
            except UnicodeDecodeError:  # a Python 2 pickle with non-ASCII byte strings
                with open(path, "rb") as f:
                    refs = pickle.load(f, encoding="latin1")
            except (pickle.UnpicklingError, EOFError) as error:
                raise SampleError(path, f"unreadable refs pickle ({error})") from None
        if not isinstance(refs, list) or not all(isinstance(r, dict) and {"image_id", "ann_id", "sentences", "split"} <= r.keys() for r in refs):
            raise SampleError(path, "expected a list of refs with 'image_id', 'ann_id', 'sentences', 'split'")
        return refs

    def refs_by_image(self, split: str) -> dict[int, list[dict]]:
        """Refs of one split grouped by image id, in file order."""
        by_image = defaultdict(list)
        for ref in self.refs:
            if ref["split"] == split:
                by_image[ref["image_id"]].append(ref)
        return dict(by_image)

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self.images[image_id]["file_name"])

    def mask(self, ann_id: int | list[int], height: int, width: int) -> np.ndarray:
        """(height, width) bool mask of an expression: the union of its objects, empty for gRefCOCO's no-target."""
        ann_ids = ann_id if isinstance(ann_id, list) else [ann_id]
        mask = np.zeros((height, width), dtype=bool)
        if ann_ids == [NO_TARGET]:
            return mask
        for i in ann_ids:
            if i not in self.anns:
                raise SampleError(self.instances_path, f"no annotation with id {i}")
            mask |= decode_segmentation(self.anns[i]["segmentation"], height, width, self.instances_path)
        return mask

    def load(self, image_id: int) -> tuple[str, np.ndarray]:
        """Path and pixels of an image, refused when its size disagrees with instances.json."""
        path = self.image_path(image_id)
        image = read_image(path)
        info = self.images[image_id]
        check_size(self.instances_path, (info["height"], info["width"]), image, path)
        return path, image


def split_by_of(name: str) -> str:
    """The original's split convention: umd for refCOCOg, unc otherwise."""
    return "umd" if name == "refcocog" else "unc"


def _refer_dir(dataset_dir: str) -> str:
    # The original's validation wanted `--dataset_dir .../refer_seg`; accept both that and the data root.
    nested = os.path.join(dataset_dir, "refer_seg")
    return nested if os.path.isdir(nested) else dataset_dir


class ReferSegDataset:
    """Training referring segmentation over `refer_seg_data` (default `REFER_SEG_DATA`).

    Each draw: a data set uniformly, then a random image with train refs, then up to
    `num_classes_per_sample` of all the sentences of all its refs, each a short question.
    """

    def __init__(self, dataset_dir: str, refer_seg_data: str = REFER_SEG_DATA, num_classes_per_sample: int = 3):
        refer_dir = _refer_dir(dataset_dir)
        self.datasets = []
        for name in split_names(refer_seg_data):
            ref_dataset = RefDataset(refer_dir, name, split_by_of(name))
            by_image = ref_dataset.refs_by_image("train")
            if not by_image:
                raise SampleError(ref_dataset.refs_path, "no refs in the train split")
            self.datasets.append((ref_dataset, sorted(by_image), by_image))
        self.num_classes_per_sample = num_classes_per_sample

    def __len__(self) -> int:
        return sum(len(image_ids) for _, image_ids, _ in self.datasets)

    def sample(self, rng: np.random.Generator) -> Sample:
        ref_dataset, image_ids, by_image = self.datasets[rng.integers(len(self.datasets))]
        image_id = image_ids[rng.integers(len(image_ids))]
        pool = [(s["sent"], ref["ann_id"]) for ref in by_image[image_id] for s in ref["sentences"]]
        chosen = [pool[i] for i in choose_up_to(rng, len(pool), self.num_classes_per_sample)]
        path, image = ref_dataset.load(image_id)
        height, width = image.shape[:2]
        texts = [sent.strip() for sent, _ in chosen]
        masks = np.stack([ref_dataset.mask(ann_id, height, width) for _, ann_id in chosen])
        conversations = [turn(short_question(rng, text), seg_answer(rng)) for text in texts]
        stem = os.path.splitext(os.path.basename(path))[0]
        return Sample(f"{ref_dataset.name}/{stem}", image, conversations, masks, queries=[t.lower() for t in texts])


class ReferSegValDataset(torch.utils.data.Dataset):
    """A referring split named "dataset|splitBy|split" (e.g. "refcoco|unc|val", "grefcoco|unc|testA"):
    per image, one teacher-forced conversation for every sentence of every ref. gRefCOCO no-target
    expressions have an all-zero ground truth."""

    def __init__(self, dataset_dir: str, name: str):
        ds, split_by, split = name.split("|")
        self.dataset = RefDataset(_refer_dir(dataset_dir), ds, split_by)
        self.by_image = self.dataset.refs_by_image(split)
        if not self.by_image:
            raise SampleError(self.dataset.refs_path, f"no refs in split {split!r}")
        self.image_ids = sorted(self.by_image)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> ValSample:
        image_id = self.image_ids[index]
        path, image = self.dataset.load(image_id)
        height, width = image.shape[:2]
        pairs = [(s["sent"].strip().lower(), ref["ann_id"]) for ref in self.by_image[image_id] for s in ref["sentences"]]
        masks = np.stack([self.dataset.mask(ann_id, height, width) for _, ann_id in pairs])
        stem = os.path.splitext(os.path.basename(path))[0]
        return ValSample(
            sample_id=f"{self.dataset.name}/{stem}",
            image=image,
            conversations=[val_conversation(text, False) for text, _ in pairs],
            masks=masks,
            queries=[text for text, _ in pairs],
            gt=masks.astype(np.uint8),
            is_sentence=[False] * len(pairs),
        )
