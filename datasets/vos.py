"""Referring and reasoning video object segmentation: Ref-YouTube-VOS, MeViS, ReVOS and ReasonVOS read from their
real on-disk layouts, the training samples drawn from them and their validation expressions.

Layouts (ROOT is each data set's own folder; under `--dataset_dir` they are `VOS_FOLDERS`):

- Ref-YouTube-VOS (`refytvos`): `ROOT/meta_expressions/{train,valid,test}/meta_expressions.json`
  (`{"videos": {vid: {"expressions": {"0": {"exp", "obj_id": "1"}}, "frames": [...]}}}`), frames
  `ROOT/{train,valid}/JPEGImages/<vid>/<frame>.jpg`, training masks `ROOT/train/Annotations/<vid>/<frame>.png`
  (palette PNGs whose value is the object id; a frame without a PNG has no object) and, optional,
  `ROOT/train/meta.json` (the objects of each video). The public `valid` split is valid's videos minus test's, without
  masks.
- MeViS (`mevis`): `ROOT/{train,valid_u,valid}/JPEGImages/<vid>/<frame>.jpg`, `ROOT/<split>/meta_expressions.json`
  (`{"exp", "obj_id": [...], "anno_id": [...]}` per expression) and `ROOT/<split>/mask_dict.json`
  (`{anno_id: [COCO RLE or null per frame]}`; `valid` has none: no public masks). An expression's mask is the union
  of its anno_ids'; an empty anno_id list is an expression whose target is not in the video.
- ReVOS (`revos`): `ROOT/JPEGImages/<vid>/<frame>.jpg`, `ROOT/mask_dict.json`, `ROOT/meta_expressions_{train,valid}_.json`
  (MeViS's, plus `"type_id"`: 0 referring, 1 reasoning, 2 left out of every score).
- ReasonVOS (`reasonvos`, split `test`): `ROOT/JPEGImages/<vid>/<frame>.jpg`, `ROOT/Annotations/<vid>_<obj_id>/<frame>.png`
  (any non-zero pixel is the object) and `ROOT/meta_expressions.json`, whose expressions are a list of
  `{"obj_id", "exp_id", "exp_text", "is_sent"}`.

Masks are read one frame at a time, when asked for: videos can be long.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datasets.common import Sample, SampleError, choose_up_to, decode_segmentation, read_image, read_json, split_names
from datasets.templates import no_target_answer, seg_answer, turn, video_long_question, video_question, video_short_question
from utils.video import random_indices
from utils.images import displayed_size, load_image

logger = logging.getLogger(__name__)

VOS_SETS = ("refytvos", "mevis", "revos", "reasonvos")
VOS_SPLITS = {
    "refytvos": ("train", "valid", "test"),
    "mevis": ("train", "valid_u", "valid"),
    "revos": ("train", "valid"),
    "reasonvos": ("test",),
}
VOS_FOLDERS = {"refytvos": "refytvos", "mevis": "mevis", "revos": "revos", "reasonvos": "reasonvos"}  # under dataset_dir
VOS_DATA = "mevis||refytvos||revos"  # the training mix: each set's train split
FRAME_EXTENSION = ".jpg"
REVOS_REFERRING, REVOS_REASONING, REVOS_LEFT_OUT = 0, 1, 2  # ReVOS's type_id


# ------------------------------------------------------------------------------------------------- masks
def frame_size(path: str) -> tuple[int, int]:
    """(H, W) of a frame as `read_image` returns it, from its header."""
    try:
        with Image.open(path) as image:
            return displayed_size(image)
    except FileNotFoundError:
        raise SampleError(path, "frame not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise SampleError(path, f"cannot read frame ({error})") from None


def _read_png(path: str, key: str, height: int, width: int) -> np.ndarray | None:
    """The values of an annotation PNG, (height, width); None where there is no file."""
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("1", "L", "P", "I", "I;16"):
                image = image.convert("L")  # RGB(A) 0/255 masks
            values = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise SampleError(path, f"{key}: cannot read mask ({error})") from None
    if values.shape != (height, width):
        raise SampleError(path, f"{key}: mask of size {values.shape[1]}x{values.shape[0]} for a frame of {width}x{height}")
    return values


class PaletteMasks:
    """Ref-YouTube-VOS: `ann_dir/<frame>.png` holds object ids; the mask is where the value is one of `obj_ids`."""

    def __init__(self, ann_dir: str, obj_ids: tuple[int, ...]):
        self.ann_dir, self.obj_ids = ann_dir, obj_ids

    def mask(self, expression: VideoExpression, k: int, height: int, width: int) -> np.ndarray:
        values = _read_png(os.path.join(self.ann_dir, expression.frames[k] + ".png"), expression.key, height, width)
        if values is None:
            return np.zeros((height, width), dtype=bool)
        return np.isin(values, self.obj_ids)


class BinaryMasks:
    """ReasonVOS: `ann_dir/<frame>.png` is the object's own mask (any non-zero value)."""

    def __init__(self, ann_dir: str):
        self.ann_dir = ann_dir

    def mask(self, expression: VideoExpression, k: int, height: int, width: int) -> np.ndarray:
        values = _read_png(os.path.join(self.ann_dir, expression.frames[k] + ".png"), expression.key, height, width)
        if values is None:
            return np.zeros((height, width), dtype=bool)
        return values != 0


