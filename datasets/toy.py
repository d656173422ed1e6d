"""A toy corpus of coloured shapes, written in every real LISA data layout.

    python -m datasets.toy --out DIR [--seed S]

Each image shows 2-4 non-overlapping shapes of distinct kinds (circle, square, triangle, star) and distinct
colours (red, green, blue, yellow) on a grey background, 64-96 px a side. The same scenes are written as
ReasonSeg (train/val/test, short and long queries, ignore regions, several polygons per target, float
coordinates, explanatory answers), refCLEF / refCOCO / refCOCO+ / refCOCOg pickles and gRefCOCO json with
polygon and RLE segmentations (multi-object and no-target expressions), ADE20K, COCO-Stuff, Mapillary v2.0,
PACO-LVIS, PASCAL-Part and LLaVA-Instruct, so `--dataset_dir DIR` works unchanged for every loader; and as
custom data (`DIR/custom`: train/val JSONL with PNG, RLE and polygon masks, several-`[SEG]` and no-target answers).
Short videos of 2-3 shapes, each moving left, right, up or down or staying still (6-12 frames named 00000, 00005, ...),
are written as MeViS (`DIR/mevis/{train,valid_u,valid}`), Ref-YouTube-VOS (`DIR/refytvos`: train with palette PNG
annotations, valid/test without masks) and ReVOS (`DIR/revos`: train/valid, with type_ids), with expressions about
appearance, reasoning about it and motion, several-object and no-target expressions (MeViS, ReVOS); MeViS valid_u's
videos also as mp4 files (`DIR/videos/mevis/valid_u/<video>.mp4`).

`generate` also returns the generator's own ground truth (`ToyTruth`): for every sample id the loaders
produce, the mask of every query, computed while drawing and independently of the loaders (for videos, `ToyVideo`s).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from datasets.class_names import ADE20K_CLASSES, COCOSTUFF_CLASSES
from utils.video import write_video
from utils.cli import HelpFormatter
from utils.masks import compressed_rle

KINDS = ("circle", "square", "triangle", "star")
COLOURS = {"red": (215, 40, 35), "green": (40, 165, 60), "blue": (35, 75, 215), "yellow": (235, 205, 35)}
# (short phrase, long sentence) naming a shape by reasoning about its kind or colour.
KIND_REASONS = {
    "circle": ("the round shape", "Which shape in this picture is round and has no corners?"),
    "square": ("the shape with four corners", "Which shape in this picture has four corners?"),
    "triangle": ("the shape with three corners", "Which shape in this picture has three corners?"),
    "star": ("the shape with five points", "Which shape in this picture has five points?"),
}
COLOUR_REASONS = {
    "red": ("the shape coloured like fire", "Which shape has the colour of fire?"),
    "green": ("the shape coloured like grass", "Which shape is coloured like grass?"),
    "blue": ("the shape coloured like the sky", "Which shape has the colour of the sky?"),
    "yellow": ("the shape coloured like the sun", "Which shape is coloured like the sun?"),
}
POSITIONS = {  # word -> (axis, sign): the shape whose centre is extreme along the axis
    "leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1),
}
# Class names of each label-map / COCO data set for the four kinds.
ADE20K_NAMES = {"circle": "ball", "square": "box", "triangle": "tent", "star": "flag"}
COCOSTUFF_NAMES = {"circle": "sports ball", "square": "book", "triangle": "tent", "star": "kite"}
COCOSTUFF_BACKGROUND = "wall-other"  # a "-" class: LISA ignores it
MAPILLARY_LABELS = [*(k.capitalize() for k in KINDS), "Unlabeled"]
MAPILLARY_COLOURS = [(220, 20, 60), (0, 170, 30), (0, 60, 100), (250, 170, 30), (0, 0, 0)]
PACO_OBJECTS = {"circle": "circle", "square": "square_(shape)", "triangle": "triangle", "star": "star_(shape)"}
PARTS = ("top", "bottom")
# Videos: each shape moves in a straight line, or stays; a phrase names a motion only where one shape has it.
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
MOTION_PHRASES = {
    "left": "the shape that moves left", "right": "the shape that moves right", "up": "the shape that moves up",
    "down": "the shape that moves down", "still": "the shape that stays still",
}
GROUP_PHRASES = {"moving": "the shapes that move", "still": "the shapes that stay still"}  # several objects
FRAME_STEP = 5  # frame names 00000, 00005, 00010, ...: Ref-YouTube-VOS keeps every 5th frame
# Ref-YouTube-VOS annotations are palette PNGs: index 0 background, index k object k.
OBJECT_PALETTE = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99]
VIDEO_JPEG_QUALITY = 85  # video frames are many: smaller files keep the corpus small


@dataclass
class Shape:
    kind: str
    colour: str
    cx: float
    cy: float
    r: float

    def polygon(self) -> np.ndarray:
        """(k, 2) float vertices (x, y)."""
        if self.kind == "square":
            s = self.r * 0.8
            corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
        elif self.kind == "triangle":
            corners = [(0, -self.r), (self.r * 0.95, self.r * 0.75), (-self.r * 0.95, self.r * 0.75)]
        elif self.kind == "star":
            angles = -np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, self.r, self.r * 0.45)
            corners = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        else:
            angles = np.arange(20) * 2 * np.pi / 20
            corners = np.stack([self.r * np.cos(angles), self.r * np.sin(angles)], 1)
        return np.asarray(corners, dtype=np.float64) + (self.cx, self.cy)


@dataclass
class Scene:
    height: int
    width: int
    background: tuple[int, int, int]
    shapes: list[Shape]

    def extreme(self, word: str) -> Shape:
        axis, sign = POSITIONS[word]
        return min(self.shapes, key=lambda s: sign * (s.cx, s.cy)[axis])


@dataclass
class ToyVideo:
    """The generator's truth of one toy video: its frames, its shapes (kind, colour, motion, the frames they are on)
    and its expressions, each naming the shapes it means (none: a target that is not in the video)."""

    dataset: str
    split: str
    video: str
    frames: list[str]  # frame names, in order
    height: int
    width: int
    kinds: list[str]
    colours: list[str]
    motions: list[str]  # a key of MOTIONS per shape
    present: np.ndarray  # (shapes, frames) bool
    packed: np.ndarray = field(repr=False)  # (shapes, frames, H, ceil(W / 8)): the masks, bit-packed
    expressions: dict[str, tuple[int, ...]] = field(default_factory=dict)  # text -> shape indices
    type_ids: dict[str, int] = field(default_factory=dict)  # ReVOS: text -> type_id
    has_masks: bool = True  # whether the split's masks are written
    frame_dir: str = ""  # the frames' folder, relative to the corpus root
    video_file: str | None = None  # the same frames as an mp4, relative to the corpus root (MeViS valid_u only)

    def shape_masks(self) -> np.ndarray:
        """(shapes, frames, H, W) bool."""
        return np.unpackbits(self.packed, axis=-1, count=self.width).astype(bool)

    def mask(self, text: str) -> np.ndarray:
        """(frames, H, W) bool: the union of the shapes an expression means."""
        shapes = self.shape_masks()
        return shapes[list(self.expressions[text])].any(axis=0) if self.expressions[text] else np.zeros(shapes.shape[1:], bool)


@dataclass
class ToyTruth:
    """The generator's ground truth: `masks[sample_id][query]` is the (H, W) mask of a query (bool, or uint8
    {0,1,255} for ReasonSeg; for custom data a (k, H, W) bool stack, one per `[SEG]`, k = 0 for no target),
    `vqa[sample_id]` the expected chat messages, `explanations[image file]`, `videos["{dataset}/{video}"]` each
    toy video (`ToyVideo`: the id of `VideoSegDataset`'s samples)."""

    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    vqa: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    videos: dict[str, ToyVideo] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- drawing
def random_scene(rng: np.random.Generator, scale: float = 1.0) -> Scene:
    """2-4 shapes of distinct kinds and colours, 3 px apart, with distinct centre coordinates so that
    "leftmost" etc. are unambiguous; `scale` enlarges the whole scene (for speed benchmarks)."""
    scene = _random_scene(rng)
    if scale != 1.0:
        scene.height, scene.width = round(scene.height * scale), round(scene.width * scale)
        for shape in scene.shapes:
            shape.cx, shape.cy, shape.r = shape.cx * scale, shape.cy * scale, shape.r * scale
    return scene


def _random_scene(rng: np.random.Generator, count: int | None = None) -> Scene:
    height, width = (int(v) for v in rng.integers(64, 97, size=2))
    count = int(rng.integers(2, 5)) if count is None else count
    while True:
        kinds = rng.permutation(KINDS)[:count]
        colours = rng.permutation(list(COLOURS))[:count]
        shapes = []
        for kind, colour in zip(kinds, colours):
            r = float(rng.uniform(8, 13))
            for _ in range(50):
                cx, cy = float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1))
                if all(np.hypot(cx - s.cx, cy - s.cy) > r + s.r + 3 and abs(cx - s.cx) > 3 and abs(cy - s.cy) > 3 for s in shapes):
                    shapes.append(Shape(str(kind), str(colour), cx, cy, r))
                    break
        if len(shapes) == count:
            grey = int(rng.integers(150, 200))
            return Scene(height, width, (grey, grey, grey), shapes)


