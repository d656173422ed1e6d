"""The data sets on the toy corpus (masks against the generator's own ground truth), ReasonSeg's mask rules on
hand-written files, bad input, the mixture's statistics and the collated batches."""

from __future__ import annotations

import copy
import filecmp
import json
import logging
import os
import pickle
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import (
    HybridDataset,
    LisaCollator,
    ReasonSegDataset,
    ReferSegDataset,
    SampleError,
    SemSegDataset,
    VQADataset,
    build_val_dataset,
    decode_segmentation,
    get_mask_from_json,
)
from datasets.common import Sample, sample_rng
from datasets.templates import ANSWER_LIST, EXPLANATORY_QUESTION_LIST, LONG_QUESTION_LIST, SHORT_QUESTION_LIST, turn
from datasets.toy import generate
from tests.lisa_fixtures import write_turned_photo
from utils.images import load_image

REFER_SETS = ("refclef", "refcoco", "refcoco+", "refcocog", "grefcoco")
SEM_SEG_SETS = ("ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part")


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy"))
    return root, generate(root, seed=0)


@pytest.fixture(scope="session")
def processor(tmp_path_factory):
    from model.processing import LisaProcessor
    from model.tiny import write_tiny

    root = str(tmp_path_factory.mktemp("tiny"))
    write_tiny(root)
    return LisaProcessor.from_pretrained(os.path.join(root, "lisa"))


@pytest.fixture
def corpus_copy(toy, tmp_path):
    """A private copy of the toy corpus that a test may damage."""
    root = str(tmp_path / "toy")
    shutil.copytree(toy[0], root)
    return root


def template_filler(question: str) -> str:
    """The class name / sentence a training question was built around."""
    for template in SHORT_QUESTION_LIST:
        match = re.fullmatch(re.escape(template).replace(re.escape("{class_name}"), "(.+)"), question, re.S)
        if match:
            return match.group(1)
    for template in LONG_QUESTION_LIST:
        match = re.fullmatch(re.escape(template).replace(re.escape("{sent}"), "(.+)"), question, re.S)
        if match:
            return match.group(1)
    raise AssertionError(f"not a LISA question: {question!r}")


def check_training_sample(sample, truth) -> None:
    """Masks equal the generator's masks of the queried names; every answer is a LISA answer with one [SEG]."""
    expected = truth.masks[sample.sample_id]
    assert sample.masks.dtype == bool and sample.masks.shape == (len(sample.conversations), *sample.image.shape[:2])
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    for conversation, mask, query in zip(sample.conversations, sample.masks, sample.queries):
        question, answer = conversation[0]["content"], conversation[1]["content"]
        assert template_filler(question).lower() == query.lower()
        assert answer in ANSWER_LIST
        np.testing.assert_array_equal(mask, expected[query] == 1, err_msg=f"{sample.sample_id}: {query}")


# ------------------------------------------------------------------------------------------ toy corpus
def test_toy_is_deterministic_per_seed(toy, tmp_path):
    generate(str(tmp_path / "same"), seed=0)
    comparison = filecmp.dircmp(toy[0], str(tmp_path / "same"))

    def differences(c):
        return c.diff_files + c.left_only + c.right_only + [d for sub in c.subdirs.values() for d in differences(sub)]

    assert differences(comparison) == []
    generate(str(tmp_path / "other"), seed=1)
    assert not filecmp.cmp(
        os.path.join(toy[0], "llava_dataset", "llava_instruct_150k.json"),
        str(tmp_path / "other" / "llava_dataset" / "llava_instruct_150k.json"),
        shallow=False,
    )


