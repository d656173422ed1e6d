"""Video input and the video segmentation data sets: `VideoReader` on files and frame folders, frame indices, the
readers of Ref-YouTube-VOS, MeViS, ReVOS and ReasonVOS on small sets written here in their real layouts (checked
against what was written, bad records named), the training samples, and the toy corpus' videos against the
generator's own truth."""

from __future__ import annotations

import json
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.common import SampleError, read_image
from datasets.hybrid import DATASET, DEFAULT_RATES, FAMILIES, HybridDataset
from datasets.templates import ANSWER_LIST, VIDEO_NO_TARGET_ANSWER_LIST
from datasets.toy import COLOURS, MOTIONS, generate, uncompressed_rle
from utils.video import VideoError, VideoReader, random_indices, uniform_indices, write_video
from datasets.vos import (
    VOS_DATA,
    VOS_SETS,
    VideoExpression,
    VideoSegDataset,
    VideoValDataset,
    load_video_expressions,
    parse_video_set,
)
from utils.masks import compressed_rle


# --------------------------------------------------------------------------------------------- writing
def frame_image(k: int, height: int = 36, width: int = 48) -> np.ndarray:
    """A smooth frame that differs from frame to frame (codec-friendly)."""
    y, x = np.mgrid[0:height, 0:width]
    red = 30 + x * 150 // width + 6 * k
    green = 40 + y * 150 // height
    blue = np.full_like(x, (25 * k) % 200 + 30)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def write_json(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def write_frames(folder, names, height=36, width=48, ext=".jpg") -> None:
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(frame_image(k, height, width)).save(os.path.join(folder, name + ext), quality=95)


def box(height, width, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def save_palette_png(path, label: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99])
    image.save(path)


def warned(caplog, *parts: str) -> bool:
    return any(all(p in record.getMessage() for p in parts) for record in caplog.records if record.levelno == logging.WARNING)


def frame_indices(sample_frames: np.ndarray, expression: VideoExpression) -> list[int]:
    """Which frames of the video a sample holds (frames differ, and both sides decode the same JPEG files)."""
    frames = [read_image(expression.frame_path(k)) for k in range(len(expression.frames))]
    indices = []
    for frame in sample_frames:
        matches = [k for k, f in enumerate(frames) if np.array_equal(f, frame)]
        assert len(matches) == 1
        indices.append(matches[0])
    return indices


# ------------------------------------------------------------------------------------------ VideoReader
def test_reader_file_and_folder_agree(tmp_path):
    frames = [frame_image(k, 48, 64) for k in range(12)]
    assert write_video(tmp_path / "clip.mp4", iter(frames), fps=12.5) == 12
    folder = tmp_path / "clip_frames"
    folder.mkdir()
    for k, frame in enumerate(frames):  # names that sort wrongly as text: 1, 2, ..., 10, 11, 12
        Image.fromarray(frame).save(folder / f"{k + 1}.jpg", quality=95)
    (folder / ".hidden.jpg").write_bytes(b"not an image")  # macOS resource forks and the like are skipped
    (folder / "notes.txt").write_text("not a frame")

    video, stills = VideoReader(str(tmp_path / "clip.mp4")), VideoReader(str(folder))
    assert (video.name, len(video), video.frame_names[:2], video.fps) == ("clip", 12, ["00000", "00001"], 12.5)
    assert (stills.name, len(stills), stills.frame_names[:3], stills.fps) == ("clip_frames", 12, ["1", "2", "3"], None)
    for k in [0, 5, 1, 11, 3, 3, 10, -1, 7, 2]:  # forward, backward, repeated and negative indices
        a, b = video.read(k), stills.read(k)
        assert a.shape == b.shape == (48, 64, 3) and a.dtype == b.dtype == np.uint8
        assert np.abs(a.astype(int) - frames[k]).mean() < 6  # lossy codecs: close, not equal
        assert np.abs(b.astype(int) - frames[k]).mean() < 3
    for k, (a, b) in enumerate(zip(video, stills)):
        np.testing.assert_array_equal(a, video.read(k))
        assert np.abs(a.astype(int) - b).mean() < 6
    assert sum(1 for _ in video) == 12
    with pytest.raises(IndexError):
        video.read(12)

    # Without seeking (a container whose seek cannot be trusted) the frames are the same.
    sequential = VideoReader(str(tmp_path / "clip.mp4"))
    sequential._seekable = False
    for k in [9, 2, 11, 0]:
        np.testing.assert_array_equal(sequential.read(k), video.read(k))
    # A reader pickles without its open capture and reads on in the new process.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(video)).read(4), video.read(4))


def test_write_video_pads_odd_sizes_and_refuses_nothing(tmp_path):
    frames = [frame_image(k, 35, 47) for k in range(3)]
    assert write_video(str(tmp_path / "odd.mp4"), frames, fps=5) == 3
    reader = VideoReader(str(tmp_path / "odd.mp4"))
    assert reader.read(0).shape == (36, 48, 3)
    assert write_video(str(tmp_path / "odd.webm"), frames, fps=5) == 3  # VP8, which browsers play
    assert len(VideoReader(str(tmp_path / "odd.webm"))) == 3
    with pytest.raises(ValueError, match="no frames"):
        write_video(str(tmp_path / "none.mp4"), [], fps=5)
    with pytest.raises(ValueError, match="frame 1"):
        write_video(str(tmp_path / "mixed.mp4"), [frames[0], frame_image(1, 20, 20)], fps=5)


def test_reader_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    zero = tmp_path / "zero.mp4"  # a writer closed before any frame
    writer = cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    writer.release()
    text = tmp_path / "clip.txt"
    text.write_text("hello")
    for path, message in [
        (corrupt, "cannot be opened"), (empty, "without frames"), (zero, "cannot be opened|without any decodable frame"),
        (text, "not a video"),
        (tmp_path / "missing.mp4", "no such"),
    ]:
        with pytest.raises(VideoError, match=message) as error:
            VideoReader(str(path))
        assert str(path) in str(error.value)

    folder = tmp_path / "frames"
    write_frames(str(folder), ["00000", "00001", "00002"])
    (folder / "00001.jpg").write_bytes(b"\xff\xd8 broken")
    reader = VideoReader(str(folder))
    reader.read(0)
    with pytest.raises(VideoError, match="frame 1") as error:
        reader.read(1)
    assert str(folder / "00001.jpg") in str(error.value)
    assert pickle.loads(pickle.dumps(error.value)).path == error.value.path


@pytest.mark.parametrize("length", [0, 1, 5, 7, 8, 9, 16, 17, 100, 1001])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_uniform_and_random_indices(length, count):
    indices = uniform_indices(length, count)
    assert indices == sorted(set(indices)) and len(indices) == min(length, count)
    if length <= count:
        assert indices == list(range(length))
    else:
        for i, k in enumerate(indices):  # the centre of segment i, floored
            centre = (i + 0.5) * length / count
            assert k <= centre < k + 1
    rng = np.random.default_rng(length * 10 + count)
    for _ in range(20):
        drawn = random_indices(rng, length, count)
        assert drawn == sorted(set(drawn)) and len(drawn) == min(length, count)
        if length > count:
            assert all(i * length / count - 1 < k < (i + 1) * length / count for i, k in enumerate(drawn))
    if length >= 2 * count:  # offsets vary inside the segments
        assert len({tuple(random_indices(rng, length, count)) for _ in range(20)}) > 1


# -------------------------------------------------------------------------------------- Ref-YouTube-VOS
def write_refytvos(root) -> dict:
    """Two usable training videos (palette PNGs, non-contiguous frames, a frame without PNG, a corrupt PNG) and bad
    records; valid/test files. Returns the labels written: {vid: {frame: label}}."""
    h, w = 36, 48
    labels = {
        "vidA": {"00000": box(h, w, 2, 10, 3, 12) * 1 + box(h, w, 20, 30, 20, 40) * 2,
                 "00005": box(h, w, 4, 12, 5, 14) * 1 + box(h, w, 22, 32, 20, 40) * 2,
                 "00010": None},  # no PNG: nothing annotated there
        "vidC": {"00000": box(h, w, 0, 5, 0, 5) * 1, "00001": "corrupt"},
    }
    frames = {"vidA": ["00000", "00005", "00010"], "vidB": ["00000"], "vidC": ["00000", "00001"]}
    for vid in ("vidA", "vidC"):
        write_frames(os.path.join(root, "train", "JPEGImages", vid), frames[vid])
        for frame, label in labels[vid].items():
            path = os.path.join(root, "train", "Annotations", vid, frame + ".png")
            if isinstance(label, np.ndarray):
                save_palette_png(path, label)
            elif label == "corrupt":
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(b"\x89PNG\r\n\x1a\n broken")
    meta = {"videos": {
        "vidA": {"expressions": {"0": {"exp": "a red box", "obj_id": "1"}, "1": {"exp": "the lower box", "obj_id": "2"},
                                 "2": {"exp": "a ghost", "obj_id": "3"}, "3": {"obj_id": "1"}}, "frames": frames["vidA"]},
        "vidB": {"expressions": {"0": {"exp": "gone", "obj_id": "1"}}, "frames": frames["vidB"]},  # no frames folder
        "vidC": {"expressions": {"0": {"exp": "a corner", "obj_id": "1"}}, "frames": frames["vidC"]},
    }}
    write_json(os.path.join(root, "meta_expressions", "train", "meta_expressions.json"), meta)
    write_json(os.path.join(root, "train", "meta.json"), {"videos": {
        "vidA": {"objects": {"1": {"category": "box", "frames": ["00000", "00005"]}, "2": {"category": "box", "frames": ["00000", "00005"]}}},
        "vidC": {"objects": {"1": {"category": "box", "frames": ["00000"]}}},
    }})
    valid = {vid: {"expressions": {"0": {"exp": f"the thing in {vid}"}}, "frames": ["00000", "00005"]} for vid in ("v1", "v2", "v3")}
    write_json(os.path.join(root, "meta_expressions", "valid", "meta_expressions.json"), {"videos": valid})
    write_json(os.path.join(root, "meta_expressions", "test", "meta_expressions.json"), {"videos": {"v2": valid["v2"]}})
    for vid in valid:
        write_frames(os.path.join(root, "valid", "JPEGImages", vid), ["00000", "00005"])
    return labels


def test_refytvos_reader(tmp_path, caplog):
    root = str(tmp_path / "refytvos")
    labels = write_refytvos(root)
    meta_path = os.path.join(root, "meta_expressions", "train", "meta_expressions.json")
    with caplog.at_level(logging.WARNING):
        expressions = load_video_expressions("refytvos", root, "train")
    assert [(e.video, e.exp_id, e.text) for e in expressions] == [("vidA", "0", "a red box"), ("vidA", "1", "the lower box"), ("vidC", "0", "a corner")]
    assert warned(caplog, meta_path, "videos/vidB", "frames folder")
    assert warned(caplog, meta_path, "videos/vidA/expressions/2", "obj_id 3")
    assert warned(caplog, meta_path, "videos/vidA/expressions/3", "no expression text")
    first, second, corner = expressions
    assert first.frames == ["00000", "00005", "00010"] and first.type_id is None and first.has_masks
    assert first.frame_path(1) == os.path.join(root, "train", "JPEGImages", "vidA", "00005.jpg")
    for expression, obj_id in ((first, 1), (second, 2)):
        masks = expression.masks()
        assert masks.shape == (3, 36, 48) and masks.dtype == bool
        for k, frame in enumerate(expression.frames[:2]):
            np.testing.assert_array_equal(masks[k], labels["vidA"][frame] == obj_id)
        assert not masks[2].any()  # no PNG for frame 00010
    np.testing.assert_array_equal(first.masks([1]), first.masks()[1:2])
    np.testing.assert_array_equal(corner.mask(0), labels["vidC"]["00000"] == 1)
    with pytest.raises(SampleError, match="expression 0") as error:
        corner.mask(1)
    assert error.value.path == os.path.join(root, "train", "Annotations", "vidC", "00001.png")


def test_refytvos_valid_is_valid_minus_test(tmp_path):
    root = str(tmp_path / "refytvos")
    write_refytvos(root)
    valid = load_video_expressions("refytvos", root, "valid")
    assert [e.video for e in valid] == ["v1", "v3"] and not any(e.has_masks for e in valid)
    with pytest.raises(ValueError, match="no public masks"):
        valid[0].mask(0)
    test = load_video_expressions("refytvos", root, "test")  # its frames sit with valid's
    assert [e.video for e in test] == ["v2"] and os.path.isfile(test[0].frame_path(0)) and not test[0].has_masks


# ------------------------------------------------------------------------------------------------ MeViS
def write_mevis(root, split="train") -> dict:
    """One video of 3 non-contiguous frames: anno 10 (RLE, null, list-form counts), anno 11 (null, RLE, RLE of the
    wrong size), anno 12 (frame count wrong); expressions: single, multi-object, no target, unknown anno_id, wrong
    count, bad anno list. Returns {anno_id: [mask or None]}."""
    h, w = 36, 48
    frames = ["00000", "00003", "00010"]
    write_frames(os.path.join(root, split, "JPEGImages", "m1"), frames)
    write_frames(os.path.join(root, split, "JPEGImages", "m2"), frames[:1])
    a = [box(h, w, 1, 9, 2, 20), None, box(h, w, 5, 30, 30, 47)]
    b = [None, box(h, w, 10, 20, 10, 20), box(h, w, 0, 4, 0, 4)]
    mask_dict = {
        "10": [compressed_rle(a[0]), None, uncompressed_rle(a[2])],
        "11": [None, compressed_rle(b[1]), compressed_rle(np.zeros((20, 20), bool))],  # frame 2: wrong size
        "12": [compressed_rle(a[0])],  # one mask for three frames
        "20": [compressed_rle(box(h, w, 0, 3, 0, 3))],
    }
    expressions = {
        "0": {"exp": "the left object", "obj_id": [0], "anno_id": [10]},
        "1": {"exp": "both objects", "obj_id": [0, 1], "anno_id": [10, 11]},
        "2": {"exp": "the purple elephant", "obj_id": [], "anno_id": []},
        "3": {"exp": "an unknown one", "obj_id": [5], "anno_id": [99]},
        "4": {"exp": "the short one", "obj_id": [2], "anno_id": [12]},
        "5": {"exp": "a broken list", "obj_id": [0], "anno_id": "10"},
    }
    meta = {"videos": {
        "m1": {"expressions": expressions, "frames": frames},
        "m2": {"expressions": {"0": {"exp": "a small corner", "obj_id": [0], "anno_id": [20]}}, "frames": frames[:1]},
        "m3": {"expressions": {"0": {"exp": "nowhere", "obj_id": [0], "anno_id": [20]}}, "frames": frames[:1]},  # no frames folder
        "m4": {"expressions": {}, "frames": []},
    }}
    write_json(os.path.join(root, split, "meta_expressions.json"), meta)
    write_json(os.path.join(root, split, "mask_dict.json"), mask_dict)
    return {"10": a, "11": b}


def test_mevis_reader(tmp_path, caplog):
    root = str(tmp_path / "mevis")
    truth = write_mevis(root)
    meta_path = os.path.join(root, "train", "meta_expressions.json")
    mask_path = os.path.join(root, "train", "mask_dict.json")
    with caplog.at_level(logging.WARNING):
        expressions = load_video_expressions("mevis", root, "train")
    by_text = {e.text: e for e in expressions}
    assert list(by_text) == ["the left object", "both objects", "the purple elephant", "a small corner"]
    assert warned(caplog, meta_path, "videos/m1/expressions/3", "anno_id 99")
    assert warned(caplog, meta_path, "videos/m1/expressions/4", "1 masks for 3 frames")
    assert warned(caplog, meta_path, "videos/m1/expressions/5", "anno_id")
    assert warned(caplog, meta_path, "videos/m3", "frames folder")
    assert warned(caplog, meta_path, "videos/m4", "frames")

    empty = np.zeros((36, 48), bool)
    a, b = truth["10"], truth["11"]
    single = by_text["the left object"].masks()
    for k in range(3):  # null on frame 1; list-form counts on frame 2
        np.testing.assert_array_equal(single[k], empty if a[k] is None else a[k])
    both = by_text["both objects"]
    np.testing.assert_array_equal(both.mask(0), a[0])
    np.testing.assert_array_equal(both.mask(1), b[1])
    with pytest.raises(SampleError, match=r"11\[2\]") as error:  # an RLE of the wrong size: file and key
        both.mask(2)
    assert error.value.path == mask_path and "expression 1" in str(error.value)
    nothing = by_text["the purple elephant"]
    assert nothing.has_masks and nothing.masks().shape == (3, 36, 48) and not nothing.masks().any()

    # An expression pickles without the mask dict and reads its masks again.
    data = pickle.dumps(both)
    assert len(data) < 2000
    np.testing.assert_array_equal(pickle.loads(data).mask(1), b[1])


def test_mevis_valid_has_no_masks(tmp_path):
    root = str(tmp_path / "mevis")
    write_frames(os.path.join(root, "valid", "JPEGImages", "x"), ["00000", "00001"])
    write_json(os.path.join(root, "valid", "meta_expressions.json"),
               {"videos": {"x": {"expressions": {"0": {"exp": "the cat"}}, "frames": ["00000", "00001"]}}})
    (expression,) = load_video_expressions("mevis", root, "valid")
    assert not expression.has_masks and expression.text == "the cat"
    with pytest.raises(ValueError, match="no public masks"):
        expression.masks()
    assert len(VideoValDataset("mevis", root, "valid")) == 1


def test_nothing_usable_and_bad_names_raise(tmp_path, caplog):
    root = str(tmp_path / "mevis")
    write_json(os.path.join(root, "train", "meta_expressions.json"),
               {"videos": {"a": {"expressions": {"0": {"exp": "x", "anno_id": [1]}}, "frames": ["0"]}}})  # no frames folder
    write_json(os.path.join(root, "train", "mask_dict.json"), {"1": [None]})
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no usable expression") as error:
        load_video_expressions("mevis", root, "train")
    assert os.path.join(root, "train", "meta_expressions.json") in str(error.value)
    with pytest.raises(ValueError, match="file not found") as error:
        load_video_expressions("mevis", root, "valid_u")
    assert os.path.join(root, "valid_u", "meta_expressions.json") in str(error.value)
    with open(os.path.join(root, "train", "meta_expressions.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_video_expressions("mevis", root, "train")
    with pytest.raises(ValueError, match="refytvos"):
        load_video_expressions("davis", root, "train")
    with pytest.raises(ValueError, match="valid_u"):
        load_video_expressions("mevis", root, "test")


def test_parse_video_set():
    assert parse_video_set("mevis|/data/mevis|valid_u") == ("mevis", "/data/mevis", "valid_u")
    assert parse_video_set("reasonvos|R|test") == ("reasonvos", "R", "test")
    for bad in ["mevis|/data", "davis|D|val", "mevis||valid_u", "revos|D|test", "mevis|D|valid_u|x"]:
        with pytest.raises(ValueError, match="refytvos, mevis, revos, reasonvos"):
            parse_video_set(bad)
    assert VOS_SETS == ("refytvos", "mevis", "revos", "reasonvos") and VOS_DATA == "mevis||refytvos||revos"


# ------------------------------------------------------------------------------------------------ ReVOS
def write_revos(root) -> None:
    h, w = 36, 48
    frames = ["00000", "00002", "00004", "00006"]
    for vid in ("src/all/r1", "r2"):  # ReVOS video keys hold slashes
        write_frames(os.path.join(root, "JPEGImages", vid), frames)
    masks = [box(h, w, 0, 10 + k, 0, 10) for k in range(4)]
    write_json(os.path.join(root, "mask_dict.json"), {"1": [compressed_rle(m) for m in masks], "2": [None, None, None, compressed_rle(masks[0])]})
    train = {"src/all/r1": {"expressions": {
        "0": {"exp": "the box", "obj_id": [0], "anno_id": [1], "type_id": 0},
        "1": {"exp": "which thing holds the others?", "obj_id": [0], "anno_id": [1], "type_id": 1},
        "2": {"exp": "an unscored one", "obj_id": [0], "anno_id": [1], "type_id": 2},
        "3": {"exp": "no type", "obj_id": [0], "anno_id": [1]},
    }, "frames": frames}}
    valid = {"r2": {"expressions": {"0": {"exp": "the late one", "obj_id": [1], "anno_id": [2], "type_id": 2}}, "frames": frames}}
    write_json(os.path.join(root, "meta_expressions_train_.json"), {"videos": train})
    write_json(os.path.join(root, "meta_expressions_valid_.json"), {"videos": valid})
    write_json(os.path.join(root, "mask_dict_foreground.json"), {})


def test_revos_reader_and_type_ids(tmp_path, caplog):
    root = str(tmp_path / "revos")
    write_revos(root)
    with caplog.at_level(logging.WARNING):
        train = load_video_expressions("revos", root, "train")
    assert [(e.video, e.type_id) for e in train] == [("src/all/r1", 0), ("src/all/r1", 1), ("src/all/r1", 2)]
    assert warned(caplog, "meta_expressions_train_.json", "videos/src/all/r1/expressions/3", "type_id")
    assert train[0].frame_path(3) == os.path.join(root, "JPEGImages", "src/all/r1", "00006.jpg")
    assert [int(m.sum()) for m in train[0].masks()] == [100, 110, 120, 130]
    (late,) = VideoValDataset("revos", root, "valid")  # type 2 stays in validation: the scorer leaves it out
    assert late.type_id == 2 and [bool(m.any()) for m in late.masks()] == [False, False, False, True]

    data = VideoSegDataset(str(tmp_path), "revos", num_frames=4)
    texts = set()
    for seed in range(30):
        sample = data.sample(np.random.default_rng(seed))
        texts.update(sample.queries)
        reasoning = [c for c, q in zip(sample.conversations, sample.queries) if q.endswith("?")]
        assert all(c[0]["content"].startswith("<image>\nwhich thing holds the others? ") for c in reasoning)  # a sentence, as-is
    assert texts == {"the box", "which thing holds the others?"}  # type 2 is not trained on
    with pytest.raises(ValueError, match="no expression with masks"):
        VideoSegDataset(str(tmp_path), "revos|valid")


# -------------------------------------------------------------------------------------------- ReasonVOS
def test_reasonvos_reader(tmp_path, caplog):
    root = str(tmp_path / "reasonvos")
    h, w = 36, 48
    frames = ["00000", "00001", "00002"]
    write_frames(os.path.join(root, "JPEGImages", "MeViS_abc"), frames)
    written = [box(h, w, 2, 12, 2, 12), box(h, w, 5, 20, 5, 30), None]
    for k, mask in enumerate(written):
        if mask is not None:
            os.makedirs(os.path.join(root, "Annotations", "MeViS_abc_1"), exist_ok=True)
            value = 255 if k == 0 else 1  # 0/255 and 0/1 masks both occur
            Image.fromarray(mask.astype(np.uint8) * value).save(os.path.join(root, "Annotations", "MeViS_abc_1", f"{frames[k]}.png"))
    meta = {"videos": {
        "MeViS_abc": {"expressions": [
            {"obj_id": 1, "exp_id": 0, "exp_text": "the animal that could fly", "is_sent": False},
            {"obj_id": 1, "exp_id": 1, "exp_text": "Which animal is most likely to escape first?", "is_sent": True},
            {"obj_id": 2, "exp_id": 2, "exp_text": "no annotation folder", "is_sent": False},
            {"obj_id": 1, "exp_id": 3, "is_sent": False},
        ], "frames": frames},
        "DAVIS_gone": {"expressions": [{"obj_id": 1, "exp_id": 0, "exp_text": "x", "is_sent": False}], "frames": frames},
    }}
    write_json(os.path.join(root, "meta_expressions.json"), meta)
    with caplog.at_level(logging.WARNING):
        expressions = load_video_expressions("reasonvos", root, "test")
    assert [(e.exp_id, e.is_sentence) for e in expressions] == [("0", False), ("1", True)]
    meta_path = os.path.join(root, "meta_expressions.json")
    assert warned(caplog, meta_path, "videos/MeViS_abc/expressions/2", "MeViS_abc_2")
    assert warned(caplog, meta_path, "videos/MeViS_abc/expressions/3", "text")
    assert warned(caplog, meta_path, "videos/DAVIS_gone", "frames folder")
    masks = expressions[1].masks()
    for k, mask in enumerate(written):
        np.testing.assert_array_equal(masks[k], np.zeros((h, w), bool) if mask is None else mask)
    with pytest.raises(ValueError, match="test"):
        load_video_expressions("reasonvos", root, "train")


# ------------------------------------------------------------------------------------------------ training
def test_video_samples(tmp_path):
    root = str(tmp_path / "mevis")
    h, w = 36, 48
    frames = [f"{5 * k:05d}" for k in range(16)]
    write_frames(os.path.join(root, "train", "JPEGImages", "v"), frames)
    seen_once = [box(h, w, 3, 9, 3, 9) if k == 0 else None for k in range(16)]  # only on the first frame
    always = [box(h, w, 10, 20, 2 + k, 12 + k) for k in range(16)]
    write_json(os.path.join(root, "train", "mask_dict.json"), {
        "1": [None if m is None else compressed_rle(m) for m in seen_once], "2": [compressed_rle(m) for m in always]})
    write_json(os.path.join(root, "train", "meta_expressions.json"), {"videos": {"v": {"expressions": {
        "0": {"exp": "the blink", "obj_id": [0], "anno_id": [1]},
        "1": {"exp": "The Walker.", "obj_id": [1], "anno_id": [2]},
        "2": {"exp": "the absent one", "obj_id": [], "anno_id": []},
    }, "frames": frames}}})
    by_text = {e.text: e for e in load_video_expressions("mevis", root, "train")}
    data = VideoSegDataset(str(tmp_path), "mevis", num_frames=8, num_classes_per_sample=3)
    outcomes = set()
    for seed in range(24):
        sample = data.sample(np.random.default_rng(seed))
        assert sample.sample_id == "mevis/v" and sample.image.shape == (8, h, w, 3) and sample.image.dtype == np.uint8
        indices = frame_indices(sample.image, by_text["the blink"])
        assert indices == sorted(set(indices)) and all(2 * i <= k < 2 * i + 2 for i, k in enumerate(indices))
        assert sorted(sample.queries) == sorted(by_text)
        masks = iter(sample.masks)
        for conversation, query in zip(sample.conversations, sample.queries):
            question, answer = conversation[0]["content"], conversation[1]["content"]
            assert question.startswith("<image>\n") and question.count("<image>") == 1
            expected = by_text[query].masks(indices)
            if expected.any():
                assert answer in ANSWER_LIST and answer.count("[SEG]") == 1
                np.testing.assert_array_equal(next(masks), expected)
            else:
                assert answer in VIDEO_NO_TARGET_ANSWER_LIST and "[SEG]" not in answer
            outcomes.add((query, expected.any()))
            if query == "The Walker.":
                assert "the walker" in question and "walker." not in question
        assert next(masks, None) is None and sample.masks.dtype == bool and sample.masks.shape[1:] == (8, h, w)
    # The blink is in a sample exactly when frame 0 is drawn; the absent one never is.
    assert outcomes == {("the blink", True), ("the blink", False), ("The Walker.", True), ("the absent one", False)}

    # A short video gives all its frames; a frame of another size is a bad sample named by its file.
    assert VideoSegDataset(str(tmp_path), "mevis", num_frames=32).sample(np.random.default_rng(0)).image.shape[0] == 16
    Image.fromarray(frame_image(3, 20, 20)).save(os.path.join(root, "train", "JPEGImages", "v", "00015.jpg"))
    with pytest.raises(SampleError) as error:
        for seed in range(10):
            data.sample(np.random.default_rng(seed))
    assert error.value.path.endswith("00015.jpg")


def test_hybrid_registers_the_video_family():
    assert "vos" in FAMILIES and DEFAULT_RATES["vos"] == 1
    assert DATASET == "sem_seg||refer_seg||vqa||reason_seg"


# ------------------------------------------------------------------------------------------------ toy corpus
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy_videos"))
    return root, generate(root, seed=0)


SPLITS = [("mevis", "train"), ("mevis", "valid_u"), ("mevis", "valid"), ("refytvos", "train"), ("refytvos", "valid"),
          ("refytvos", "test"), ("revos", "train"), ("revos", "valid")]


@pytest.mark.parametrize("name, split", SPLITS)
def test_toy_videos_read_back_as_the_truth(toy, name, split):
    root, truth = toy
    expressions = load_video_expressions(name, os.path.join(root, name), split)
    videos = {e.video for e in expressions}
    written = {v.video for v in truth.videos.values() if v.dataset == name and v.split == split}
    assert videos == written and len(videos) >= 3
    for video_id in videos:
        video = truth.videos[f"{name}/{video_id}"]
        mine = [e for e in expressions if e.video == video_id]
        assert {e.text for e in mine} == set(video.expressions)
        for e in mine:
            assert e.frames == video.frames and e.has_masks == video.has_masks
            assert e.type_id == (video.type_ids[e.text] if name == "revos" else None)
            if e.has_masks:
                np.testing.assert_array_equal(e.masks(), video.mask(e.text), err_msg=f"{name}/{video_id}: {e.text}")
    if split == "train":
        assert sum(len(v.frames) for v in truth.videos.values() if v.dataset == name and v.split == split) > 50


def test_toy_videos_show_what_they_say(toy):
    """The truth itself: the frames show each shape's colour under its mask, it moves as its motion says, frame
    names are not contiguous, and there are several-object, no-target and out-of-view cases."""
    root, truth = toy
    kinds = {"multi": 0, "none": 0, "out_of_view": 0}
    for key, video in truth.videos.items():
        assert 6 <= len(video.frames) <= 12 and 64 <= video.height <= 96 and 64 <= video.width <= 96
        assert video.frames[:2] == ["00000", "00005"]
        assert len(set(video.kinds)) == len(video.kinds) == len(set(video.colours)) and 2 <= len(video.kinds) <= 3
        masks = video.shape_masks()
        frame = read_image(os.path.join(root, video.frame_dir, video.frames[-1] + ".jpg"))
        for j, colour in enumerate(video.colours):
            assert (masks[j].any(axis=(1, 2)) == video.present[j]).all()
            if video.present[j, -1]:
                inner = cv2.erode(masks[j, -1].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                assert np.abs(frame[inner].mean(axis=0) - COLOURS[colour]).max() < 25
            shown = np.flatnonzero(video.present[j])
            ys, xs = [np.array([np.nonzero(masks[j, f])[axis].mean() for f in shown]) for axis in (0, 1)]
            dx, dy = MOTIONS[video.motions[j]]
            for step, direction in ((np.diff(xs), dx), (np.diff(ys), dy)):
                assert (step * direction > 1).all() if direction else (np.abs(step) < 0.5).all()
        kinds["multi"] += any(len(s) > 1 for s in video.expressions.values())
        kinds["none"] += any(len(s) == 0 for s in video.expressions.values())
        kinds["out_of_view"] += not video.present.all()
        for text, shapes in video.expressions.items():
            if text.startswith("the shape that"):
                assert len(shapes) == 1 and [video.motions[j] for j in range(len(video.kinds))].count(video.motions[shapes[0]]) == 1
    assert min(kinds.values()) >= 3, kinds


def test_toy_video_files_match_their_frames(toy):
    root, truth = toy
    videos = [v for v in truth.videos.values() if v.video_file]
    assert len(videos) == 12 and all((v.dataset, v.split) == ("mevis", "valid_u") for v in videos)
    for video in videos[:3]:
        reader = VideoReader(os.path.join(root, video.video_file))
        assert len(reader) == len(video.frames) and reader.name == video.video
        for k, frame in enumerate(reader):
            still = read_image(os.path.join(root, video.frame_dir, video.frames[k] + ".jpg"))
            assert frame.shape[0] - still.shape[0] in (0, 1) and frame.shape[1] - still.shape[1] in (0, 1)
            crop = frame[: still.shape[0], : still.shape[1]].astype(int)
            assert np.abs(crop - still).mean() < 12  # two lossy codecs of the same painted frame


def test_toy_video_training_samples(toy):
    root, truth = toy
    data = HybridDataset(root, samples_per_epoch=30, dataset="vos", seed=2, num_frames=4)
    for index in range(30):
        sample = data[index]
        dataset, video_id = sample.sample_id.split("/", 1)
        video = truth.videos[sample.sample_id]
        assert dataset in ("mevis", "refytvos", "revos") and video.split == "train"
        (expression, *_) = [e for e in load_video_expressions(dataset, os.path.join(root, dataset), "train") if e.video == video_id]
        indices = frame_indices(sample.image, expression)
        masks = iter(sample.masks)
        for conversation, query in zip(sample.conversations, sample.queries):
            expected = video.mask(query)[indices]
            if expected.any():
                np.testing.assert_array_equal(next(masks), expected)
            else:
                assert "[SEG]" not in conversation[1]["content"]
            if dataset == "revos":
                assert video.type_ids[query] != 2
        assert next(masks, None) is None