def random_video(rng: np.random.Generator) -> tuple[Scene, list[str], list[float], np.ndarray]:
    """A scene of 2-3 shapes of distinct kinds and colours on the first frame, each shape's motion and speed (px per
    frame: a moving shape crosses 30-45% of the frame over the video, so that it moves more than one of the tiny bases'
    16-px image tokens), and which of the 6-12 frames each is on, (shapes, frames) bool. Every shape stays wholly inside the frame
    and 3 px from the others on every frame; in one video of three, one shape is missing from a few first or last
    frames."""
    height, width = (int(v) for v in rng.integers(64, 97, size=2))
    count, length = int(rng.integers(2, 4)), int(rng.integers(6, 13))
    while True:
        kinds = rng.permutation(KINDS)[:count]
        colours = rng.permutation(list(COLOURS))[:count]
        shapes, motions, speeds = [], [], []
        for kind, colour in zip(kinds, colours):
            motion = str(rng.choice(list(MOTIONS)))
            (dx, dy), r = MOTIONS[motion], float(rng.uniform(7, 11))
            side = width if dx else height
            speed = 0.0 if motion == "still" else float(rng.uniform(0.3, 0.45)) * side / (length - 1)
            travel = speed * (length - 1)
            x_lo, x_hi = r + 1 + max(0, -dx * travel), width - r - 1 - max(0, dx * travel)
            y_lo, y_hi = r + 1 + max(0, -dy * travel), height - r - 1 - max(0, dy * travel)
            if x_lo >= x_hi or y_lo >= y_hi:
                break
            for _ in range(50):
                cx, cy = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
                if _apart(cx, cy, dx * speed, dy * speed, r, shapes, motions, speeds, length):
                    shapes.append(Shape(str(kind), str(colour), cx, cy, r))
                    motions.append(motion)
                    speeds.append(speed)
                    break
            else:
                break
        if len(shapes) == count:
            break
    present = np.ones((count, length), dtype=bool)
    if rng.random() < 1 / 3:
        gone, hidden = int(rng.integers(1, length // 3 + 1)), int(rng.integers(count))
        if rng.random() < 0.5:
            present[hidden, :gone] = False  # comes into view late
        else:
            present[hidden, length - gone:] = False  # leaves early
    grey = int(rng.integers(150, 200))
    return Scene(height, width, (grey, grey, grey), shapes), motions, speeds, present


def _apart(cx: float, cy: float, vx: float, vy: float, r: float, shapes: list[Shape], motions: list[str], speeds: list[float], length: int) -> bool:
    """Whether a shape starting at (cx, cy) with velocity (vx, vy) keeps 3 px from each placed shape on every frame."""
    steps = np.arange(length)
    for shape, motion, speed in zip(shapes, motions, speeds):
        ox, oy = MOTIONS[motion]
        gap = np.hypot(cx + (vx - ox * speed) * steps - shape.cx, cy + (vy - oy * speed) * steps - shape.cy)
        if (gap <= r + shape.r + 3).any():
            return False
    return True


def moved(shape: Shape, motion: str, speed: float, frame: int) -> Shape:
    """The shape on frame `frame` (0: where it starts)."""
    dx, dy = MOTIONS[motion]
    return Shape(shape.kind, shape.colour, shape.cx + dx * speed * frame, shape.cy + dy * speed * frame, shape.r)


def cv2_mask(height: int, width: int, polygon: np.ndarray) -> np.ndarray:
    """The ReasonSeg rasterization: coordinates truncated, 1-px outline plus fill."""
    mask = np.zeros((height, width), dtype=np.uint8)
    points = np.trunc(polygon).astype(np.int32)[None]
    cv2.polylines(mask, points, True, 1, 1)
    cv2.fillPoly(mask, points, 1)
    return mask.astype(bool)


def coco_polygon_mask(height: int, width: int, flat: list[float]) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([flat], height, width)).any(axis=2)


def paint(scene: Scene, masks: list[np.ndarray], rng: np.random.Generator, colours: list[tuple] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the background with mild noise, each mask filled with its shape's colour."""
    image = np.empty((scene.height, scene.width, 3), dtype=np.float32)
    image[:] = scene.background
    image += rng.normal(0, 4, size=image.shape)
    colours = colours or [COLOURS[s.colour] for s in scene.shapes]
    for mask, colour in zip(masks, colours):
        image[mask] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def save_jpg(path: str, image: np.ndarray, quality: int = 95) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)


def save_png(path: str, label: np.ndarray, palette: list[int] | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path)


def write_json(path: str, data: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def flat_polygon(shape: Shape) -> list[float]:
    return [round(float(v), 2) for v in shape.polygon().ravel()]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]]))) if len(flat) else []
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