def test_toy_layout_and_size(toy):
    root = toy[0]
    for path in [
        "reason_seg/ReasonSeg/explanatory/train.json",
        "refer_seg/refcoco/refs(unc).p",
        "refer_seg/refcoco+/refs(unc).p",
        "refer_seg/refcocog/refs(umd).p",
        "refer_seg/refclef/refs(unc).p",
        "refer_seg/grefcoco/grefs(unc).json",
        "refer_seg/refcoco/instances.json",
        "mapillary/config_v2.0.json",
        "vlpart/paco/annotations/paco_lvis_v1_train.json",
        "vlpart/pascal_part/train.json",
        "llava_dataset/llava_instruct_150k.json",
    ]:
        assert os.path.isfile(os.path.join(root, path)), path
    assert len([f for f in os.listdir(os.path.join(root, "reason_seg/ReasonSeg/val")) if f.endswith(".jpg")]) >= 100
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    assert size < 5e6
    instances = json.load(open(os.path.join(root, "refer_seg/refcoco/instances.json")))
    kinds = {type(a["segmentation"]).__name__ + (type(a["segmentation"]["counts"]).__name__ if isinstance(a["segmentation"], dict) else "") for a in instances["annotations"]}
    assert kinds == {"list", "dictstr", "dictlist"}  # polygons, compressed and uncompressed RLE


# -------------------------------------------------------------------------------------------- ReasonSeg
@pytest.mark.parametrize("split", ["val", "test"])
def test_reason_seg_val_matches_truth(toy, split):
    root, truth = toy
    data = build_val_dataset(root, f"ReasonSeg|{split}", all_texts=True)
    first_only = build_val_dataset(root, f"ReasonSeg|{split}")
    assert len(data) == len(first_only) >= (100 if split == "val" else 1)
    for index in range(len(data)):
        sample = data[index]
        expected = truth.masks[sample.sample_id]
        assert sample.queries == list(expected)
        for gt, mask, query, conversation, is_sentence in zip(sample.gt, sample.masks, sample.queries, sample.conversations, sample.is_sentence):
            np.testing.assert_array_equal(gt, expected[query])
            np.testing.assert_array_equal(mask, expected[query] == 1)
            template = "<image>\n {} Please output segmentation mask." if is_sentence else "<image>\n What is {} in this image? Please output segmentation mask."
            assert conversation == [{"role": "user", "content": template.format(query)}, {"role": "assistant", "content": "[SEG]."}]
        assert first_only[index].queries == sample.queries[:1]


def test_reason_seg_val_has_ignore_regions_and_both_query_kinds(toy):
    data = build_val_dataset(toy[0], "ReasonSeg|val")
    samples = [data[i] for i in range(len(data))]
    assert any((s.gt == 255).any() for s in samples)
    assert {s.is_sentence[0] for s in samples} == {True, False}


def test_reason_seg_train_matches_truth(toy):
    root, truth = toy
    data = ReasonSegDataset(root, "ReasonSeg|train", explanatory=-1)
    for i in range(60):
        sample = data.sample(sample_rng(0, i))
        assert sample.sample_id.startswith("reason_seg/train/")
        assert 1 <= len(sample.conversations) <= 3
        check_training_sample(sample, truth)


def test_reason_seg_explanatory_choices(toy):
    root, truth = toy
    always = ReasonSegDataset(root, explanatory=1.0)
    never = ReasonSegDataset(root, explanatory=0.0)
    seen_choice_1 = False
    for i in range(80):
        sample = always.sample(sample_rng(1, i))
        name = sample.sample_id.split("/")[-1] + ".jpg"
        if name not in truth.explanations:
            check_training_sample(sample, truth)
            continue
        # With probability 1: the explanation is the whole answer, no [SEG] and no mask.
        assert sample.masks.shape[0] == 0
        for conversation, text in zip(sample.conversations, sample.queries):
            assert conversation == [{"role": "user", "content": f"<image>\n{text}"}, {"role": "assistant", "content": truth.explanations[name]}]
        sample = never.sample(sample_rng(1, i))
        assert sample.masks.shape[0] == len(sample.conversations)
        for conversation, text in zip(sample.conversations, sample.queries):
            question, answer = conversation[0]["content"], conversation[1]["content"]
            if answer in ANSWER_LIST:
                continue
            seen_choice_1 = True
            assert question in [f"<image>\n{text} {q}" for q in EXPLANATORY_QUESTION_LIST]
            assert answer in [f"{a} {truth.explanations[name]}" for a in ANSWER_LIST]
    assert seen_choice_1