class MaskDict:
    """A `mask_dict.json` (MeViS, ReVOS), read once per process and shared by its expressions.

    It pickles as its path: an expression sent between processes (DataLoader workers) finds the one already read
    in the receiving process, or reads the file when first needed there.
    """

    _read: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __init__(self, path: str):
        self.path = path
        self._data: dict | None = None

    @classmethod
    def get(cls, path: str) -> MaskDict:
        path = os.path.abspath(path)
        try:
            stat = os.stat(path)
            key = (path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (path, None, None)
        found = cls._read.get(key)
        if found is None:
            found = cls._read[key] = cls(path)
        return found

    @property
    def data(self) -> dict:
        if self._data is None:
            data = read_json(self.path)
            if not isinstance(data, dict):
                raise SampleError(self.path, "expected {anno_id: [RLE or null per frame]}")
            self._data = data
        return self._data

    def __reduce__(self):
        return MaskDict.get, (self.path,)


class RleMasks:
    """MeViS / ReVOS: the union of the masks of `anno_ids` in a `MaskDict`; null is an empty frame."""

    def __init__(self, mask_dict: MaskDict, anno_ids: tuple[str, ...]):
        self.mask_dict, self.anno_ids = mask_dict, anno_ids

    def mask(self, expression: VideoExpression, k: int, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        for anno_id in self.anno_ids:
            rle = self.mask_dict.data[anno_id][k]
            if rle is None:
                continue
            try:
                mask |= decode_segmentation(rle, height, width, self.mask_dict.path)
            except (SampleError, TypeError, ValueError, KeyError) as error:
                reason = error.reason if isinstance(error, SampleError) else f"{type(error).__name__}: {error}"
                raise SampleError(self.mask_dict.path, f"{anno_id}[{k}] ({expression.key}, frame {expression.frames[k]}): {reason}") from None
        return mask


# ------------------------------------------------------------------------------------------- expressions
class ExpressionFrames:
    """The frames of an expression's video read one at a time, as `model.video.Frames` asks (`len`, `read(k)`)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        """Frame `index`, (H, W, 3) uint8 RGB."""
        return load_image(self.paths[index])

    def size(self, index: int) -> tuple[int, int]:
        """(H, W) of frame `index`, from its header."""
        return frame_size(self.paths[index])


@dataclass
class VideoExpression:
    """One expression about one video.

    frame_dir: the folder holding the video's frames; frames: their names without extension, in order.
    type_id: ReVOS's kind (0 referring, 1 reasoning, 2 left out of scores); None for the other sets.
    has_masks: False where the split has no public masks (Ref-YouTube-VOS valid/test, MeViS valid).
    is_sentence: ReasonVOS's flag (a sentence rather than a phrase); None elsewhere.
    mask_source: reads the ground truth of one frame (None without masks).
    """

    dataset: str
    video: str
    exp_id: str
    text: str
    frame_dir: str
    frames: list[str]
    type_id: int | None
    has_masks: bool
    is_sentence: bool | None = None
    mask_source: PaletteMasks | BinaryMasks | RleMasks | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Names the expression in messages: `"video <vid> expression <id>"`."""
        return f"video {self.video} expression {self.exp_id}"

    def frame_path(self, k: int) -> str:
        return os.path.join(self.frame_dir, self.frames[k] + FRAME_EXTENSION)

    def frames_reader(self) -> ExpressionFrames:
        """The video's frames, read when asked for (`model.video.ask_video`, `segment_video`)."""
        return ExpressionFrames([self.frame_path(k) for k in range(len(self.frames))])

    def mask(self, k: int) -> np.ndarray:
        """(H, W) bool ground truth on frame k: the union of the expression's objects, empty where none is there.

        Raises:
            SampleError: a bad frame or annotation, naming the file and key.
            ValueError: the split has no public masks.
        """
        if not self.has_masks or self.mask_source is None:
            raise ValueError(f"{self.dataset}: {self.key}: its split has no public masks")
        height, width = frame_size(self.frame_path(k))
        return self.mask_source.mask(self, k, height, width)

    def masks(self, indices=None) -> np.ndarray:
        """(T, H, W) bool ground truth on frames `indices` (all frames by default)."""
        indices = range(len(self.frames)) if indices is None else list(indices)
        if len(indices) == 0:
            if not self.has_masks:
                raise ValueError(f"{self.dataset}: {self.key}: its split has no public masks")
            return np.zeros((0, *frame_size(self.frame_path(0))), dtype=bool)
        return np.stack([self.mask(k) for k in indices])


def _skip(path: str, key: str, reason: str) -> None:
    logger.warning("%s: %s: %s; skipped", path, key, reason)


def _videos(meta_path: str) -> dict:
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise SampleError(meta_path, "expected {'videos': {video: {...}}}")
    return meta["videos"]


def _frames(meta_path: str, vid: str, entry: object) -> list[str] | None:
    """The frame names of a video entry, or None (warned) for a bad entry."""
    key = f"videos/{vid}"
    if not isinstance(entry, dict):
        _skip(meta_path, key, "not an object")
        return None
    frames = entry.get("frames")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) and f for f in frames):
        _skip(meta_path, key, "'frames' is not a non-empty list of frame names")
        return None
    if len(set(frames)) != len(frames):
        _skip(meta_path, key, "repeated frame names")
        return None
    return frames


