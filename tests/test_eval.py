"""eval_reasonseg.py and the evaluation library on the tiny model and hand-made ReasonSeg / referring folders."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import eval_reasonseg
from datasets.hybrid import build_val_dataset
from model.evaluation import evaluate
from model.inference import answer
from model.loading import load_for_inference
from tests.lisa_fixtures import reason_seg_items, write_reason_seg, write_seg_emitter
from utils.scoring import PredictionFiles, run_evaluation

GOOD = 6
SCHEMA = {"giou", "ciou", "n", "short", "long", "per_sample"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """ReasonSeg val with GOOD readable samples and three bad ones (undecodable image, invalid JSON, a one-point polygon)."""
    root = str(tmp_path_factory.mktemp("data"))
    write_reason_seg(root, "val", reason_seg_items(GOOD))
    folder = os.path.join(root, "reason_seg", "ReasonSeg", "val")
    bad = reason_seg_items(3, seed=1)
    for item, name in zip(bad, ["bad_image", "bad_json", "bad_polygon"]):
        item["name"] = name
    bad[2]["shapes"] = [("target", [[1, 1]])]
    write_reason_seg(root, "val", bad)
    with open(os.path.join(folder, "bad_image.jpg"), "w") as f:
        f.write("not a jpeg")
    with open(os.path.join(folder, "bad_json.json"), "w") as f:
        f.write("{ not json")
    return root


@pytest.fixture(scope="module")
def seg_model(tiny_dir):
    """The tiny model answering "[SEG]" then end of turn: exactly one mask per answer (see write_seg_emitter)."""
    path = write_seg_emitter(str(tiny_dir / "lisa"), str(tiny_dir / "seg_once"), after_seg=None)
    return load_for_inference(path, "fp32")


def test_teacher_batch_equals_single(seg_model, data_dir):
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    single = evaluate(*seg_model, dataset, mode="teacher", batch_size=1, progress=False)
    batched = evaluate(*seg_model, dataset, mode="teacher", batch_size=4, progress=False)
    assert single.summary == batched.summary
    assert single.summary["n"] == GOOD and set(single.summary) == SCHEMA
    assert single.summary["short"]["n"] == single.summary["long"]["n"] == GOOD // 2


def test_generate_batch_equals_single_and_teacher(seg_model, data_dir):
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    single = evaluate(*seg_model, dataset, mode="generate", batch_size=1, max_new_tokens=4, progress=False)
    batched = evaluate(*seg_model, dataset, mode="generate", batch_size=4, max_new_tokens=4, progress=False)
    teacher = evaluate(*seg_model, dataset, mode="teacher", progress=False)
    assert single.summary == batched.summary
    # The emitted [SEG] follows the same prompt as the teacher-forced one: the same query, the same mask.
    for key, iou in teacher.summary["per_sample"].items():
        assert single.summary["per_sample"][key] == pytest.approx(iou, abs=1e-6)


def test_answer_without_seg_scores_as_empty(tiny_dir, data_dir):
    model, processor = load_for_inference(str(tiny_dir / "lisa"), "fp32")
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    sample = dataset[[os.path.basename(p) for p in dataset.images].index("img000.jpg")]
    replies = answer(model, processor, [sample.image], [sample.conversations[0][:-1]], max_new_tokens=3)
    assert not replies[0].masks  # the random tiny model does not emit [SEG] here
    report = evaluate(model, processor, dataset, mode="generate", max_new_tokens=3, progress=False)
    assert report.summary["per_sample"]["img000"] == 0.0


def test_unreadable_samples_are_named_and_counted(seg_model, data_dir, caplog):
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    with caplog.at_level(logging.WARNING):
        report = evaluate(*seg_model, dataset, mode="teacher", batch_size=3, progress=False)
    assert len(report.skipped) == 3 and report.summary["n"] == GOOD
    for name in ["bad_image.jpg", "bad_json.json", "bad_polygon.json"]:
        assert any(name in s for s in report.skipped)
        assert name in caplog.text


def test_all_texts(seg_model, data_dir):
    dataset = build_val_dataset(data_dir, "ReasonSeg|val", all_texts=True)
    report = evaluate(*seg_model, dataset, mode="teacher", batch_size=2, progress=False)
    assert report.summary["n"] == 2 * GOOD
    assert {"img000#0", "img000#1"} <= set(report.summary["per_sample"])


def test_pred_dir(data_dir, tmp_path, caplog, capsys):
    """Saved masks: a perfect one, a half one (RGB), a wrongly sized one, and missing files."""
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    gts = {os.path.basename(p)[:-4]: dataset[i].gt[0] for i, p in enumerate(dataset.images) if "img" in p}
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    Image.fromarray((gts["img000"] == 1).astype(np.uint8) * 255).save(pred_dir / "img000.png")
    half = gts["img001"] == 1
    half[: half.shape[0] // 2] = False
    Image.fromarray(np.stack([half.astype(np.uint8) * 7] * 3, axis=2)).save(pred_dir / "img001.png")
    Image.fromarray(np.ones((3, 3), np.uint8)).save(pred_dir / "img002.png")
    output = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING):
        eval_reasonseg.main(["--pred_dir", str(pred_dir), "--dataset_dir", data_dir, "--workers", "0", "--output", str(output)])
    summary = json.loads(output.read_text())
    assert set(summary) == SCHEMA | {"skipped", "prediction_problems"}
    assert len(summary["skipped"]) == 3 and len(summary["prediction_problems"]) == GOOD - 2
    per_sample = summary["per_sample"]
    target = (gts["img000"] == 1).sum()
    assert per_sample["img000"] == target / (target + 1e-5)
    expected_half = half.sum() / ((gts["img001"] == 1).sum() + 1e-5)
    assert per_sample["img001"] == pytest.approx(expected_half)
    assert per_sample["img002"] == per_sample["img003"] == 0.0
    assert "img002.png: prediction of size (3, 3)" in caplog.text and "img003.png: missing prediction file" in caplog.text
    printed = capsys.readouterr().out  # each file named in the run's summary too, not only a count
    assert f"{pred_dir}/img002.png: prediction of size (3, 3)" in printed and f"{pred_dir}/img003.png: missing" in printed
    assert summary["n"] == GOOD and 0.0 <= summary["giou"] <= 1.0 and 0.0 <= summary["ciou"] <= 1.0
    # The prediction files' problems are kept for the caller.
    files = PredictionFiles(str(pred_dir))
    run_evaluation(dataset, files, progress=False)
    assert len(files.problems) == GOOD - 2


def test_cli_model_run(seg_model, tiny_dir, data_dir, tmp_path, capsys):
    output = tmp_path / "out.json"
    eval_reasonseg.main([
        "--version", str(tiny_dir / "seg_once"), "--dataset_dir", data_dir, "--precision", "fp32", "--mode", "teacher",
        "--batch_size", "2", "--workers", "0", "--output", str(output),
    ])
    printed = capsys.readouterr().out
    assert "3 unusable sample(s) skipped" in printed and "gIoU" in printed and "overall" in printed
    summary = json.loads(output.read_text())
    reference = evaluate(*seg_model, build_val_dataset(data_dir, "ReasonSeg|val"), mode="teacher", progress=False)
    assert summary == json.loads(json.dumps({**reference.summary, "skipped": reference.skipped, "prediction_problems": []}))
    assert any("bad_polygon.json: degenerate polygon" in s for s in summary["skipped"])


def test_cli_needs_a_model_or_predictions(data_dir):
    with pytest.raises(SystemExit):
        eval_reasonseg.main(["--dataset_dir", data_dir])


def write_grefcoco(root):
    """refer_seg/grefcoco with grefs(unc).json: image 1 has a target expression and a no-target one."""
    base = os.path.join(root, "refer_seg")
    image_dir = os.path.join(base, "images", "mscoco", "images", "train2014")
    os.makedirs(image_dir)
    os.makedirs(os.path.join(base, "grefcoco"))
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(os.path.join(image_dir, "COCO_1.jpg"))
    instances = {
        "images": [{"id": 1, "file_name": "COCO_1.jpg", "height": 20, "width": 30}],
        "annotations": [{"id": 7, "image_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
    }
    refs = [
        {"image_id": 1, "ann_id": [7], "sentences": [{"sent": "the square"}], "split": "val"},
        {"image_id": 1, "ann_id": [-1], "sentences": [{"sent": "the dog"}], "split": "val"},
    ]
    with open(os.path.join(base, "grefcoco", "instances.json"), "w") as f:
        json.dump(instances, f)
    with open(os.path.join(base, "grefcoco", "grefs(unc).json"), "w") as f:
        json.dump(refs, f)
    return root


def test_grefcoco_no_target_accuracy(tmp_path, seg_model):
    root = write_grefcoco(str(tmp_path))
    dataset = build_val_dataset(root, "grefcoco|unc|val")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(pred_dir / "COCO_1.png")
    summary = run_evaluation(dataset, PredictionFiles(str(pred_dir)), progress=False).summary
    assert summary["n"] == 2 and summary["n_no_target"] == 1 and summary["no_target_acc"] == 1.0
    assert summary["per_sample"] == {"COCO_1#0": 0.0, "COCO_1#1": 1.0}
    # A model always answering with a mask is scored too (teacher mode: [SEG] is given).
    report = evaluate(*seg_model, dataset, mode="teacher", progress=False)
    assert report.summary["n_no_target"] == 1 and report.summary["no_target_acc"] in (0.0, 1.0)


@pytest.mark.slow
def test_two_processes_equal_one(tiny_dir, seg_model, data_dir, tmp_path):
    """torchrun with 2 ranks and batch 2 writes the same JSON as one process at batch 1."""
    common = ["--version", str(tiny_dir / "seg_once"), "--dataset_dir", data_dir, "--precision", "fp32",
              "--max_new_tokens", "4", "--workers", "0"]
    eval_reasonseg.main(common + ["--output", str(tmp_path / "one.json")])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "eval_reasonseg.py", *common, "--batch_size", "2",
         "--output", str(tmp_path / "two.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads((tmp_path / "one.json").read_text()) == json.loads((tmp_path / "two.json").read_text())


def test_a_missing_model_or_prediction_folder_is_refused_at_once(tmp_path, capsys):
    for flag in ("--version", "--pred_dir"):
        with pytest.raises(SystemExit):
            eval_reasonseg.parse_args([flag, str(tmp_path / "missing")])
        assert f"{flag} {tmp_path / 'missing'}: no such file or folder" in capsys.readouterr().err


def rect(x0, y0, x1, y1):
    """A rectangle polygon; ReasonSeg's rasterization (outline + fill) paints [x0, x1] x [y0, y1] inclusive."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_empty_targets_are_scored_as_the_original(tmp_path):
    """Samples whose shapes are all "ignore"/"flag", or none, have an empty target: the original scores them (IoU 1
    when the prediction is empty outside the ignored pixels, else 0) and counts them in gIoU, cIoU and n."""
    h, w = 30, 40
    shapes = {
        "target": [("target", rect(5, 5, 20, 15)), ("ignore", rect(25, 0, 39, 9))],
        "ignored": [("ignore", rect(2, 2, 12, 12)), ("flag", rect(0, 0, 39, 29))],
        "no_shapes": [],
        "ignored_missed": [("Ignore_occluded", rect(0, 20, 9, 29))],
    }
    items = [{"name": name, "size": (h, w), "texts": ["the thing"], "is_sentence": False, "shapes": s, "seed": i}
             for i, (name, s) in enumerate(shapes.items())]
    root = write_reason_seg(str(tmp_path / "data"), "val", items)
    # Independent ground truth: 1 target, 255 ignored, by numpy slicing.
    gts = {name: np.zeros((h, w), np.uint8) for name in shapes}
    gts["target"][5:16, 5:21] = 1
    gts["target"][0:10, 25:40] = 255
    gts["ignored"][2:13, 2:13] = 255
    gts["ignored_missed"][20:30, 0:10] = 255
    preds = {name: np.zeros((h, w), bool) for name in shapes}
    preds["target"][8:20, 10:30] = True
    preds["ignored"][3:10, 3:10] = True  # only inside the ignored region: free, still an "empty" prediction
    preds["ignored_missed"][0:5, 30:40] = True  # outside: a mask where there is nothing
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for name, pred in preds.items():
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"{name}.png")

    inters, unions, ious = [], [], []
    for name in shapes:
        pred = preds[name] & (gts[name] != 255)
        target = gts[name] == 1
        inter = int((pred & target).sum())
        union = int(pred.sum() + target.sum()) - inter
        inters.append(inter), unions.append(union), ious.append(inter / (union + 1e-5) + (union == 0))
    output = tmp_path / "out.json"
    eval_reasonseg.main(["--pred_dir", str(pred_dir), "--dataset_dir", root, "--workers", "0", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["n"] == 4 and result["skipped"] == []
    assert result["per_sample"] == pytest.approx(dict(zip(shapes, ious)))
    assert ious[1:] == [1.0, 1.0, 0.0]
    assert result["giou"] == pytest.approx(np.mean(ious)) and result["ciou"] == pytest.approx(sum(inters) / sum(unions))
    assert result["n_no_target"] == 3 and result["no_target_acc"] == pytest.approx(2 / 3)