# ---------------------------------------------------------------------------------------- ReasonSeg rules
def write_json(path, data, encoding="utf-8"):
    with open(path, "w", encoding=encoding) as f:
        json.dump(data, f, ensure_ascii=False)
    return str(path)


def anno(shapes, text=("the thing",), is_sentence=False):
    return {"text": list(text), "is_sentence": is_sentence, "shapes": [{"label": l, "points": p} for l, p in shapes]}


def test_mask_rules_flag_ignore_truncation(tmp_path):
    path = write_json(
        tmp_path / "a.json",
        anno([
            ("target", [[1.9, 1.2], [4.99, 1.7], [4.5, 3.999], [1.1, 3.5]]),  # truncates to the square 1..4 x 1..3
            ("flag", [[0, 0], [7, 0], [7, 5], [0, 5]]),  # skipped
            ("Ignore_blur", [[6, 0], [7, 0], [7, 1], [6, 1]]),  # "ignore" anywhere in the label, any case
        ]),
    )
    mask, texts, is_sentence = get_mask_from_json(path, 5, 8)
    expected = np.zeros((5, 8), dtype=np.uint8)
    expected[1:4, 1:5] = 1
    expected[0:2, 6:8] = 255
    np.testing.assert_array_equal(mask, expected)
    assert texts == ["the thing"] and is_sentence is False


def test_mask_rules_area_order_and_line(tmp_path):
    big = [[0, 0], [5, 0], [5, 5], [0, 5]]
    small = [[2, 2], [3, 2], [3, 3], [2, 3]]
    for order in ([("ignore", small), ("target", big)], [("target", big), ("ignore", small)]):
        mask, _, _ = get_mask_from_json(write_json(tmp_path / "b.json", anno(order)), 6, 6)
        expected = np.zeros((6, 6), dtype=np.uint8)
        expected[0:6, 0:6] = 1
        expected[2:4, 2:4] = 255  # the smaller polygon is painted last whatever the file order
        np.testing.assert_array_equal(mask, expected)
    # A big ignore region does not hide a small target inside it.
    mask, _, _ = get_mask_from_json(write_json(tmp_path / "c.json", anno([("target", small), ("ignore", big)])), 6, 6)
    assert (mask[2:4, 2:4] == 1).all() and (mask[0, :] == 255).all()
    # A 2-point polygon is a 1-px line.
    mask, _, _ = get_mask_from_json(write_json(tmp_path / "d.json", anno([("target", [[1, 2], [4, 2]])])), 4, 6)
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[2, 1:5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_mask_rules_cp1252_fallback(tmp_path):
    text = "the caf\u00e9\u2019s sign"
    path = write_json(tmp_path / "e.json", anno([("target", [[0, 0], [2, 0], [2, 2], [0, 2]])], text=[text]), encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        open(path, encoding="utf-8").read()
    mask, texts, _ = get_mask_from_json(path, 3, 3)
    assert texts == [text] and mask.sum() == 9


def test_mask_rules_partly_outside_is_clipped_with_a_warning(tmp_path, caplog):
    path = write_json(tmp_path / "f.json", anno([("target", [[-3.5, -2], [2, -2], [2, 1], [-3.5, 1]])]))
    with caplog.at_level(logging.WARNING):
        mask, _, _ = get_mask_from_json(path, 4, 4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[0:2, 0:3] = 1
    np.testing.assert_array_equal(mask, expected)
    assert path in caplog.text and "outside" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"text": ["x"], "is_sentence": False}), "not a ReasonSeg annotation"),
        (json.dumps(anno([("target", [[1, 1]])])), "degenerate polygon"),
        (json.dumps(anno([("target", [[1, "a"], [2, 2], [3, 1]])])), "non-numeric"),
        (json.dumps(anno([("target", [[10, 10], [12, 10], [12, 12]])])), "wholly outside"),
        (json.dumps(anno([("target", [[0, 0], [1, 0], [1, 1]])], text=[])), "'text'"),
    ],
)
def test_mask_rules_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SampleError, match=message) as error:
        get_mask_from_json(str(path), 5, 5)
    assert error.value.path == str(path)


