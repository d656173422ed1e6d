"""J&F evaluation on video splits: eval_reasonseg.py with a video --val_dataset (saved predictions and model runs) and
`model.video_evaluation.evaluate_video`, on tiny MeViS- and ReVOS-layout sets written here."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import eval_reasonseg
import model.video_evaluation as video_evaluation
from datasets.vos import VideoValDataset, eval_question
from model.loading import load_for_inference
from model.tiny import write_tiny
from model.video import LazyVideoModel
from model.video_evaluation import evaluate_video
from tests.lisa_fixtures import write_seg_emitter

H, W = 48, 64
KEYS = {"J", "F", "JF", "n", "per_expression", "missing"}


def square(t, x0, y0=10, size=16, step=3):
    mask = np.zeros((H, W), bool)
    mask[y0:y0 + size, x0 + step * t: x0 + step * t + size] = True
    return mask


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def write_frames(folder, count, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{k:05d}" for k in range(count)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(os.path.join(folder, name + ".jpg"))
    return names


# Per video: frame count and per annotation the truth (None: an empty frame, written as null).
VIDEOS = {
    "v0": (5, {"0": [square(t, 2) if t < 4 else None for t in range(5)]}),
    "v1": (5, {"1": [square(t, 30, y0=20) if t != 1 else None for t in range(5)]}),
    "v2": (4, {"2": [square(t, 10) for t in range(4)]}),
}


def truth(anno_ids, video):
    count, annotations = VIDEOS[video]
    out = np.zeros((count, H, W), bool)
    for a in anno_ids:
        for t, m in enumerate(annotations[a]):
            if m is not None:
                out[t] |= m
    return out


def write_annotations(meta_path, mask_path, frames_root, expressions, type_ids=None):
    """expressions: {video: {exp_id: (text, anno_ids)}}; type_ids: {(video, exp_id): type_id} (ReVOS)."""
    videos, mask_dict = {}, {}
    for seed, (vid, items) in enumerate(expressions.items()):
        count, annotations = VIDEOS[vid]
        frames = write_frames(os.path.join(frames_root, vid), count, seed)
        entries = {}
        for exp_id, (text, anno_ids) in items.items():
            entries[exp_id] = {"exp": text, "obj_id": [int(a) for a in anno_ids], "anno_id": [int(a) for a in anno_ids]}
            if type_ids is not None:
                entries[exp_id]["type_id"] = type_ids[(vid, exp_id)]
        videos[vid] = {"expressions": entries, "frames": frames}
        for a, masks in annotations.items():
            mask_dict[a] = [None if m is None else rle(m) for m in masks]
    with open(meta_path, "w") as f:
        json.dump({"videos": videos}, f)
    if mask_path is not None:
        with open(mask_path, "w") as f:
            json.dump(mask_dict, f)


MEVIS = {
    "v0": {"0": ("the moving square", ["0"]), "1": ("a giraffe", [])},  # "1": its target is not in the video
    "v1": {"0": ("the lower square", ["1"]), "1": ("the square at the bottom", ["1"])},
    "v2": {"0": ("the square", ["2"])},
}
REVOS = {"v0": {"0": ("the square", ["0"]), "1": ("What moves to the right?", ["0"]), "2": ("the ghost", ["0"])}}
REVOS_TYPES = {("v0", "0"): 0, ("v0", "1"): 1, ("v0", "2"): 2}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A MeViS root with valid_u (masks) and valid (no public masks), and a ReVOS root."""
    base = tmp_path_factory.mktemp("vos")
    mevis = base / "mevis"
    for split, with_masks in (("valid_u", True), ("valid", False)):
        folder = mevis / split
        folder.mkdir(parents=True)
        write_annotations(str(folder / "meta_expressions.json"), str(folder / "mask_dict.json") if with_masks else None,
                          str(folder / "JPEGImages"), MEVIS)
    revos = base / "revos"
    revos.mkdir()
    write_annotations(str(revos / "meta_expressions_valid_.json"), str(revos / "mask_dict.json"),
                      str(revos / "JPEGImages"), REVOS, REVOS_TYPES)
    return {"mevis": str(mevis), "revos": str(revos)}


def write_prediction(pred_dir, video, exp_id, masks, skip=()):
    folder = os.path.join(pred_dir, video, exp_id)
    os.makedirs(folder, exist_ok=True)
    for k, mask in enumerate(masks):
        if k not in skip:
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(folder, f"{k:05d}.png"))


def numpy_j(pred, gt):
    """Mean over frames of IoU, 1 where both are empty; None frames score 0."""
    values = []
    for p, g in zip(pred, gt):
        if p is None:
            values.append(0.0)
            continue
        union = (p | g).sum()
        values.append(1.0 if union == 0 else (p & g).sum() / union)
    return float(np.mean(values))


def run(argv, tmp_path, name="out.json"):
    output = tmp_path / name
    eval_reasonseg.main([*argv, "--output", str(output)])
    return json.loads(output.read_text())