# ------------------------------------------------------------------------------------------------- text
def descriptions(scene: Scene, shape: Shape, positional: bool = True) -> list[tuple[str, str]]:
    """(short phrase, long sentence) pairs that single out `shape` in `scene`."""
    pairs = [
        (f"the {shape.colour} {shape.kind}", f"Can you find the {shape.colour} {shape.kind} in this picture?"),
        (f"the {shape.kind}", f"Where is the {shape.kind} in this picture?"),
        (f"the {shape.colour} shape", f"Which shape in this picture is {shape.colour}?"),
        KIND_REASONS[shape.kind],
        COLOUR_REASONS[shape.colour],
    ]
    if positional:
        for word in POSITIONS:
            if scene.extreme(word) is shape:
                pairs.append((f"the {word} shape", f"Which shape is the {word} one in this picture?"))
    return pairs


def explanation(shape: Shape) -> str:
    return f"The {shape.colour} {shape.kind} is {KIND_REASONS[shape.kind][0][4:]} and is {COLOUR_REASONS[shape.colour][0][10:]}."


def video_expressions(
    rng: np.random.Generator, video: ToyVideo, groups: bool, absent: bool, sentences: bool = False
) -> list[tuple[str, tuple[int, ...], int]]:
    """(text, shapes meant, ReVOS type_id) of a toy video: per shape two of its appearance phrases (those reasoning
    about kind or colour are type 1, as sentences with `sentences`) and its motion where no other shape shares it;
    with `groups`, "the shapes that move" / "the shapes that stay still" where two or more do; with `absent`, in half
    the videos a colour or kind that is not in the video (no shape). Texts are distinct within a video."""
    out = []
    for j, (kind, colour, motion) in enumerate(zip(video.kinds, video.colours, video.motions)):
        reasons = [KIND_REASONS[kind], COLOUR_REASONS[colour]]
        if sentences:
            reasons = [(long.replace("in this picture", "in this video"),) for _, long in reasons]
        appearance = [(f"the {colour} {kind}", 0), (f"the {kind}", 0), (f"the {colour} shape", 0), *((r[0], 1) for r in reasons)]
        for i in rng.permutation(len(appearance))[:2]:
            out.append((appearance[i][0], (j,), appearance[i][1]))
        if video.motions.count(motion) == 1:
            out.append((MOTION_PHRASES[motion], (j,), 0))
    if groups:
        moving = tuple(j for j, m in enumerate(video.motions) if m != "still")
        still = tuple(j for j, m in enumerate(video.motions) if m == "still")
        if len(moving) >= 2:
            out.append((GROUP_PHRASES["moving"], moving, 0))
        if len(still) >= 2:
            out.append((GROUP_PHRASES["still"], still, 0))
    if absent and rng.random() < 0.5:
        missing = [f"the {c} shape" for c in COLOURS if c not in video.colours] + [f"the {k}" for k in KINDS if k not in video.kinds]
        out.append((missing[int(rng.integers(len(missing)))], (), 0))
    return out