# ------------------------------------------------------------------------------------------------ refer
@pytest.mark.parametrize("name", REFER_SETS)
def test_refer_train_matches_truth(toy, name):
    root, truth = toy
    data = ReferSegDataset(root, name)
    for i in range(40):
        sample = data.sample(sample_rng(2, i))
        assert sample.sample_id.startswith(f"{name}/")
        check_training_sample(sample, truth)


@pytest.mark.parametrize(
    "split",
    ["refcoco|unc|val", "refcoco|unc|testA", "refcoco+|unc|testB", "refcocog|umd|val", "refcocog|umd|test", "refclef|unc|val", "grefcoco|unc|val", "grefcoco|unc|testA"],
)
def test_refer_val_matches_truth(toy, split):
    root, truth = toy
    data = build_val_dataset(root, split)
    assert len(data) > 0
    for index in range(len(data)):
        sample = data[index]
        expected = truth.masks[sample.sample_id]
        assert sorted(sample.queries) == sorted(expected)  # every sentence of every ref
        for gt, query, conversation in zip(sample.gt, sample.queries, sample.conversations):
            np.testing.assert_array_equal(gt, expected[query].astype(np.uint8))
            assert conversation[0]["content"] == f"<image>\n What is {query} in this image? Please output segmentation mask."
        assert sample.is_sentence == [False] * len(sample.queries)


@pytest.mark.parametrize("name", ["mevis|DIR|valid_u", "ReasonSeg", "refcoco|unc|val|extra"])
def test_an_unknown_validation_set_names_the_supported_ones(toy, name):
    """A name of no supported kind is refused as such, not taken for a referring split whose refs file is then missing."""
    root, _ = toy
    with pytest.raises(ValueError, match=r"not a supported one; expected 'ReasonSeg\|split', a referring split "
                                         r"'dataset\|splitBy\|split' of refclef, refcoco, refcoco\+, refcocog, grefcoco"):
        build_val_dataset(root, name)


def test_grefcoco_multi_object_and_no_target(toy):
    root, truth = toy
    sample = build_val_dataset(root, "grefcoco|unc|val")[0]
    sizes = {q: int(g.sum()) for q, g in zip(sample.queries, sample.gt)}
    assert any(s == 0 for s in sizes.values())  # a no-target expression: an empty mask
    multi = next(i for i, q in enumerate(sample.queries) if " and " in q)
    count, _ = cv2.connectedComponents(sample.gt[multi])
    assert count - 1 == 2  # two separate shapes (plus the background label)


def test_refer_val_accepts_refer_seg_folder_as_root(toy):
    # The original evaluated referring splits with --dataset_dir .../refer_seg.
    assert len(build_val_dataset(os.path.join(toy[0], "refer_seg"), "refcoco|unc|val")) == len(build_val_dataset(toy[0], "refcoco|unc|val"))


def test_decode_segmentation_formats():
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:6] = True
    from datasets.toy import compressed_rle, uncompressed_rle

    np.testing.assert_array_equal(decode_segmentation(compressed_rle(mask), 6, 7, "x"), mask)
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(mask), 6, 7, "x"), mask)
    np.testing.assert_array_equal(decode_segmentation([compressed_rle(mask)], 6, 7, "x"), mask)
    # Overlapping polygons are OR-ed (the original summed them into values of 2).
    square = [2, 1, 6, 1, 6, 4, 2, 4]
    both = decode_segmentation([square, square], 6, 7, "x")
    assert both.dtype == bool and both.sum() == decode_segmentation([square], 6, 7, "x").sum()
    with pytest.raises(SampleError, match="degenerate polygon"):
        decode_segmentation([[1, 1, 3, 3]], 6, 7, "ann.json")  # pycocotools would read this as a box
    with pytest.raises(SampleError, match="empty"):
        decode_segmentation([], 6, 7, "ann.json")
    with pytest.raises(SampleError, match="RLE of size"):
        decode_segmentation(compressed_rle(mask), 7, 6, "ann.json")


