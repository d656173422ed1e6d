"""Custom data ("bring your own data"): the folder format, its bad records, training and evaluation on it, the
converters from COCO and labelme / ReasonSeg, and every command of docs/custom_data.md."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import eval_reasonseg
from datasets.collate import LisaCollator
from datasets.common import Sample, SampleError, sample_rng
from datasets.custom import CustomDataset, CustomValDataset, check_folder, load_masks
from datasets.custom_tools import compressed_rle
from datasets.custom_tools import main as custom_main
from datasets.hybrid import HybridDataset, build_val_dataset
from datasets.templates import ANSWER_LIST, SHORT_QUESTION_LIST, turn
from datasets.toy import generate, uncompressed_rle
from model.loading import load_lisa
from model.evaluation import evaluate
from model.processing import NothingFits
from model.loading import load_for_inference
from tests.lisa_fixtures import free_port, write_reason_seg, write_seg_emitter, write_turned_photo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 24, 32


# ------------------------------------------------------------------------------------------------ helpers
def box(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def write_image(folder, name, h=H, w=W, seed=0) -> str:
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, "images", name))
    return f"images/{name}"


def write_png(folder, name, mask, mode="L") -> str:
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    pixels = mask.astype(np.uint8) * 200
    image = Image.fromarray(np.stack([np.zeros_like(pixels), pixels, np.zeros_like(pixels)], 2) if mode == "RGB" else pixels)
    image.save(os.path.join(folder, "masks", name))
    return f"masks/{name}"


def write_split(folder, split, lines) -> str:
    path = os.path.join(folder, f"{split}.jsonl")
    with open(path, "w") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return path


def conv(question, answer, masks):
    return {"question": question, "answer": answer, "masks": masks}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A val/train folder: 3 good images (PNG L / RGB, compressed and uncompressed RLE, polygons, two masks in one
    answer, a no-target answer) and one bad line of every kind; `truth[stem][question]` = its (k, H, W) masks."""
    root = str(tmp_path_factory.mktemp("custom"))
    polygon = [4, 2, 20, 2, 20, 10, 4, 10]  # pycocotools' own rasterisation is the spec for polygons
    poly_mask = mask_utils.decode(mask_utils.frPyObjects([polygon], H, W))[:, :, 0].astype(bool)
    a, b, c = box(2, 12, 3, 15), box(14, 22, 18, 30), box(5, 20, 10, 25)
    none = np.zeros((0, H, W), bool)
    truth = {
        "a": {"What is the first box?": np.stack([a]), "Where is the cat?": none},
        "b": {"Segment both things.": np.stack([b, poly_mask]), "The big one?": np.stack([c])},
        "c": {"Anything purple?": none, "All boxes as one?": np.stack([a | b])},
    }
    good = [
        {"image": write_image(root, "a.jpg", seed=1), "conversations": [
            conv("What is the first box?", "It is [SEG].", [write_png(root, "a.png", a)]),
            conv("Where is the cat?", "There is no cat in this image.", [])]},
        {"image": write_image(root, "b.png", seed=2), "conversations": [
            conv("<image>\nSegment both things.", "Sure, they are [SEG] and [SEG].", [compressed_rle(b), {"polygons": [polygon]}]),
            conv("The big one?", "[SEG].", [uncompressed_rle(c)])]},
        {"image": write_image(root, "c.jpg", seed=3), "conversations": [
            conv("Anything purple?", "No.", []),
            conv("All boxes as one?", "Sure, [SEG].", [write_png(root, "ab.png", a | b, mode="RGB")])]},
    ]
    missing_png = conv("q", "[SEG]", ["masks/nope.png"])
    write_image(root, "small.jpg", h=H // 2, seed=4)
    with open(os.path.join(root, "images", "broken.jpg"), "w") as f:
        f.write("not an image")
    bad = [
        ('{"image": "images/a.jpg", "conversations": [', "malformed JSON line"),
        ({"image": "images/a.jpg", "conversations": [conv("q", "It is [SEG] and [SEG].", [compressed_rle(a)])]}, "2 [SEG] in the answer for 1 mask"),
        ({"image": "images/none.jpg", "conversations": [conv("q", "[SEG]", [compressed_rle(a)])]}, "not found"),
        ({"image": "images/broken.jpg", "conversations": [conv("q", "[SEG]", [compressed_rle(a)])]}, "unreadable"),
        ({"image": "images/small.jpg", "conversations": [conv("q", "[SEG]", [write_png(root, "small.png", a)])]}, "of size (24, 32) for an image of size (12, 32)"),
        ({"image": "images/a.jpg", "conversations": [conv("q", "[SEG]", [compressed_rle(box(0, 5, 0, 5, h=10))])]}, "RLE of size [10, 32]"),
        ({"image": "images/a.jpg", "conversations": [missing_png]}, "masks/nope.png not found"),
        ({"image": "images/a.jpg", "conversations": [conv("q", "[SEG]", [{"polygons": [[1, 1, 5, 5]]}])]}, "degenerate polygon"),
        ({"image": "images/a.jpg", "conversations": [conv("q", "[SEG]", [compressed_rle(np.zeros((H, W), bool))])]}, "no foreground pixel"),
        ({"image": "images/a.jpg"}, "expected"),
        ({"image": "images/a.jpg", "conversations": [conv("q", "", [])]}, "non-empty strings"),
    ]
    lines = [good[0], "", bad[0][0], good[1]] + [line for line, _ in bad[1:]] + [good[2]]
    reasons = {3: bad[0][1], **{5 + i: reason for i, (_, reason) in enumerate(bad[1:])}}
    for split in ("train", "val"):
        write_split(root, split, lines)
    return root, truth, reasons


# ------------------------------------------------------------------------------------------------ reading
def test_bad_records_are_named_by_line_and_the_rest_is_used(folder, caplog):
    root, truth, reasons = folder
    with caplog.at_level(logging.WARNING):
        data = CustomValDataset(root, "val", all_texts=True)
    assert [r.stem for r in data.records] == ["a", "b", "c"]
    assert len(data.bad_records) == len(reasons)
    for line, reason in reasons.items():
        entry = next(b for b in data.bad_records if b.startswith(f"{root}/val.jsonl:{line}: "))
        assert reason in entry, entry
        assert entry in caplog.text


def test_val_samples_match_the_masks_written(folder):
    root, truth, _ = folder
    data = build_val_dataset("unused", f"custom|{root}|val", all_texts=True)
    first_only = build_val_dataset("unused", f"custom|{root}|val")
    for index, record in enumerate(data.records):
        sample, first = data[index], first_only[index]
        # k masks -> k pairs; a no-target question -> one empty pair.
        masks_of = truth[record.stem]
        assert sample.queries == list(masks_of)
        expected = np.concatenate([m if len(m) else np.zeros((1, H, W), bool) for m in masks_of.values()])
        np.testing.assert_array_equal(sample.gt, expected.astype(np.uint8))
        assert len(first.conversations) == 1 and len(first.gt) == max(1, len(next(iter(masks_of.values()))))
        assert sample.sample_id == f"custom/val/{record.stem}" and sample.image.shape == (H, W, 3)
        for conversation, masks in zip(sample.conversations, masks_of.values()):
            question, answer = conversation[0]["content"], conversation[1]["content"]
            assert question.startswith("<image>\n") and question.count("<image>") == 1
            assert answer.count("[SEG]") == max(1, len(masks))
            if not len(masks):
                assert answer == "[SEG]."  # teacher-forced no-target: the mask must come out empty


def test_training_samples(folder):
    root, truth, _ = folder
    data = CustomDataset(root, num_classes_per_sample=1)
    assert len(data) == 3 and len(data.bad_records) == 11
    seen = set()
    for i in range(60):
        sample = data.sample(sample_rng(0, i))
        stem = sample.sample_id.removeprefix("custom/")
        (conversation,) = sample.conversations
        (query,) = sample.queries
        assert conversation[0]["content"] == f"<image>\n{query}"
        np.testing.assert_array_equal(sample.masks, truth[stem][query])
        assert conversation[1]["content"].count("[SEG]") == len(sample.masks)
        seen.add((stem, query))
    assert len(seen) == 6


def test_a_truncated_image_is_named_when_used(tmp_path):
    """Only the header is read up front; a file damaged later fails when drawn, named by its line; `check` finds it."""
    root = str(tmp_path)
    name = write_image(root, "x.jpg")
    lines = [{"image": n, "conversations": [conv("q", "[SEG]", [compressed_rle(box(1, 5, 1, 5))])]} for n in (name, write_image(root, "y.jpg"))]
    write_split(root, "train", lines)
    data = CustomDataset(root)
    path = os.path.join(root, name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(SampleError) as error:
        data.sample(sample_rng(1))  # draws line 1
    assert error.value.path == f"{root}/train.jsonl:1" and "x.jpg" in str(error.value)
    (usable, bad), = check_folder(root).values()
    assert usable == 1 and len(bad) == 1 and bad[0].startswith(f"{root}/train.jsonl:1: ")


def test_a_folder_without_usable_records_is_an_error(tmp_path):
    root = str(tmp_path)
    write_split(root, "train", ["{bad", json.dumps({"image": "nope.jpg", "conversations": []})])
    with pytest.raises(ValueError, match=r"train.jsonl: no usable record \(2 bad; first: .*train.jsonl:1: malformed"):
        CustomDataset(root)
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        CustomValDataset(root, "val")
    with pytest.raises(ValueError, match="--custom_data"):
        HybridDataset(root, dataset="custom")


def test_duplicate_stems_in_val(tmp_path):
    root = str(tmp_path)
    line = {"image": write_image(root, "x.jpg"), "conversations": [conv("q", "No.", [])]}
    os.makedirs(os.path.join(root, "other"))
    shutil.copy(os.path.join(root, "images", "x.jpg"), os.path.join(root, "other", "x.jpg"))
    write_split(root, "val", [line, {**line, "image": "other/x.jpg"}])
    data = CustomValDataset(root, "val")
    assert len(data) == 1 and data.bad_records == [f"{root}/val.jsonl:2: image stem 'x' already used at {root}/val.jsonl:1"]


# ------------------------------------------------------------------------------------------------ toy / mix
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy"))
    return root, generate(root, seed=0)


def test_toy_custom_matches_truth(toy):
    root, truth = toy
    data = CustomValDataset(os.path.join(root, "custom"), "val", all_texts=True)
    kinds = set()
    for index in range(len(data)):
        sample = data[index]
        expected = truth.masks[f"custom/{data.records[index].stem}"]
        masks = [expected[q] if len(expected[q]) else np.zeros((1, *sample.image.shape[:2]), bool) for q in sample.queries]
        np.testing.assert_array_equal(sample.gt, np.concatenate(masks).astype(np.uint8))
        kinds |= {len(expected[q]) for q in sample.queries}
    assert kinds == {0, 1, 2}


def test_hybrid_mixes_custom_with_lisa_families(toy):
    root, truth = toy
    data = HybridDataset(root, samples_per_epoch=200, dataset="reason_seg||custom", custom_data=os.path.join(root, "custom"), explanatory=-1)
    assert data.rates.tolist() == [0.5, 0.5]  # default rates: reason_seg 1, custom 1
    families = [data.draw_family(i)[0] for i in range(200)]
    assert 70 < families.count(1) < 130
    for i in range(40):
        sample = data[i]
        if sample.sample_id.startswith("custom/"):
            expected = truth.masks[sample.sample_id]
            queries = [c[0]["content"].removeprefix("<image>\n") for c in sample.conversations]
            np.testing.assert_array_equal(sample.masks, np.concatenate([expected[q] for q in queries]))
    lisa = HybridDataset(root, samples_per_epoch=10, dataset="sem_seg||refer_seg||vqa||reason_seg")
    assert lisa.rates.tolist() == [9 / 16, 3 / 16, 3 / 16, 1 / 16]


def test_a_training_step_on_no_target_answers(tiny_dir, folder):
    """A batch whose answers hold no [SEG] (a (0, H, W) masks array) trains the text only; mixed with masks, both."""
    root, _, _ = folder
    model, processor = load_lisa(str(tiny_dir / "lisa"))
    no_target = Sample("custom/none", np.zeros((H, W, 3), np.uint8), [turn("<image>\nAnything purple?", "No.")], np.zeros((0, H, W), bool))
    with_masks = CustomDataset(root).sample(sample_rng(0))
    collate = LisaCollator(processor)
    for batch, _ in (collate([no_target]), collate([with_masks, no_target])):
        output = model(**batch)
        assert torch.isfinite(output.loss)
        output.loss.backward()


def test_a_sample_with_no_conversation_within_the_length_limit_is_drawn_again(tiny_dir, tmp_path, caplog):
    """Its masks could not be trained (every [SEG] lies beyond the cut): training skips it and counts it, as a bad file."""
    root = str(tmp_path / "long")
    words = " ".join(f"word{i}" for i in range(100))
    write_split(root, "train", [
        {"image": write_image(root, "long.jpg"), "conversations": [conv(f"{words} Where is it?", "It is [SEG].", [compressed_rle(box(2, 9, 3, 9))])]},
        {"image": write_image(root, "short.jpg"), "conversations": [conv("Where is it?", "It is [SEG].", [compressed_rle(box(4, 9, 3, 9))])]},
    ])
    collator = LisaCollator(load_lisa(str(tiny_dir / "lisa"))[1], max_text_tokens=64)
    unchecked = HybridDataset(root, samples_per_epoch=20, dataset="custom", custom_data=root)
    long_draws = [i for i in range(20) if unchecked[i].sample_id == "custom/long"]
    assert long_draws  # the data set draws it
    with pytest.raises(NothingFits, match="custom/long: no conversation fits in 64 text tokens"):
        collator([unchecked[long_draws[0]]])

    checked = HybridDataset(root, samples_per_epoch=20, dataset="custom", custom_data=root, check=collator.check)
    with caplog.at_level(logging.WARNING):
        samples = [checked[i] for i in range(20)]
    assert {s.sample_id for s in samples} == {"custom/short"}
    skipped = [path for s in samples for path in s.skipped]
    assert len(skipped) >= len(long_draws) and set(skipped) == {"custom/long"} and checked.num_skipped == len(skipped)
    assert "custom/long: no conversation fits: conversation 0: a [SEG] lies beyond its first 64 text tokens" in caplog.text
    batch, _ = collator(samples[:2])
    assert batch.truncated_rows == 0 and batch.dropped_rows == []


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def seg_model(tiny_dir):
    path = write_seg_emitter(str(tiny_dir / "lisa"), str(tiny_dir / "seg_once_custom"), after_seg=None)
    return load_for_inference(path, "fp32")


def reference_iou(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, float]:
    inter = int((pred & target).sum())
    union = int(pred.sum() + target.sum()) - inter
    return inter, union, inter / (union + 1e-5) + (union == 0)


def test_pred_dir_scores_against_numpy(folder, tmp_path):
    """First question per image, one PNG per image; no-target counted (IoU 1 for an empty prediction)."""
    root, truth, reasons = folder
    preds = {"a": box(4, 12, 3, 20), "b": box(14, 22, 18, 30), "c": np.zeros((H, W), bool)}
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for stem, pred in preds.items():
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"{stem}.png")
    expected = {}
    for stem in "abc":
        first = next(iter(truth[stem].values()))
        targets = first if len(first) else np.zeros((1, H, W), bool)
        for k, target in enumerate(targets):
            expected[stem if len(targets) == 1 else f"{stem}#{k}"] = reference_iou(preds[stem], target)
    output = tmp_path / "out.json"
    eval_reasonseg.main(["--pred_dir", str(pred_dir), "--val_dataset", f"custom|{root}|val", "--workers", "0", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["per_sample"] == pytest.approx({key: iou for key, (_, _, iou) in expected.items()})
    assert result["n"] == 4 and result["per_sample"]["c"] == 1.0
    assert result["giou"] == pytest.approx(np.mean([iou for _, _, iou in expected.values()]))
    inters, unions = zip(*[(i, u) for i, u, _ in expected.values()])
    assert result["ciou"] == pytest.approx(sum(inters) / sum(unions))
    assert len(result["skipped"]) == len(reasons) and all(f"{root}/val.jsonl:" in s for s in result["skipped"])


def test_model_teacher_and_generate(seg_model, folder):
    """The emitter answers exactly one [SEG]: generate scores a question's first mask as teacher mode does, and its
    further masks as empty (IoU 0); every question counts, no-target ones included."""
    root, truth, _ = folder
    data = build_val_dataset("unused", f"custom|{root}|val", all_texts=True)
    teacher = evaluate(*seg_model, data, mode="teacher", batch_size=2, progress=False).summary
    generated = evaluate(*seg_model, data, mode="generate", max_new_tokens=4, progress=False).summary
    assert teacher["n"] == generated["n"] == 7 and teacher["n_no_target"] == 2
    assert set(teacher["per_sample"]) == {f"{stem}#{k}" for stem, n in (("a", 2), ("b", 3), ("c", 2)) for k in range(n)}
    for key, iou in teacher["per_sample"].items():
        assert generated["per_sample"][key] == pytest.approx(0.0 if key == "b#1" else iou, abs=1e-6), key


# ------------------------------------------------------------------------------------------------ converters
def write_coco(root) -> str:
    """Quirks of real COCO files: category ids not contiguous, a crowd region in uncompressed RLE, a polygon with
    fewer than 3 points beside a good one, an object of two polygons, an image without annotations, a missing image."""
    images = os.path.join(root, "coco_images")
    os.makedirs(images)
    for name, seed in (("1.jpg", 1), ("2.jpg", 2)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(os.path.join(images, name))
    crowd = box(14, 22, 2, 12)
    coco = {
        "images": [{"id": 10, "file_name": "1.jpg", "height": H, "width": W}, {"id": 20, "file_name": "2.jpg", "height": H, "width": W},
                   {"id": 30, "file_name": "3.jpg", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "car"}, {"id": 17, "name": "traffic_light"}, {"id": 90, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 90, "iscrowd": 0, "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10], [1, 1, 2, 2]]},
            {"id": 2, "image_id": 10, "category_id": 90, "iscrowd": 0, "segmentation": [[20, 2, 28, 2, 28, 8], [20, 12, 28, 12, 28, 18, 20, 18]]},
            {"id": 3, "image_id": 10, "category_id": 90, "iscrowd": 1, "segmentation": uncompressed_rle(crowd)},
            {"id": 4, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": [[14, 14, 30, 14, 30, 22, 14, 22]]},
            {"id": 5, "image_id": 30, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]},
        ],
    }
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path, coco


def template_of(question):
    for template in SHORT_QUESTION_LIST:
        match = re.fullmatch(re.escape(template.removeprefix("<image>\n")).replace(re.escape("{class_name}"), "(.+)"), question)
        if match:
            return match.group(1)
    raise AssertionError(question)


def test_from_coco(tmp_path, caplog):
    instances, coco = write_coco(str(tmp_path))
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        assert custom_main(["from_coco", "--instances", instances, "--images", str(tmp_path / "coco_images"), "--out", out, "--absent", "1"]) == 0
    assert "fewer than 3 points" in caplog.text and "3.jpg not found" in caplog.text
    records = [json.loads(line) for line in open(os.path.join(out, "train.jsonl"))]
    assert [r["image"] for r in records] == ["../coco_images/1.jpg", "../coco_images/2.jpg"]
    by_name = {template_of(c["question"]): c for c in records[0]["conversations"]}
    assert set(by_name) == {"car", "person", "traffic light"}
    assert by_name["traffic light"]["masks"] == [] and "[SEG]" not in by_name["traffic light"]["answer"]
    assert by_name["car"]["answer"] in ANSWER_LIST
    assert by_name["person"]["answer"] == "Sure, they are [SEG], [SEG] and [SEG]."
    # The masks decode to pycocotools' own rendering of the source annotations (the degenerate polygon dropped).
    data = CustomDataset(out, num_classes_per_sample=3)
    record = data.records[0]
    person = next(c for c in record.conversations if "person" in c.question)
    anns = [a for a in coco["annotations"] if a["category_id"] == 90]
    anns[0]["segmentation"] = anns[0]["segmentation"][:1]
    reference = []
    for ann in anns:
        segmentation = ann["segmentation"]
        rles = mask_utils.frPyObjects(segmentation, H, W)
        reference.append(mask_utils.decode(rles if isinstance(rles, list) else [rles]).any(axis=2))
    np.testing.assert_array_equal(load_masks(record, [person])[0], np.stack(reference))
    assert [c["masks"] for c in records[1]["conversations"]] == [[]]  # no annotations: only the absent question

    assert custom_main(["from_coco", "--instances", instances, "--images", str(tmp_path / "coco_images"), "--out", out, "--absent", "1", "--val_fraction", "0.5"]) == 0
    lines = {split: open(os.path.join(out, f"{split}.jsonl")).read().splitlines() for split in ("train", "val")}
    assert len(lines["train"]) == len(lines["val"]) == 1 and sorted(lines["train"] + lines["val"]) == sorted(map(json.dumps, records))


def test_from_labelme_reason_seg_and_plain(tmp_path):
    src = str(tmp_path / "src")
    write_reason_seg(str(tmp_path / "rs"), "train", [
        {"name": "r1", "size": (H, W), "texts": ["the box", "the other wording"], "is_sentence": False,
         "shapes": [("target", [[2, 3], [12, 3], [12, 9], [2, 9]]), ("ignore", [[20, 10], [30, 10], [30, 20], [20, 20]])]},
        {"name": "r2", "size": (H, W), "texts": ["What holds the thing?"], "is_sentence": True, "shapes": [("ignore", [[1, 1], [5, 1], [5, 5]])]},
    ])
    shutil.copytree(tmp_path / "rs" / "reason_seg" / "ReasonSeg" / "train", src)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(src, "plain.png"))
    with open(os.path.join(src, "plain.json"), "w") as f:
        json.dump({"imagePath": "plain.png", "shapes": [
            {"label": "cup", "points": [[1, 1], [6, 4]], "shape_type": "rectangle"},
            {"label": "cup", "points": [[20, 15], [25, 15], [25, 20], [20, 20]], "shape_type": "polygon"},
            {"label": "dog", "points": [[10, 10]], "shape_type": "point"},
            {"label": "table_ignore", "points": [[0, 0], [3, 0], [3, 3]], "shape_type": "polygon"},
        ]}, f)
    out = str(tmp_path / "out")
    assert custom_main(["from_labelme", "--src", src, "--out", out, "--copy_images"]) == 0
    data = CustomValDataset(out, "train", all_texts=True)
    assert [r.stem for r in data.records] == ["plain", "r1"]  # r2's target is wholly ignored: skipped
    plain, r1 = data[0], data[1]
    # Inclusive integer rectangles, as ReasonSeg's outline + fill paints them.
    np.testing.assert_array_equal(r1.gt, np.stack([box(3, 10, 2, 13)] * 2).astype(np.uint8))
    np.testing.assert_array_equal(plain.gt, (box(1, 5, 1, 7) | box(15, 21, 20, 26))[None].astype(np.uint8))
    assert template_of(plain.queries[0]) == "cup" and [template_of(q) for q in r1.queries] == ["the box", "the other wording"]
    assert os.path.isfile(os.path.join(out, "images", "r1.jpg"))


def test_from_labelme_on_a_turned_photo(tmp_path):
    """LabelMe draws on the photo as displayed (EXIF orientation applied): the converted mask lies there, with the
    displayed size, and the folder's reader gives the image the same way up."""
    src = tmp_path / "src"
    src.mkdir()
    write_turned_photo(str(src / "phone.jpg"), np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    # Displayed W wide and H high; the cup's rows lie below the stored image's H rows.
    with open(src / "phone.json", "w") as f:
        json.dump({"imagePath": "phone.jpg", "imageHeight": W, "imageWidth": H, "shapes": [
            {"label": "cup", "points": [[3, 25], [15, 25], [15, 29], [3, 29]], "shape_type": "polygon"},
        ]}, f)
    out = str(tmp_path / "out")
    assert custom_main(["from_labelme", "--src", str(src), "--out", out]) == 0
    sample = CustomValDataset(out, "train")[0]
    np.testing.assert_array_equal(sample.gt, box(25, 30, 3, 16, h=W, w=H)[None].astype(np.uint8))
    assert sample.image.shape == (W, H, 3)


def test_check_command(folder, capsys):
    root, _, reasons = folder
    assert custom_main(["check", root]) == 1
    printed = capsys.readouterr().out
    assert f"{root}/train.jsonl: 3 usable record(s), {len(reasons)} bad" in printed and "malformed JSON line" in printed


# ------------------------------------------------------------------------------------------------ the guide
DOC = os.path.join(REPO, "docs", "custom_data.md")
# Appended to the guide's commands (argparse keeps the last value): a few steps of the tiny model on the CPU.
TRAIN_FLAGS = ("--precision fp32 --no_gradient_checkpointing --workers 0 --epochs 1 --steps_per_epoch 2 --batch_size 1 "
               "--grad_accumulation_steps 1 --num_classes_per_sample 2")
EVAL_FLAGS = "--precision fp32 --workers 0 --max_new_tokens 4"


def doc_script(settings: str) -> str:
    """The guide's bash blocks, the first (its paths) replaced by `settings`, continuation lines joined and the test
    flags appended to training, merging and model evaluation."""
    blocks = re.findall(r"```bash\n(.*?)```", open(DOC).read(), re.S)
    assert blocks and "DATA=" in blocks[0]
    lines = []
    for line in "".join(blocks[1:]).replace("\\\n", " ").splitlines():
        if "train_ds.py" in line:
            # A port of its own: DeepSpeed's default 29500 may be taken by another job on the machine.
            line = line.replace("deepspeed train_ds.py", f"deepspeed --master_port {free_port()} train_ds.py")
            line += " " + TRAIN_FLAGS
        elif "merge_lora_weights.py" in line:
            line += " --precision fp32"
        elif "eval_reasonseg.py" in line and "--version" in line:
            line += " " + EVAL_FLAGS
        lines.append(line)
    return "set -euo pipefail\n" + settings + "\n" + "\n".join(lines) + "\n"


@pytest.mark.slow
def test_every_command_of_the_guide(tiny_dir, tmp_path):
    """Runs docs/custom_data.md from a mirror of the repository root, on folders written here."""
    work = tmp_path / "work"
    work.mkdir()
    for name in os.listdir(REPO):
        if name.endswith(".py") or name in ("model", "datasets", "utils"):
            os.symlink(os.path.join(REPO, name), work / name)
    # The user's annotations: labelme (ReasonSeg-style and plain), a COCO file; masks from elsewhere.
    items = [{"name": f"img{i}", "size": (H, W), "texts": [f"the box number {i}"], "is_sentence": bool(i % 2),
              "shapes": [("target", [[2 + i, 3], [14 + i, 3], [14 + i, 12], [2 + i, 12]])], "seed": i} for i in range(10)]
    write_reason_seg(str(tmp_path / "rs"), "train", items)
    shutil.copytree(tmp_path / "rs" / "reason_seg" / "ReasonSeg" / "train", work / "my_labelme")
    instances, _ = write_coco(str(work))
    os.rename(instances, work / "my_coco.json")
    os.rename(work / "coco_images", work / "my_coco_images")
    os.makedirs(work / "my_masks")
    generate(str(work / "lisa_data"))
    settings = (f"DATA=my_data\nLISA={tiny_dir / 'lisa'}\nBASE={tiny_dir / 'llava'}\nSAM={tiny_dir / 'sam'}\n"
                f"LISA_DATA=lisa_data\n")
    # `python` and `deepspeed` are the test's own interpreter's.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(work),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    result = subprocess.run(["bash", "-c", doc_script(settings)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert sum(1 for _ in open(work / "my_data" / "val.jsonl")) == 1 and sum(1 for _ in open(work / "my_data" / "train.jsonl")) == 9
    summary = json.loads((work / "my_val.json").read_text())
    assert summary["n"] == 1 and summary["skipped"] == []
    assert os.path.isfile(work / "my-lisa" / "config.json")
    assert os.path.isdir(work / "runs" / "my-lisa-base" / "ckpt_model")
    assert "val giou" in result.stdout and result.stdout.count("gIoU") >= 3