# ---------------------------------------------------------------------------------------------- writers
class ToyWriter:
    def __init__(self, out: str, seed: int, scale: float = 1.0):
        self.out = out
        self.seed = seed
        self.scale = scale
        self.truth = ToyTruth()

    def rng(self, name: str) -> np.random.Generator:
        # One stream per data set, so changing one data set leaves the others as they were.
        return np.random.default_rng([self.seed, *name.encode()])

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    # ReasonSeg ------------------------------------------------------------------------------------------
    def reason_seg(self, counts: dict[str, int]) -> None:
        rng = self.rng("reason_seg")
        explanatory = []
        for split, count in counts.items():
            for i in range(count):
                stem = f"toy_{split}_{i:04d}"
                scene = random_scene(rng, self.scale)
                target = scene.shapes[int(rng.integers(len(scene.shapes)))]
                others = [s for s in scene.shapes if s is not target]
                shapes_json, target_mask = [], np.zeros((scene.height, scene.width), dtype=bool)
                if target.kind == "square" and rng.random() < 0.5:
                    # Several polygons for one target: the square as two rectangles with a 2 px gap.
                    s = target.r * 0.8
                    halves = [
                        np.array([(-s, -s), (-1, -s), (-1, s), (-s, s)]) + (target.cx, target.cy),
                        np.array([(1, -s), (s, -s), (s, s), (1, s)]) + (target.cx, target.cy),
                    ]
                else:
                    halves = [target.polygon()]
                for polygon in halves:
                    shapes_json.append({"label": "target", "points": polygon.round(3).tolist(), "shape_type": "polygon"})
                    target_mask |= cv2_mask(scene.height, scene.width, polygon)
                ignore_mask = np.zeros_like(target_mask)
                if others and rng.random() < 0.4:
                    # An ignore region: another shape the annotator left out of the evaluation.
                    polygon = others[0].polygon()
                    shapes_json.append({"label": "ignore", "points": polygon.round(3).tolist(), "shape_type": "polygon"})
                    ignore_mask |= cv2_mask(scene.height, scene.width, polygon)
                if rng.random() < 0.3:
                    # A small ignore patch inside the target: smaller polygons are painted last and win.
                    d = target.r * 0.3
                    polygon = np.array([(-d, -d), (d, -d), (d, d), (-d, d)]) + (target.cx + 0.5, target.cy + 0.5)
                    shapes_json.append({"label": "Ignore_occluded", "points": polygon.round(3).tolist(), "shape_type": "polygon"})
                    ignore_mask |= cv2_mask(scene.height, scene.width, polygon)
                if rng.random() < 0.3:
                    # A "flag" polygon over the whole image: the original skips these.
                    w, h = scene.width - 1, scene.height - 1
                    shapes_json.append({"label": "flag", "points": [[0, 0], [w, 0], [w, h], [0, h]], "shape_type": "polygon"})
                rng.shuffle(shapes_json)

                is_sentence = bool(rng.random() < 0.5)
                pairs = descriptions(scene, target)
                chosen = [pairs[j] for j in rng.permutation(len(pairs))[: int(rng.integers(1, 6))]]
                texts = [long if is_sentence else short for short, long in chosen]
                write_json(self.path("reason_seg", "ReasonSeg", split, f"{stem}.json"), {"text": texts, "is_sentence": is_sentence, "shapes": shapes_json})
                masks = [cv2_mask(scene.height, scene.width, s.polygon()) for s in others]
                colours = [COLOURS[s.colour] for s in others] + [COLOURS[target.colour]]
                save_jpg(self.path("reason_seg", "ReasonSeg", split, f"{stem}.jpg"), paint(scene, masks + [target_mask], rng, colours))

                gt = target_mask.astype(np.uint8)
                gt[ignore_mask] = 255
                self.truth.masks[f"reason_seg/{split}/{stem}"] = {text: gt for text in texts}
                if split == "train" and rng.random() < 0.5:
                    explanatory.append({"image": f"{stem}.jpg", "query": texts[0], "outputs": explanation(target)})
                    self.truth.explanations[f"{stem}.jpg"] = explanation(target)
        write_json(self.path("reason_seg", "ReasonSeg", "explanatory", "train.json"), explanatory)

    # Referring segmentation -----------------------------------------------------------------------------
    def refer_seg(self, name: str, splits: dict[str, int], split_by: str, first_image_id: int) -> None:
        rng = self.rng(name)
        grefs = name == "grefcoco"
        images, annotations, refs = [], [], []
        image_id, ann_id, ref_id, sent_id = first_image_id, 1, 1, 1
        for split, count in splits.items():
            for _ in range(count):
                scene = random_scene(rng, self.scale)
                h, w = scene.height, scene.width
                if name == "refclef":
                    file_name = f"{image_id % 100:02d}/images/{image_id}.jpg"
                    image_path = self.path("refer_seg", "images", "saiapr_tc-12", file_name)
                else:
                    file_name = f"COCO_train2014_{image_id:012d}.jpg"
                    image_path = self.path("refer_seg", "images", "mscoco", "images", "train2014", file_name)
                masks, ann_ids = [], []
                for k, shape in enumerate(scene.shapes):
                    flat = flat_polygon(shape)
                    style = (k + image_id) % 3
                    if style == 0:
                        segmentation, mask = [flat], coco_polygon_mask(h, w, flat)
                    else:
                        mask = cv2_mask(h, w, shape.polygon())
                        segmentation = compressed_rle(mask) if style == 1 else uncompressed_rle(mask)
                    ys, xs = np.nonzero(mask)
                    annotations.append({
                        "id": ann_id, "image_id": image_id, "category_id": KINDS.index(shape.kind) + 1,
                        "segmentation": segmentation, "area": int(mask.sum()), "iscrowd": int(style != 0),
                        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                    })
                    masks.append(mask)
                    ann_ids.append(ann_id)
                    ann_id += 1
                images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
                save_jpg(image_path, paint(scene, masks, rng))

                truth = self.truth.masks.setdefault(f"{name}/{os.path.splitext(os.path.basename(file_name))[0]}", {})
                expressions = []  # (ann_id or list, sentences, mask)
                for k, shape in enumerate(scene.shapes):
                    pairs = descriptions(scene, shape, positional=name != "refcoco+")  # refCOCO+ bans location words
                    # Referring expressions are bare noun phrases ("red circle"); refCOCOg's are longer.
                    shorts = [short.removeprefix("the ") for short, _ in pairs]
                    if name == "refcocog":
                        shorts = [f"a {short} in the picture" for short in shorts]
                    chosen = [shorts[j] for j in rng.permutation(len(shorts))[: int(rng.integers(1, 4))]]
                    expressions.append(([ann_ids[k]] if grefs else ann_ids[k], chosen, masks[k]))
                if grefs:
                    a, b = rng.permutation(len(scene.shapes))[:2]
                    sa, sb = scene.shapes[a], scene.shapes[b]
                    expressions.append(([ann_ids[a], ann_ids[b]], [f"{sa.colour} {sa.kind} and {sb.colour} {sb.kind}"], masks[a] | masks[b]))
                    absent = next(f"{c} {sa.kind}" for c in COLOURS if c != sa.colour)
                    expressions.append(([-1], [absent], np.zeros((h, w), dtype=bool)))
                for target, sentences, mask in expressions:
                    ref = {
                        "ref_id": ref_id, "image_id": image_id, "ann_id": target, "split": split,
                        "file_name": file_name, "sent_ids": list(range(sent_id, sent_id + len(sentences))),
                        "sentences": [{"raw": s, "sent": s, "tokens": s.split(), "sent_id": sent_id + j} for j, s in enumerate(sentences)],
                        "category_id": [1] if grefs else 1,
                    }
                    if grefs:
                        ref["no_target"] = target == [-1]
                    refs.append(ref)
                    truth.update({s: mask for s in sentences})
                    ref_id += 1
                    sent_id += len(sentences)
                image_id += 1
        folder = self.path("refer_seg", name)
        categories = [{"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(KINDS)]
        write_json(os.path.join(folder, "instances.json"), {"images": images, "annotations": annotations, "categories": categories})
        if grefs:
            write_json(os.path.join(folder, f"grefs({split_by}).json"), refs)
        else:
            with open(os.path.join(folder, f"refs({split_by}).p"), "wb") as f:
                pickle.dump(refs, f, protocol=2)

    # Label maps -----------------------------------------------------------------------------------------
    def label_maps(self, name: str, count: int) -> None:
        rng = self.rng(name)
        for i in range(count):
            scene = random_scene(rng, self.scale)
            masks = [cv2_mask(scene.height, scene.width, s.polygon()) for s in scene.shapes]
            image = paint(scene, masks, rng)
            truth = {}
            if name == "ade20k":
                background = 1 if i % 2 else 0  # "wall" or "other" (0, ignored)
                label = np.full((scene.height, scene.width), background)
                values = {k: ADE20K_CLASSES.index(n) + 1 for k, n in ADE20K_NAMES.items()}
                names = ADE20K_NAMES
                stem = f"ADE_train_{i + 1:08d}"
                image_path = self.path("ade20k", "images", "training", f"{stem}.jpg")
                label_path = self.path("ade20k", "annotations", "training", f"{stem}.png")
            elif name == "cocostuff":
                label = np.full((scene.height, scene.width), COCOSTUFF_CLASSES.index(COCOSTUFF_BACKGROUND))
                label[:2] = 255  # an unlabeled strip
                values = {k: COCOSTUFF_CLASSES.index(n) for k, n in COCOSTUFF_NAMES.items()}
                names = COCOSTUFF_NAMES
                stem = f"{100001 + i:012d}"
                image_path = self.path("coco", "train2017", f"{stem}.jpg")
                label_path = self.path("cocostuff", "train2017", f"{stem}.png")
            else:
                label = np.full((scene.height, scene.width), len(MAPILLARY_LABELS) - 1)
                values = {k: KINDS.index(k) for k in KINDS}
                names = {k: k for k in KINDS}
                stem = f"toy{i:06d}"
                image_path = self.path("mapillary", "training", "images", f"{stem}.jpg")
                label_path = self.path("mapillary", "training", "v2.0", "labels", f"{stem}.png")
            for shape, mask in zip(scene.shapes, masks):
                label[mask] = values[shape.kind]
                truth[names[shape.kind]] = mask
            if name == "ade20k" and i % 2:
                truth["wall"] = label == 1
            if name == "mapillary":
                truth["unlabeled"] = label == len(MAPILLARY_LABELS) - 1
            save_jpg(image_path, image)
            # Mapillary's labels are palette PNGs coloured as in the config.
            save_png(label_path, label, [c for colour in MAPILLARY_COLOURS for c in colour] if name == "mapillary" else None)
            self.truth.masks[f"{name}/{stem}"] = truth
        if name == "mapillary":
            labels = [
                {"name": f"toy--{n.lower()}", "readable": n, "color": list(c), "instances": True, "evaluate": True}
                for n, c in zip(MAPILLARY_LABELS, MAPILLARY_COLOURS)
            ]
            write_json(self.path("mapillary", "config_v2.0.json"), {"labels": labels, "version": "2.0", "mapping": "public"})
            for split in ("validation", "testing"):
                os.makedirs(self.path("mapillary", split, "images"), exist_ok=True)

    # COCO-format part data ------------------------------------------------------------------------------
    def parts(self, name: str, count: int) -> None:
        rng = self.rng(name)
        paco = name == "paco_lvis"
        categories, category_ids = [], {}
        for kind in KINDS:
            obj = PACO_OBJECTS[kind] if paco else kind
            entries = ([obj] if paco else []) + [f"{obj}:{part}" for part in PARTS]
            for entry in entries:
                category_ids[entry] = len(categories) + 1
                categories.append({"id": len(categories) + 1, "name": entry, "supercategory": "shape"})
        images, annotations = [], []
        for i in range(count):
            scene = random_scene(rng, self.scale)
            h, w = scene.height, scene.width
            image_id = 200001 + i if paco else i + 1
            if paco:
                file_name = f"train2017/{image_id:012d}.jpg"
                image_path = self.path("coco", file_name)
            else:
                file_name = f"2008_{image_id:06d}.jpg"
                image_path = self.path("vlpart", "pascal_part", "VOCdevkit", "VOC2010", "JPEGImages", file_name)
            masks, truth = [], {}
            for shape in scene.shapes:
                flat = flat_polygon(shape)
                mask = coco_polygon_mask(h, w, flat)
                masks.append(mask)
                obj = PACO_OBJECTS[shape.kind] if paco else shape.kind
                if paco:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[obj], "segmentation": [flat], "area": int(mask.sum()), "iscrowd": 0})
                    truth[shape.kind] = mask
                part = PARTS[int(rng.integers(2))]
                rows = np.arange(h)[:, None] < shape.cy
                part_mask = mask & (rows if part == "top" else ~rows)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[f"{obj}:{part}"], "segmentation": compressed_rle(part_mask), "area": int(part_mask.sum()), "iscrowd": 0})
                truth[f"{shape.kind} {part}"] = truth[f"the {part} of the {shape.kind}"] = part_mask
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            save_jpg(image_path, paint(scene, masks, rng))
            self.truth.masks[f"{name}/{os.path.splitext(os.path.basename(file_name))[0]}"] = truth
        json_path = self.path("vlpart", "paco", "annotations", "paco_lvis_v1_train.json") if paco else self.path("vlpart", "pascal_part", "train.json")
        write_json(json_path, {"images": images, "annotations": annotations, "categories": categories})

    # Custom data ----------------------------------------------------------------------------------------
    def custom(self, counts: dict[str, int]) -> None:
        """`custom/{split}.jsonl`: per image, a query about one shape (a PNG mask), one about two shapes (two
        `[SEG]`: a compressed RLE and a polygon mask) and, when a kind is missing, a no-target query about it."""
        rng = self.rng("custom")
        for split, count in counts.items():
            records = []
            for i in range(count):
                stem = f"toy_custom_{split}_{i:04d}"
                scene = random_scene(rng, self.scale)
                h, w = scene.height, scene.width
                masks = [cv2_mask(h, w, s.polygon()) for s in scene.shapes]
                save_jpg(self.path("custom", "images", f"{stem}.jpg"), paint(scene, masks, rng))
                one, two = rng.permutation(len(scene.shapes))[:2]
                short, long = descriptions(scene, scene.shapes[one])[int(rng.integers(5))]
                save_png(self.path("custom", "masks", f"{stem}.png"), masks[one].astype(np.uint8) * 255)
                a, b = scene.shapes[one], scene.shapes[two]
                flat = flat_polygon(b)
                conversations = [
                    {"question": long, "answer": "It is [SEG].", "masks": [f"masks/{stem}.png"]},
                    {"question": f"Please segment the {a.colour} {a.kind} and the {b.colour} {b.kind}.",
                     "answer": "Sure, they are [SEG] and [SEG].", "masks": [compressed_rle(masks[one]), {"polygons": [flat]}]},
                ]
                truth = {long: masks[one][None], conversations[1]["question"]: np.stack([masks[one], coco_polygon_mask(h, w, flat)])}
                missing = [k for k in KINDS if k not in {s.kind for s in scene.shapes}]
                if missing:
                    kind = missing[int(rng.integers(len(missing)))]
                    question = f"Where is the {kind} in this picture?"
                    conversations.append({"question": question, "answer": f"There is no {kind} in this image.", "masks": []})
                    truth[question] = np.zeros((0, h, w), bool)
                rng.shuffle(conversations)
                records.append({"image": f"images/{stem}.jpg", "conversations": conversations})
                self.truth.masks[f"custom/{stem}"] = truth
            os.makedirs(self.path("custom"), exist_ok=True)
            with open(self.path("custom", f"{split}.jsonl"), "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)

    # Videos ---------------------------------------------------------------------------------------------
    def video(self, rng: np.random.Generator, dataset: str, split: str, vid: str, frame_dir: str, video_file: str | None = None) -> ToyVideo:
        """Draws a video of moving shapes, writes its frames `frame_dir/<frame>.jpg` (and, given `video_file`, as an
        mp4 too) and records its truth."""
        scene, motions, speeds, present = random_video(rng)
        h, w = scene.height, scene.width
        count, length = present.shape
        names = [f"{FRAME_STEP * f:05d}" for f in range(length)]
        masks = np.zeros((count, length, h, w), dtype=bool)
        colours = [COLOURS[s.colour] for s in scene.shapes]
        images = []
        for f in range(length):
            for j, (shape, motion, speed) in enumerate(zip(scene.shapes, motions, speeds)):
                if present[j, f]:
                    masks[j, f] = cv2_mask(h, w, moved(shape, motion, speed, f).polygon())
            images.append(paint(scene, list(masks[:, f]), rng, colours))
            save_jpg(os.path.join(frame_dir, f"{names[f]}.jpg"), images[-1], quality=VIDEO_JPEG_QUALITY)
        if video_file is not None:
            write_video(video_file, images, fps=6)
        video = ToyVideo(
            dataset, split, vid, names, h, w, [s.kind for s in scene.shapes], [s.colour for s in scene.shapes], motions,
            present, np.packbits(masks, axis=-1), frame_dir=os.path.relpath(frame_dir, self.out),
            video_file=None if video_file is None else os.path.relpath(video_file, self.out),
        )
        self.truth.videos[f"{dataset}/{vid}"] = video
        return video

    def mevis_like(self, name: str, counts: dict[str, int]) -> None:
        """MeViS (`mevis/<split>/{JPEGImages, meta_expressions.json, mask_dict.json}`; `valid` without masks) or ReVOS
        (`revos/{JPEGImages, mask_dict.json, meta_expressions_<split>_.json}`, with type_ids) of toy videos: RLE masks
        (null where a shape is out of view, some uncompressed), several-object and no-target expressions."""
        rng = self.rng(name)
        revos = name == "revos"
        anno_id, shared_masks = 0, {}
        for split, count in counts.items():
            with_masks = revos or split != "valid"
            base = self.path(name) if revos else self.path(name, split)
            mask_dict = shared_masks if revos else {}
            videos = {}
            for i in range(count):
                vid = f"toy_{split}_{i:04d}"
                video_file = self.path("videos", name, split, f"{vid}.mp4") if (name, split) == ("mevis", "valid_u") else None
                video = self.video(rng, name, split, vid, os.path.join(base, "JPEGImages", vid), video_file)
                video.has_masks = with_masks
                shape_masks = video.shape_masks()
                ids = list(range(anno_id, anno_id + len(video.kinds)))
                anno_id += len(ids)
                if with_masks:
                    for j, a in enumerate(ids):
                        encode = uncompressed_rle if rng.random() < 0.1 else compressed_rle
                        mask_dict[str(a)] = [encode(m) if video.present[j, f] else None for f, m in enumerate(shape_masks[j])]
                expressions = {}
                for e, (text, shapes, type_id) in enumerate(video_expressions(rng, video, groups=True, absent=True, sentences=revos)):
                    video.expressions[text] = shapes
                    entry = {"exp": text}
                    if with_masks:
                        entry.update(obj_id=list(shapes), anno_id=[ids[j] for j in shapes])
                    if revos:
                        entry["type_id"] = video.type_ids[text] = 2 if rng.random() < 0.1 else type_id
                    expressions[str(e)] = entry
                videos[vid] = {"expressions": expressions, "frames": video.frames}
            if revos:
                write_json(os.path.join(base, f"meta_expressions_{split}_.json"), {"videos": videos})
            else:
                write_json(os.path.join(base, "meta_expressions.json"), {"videos": videos})
                if with_masks:
                    write_json(os.path.join(base, "mask_dict.json"), mask_dict)
        if revos:
            write_json(self.path(name, "mask_dict.json"), shared_masks)

    def refytvos(self, counts: dict[str, int]) -> None:
        """Ref-YouTube-VOS of toy videos: `refytvos/train/{JPEGImages, Annotations (palette PNGs), meta.json}`,
        `refytvos/valid/JPEGImages` (the valid and test videos) and `refytvos/meta_expressions/{train,valid,test}`
        (valid lists the test videos too; neither has masks)."""
        rng = self.rng("refytvos")
        listed = {"train": {}, "valid": {}, "test": {}}
        objects = {}
        for split, count in counts.items():
            for i in range(count):
                vid = f"toy_{split}_{i:04d}"
                frame_dir = self.path("refytvos", "train" if split == "train" else "valid", "JPEGImages", vid)
                video = self.video(rng, "refytvos", split, vid, frame_dir)
                video.has_masks = split == "train"
                expressions = {}
                for e, (text, shapes, _) in enumerate(video_expressions(rng, video, groups=False, absent=False)):
                    video.expressions[text] = shapes
                    expressions[str(e)] = {"exp": text, "obj_id": str(shapes[0] + 1)} if video.has_masks else {"exp": text}
                entry = {"expressions": expressions, "frames": video.frames}
                if split == "train":
                    shape_masks = video.shape_masks()
                    for f, frame in enumerate(video.frames):
                        label = np.zeros((video.height, video.width), dtype=np.uint8)
                        for j in range(len(video.kinds)):
                            label[shape_masks[j, f]] = j + 1
                        save_png(self.path("refytvos", "train", "Annotations", vid, f"{frame}.png"), label, OBJECT_PALETTE)
                    objects[vid] = {"objects": {
                        str(j + 1): {"category": kind, "frames": [frame for f, frame in enumerate(video.frames) if video.present[j, f]]}
                        for j, kind in enumerate(video.kinds)
                    }}
                    listed["train"][vid] = entry
                else:
                    listed["valid"][vid] = entry  # the valid file lists the test videos too
                    if split == "test":
                        listed["test"][vid] = entry
        for split, videos in listed.items():
            write_json(self.path("refytvos", "meta_expressions", split, "meta_expressions.json"), {"videos": videos})
        write_json(self.path("refytvos", "train", "meta.json"), {"videos": objects})

    # VQA ------------------------------------------------------------------------------------------------
    def vqa(self, count: int) -> None:
        rng = self.rng("vqa")
        items = []
        for i in range(count):
            scene = random_scene(rng, self.scale)
            stem = f"{300001 + i:012d}"
            masks = [cv2_mask(scene.height, scene.width, s.polygon()) for s in scene.shapes]
            save_jpg(self.path("coco", "train2017", f"{stem}.jpg"), paint(scene, masks, rng))
            listing = ", ".join(f"a {s.colour} {s.kind}" for s in scene.shapes)
            shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
            word = str(rng.choice(list(POSITIONS)))
            extreme = scene.extreme(word)
            rounds = [
                ("How many shapes are in this image?", f"There are {len(scene.shapes)} shapes: {listing}."),
                (f"What colour is the {shape.kind}?", f"The {shape.kind} is {shape.colour}."),
                (f"Which shape is the {word} one?", f"The {word} shape is the {extreme.colour} {extreme.kind}."),
            ][: int(rng.integers(1, 4))]
            question = rounds[0][0]
            first = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
            conversations = []
            for j, (q, a) in enumerate(rounds):
                conversations += [{"from": "human", "value": first if j == 0 else q}, {"from": "gpt", "value": a}]
            items.append({"id": stem, "image": f"{stem}.jpg", "conversations": conversations})
            messages = [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": rounds[0][1]}]
            for q, a in rounds[1:]:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            self.truth.vqa[f"llava_instruct_150k/{stem}"] = messages
        write_json(self.path("llava_dataset", "llava_instruct_150k.json"), items)


def generate(out: str, seed: int = 0, progress: bool = False, scale: float = 1.0, train_factor: int = 1) -> ToyTruth:
    """Writes the toy corpus under `out` and returns its ground truth; `scale` multiplies image sizes,
    `train_factor` the number of training images of every family (a model trained on the default few dozen
    memorises them instead of generalising to the val split)."""
    writer = ToyWriter(out, seed, scale)
    k = train_factor
    unc = {"train": 12 * k, "val": 6, "testA": 4, "testB": 4}
    jobs = [
        lambda: writer.reason_seg({"train": 40 * k, "val": 100, "test": 60}),
        lambda: writer.refer_seg("refclef", unc, "unc", 1),
        lambda: writer.refer_seg("refcoco", unc, "unc", 1001),
        lambda: writer.refer_seg("refcoco+", unc, "unc", 2001),
        lambda: writer.refer_seg("refcocog", {"train": 12 * k, "val": 6, "test": 6}, "umd", 3001),
        lambda: writer.refer_seg("grefcoco", unc, "unc", 4001),
        lambda: writer.label_maps("ade20k", 20 * k),
        lambda: writer.label_maps("cocostuff", 20 * k),
        lambda: writer.label_maps("mapillary", 20 * k),
        lambda: writer.parts("paco_lvis", 20 * k),
        lambda: writer.parts("pascal_part", 20 * k),
        lambda: writer.vqa(30 * k),
        lambda: writer.custom({"train": 20 * k, "val": 20}),
        lambda: writer.mevis_like("mevis", {"train": 10 * k, "valid_u": 12, "valid": 3}),
        lambda: writer.refytvos({"train": 10 * k, "valid": 6, "test": 4}),
        lambda: writer.mevis_like("revos", {"train": 6 * k, "valid": 8}),
    ]
    for job in tqdm(jobs, desc="toy corpus", disable=not progress):
        job()
    return writer.truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the corpus into (the --dataset_dir of the scripts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor (12 gives ~1024-px images)")
    parser.add_argument("--train_factor", type=int, default=1,
                        help="multiplies the number of training images of every family (val/test unchanged)")
    args = parser.parse_args()
    generate(args.out, args.seed, progress=True, scale=args.scale, train_factor=args.train_factor)
    print(f"toy corpus written to {args.out}")


if __name__ == "__main__":
    main()