# ------------------------------------------------------------------------------------------------ sem seg
@pytest.mark.parametrize("name", SEM_SEG_SETS)
def test_sem_seg_matches_truth(toy, name):
    root, truth = toy
    data = SemSegDataset(root, name)
    seen = set()
    for i in range(40):
        sample = data.sample(sample_rng(3, i))
        assert sample.sample_id.startswith(f"{name}/")
        check_training_sample(sample, truth)
        seen.update(sample.queries)
    if name == "cocostuff":
        assert "wall-other" not in seen  # the "-" classes are ignored
    if name in ("paco_lvis", "pascal_part"):
        assert any(q.startswith("the ") and " of the " in q for q in seen) and any(" of the " not in q for q in seen)


def test_ade20k_label_shift(corpus_copy):
    # 0 -> ignored, k -> class k - 1: a map of 1s and 0s yields exactly "wall" on the 1s.
    label_path = os.path.join(corpus_copy, "ade20k/annotations/training/ADE_train_00000001.png")
    label = np.zeros_like(np.asarray(Image.open(label_path)))
    label[:, :10] = 1
    Image.fromarray(label).save(label_path)
    data = SemSegDataset(corpus_copy, "ade20k")
    sample = next(s for s in (data.sample(sample_rng(4, i)) for i in range(200)) if s.sample_id.endswith("00000001"))
    assert sample.queries == ["wall"]
    np.testing.assert_array_equal(sample.masks[0], label == 1)


# ---------------------------------------------------------------------------------------------------- VQA
def test_vqa_messages(toy):
    root, truth = toy
    data = VQADataset(root)
    for i in range(30):
        sample = data.sample(sample_rng(5, i))
        assert sample.conversations == [truth.vqa[sample.sample_id]]
        assert sample.masks.shape == (0, *sample.image.shape[:2])