def test_scoring_saved_predictions_equals_numpy(sets, tmp_path, capsys):
    pred = str(tmp_path / "pred")
    perfect = truth(["0"], "v0")
    write_prediction(pred, "v0", "0", perfect)
    write_prediction(pred, "v0", "1", np.zeros((5, H, W), bool))  # no target, nothing predicted: perfect
    gt1 = truth(["1"], "v1")
    shifted = np.roll(gt1, 5, axis=2)
    write_prediction(pred, "v1", "0", shifted, skip=(3,))  # frame 3 missing
    write_prediction(pred, "v1", "1", np.zeros((5, H, W), bool))  # empty for a target present on 4 of 5 frames
    # v2/0: no folder at all
    summary = run(["--pred_dir", pred, "--val_dataset", f"mevis|{sets['mevis']}|valid_u"], tmp_path)
    assert set(summary) == KEYS and summary["n"] == 5
    per = summary["per_expression"]
    assert per["v0/0"] == {"J": 1.0, "F": 1.0} and per["v0/1"] == {"J": 1.0, "F": 1.0}
    expected = numpy_j([m if k != 3 else None for k, m in enumerate(shifted)], gt1)
    assert per["v1/0"]["J"] == pytest.approx(expected, abs=1e-12) and 0 < expected < 1
    # Empty vs non-empty: J = F = 0 on those frames; both empty (frame 1): J = F = 1.
    assert per["v1/1"]["J"] == pytest.approx(0.2) and per["v1/1"]["F"] == pytest.approx(0.2)
    assert per["v2/0"] == {"J": 0.0, "F": 0.0}
    assert summary["missing"] == ["v1/0/00003", "v2/0"]
    assert summary["J"] == pytest.approx(np.mean([per[k]["J"] for k in per]))
    assert summary["JF"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    printed = capsys.readouterr().out
    assert "J&F" in printed and "missing predictions (scored 0): 2" in printed


def test_revos_groups_and_type_2_left_out(sets, tmp_path):
    pred = str(tmp_path / "pred")
    gt = truth(["0"], "v0")
    write_prediction(pred, "v0", "0", gt)  # referring: perfect
    write_prediction(pred, "v0", "1", np.zeros_like(gt))  # reasoning: J = F = 1/5 (frame 4 is empty)
    summary = run(["--pred_dir", pred, "--val_dataset", f"revos|{sets['revos']}|valid"], tmp_path)
    assert set(summary) == KEYS | {"referring", "reasoning"}
    assert sorted(summary["per_expression"]) == ["v0/0", "v0/1"] and summary["n"] == 2 and summary["missing"] == []
    assert summary["referring"] == {"J": 1.0, "F": 1.0, "JF": 1.0, "n": 1}
    assert summary["reasoning"]["J"] == pytest.approx(0.2) and summary["reasoning"]["n"] == 1
    assert summary["J"] == pytest.approx(0.6) and summary["F"] == pytest.approx(0.6)


def test_questions_follow_the_training_templates(sets):
    expressions = {(e.video, e.exp_id): e for e in VideoValDataset("revos", sets["revos"], "valid").expressions}
    assert eval_question(expressions["v0", "0"]) == "<image>\nCan you segment the square in this video?"
    assert eval_question(expressions["v0", "1"]) == "<image>\nWhat moves to the right? Please respond with segmentation mask."
    frames = expressions["v0", "0"].frames_reader()
    assert len(frames) == 5 and frames.read(4).shape == (H, W, 3) and frames.size(0) == (H, W)


def test_flags_that_do_not_fit_are_refused(sets, tmp_path, capsys):
    valid = f"mevis|{sets['mevis']}|valid"
    cases = [
        (["--version", str(tmp_path), "--val_dataset", valid], "--save_masks DIR"),
        (["--pred_dir", str(tmp_path), "--val_dataset", valid], "nothing to score"),
        (["--version", str(tmp_path), "--val_dataset", f"mevis|{sets['mevis']}|valid_u", "--mode", "teacher"],
         "does not apply to videos"),
        (["--version", str(tmp_path), "--save_masks", str(tmp_path)], "only for a video split"),
        (["--version", str(tmp_path), "--val_dataset", f"mevis|{sets['mevis']}|nope"], "expected 'name|ROOT|split'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            eval_reasonseg.parse_args(argv)
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def emitter(tmp_path_factory):
    """A tiny Qwen2.5-VL + SAM 2 LISA answering "[SEG] . [SEG] ..." (two masks in 3 tokens), its base folder."""
    root = tmp_path_factory.mktemp("video_eval_tiny")
    write_tiny(str(root), vlm="qwen2_5_vl", sam="sam2")
    return write_seg_emitter(str(root / "lisa"), str(root / "emitter")), root


def model_args(emitter):
    return ["--version", emitter[0], "--precision", "fp32", "--max_new_tokens", "3", "--num_frames", "2"]


@pytest.mark.parametrize("propagate", ["per_frame", "memory"])
def test_model_run_scores_and_saves_every_frame(emitter, sets, tmp_path, propagate):
    split = f"mevis|{sets['mevis']}|valid_u"
    masks = tmp_path / "masks"
    extra = ["--video_memory", str(emitter[1] / "sam2_video")] if propagate == "memory" else []
    summary = run([*model_args(emitter), "--val_dataset", split, "--propagate", propagate, "--save_masks", str(masks),
                   *extra], tmp_path)
    assert set(summary) == KEYS and summary["n"] == 5 and summary["missing"] == []
    for e in VideoValDataset("mevis", sets["mevis"], "valid_u").expressions:
        files = sorted(os.listdir(masks / e.video / e.exp_id))
        assert files == [f + ".png" for f in e.frames]
        assert all(Image.open(masks / e.video / e.exp_id / f).size == (W, H) for f in files)
    # The saved masks are those scored: scoring them again gives the same figures.
    again = run(["--pred_dir", str(masks), "--val_dataset", split], tmp_path, "again.json")
    assert again["per_expression"].keys() == summary["per_expression"].keys() and again["missing"] == []
    for key, value in summary["per_expression"].items():
        assert again["per_expression"][key] == pytest.approx(value, abs=1e-12)


def test_split_without_masks_writes_the_submission_zip(emitter, sets, tmp_path, capsys):
    masks = tmp_path / "sub"
    run([*model_args(emitter), "--val_dataset", f"mevis|{sets['mevis']}|valid", "--propagate", "per_frame",
         "--save_masks", str(masks)], tmp_path)
    with zipfile.ZipFile(str(masks) + ".zip") as archive:
        names = archive.namelist()
    expected = {f"{e.video}/{e.exp_id}/{f}.png" for e in VideoValDataset("mevis", sets["mevis"], "valid").expressions
                for f in e.frames}
    assert set(names) == expected
    assert "no public masks" in capsys.readouterr().out


def test_type_2_is_never_asked(emitter, sets, monkeypatch):
    asked = []
    ask = video_evaluation.ask_video

    def spy(model, processor, frames, conversations, **kwargs):
        asked.extend(c[0]["content"] for c in conversations)
        return ask(model, processor, frames, conversations, **kwargs)

    monkeypatch.setattr(video_evaluation, "ask_video", spy)
    model, processor = load_for_inference(emitter[0], "fp32")
    expressions = VideoValDataset("revos", sets["revos"], "valid").expressions
    scores = evaluate_video(model, processor, expressions, eval_question, num_frames=2, max_new_tokens=3,
                            propagate="per_frame", progress=False)
    summary = scores.summary(groups=True)
    assert len(asked) == 2 and not any("ghost" in q for q in asked)
    assert summary["referring"]["n"] == summary["reasoning"]["n"] == 1 and summary["n"] == 2


@pytest.mark.parametrize("propagate", ["per_frame", "memory"])
def test_expressions_batched_by_video_score_as_one_at_a_time(emitter, sets, propagate):
    model, processor = load_for_inference(emitter[0], "fp32")
    video_model = LazyVideoModel(model, str(emitter[1] / "sam2_video")).get() if propagate == "memory" else None
    expressions = VideoValDataset("mevis", sets["mevis"], "valid_u").expressions

    def scores(batch_size):
        return evaluate_video(model, processor, expressions, eval_question, num_frames=2, max_new_tokens=3,
                              propagate=propagate, video_model=video_model, batch_size=batch_size, progress=False)

    one, batched = scores(1).summary(), scores(3).summary()
    assert one["n"] == batched["n"] == 5
    for key, value in one["per_expression"].items():
        assert batched["per_expression"][key] == pytest.approx(value, abs=1e-9)


def test_an_unreadable_frame_scores_its_video_0_and_names_it(emitter, sets, tmp_path, caplog):
    root = tmp_path / "mevis"
    shutil.copytree(sets["mevis"], root)
    (root / "valid_u" / "JPEGImages" / "v1" / "00002.jpg").write_bytes(b"not a jpeg")
    model, processor = load_for_inference(emitter[0], "fp32")
    expressions = VideoValDataset("mevis", str(root), "valid_u").expressions
    summary = evaluate_video(model, processor, expressions, eval_question, num_frames=2, max_new_tokens=3,
                             propagate="per_frame", batch_size=2, progress=False).summary()
    assert summary["n"] == 5 and summary["missing"] == ["v1/0", "v1/1"]
    assert summary["per_expression"]["v1/0"] == summary["per_expression"]["v1/1"] == {"J": 0.0, "F": 0.0}
    assert "00002.jpg" in caplog.text and "v1" in caplog.text


@pytest.mark.slow
def test_two_processes_equal_one(emitter, sets, tmp_path):
    """torchrun with 2 ranks writes the same JSON as one process."""
    common = [*model_args(emitter), "--val_dataset", f"mevis|{sets['mevis']}|valid_u", "--propagate", "per_frame"]
    one = run(common, tmp_path, "one.json")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "eval_reasonseg.py", *common,
         "--output", str(tmp_path / "two.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads((tmp_path / "two.json").read_text()) == one