def _frame_dir(meta_path: str, vid: str, *candidates: str) -> str | None:
    for folder in candidates:
        if os.path.isdir(folder):
            return folder
    _skip(meta_path, f"videos/{vid}", f"frames folder {candidates[0]} not found")
    return None


def _expressions(meta_path: str, vid: str, entry: dict, text_field: str) -> Iterator[tuple[str, str, dict, str]]:
    """(its id or list position, its key for messages, the record, its text) of each usable expression record of a
    video entry: its `expressions` map by id (ReasonVOS: a list); bad records are warned about and skipped."""
    items = entry.get("expressions")
    if not isinstance(items, (dict, list)):
        _skip(meta_path, f"videos/{vid}", "'expressions' is neither an object nor a list")
        return
    for exp_id, item in items.items() if isinstance(items, dict) else enumerate(items):
        key = f"videos/{vid}/expressions/{exp_id}"
        if not isinstance(item, dict):
            _skip(meta_path, key, "not an object")
            continue
        text = _text(meta_path, key, item.get(text_field))
        if text is not None:
            yield str(exp_id), key, item, text


def _text(meta_path: str, key: str, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        _skip(meta_path, key, "no expression text")
        return None
    return value.strip()


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _load_refytvos(root: str, split: str) -> tuple[list[VideoExpression], str]:
    meta_path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    videos = _videos(meta_path)
    has_masks = split_has_masks("refytvos", root, split)
    excluded: set[str] = set()
    if split == "valid":  # the public valid split: valid's videos that are not test's
        excluded = set(_videos(os.path.join(root, "meta_expressions", "test", "meta_expressions.json")))
    objects: dict = {}
    meta_json = os.path.join(root, "train", "meta.json")
    if has_masks and os.path.isfile(meta_json):
        try:
            objects = _videos(meta_json)
        except SampleError as error:
            logger.warning("%s; not used to check object ids", error)
    expressions = []
    for vid, entry in videos.items():
        if vid in excluded:
            continue
        frames = _frames(meta_path, vid, entry)
        if frames is None:
            continue
        folders = [os.path.join(root, split, "JPEGImages", vid)]
        if split == "test":
            folders.append(os.path.join(root, "valid", "JPEGImages", vid))
        frame_dir = _frame_dir(meta_path, vid, *folders)
        if frame_dir is None:
            continue
        ann_dir = os.path.join(root, "train", "Annotations", vid)
        if has_masks and not os.path.isdir(ann_dir):
            _skip(meta_path, f"videos/{vid}", f"annotation folder {ann_dir} not found")
            continue
        known = None
        if objects and isinstance(objects.get(vid), dict) and isinstance(objects[vid].get("objects"), dict):
            known = {_as_int(k) for k in objects[vid]["objects"]}
        for exp_id, key, item, text in _expressions(meta_path, vid, entry, "exp"):
            source = None
            if has_masks:
                obj_id = _as_int(item.get("obj_id"))
                if obj_id is None or obj_id <= 0:
                    _skip(meta_path, key, f"obj_id {item.get('obj_id')!r} is not a positive object id")
                    continue
                if known is not None and obj_id not in known:
                    _skip(meta_path, key, f"obj_id {obj_id} is not an object of the video in {meta_json}")
                    continue
                source = PaletteMasks(ann_dir, (obj_id,))
            expressions.append(VideoExpression("refytvos", vid, exp_id, text, frame_dir, frames, None, has_masks, mask_source=source))
    return expressions, meta_path


def _load_mevis_like(name: str, root: str, split: str) -> tuple[list[VideoExpression], str]:
    if name == "mevis":
        meta_path = os.path.join(root, split, "meta_expressions.json")
        mask_path = os.path.join(root, split, "mask_dict.json")
        frames_root = os.path.join(root, split, "JPEGImages")
    else:
        meta_path = os.path.join(root, f"meta_expressions_{split}_.json")
        mask_path = os.path.join(root, "mask_dict.json")
        frames_root = os.path.join(root, "JPEGImages")
    has_masks = split_has_masks(name, root, split)
    videos = _videos(meta_path)
    mask_dict = MaskDict.get(mask_path) if has_masks else None
    entries = mask_dict.data if mask_dict is not None else {}
    expressions = []
    for vid, entry in videos.items():
        frames = _frames(meta_path, vid, entry)
        if frames is None:
            continue
        frame_dir = _frame_dir(meta_path, vid, os.path.join(frames_root, vid))
        if frame_dir is None:
            continue
        for exp_id, key, item, text in _expressions(meta_path, vid, entry, "exp"):
            type_id = None
            if name == "revos":
                type_id = _as_int(item.get("type_id"))
                if type_id not in (REVOS_REFERRING, REVOS_REASONING, REVOS_LEFT_OUT):
                    _skip(meta_path, key, f"type_id {item.get('type_id')!r} is none of 0, 1, 2")
                    continue
            source = None
            if has_masks:
                raw = item.get("anno_id")
                anno_ids = [_as_int(a) for a in raw] if isinstance(raw, list) else None
                if anno_ids is None or None in anno_ids:
                    _skip(meta_path, key, f"anno_id {raw!r} is not a list of annotation ids")
                    continue
                anno_ids = list(dict.fromkeys(str(a) for a in anno_ids))
                bad = next((a for a in anno_ids if a not in entries), None)
                if bad is not None:
                    _skip(meta_path, key, f"anno_id {bad} is not in {mask_path}")
                    continue
                bad = next((a for a in anno_ids if not isinstance(entries[a], list) or len(entries[a]) != len(frames)), None)
                if bad is not None:
                    count = len(entries[bad]) if isinstance(entries[bad], list) else type(entries[bad]).__name__
                    _skip(meta_path, key, f"anno_id {bad} of {mask_path} holds {count} masks for {len(frames)} frames")
                    continue
                source = RleMasks(mask_dict, tuple(anno_ids))
            expressions.append(VideoExpression(name, vid, exp_id, text, frame_dir, frames, type_id, has_masks, mask_source=source))
    return expressions, meta_path


def _load_reasonvos(root: str, split: str) -> tuple[list[VideoExpression], str]:
    meta_path = os.path.join(root, "meta_expressions.json")
    videos = _videos(meta_path)
    expressions = []
    for vid, entry in videos.items():
        frames = _frames(meta_path, vid, entry)
        if frames is None:
            continue
        frame_dir = _frame_dir(meta_path, vid, os.path.join(root, "JPEGImages", vid))
        if frame_dir is None:
            continue
        for position, key, item, text in _expressions(meta_path, vid, entry, "exp_text"):
            obj_id = _as_int(item.get("obj_id"))
            if obj_id is None:
                _skip(meta_path, key, f"obj_id {item.get('obj_id')!r} is not an object id")
                continue
            ann_dir = os.path.join(root, "Annotations", f"{vid}_{obj_id}")
            if not os.path.isdir(ann_dir):
                _skip(meta_path, key, f"annotation folder {ann_dir} not found")
                continue
            exp_id = str(item.get("exp_id", position))
            is_sentence = bool(item["is_sent"]) if "is_sent" in item else None
            expressions.append(VideoExpression("reasonvos", vid, exp_id, text, frame_dir, frames, None, True, is_sentence, BinaryMasks(ann_dir)))
    return expressions, meta_path


def split_has_masks(name: str, root: str, split: str) -> bool:
    """Whether split `split` of data set `name` (root folder `root`) has ground-truth masks to score against: not
    Ref-YouTube-VOS's valid and test, nor MeViS's valid (unless its mask_dict.json is there)."""
    if name == "refytvos":
        return split == "train"
    if name == "mevis" and split == "valid":
        return os.path.isfile(os.path.join(root, split, "mask_dict.json"))
    return True


def load_video_expressions(name: str, root: str, split: str) -> list[VideoExpression]:
    """Every usable expression of split `split` of the data set `name` (one of `VOS_SETS`) whose own root folder is
    `root`, in file order.

    Bad records (a video without its frames folder, an expression without text, an unknown object or annotation
    id, annotations of the wrong frame count) are skipped with a warning naming the file and the record's key.

    Raises:
        ValueError: an unknown data set or split, a missing or malformed annotation file, or a split with no usable
            expression (naming the file).
    """
    if name not in VOS_SETS:
        raise ValueError(f"video data set {name!r}: not one of {', '.join(VOS_SETS)}")
    if split not in VOS_SPLITS[name]:
        raise ValueError(f"{name}: no split {split!r}; its splits are {', '.join(VOS_SPLITS[name])}")
    if name == "refytvos":
        expressions, meta_path = _load_refytvos(root, split)
    elif name == "reasonvos":
        expressions, meta_path = _load_reasonvos(root, split)
    else:
        expressions, meta_path = _load_mevis_like(name, root, split)
    if not expressions:
        raise ValueError(f"{meta_path}: no usable expression in split {split!r} of {name}")
    return expressions


def parse_video_set(spec: str) -> tuple[str, str, str]:
    """`"mevis|DIR|valid_u"` -> ("mevis", "DIR", "valid_u"): a data set of `VOS_SETS`, its root folder, a split."""
    parts = spec.split("|")
    if len(parts) != 3 or parts[0] not in VOS_SETS or not parts[1] or parts[2] not in VOS_SPLITS.get(parts[0], ()):
        splits = "; ".join(f"{n}: {', '.join(s)}" for n, s in VOS_SPLITS.items())
        raise ValueError(f"video data set {spec!r}: expected 'name|ROOT|split' with a name of {', '.join(VOS_SETS)} and one of its splits ({splits})")
    return parts[0], parts[1], parts[2]


# ---------------------------------------------------------------------------------------------- data sets
def _is_sentence(expression: VideoExpression) -> bool:
    return bool(expression.is_sentence) or expression.type_id == REVOS_REASONING


def eval_question(expression: VideoExpression) -> str:
    """The question evaluation asks about an expression: the first template of the kind training asks with (a long
    question for a sentence: ReVOS reasoning, ReasonVOS `is_sent`; a short one for a phrase)."""
    return video_question(expression.text, _is_sentence(expression))


class VideoSegDataset:
    """Training referring / reasoning video segmentation over `vos_data` (default `VOS_DATA`): entries "name" (its
    train split) or "name|split", read from `dataset_dir/VOS_FOLDERS[name]`.

    Each draw: a data set uniformly, a video uniformly, up to `num_classes_per_sample` of its expressions, and
    `num_frames` frames spread over the whole video (a random frame in each of `num_frames` equal segments; every
    frame of a shorter video). The `Sample`'s image is the (T, H, W, 3) stack of these frames and its masks
    (n, T, H, W), one per expression that is in some sampled frame (a short question, or a long one for a reasoning
    sentence, answered with one `[SEG]`); an expression whose object is in none of them is answered "not in the
    video" without `[SEG]` or mask. ReVOS expressions of type 2 are not trained on.
    """

    def __init__(self, dataset_dir: str, vos_data: str = VOS_DATA, num_frames: int = 8, num_classes_per_sample: int = 3):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, not {num_frames}")
        self.num_frames = num_frames
        self.num_classes_per_sample = num_classes_per_sample
        self.sets: list[tuple[str, list[list[VideoExpression]]]] = []
        for entry in split_names(vos_data):
            name, _, split = entry.partition("|")
            if name not in VOS_SETS:
                raise ValueError(f"vos_data {vos_data!r}: {name!r} is not one of {', '.join(VOS_SETS)}")
            split = split or "train"
            by_video: dict[str, list[VideoExpression]] = {}
            for expression in load_video_expressions(name, os.path.join(dataset_dir, VOS_FOLDERS[name]), split):
                if expression.has_masks and expression.type_id != REVOS_LEFT_OUT:
                    by_video.setdefault(expression.video, []).append(expression)
            if not by_video:
                raise ValueError(f"vos_data {entry!r}: no expression with masks to train on")
            self.sets.append((name, list(by_video.values())))

    def __len__(self) -> int:
        return sum(len(videos) for _, videos in self.sets)

    def sample(self, rng: np.random.Generator) -> Sample:
        name, videos = self.sets[rng.integers(len(self.sets))]
        expressions = videos[rng.integers(len(videos))]
        chosen = [expressions[i] for i in choose_up_to(rng, len(expressions), self.num_classes_per_sample)]
        video = chosen[0]
        indices = random_indices(rng, len(video.frames), self.num_frames)
        frames = []
        for k in indices:
            path = video.frame_path(k)
            frame = read_image(path)
            if frames and frame.shape != frames[0].shape:
                raise SampleError(path, f"frame of {frame.shape[1]}x{frame.shape[0]} in a video of {frames[0].shape[1]}x{frames[0].shape[0]} frames")
            frames.append(frame)
        image = np.stack(frames)

        conversations, masks = [], []
        for expression in chosen:
            mask = expression.masks(indices)
            question = video_long_question(rng, expression.text) if _is_sentence(expression) else video_short_question(rng, expression.text)
            if mask.any():
                conversations.append(turn(question, seg_answer(rng)))
                masks.append(mask)
            else:
                conversations.append(turn(question, no_target_answer(rng)))
        masks = np.stack(masks) if masks else np.zeros((0, *image.shape[:3]), dtype=bool)
        return Sample(f"{name}/{video.video}", image, conversations, masks, queries=[e.text for e in chosen])


class VideoValDataset(torch.utils.data.Dataset):
    """The expressions of one split, one item each (ReVOS type 2 included: its scorer leaves them out)."""

    def __init__(self, name: str, root: str, split: str):
        self.name, self.root, self.split = name, root, split
        self.expressions = load_video_expressions(name, root, split)

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> VideoExpression:
        return self.expressions[index]