def test_vqa_bad_turns(tmp_path):
    from datasets.vqa import to_messages

    turns = [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "Q?\n<image>"}, {"from": "gpt", "value": "A."}]
    assert to_messages(turns, "x") == [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A."}]
    with pytest.raises(SampleError, match="alternating"):
        to_messages([{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}], "llava.json")


# ------------------------------------------------------------------------------------------------ hybrid
def test_sample_rates_within_tolerance(toy):
    data = HybridDataset(toy[0], samples_per_epoch=20000, seed=7)
    counts = np.bincount([data.draw_family(i)[0] for i in range(len(data))], minlength=4)
    p = np.array([9, 3, 3, 1]) / 16
    # Each count is binomial(n, p): 5 standard deviations make a false failure ~1e-6 likely.
    np.testing.assert_array_less(np.abs(counts - len(data) * p), 5 * np.sqrt(len(data) * p * (1 - p)))


def test_hybrid_items_follow_their_family_and_are_reproducible(toy):
    root, truth = toy
    families = {"sem_seg": SEM_SEG_SETS, "refer_seg": REFER_SETS[:4], "vqa": ("llava_instruct_150k",), "reason_seg": ("reason_seg",)}
    data = HybridDataset(root, samples_per_epoch=200, seed=3)
    again = HybridDataset(root, samples_per_epoch=200, seed=3)
    for index in range(0, 200, 5):
        sample = data[index]
        family = data.family_names[data.draw_family(index)[0]]
        assert sample.sample_id.split("/")[0] in families[family]
        twin = again[index]
        assert twin.sample_id == sample.sample_id and twin.conversations == sample.conversations
        np.testing.assert_array_equal(twin.masks, sample.masks)
        if family != "vqa":
            for mask, query in zip(sample.masks, sample.queries):
                if sample.masks.shape[0]:
                    np.testing.assert_array_equal(mask, truth.masks[sample.sample_id][query] == 1)
    data.set_epoch(1)
    assert [data[i].sample_id for i in range(20)] != [again[i].sample_id for i in range(20)]


def test_hybrid_skips_bad_samples_and_counts_them(corpus_copy, caplog):
    broken = os.path.join(corpus_copy, "coco/train2017/000000300001.jpg")
    with open(broken, "r+b") as f:
        f.truncate(100)
    data = HybridDataset(corpus_copy, samples_per_epoch=400, dataset="vqa||reason_seg", sample_rates="1,0", seed=0)
    with caplog.at_level(logging.WARNING):
        samples = [data[i] for i in range(400)]
    assert data.num_skipped > 0 and sum(len(s.skipped) for s in samples) == data.num_skipped
    assert all(s.sample_id != "llava_instruct_150k/000000300001" for s in samples)
    assert broken in caplog.text


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_and_truncated_images(corpus_copy):
    data = build_val_dataset(corpus_copy, "refcoco|unc|val")
    first = data.dataset.image_path(data.image_ids[0])
    os.remove(first)
    with pytest.raises(SampleError, match="not found") as error:
        data[0]
    assert error.value.path == first
    second = data.dataset.image_path(data.image_ids[1])
    with open(second, "r+b") as f:
        f.truncate(200)
    with pytest.raises(SampleError, match="cannot read") as error:
        data[1]
    assert error.value.path == second


def test_invalid_and_empty_reason_seg_json(corpus_copy):
    data = build_val_dataset(corpus_copy, "ReasonSeg|val")
    json_path = data.images[0][:-4] + ".json"
    with open(json_path, "w") as f:
        f.write('{"text": ["x"], ')
    with pytest.raises(SampleError, match="invalid JSON") as error:
        data[0]
    assert error.value.path == json_path


@pytest.mark.parametrize("shapes", [[], [{"label": "ignore", "points": [[0, 0], [20, 0], [20, 20]]}]], ids=["no_shapes", "all_ignored"])
def test_reason_seg_without_target_pixels(corpus_copy, shapes):
    """Validation scores an empty target (as the original); training skips it, naming the file."""
    data = build_val_dataset(corpus_copy, "ReasonSeg|val")
    json_path = data.images[1][:-4] + ".json"
    with open(json_path, "w") as f:
        json.dump({"text": ["x"], "is_sentence": False, "shapes": shapes}, f)
    sample = data[1]
    assert not (sample.gt == 1).any() and not sample.masks.any() and sample.conversations[0][1]["content"] == "[SEG]."
    assert (sample.gt == 255).any() == bool(shapes)
    train_dir = os.path.join(corpus_copy, "reason_seg", "ReasonSeg", "train")
    for name in os.listdir(train_dir):  # every training image loses its target
        if name.endswith(".json"):
            shutil.copy(json_path, os.path.join(train_dir, name))
    train = ReasonSegDataset(corpus_copy, explanatory=-1)
    with pytest.raises(SampleError, match="nothing to train the mask on") as error:
        train.sample(sample_rng(0))
    assert error.value.path.startswith(train_dir)


def test_grayscale_and_rgba_images_are_read_as_rgb(corpus_copy, toy):
    data = build_val_dataset(corpus_copy, "ReasonSeg|val")
    for index, mode in [(0, "L"), (1, "RGBA")]:
        path = data.images[index]
        Image.open(path).convert(mode).save(path[:-4] + ".png")
        os.replace(path[:-4] + ".png", path)  # keep the .jpg name: the format is read from the content
        sample = data[index]
        assert sample.image.shape[2] == 3
        np.testing.assert_array_equal(sample.gt[0], toy[1].masks[sample.sample_id][sample.queries[0]])


def test_a_turned_photo_is_read_as_displayed(tmp_path):
    """A phone photo (pixels stored sideways, EXIF Orientation 6) is read the way it is displayed, as OpenCV's imread
    (the original's reader) and LabelMe read it; ReasonSeg polygons, drawn on the displayed image, land there."""
    folder = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    folder.mkdir(parents=True)
    path = str(folder / "phone.jpg")
    write_turned_photo(path, np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    image = load_image(path)
    assert image.shape == (40, 24, 3)
    np.testing.assert_array_equal(image, cv2.imread(path)[..., ::-1])
    with Image.open(path) as stored:
        np.testing.assert_array_equal(image, np.rot90(np.asarray(stored.convert("RGB")), k=-1))  # 90 degrees clockwise
    # Rows 28..36 of the displayed image: the stored pixels have only 24 rows.
    write_json(folder / "phone.json", anno([("target", [[2, 28], [12, 28], [12, 36], [2, 36]])]))
    sample = build_val_dataset(str(tmp_path), "ReasonSeg|val")[0]
    expected = np.zeros((40, 24), np.uint8)
    expected[28:37, 2:13] = 1
    np.testing.assert_array_equal(sample.gt[0], expected)
    assert sample.image.shape == (40, 24, 3)


def test_label_map_without_usable_class(corpus_copy):
    label_path = os.path.join(corpus_copy, "ade20k/annotations/training/ADE_train_00000001.png")
    Image.fromarray(np.zeros_like(np.asarray(Image.open(label_path)))).save(label_path)
    data = SemSegDataset(corpus_copy, "ade20k")
    with pytest.raises(SampleError, match="no usable class") as error:
        data.sets[0].load(0)
    assert error.value.path == label_path


def test_label_map_bad_values_and_channels(corpus_copy):
    data = SemSegDataset(corpus_copy, "mapillary").sets[0]
    label = np.asarray(Image.open(data.labels[0])).copy()
    label[0, 0] = 77  # no such class in config_v2.0.json
    Image.fromarray(label).save(data.labels[0])
    with pytest.raises(SampleError, match="outside the 5 classes"):
        data.load(0)
    Image.fromarray(np.stack([label] * 3, axis=2)).save(data.labels[1])
    with pytest.raises(SampleError, match="single-channel"):
        data.load(1)


def test_annotation_size_mismatch(corpus_copy):
    path = os.path.join(corpus_copy, "refer_seg/refcoco/instances.json")
    instances = json.load(open(path))
    instances["images"][0]["height"] += 1
    json.dump(instances, open(path, "w"))
    data = build_val_dataset(corpus_copy, "refcoco|unc|train")
    index = data.image_ids.index(instances["images"][0]["id"])
    with pytest.raises(SampleError, match="annotation size") as error:
        data[index]
    assert error.value.path == path


def test_degenerate_coco_polygon(corpus_copy):
    path = os.path.join(corpus_copy, "refer_seg/refcoco/instances.json")
    instances = json.load(open(path))
    ann = next(a for a in instances["annotations"] if isinstance(a["segmentation"], list))
    ann["segmentation"] = [[3.0, 4.0, 5.0, 6.0]]
    json.dump(instances, open(path, "w"))
    refs = pickle.load(open(os.path.join(corpus_copy, "refer_seg/refcoco/refs(unc).p"), "rb"))
    ref = next(r for r in refs if r["ann_id"] == ann["id"])
    data = build_val_dataset(corpus_copy, f"refcoco|unc|{ref['split']}")
    with pytest.raises(SampleError, match="degenerate polygon"):
        data[data.image_ids.index(ref["image_id"])]


def test_sample_error_survives_dataloader_workers(corpus_copy):
    data = build_val_dataset(corpus_copy, "ReasonSeg|val")
    with open(data.images[1][:-4] + ".json", "w") as f:
        f.write("{")
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, sampler=range(4))
    results = []
    iterator = iter(loader)
    for _ in range(4):
        try:
            results.append(next(iterator).sample_id)
        except SampleError as error:
            results.append(type(error).__name__)
    assert results[1] == "SampleError" and all(r.startswith("reason_seg/val/") for i, r in enumerate(results) if i != 1)


# ------------------------------------------------------------------------------------------------ collate
def answers_of(conversation):
    return [m["content"] for m in conversation if m["role"] == "assistant"]


def labelled_spans(labels: torch.Tensor) -> list[list[int]]:
    spans, current = [], []
    for token in labels.tolist() + [-100]:
        if token != -100:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans


def test_collated_labels_are_exactly_the_answers(toy, processor):
    samples = [HybridDataset(toy[0], samples_per_epoch=64, seed=11)[i] for i in range(64)]
    samples += [build_val_dataset(toy[0], "ReasonSeg|val")[0], build_val_dataset(toy[0], "grefcoco|unc|val")[0]]
    batch, skipped = LisaCollator(processor)(samples)
    assert skipped == []
    rows = [c for s in samples for c in s.conversations]
    assert batch["input_ids"].shape[0] == len(rows)
    assert batch["image_index"].tolist() == [i for i, s in enumerate(samples) for _ in s.conversations]
    eos = processor.tokenizer.eos_token
    for r, conversation in enumerate(rows):
        decoded = [processor.tokenizer.decode(span) for span in labelled_spans(batch["labels"][r])]
        assert decoded == [a + eos for a in answers_of(conversation)]
    for s, masks in zip(samples, batch["masks"]):
        np.testing.assert_array_equal(masks.numpy(), s.masks)
        assert masks.shape[0] == sum(a.count("[SEG]") for c in s.conversations for a in answers_of(c))
    assert batch.sample_ids == [s.sample_id for s in samples]


def test_collator_with_workers_and_distributed_sampler(toy, processor):
    data = HybridDataset(toy[0], samples_per_epoch=16, seed=5)
    collator = LisaCollator(processor)
    pickle.loads(pickle.dumps(collator))
    sampler = torch.utils.data.distributed.DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
    ids = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler, collate_fn=collator, num_workers=workers)
        batches = list(loader)
        assert len(batches) == 4 and all(skipped == [] for _, skipped in batches)
        ids.append([i for batch, _ in batches for i in batch.sample_ids])
    assert ids[0] == ids[1] == [data[i].sample_id for i in sampler]


