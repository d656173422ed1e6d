"""Command-line tools for custom data folders (format: `datasets.custom`, docs/custom_data.md).

    python -m datasets.custom_tools check DIR
    python -m datasets.custom_tools from_coco --instances instances.json --images IMAGE_DIR --out DIR [--absent 1]
    python -m datasets.custom_tools from_labelme --src LABELME_OR_REASONSEG_DIR --out DIR [--val_fraction 0.1]

`check` reads every record of a folder in full (images and masks) and lists the bad ones, by file and line.
`from_coco` turns a COCO instances file into records: per image, one question per category present (LISA's
question templates around the category name) with one `[SEG]` per instance; `--absent K` adds K no-target questions
about categories that are not in the image. `from_labelme` turns a folder of ReasonSeg or labelme JSON files beside
their images into records with PNG masks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import defaultdict

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.common import SampleError, decode_segmentation, read_json
from datasets.custom import SPLITS, check_folder, image_size, split_path
from datasets.reason_seg import TARGET, get_mask_from_json, shapes_to_mask
from datasets.templates import IMAGE_PLACEHOLDER, long_question, seg_answer, short_question
from model.processing import SEG_TOKEN
from utils.cli import HelpFormatter
from utils.masks import compressed_rle

logger = logging.getLogger(__name__)

NO_TARGET_ANSWER = "There is no {name} in this image."
LABELME_AREA_TYPES = (None, "polygon", "rectangle")  # labelme shape types that enclose an area


# ------------------------------------------------------------------------------------------------ writing
def seg_answers(rng: np.random.Generator, count: int) -> str:
    """A LISA answer with one `[SEG]` (count 1), or "Sure, they are [SEG], [SEG] and [SEG]." for several."""
    if count == 1:
        return seg_answer(rng)
    return f"Sure, they are {', '.join([SEG_TOKEN] * (count - 1))} and {SEG_TOKEN}."


def written(question: str) -> str:
    """A template question as the files hold it: without LISA's `<image>` line, which the readers put back."""
    return question.removeprefix(f"{IMAGE_PLACEHOLDER}\n")


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", formatter_class=HelpFormatter, help="read every record of a folder's splits in full; list the bad ones")
    check.add_argument("folder", help="a custom data folder (train.jsonl / val.jsonl / test.jsonl)")

    def output_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", required=True, help="custom data folder to write (created if needed)")
        sub.add_argument("--split", default="train", choices=SPLITS, help="split file to write, {split}.jsonl")
        sub.add_argument("--val_fraction", type=float, default=0.0,
                         help="put this seeded random fraction of the images into val.jsonl instead (0: none)")
        sub.add_argument("--copy_images", action="store_true",
                         help="copy the images into OUT/images/ (default: refer to them by a path relative to OUT)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the question/answer templates and the val split")

    coco = commands.add_parser("from_coco", formatter_class=HelpFormatter, help="a COCO instances JSON: one question per category present")
    coco.add_argument("--instances", required=True, help="COCO instances file (e.g. instances_train2017.json)")
    coco.add_argument("--images", required=True, help="folder the images' file_name is relative to")
    coco.add_argument("--absent", type=int, default=0,
                      help="per image, also ask about this many categories that are absent, with a no-target answer")
    output_flags(coco)

    labelme = commands.add_parser("from_labelme", formatter_class=HelpFormatter, help="a folder of ReasonSeg or labelme JSON files beside their images")
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