# ------------------------------------------------------------------------------------------------ length limit
@pytest.fixture(scope="module")
def llava_1_5_processor(processor):
    """The tiny processor with LLaVA-1.5's image: 336 px in patches of 14, 576 image tokens (the tiny base has 16)."""
    real = copy.deepcopy(processor)
    real.image_processor.size = {"shortest_edge": 336}
    real.image_processor.crop_size = {"height": 336, "width": 336}
    real.vlm_processor.patch_size = 14
    assert real.image_seq_length == 576
    return real


def test_long_conversations_are_cut_to_the_text_limit_with_their_labels(llava_1_5_processor):
    processor, limit = llava_1_5_processor, 512
    image_id = processor.image_token_id
    rng = np.random.default_rng(0)
    words = " ".join(f"word{i}" for i in range(400))  # far beyond 512 text tokens
    conversations = [
        turn("<image>\nWhat is the cup in this image?", "It is [SEG]."),  # 576 image + ~30 text tokens: fits
        turn("<image>\nDescribe the image.", words),  # a long VQA answer: cut
        turn(f"<image>\n{words} Where is it?", "It is [SEG]."),  # its [SEG] lies beyond the cut: dropped
        turn("<image>\nWhere is the cup? Explain why.", f"It is [SEG]. {words}"),  # cut after its [SEG]
    ]
    masks = rng.random((3, 40, 50)) > 0.5  # of conversations 0, 2 and 3
    sample = Sample("phone", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), conversations, masks)
    batch, _ = LisaCollator(processor, limit)([sample])

    kept = [0, 1, 3]
    assert batch.truncated_rows == 2
    assert batch.dropped_rows == [f"phone conversation 2: a [SEG] lies beyond its first {limit} text tokens"]
    np.testing.assert_array_equal(batch["masks"][0].numpy(), masks[[0, 2]])
    assert batch["input_ids"].shape[0] == len(kept)
    for row, k in enumerate(kept):
        full_ids, full_labels = processor.encode_conversation(conversations[k])
        length = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :length].tolist(), batch["labels"][row, :length].tolist()
        # A prefix of the whole conversation, labels alike, with every image token and at most `limit` others.
        assert ids == full_ids[:length] and labels == full_labels[:length]
        assert ids.count(image_id) == 576
        assert sum(t != image_id for t in ids) == min(sum(t != image_id for t in full_ids), limit)
        assert ids.count(processor.seg_token_id) == full_ids.count(processor.seg_token_id)
    assert batch["attention_mask"][0].sum() > limit  # the short one whole: the image's tokens are not counted
