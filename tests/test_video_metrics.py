"""Video J&F (utils/video_metrics.py) against independent computations written here another way: IoU over sets
of pixel coordinates, boundaries by loops over each pixel's neighbours, boundary matching by a brute-force distance
check, and a hand-computed example."""

import json
import math
import zipfile
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

import utils.video_metrics as vm
from utils.video_metrics import (
    VideoScores, boundary_f_measure, boundary_map, disk, format_video_table, frame_scores, read_prediction_png,
    region_similarity, score_expression, score_prediction_folder, write_mask_png, write_submission_zip,
)

# ---------------------------------------------------------------- independent references


def ref_iou(pred, gt):
    """|A & B| / |A | B| over sets of (y, x) coordinates; 1 when both are empty."""
    a = {tuple(p) for p in np.argwhere(pred)}
    b = {tuple(p) for p in np.argwhere(gt)}
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


def ref_boundary(mask):
    """Pixel by pixel: a pixel is boundary when it differs from one of its right, bottom, bottom-right neighbours
    that lie inside the image."""
    h, w = mask.shape
    out = set()
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                ny, nx = y + dy, x + dx
                if ny < h and nx < w and bool(mask[y, x]) != bool(mask[ny, nx]):
                    out.add((y, x))
    return out


def ref_f(pred, gt):
    """DAVIS's F-measure with matching by distance: a boundary point is matched when a point of the other boundary
    lies at dy^2 + dx^2 <= r^2, r = ceil(0.008 * diagonal)."""
    h, w = pred.shape
    r = math.ceil(0.008 * math.sqrt(h * h + w * w))
    pb, gb = ref_boundary(pred), ref_boundary(gt)

    def matched(points, others):
        others = np.array(sorted(others)).reshape(-1, 2)
        return sum(bool((((others - p) ** 2).sum(axis=1) <= r * r).any()) for p in points)

    if not pb and not gb:
        precision, recall = 1.0, 1.0
    elif not pb:
        precision, recall = 1.0, 0.0
    elif not gb:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = matched(pb, gb) / len(pb), matched(gb, pb) / len(gb)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_mask(rng, h, w):
    """Noise for small frames, a few rectangles and discs (long, smooth boundaries) for large ones."""
    if h * w < 1500:
        return rng.random((h, w)) < rng.uniform(0.03, 0.5)
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        cy, cx, ry, rx = rng.integers(0, h), rng.integers(0, w), rng.integers(1, h // 3), rng.integers(1, w // 3)
        if rng.random() < 0.5:
            mask |= (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        else:
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


# Sizes: 1-row / 1-column, non-square, and frames whose diagonal gives a tolerance of 2 and 3 pixels.
SIZES = [(1, 8), (6, 1), (7, 9), (20, 33), (48, 31), (64, 64), (130, 170), (260, 90)]


# ---------------------------------------------------------------- per-frame measures


@pytest.mark.parametrize("size", SIZES)
def test_region_similarity_matches_coordinate_sets(size):
    rng = np.random.default_rng(sum(size))
    for _ in range(5):
        pred, gt = random_mask(rng, *size), random_mask(rng, *size)
        assert region_similarity(pred, gt) == pytest.approx(ref_iou(pred, gt), abs=1e-12)


@pytest.mark.parametrize("size", SIZES)
def test_boundary_map_matches_pixel_loops(size):
    rng = np.random.default_rng(100 + sum(size))
    for _ in range(3):
        mask = random_mask(rng, *size)
        b = boundary_map(mask)
        assert b.shape == mask.shape and b.dtype == bool
        assert {tuple(p) for p in np.argwhere(b)} == ref_boundary(mask)


@pytest.mark.parametrize("size", SIZES)
def test_boundary_f_matches_brute_force(size):
    rng = np.random.default_rng(200 + sum(size))
    for i in range(3):
        gt = random_mask(rng, *size)
        # A perturbed copy (near the ground truth, where the tolerance matters) or an unrelated mask.
        pred = gt ^ (rng.random(size) < 0.02) if i == 0 else random_mask(rng, *size)
        if i == 1 and min(size) > 4:
            pred = np.roll(gt, (2, -3), axis=(0, 1))
        assert boundary_f_measure(pred, gt) == pytest.approx(ref_f(pred, gt), abs=1e-12)


def test_disk_is_the_set_of_points_within_the_radius():
    for r in (0, 1, 2, 5):
        d = disk(r)
        assert d.shape == (2 * r + 1, 2 * r + 1)
        expected = {(y, x) for y in range(-r, r + 1) for x in range(-r, r + 1) if y * y + x * x <= r * r}
        assert {(y - r, x - r) for y, x in np.argwhere(d)} == expected
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_hand_computed_shifted_square():
    # 10x10 frame: tolerance r = ceil(0.008 * sqrt(200)) = ceil(0.113) = 1 pixel (disk(1): the 4-neighbour cross).
    # A = 4x4 square on rows 2..5, cols 2..5. Its boundary (pixels differing from their right / bottom /
    # bottom-right neighbour) is the 16-pixel ring of the 5x5 box rows 1..5, cols 1..5: foreground pixels of
    # row 5 and col 5, background pixels of row 1 and col 1.
    # B = A shifted 2 right (cols 4..7): ring rows 1..5, cols 3..7.
    #   J = |A & B| / |A | B| = (4 * 2) / (16 + 16 - 8) = 8 / 24 = 1/3.
    #   B's ring pixels within distance 1 of A's ring: row 1 cols 3..6 (4), row 5 cols 3..6 (4), (2,3) and (4,3)
    #   (next to (1,3) and (5,3)); not (3,3), nor col 7 rows 1..5 -> precision 10/16. By symmetry recall 10/16
    #   (A's row 1 cols 2..5, row 5 cols 2..5, (2,5), (4,5)).  F = 2PR / (P + R) = 0.625.
    # Shifted 1 right instead: J = 12 / 20 = 0.6, and every ring pixel is within 1 of the other ring: F = 1.
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    ring = np.zeros((10, 10), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert (boundary_map(a) == ring).all()
    assert frame_scores(a, np.roll(a, 2, axis=1)) == pytest.approx((1 / 3, 0.625))
    assert frame_scores(a, np.roll(a, 1, axis=1)) == pytest.approx((0.6, 1.0))


def test_empty_and_full_masks():
    empty, full = np.zeros((12, 17), bool), np.ones((12, 17), bool)
    some = empty.copy()
    some[3:7, 4:9] = True
    assert frame_scores(empty, empty) == (1.0, 1.0)  # nothing to find, nothing found
    assert frame_scores(empty, some) == (0.0, 0.0)  # DAVIS: P = 1, R = 0
    assert frame_scores(some, empty) == (0.0, 0.0)  # P = 0, R = 1
    # An all-foreground mask has no boundary (the image edge is none): F follows the empty-boundary cases.
    assert frame_scores(full, full) == (1.0, 1.0)
    assert frame_scores(some, full)[1] == 0.0


def test_one_pixel_objects():
    a = np.zeros((9, 11), bool)
    a[4, 5] = True
    assert frame_scores(a, a) == (1.0, 1.0)
    for y, x in [(4, 6), (5, 5), (0, 0), (8, 10), (8, 0)]:  # neighbours, far away, corners
        b = np.zeros_like(a)
        b[y, x] = True
        j, f = frame_scores(a, b)
        assert j == 0.0 and f == pytest.approx(ref_f(a, b), abs=1e-12)
    corner = np.zeros_like(a)
    corner[8, 10] = True  # the bottom-right pixel: its own boundary lies on its three upper-left neighbours
    assert {tuple(p) for p in np.argwhere(boundary_map(corner))} == {(7, 9), (7, 10), (8, 9)}


def test_frame_size_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        frame_scores(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_score_expression_means_and_missing_frames():
    rng = np.random.default_rng(7)
    gts = [random_mask(rng, 15, 22) for _ in range(4)]
    preds = [random_mask(rng, 15, 22), None, gts[2], None]
    j, f, missing = score_expression(preds, gts)
    per_frame = [(ref_iou(p, g), ref_f(p, g)) if p is not None else (0.0, 0.0) for p, g in zip(preds, gts)]
    assert missing == 2
    assert j == pytest.approx(sum(s[0] for s in per_frame) / 4) and f == pytest.approx(sum(s[1] for s in per_frame) / 4)
    with pytest.raises(ValueError):
        score_expression(preds[:3], gts)


# ---------------------------------------------------------------- prediction folders


@dataclass
class Expression:
    video: str
    exp_id: str
    gts: list
    type_id: int | None = None
    frames: list = field(default_factory=list)

    def __post_init__(self):
        self.frames = self.frames or [f"{k:05d}" for k in range(len(self.gts))]

    def mask(self, k):
        return self.gts[k]


def expected_scores(preds, gts):
    """Per-expression (J, F) by the references, a None prediction scoring 0."""
    frames = [(ref_iou(p, g), ref_f(p, g)) if p is not None else (0.0, 0.0) for p, g in zip(preds, gts)]
    return sum(s[0] for s in frames) / len(frames), sum(s[1] for s in frames) / len(frames)


def test_score_prediction_folder(tmp_path):
    rng = np.random.default_rng(3)
    # Two videos of different, non-square frame sizes.
    videos = {"vidA": (24, 40), "vidB": (37, 18)}
    exps, preds = [], {}
    for video, size in videos.items():
        for exp_id in ("0", "1"):
            gts = [random_mask(rng, *size) for _ in range(3)]
            exps.append(Expression(video, exp_id, gts))
            preds[video, exp_id] = [random_mask(rng, *size) for _ in range(3)]
    preds["vidA", "1"][1] = None  # one frame without a file
    preds["vidB", "0"] = [None] * 3  # a whole expression without a folder
    for (video, exp_id), masks in preds.items():
        for k, mask in enumerate(masks):
            if mask is not None:
                write_mask_png(str(tmp_path / video / exp_id / f"{k:05d}.png"), mask)

    summary = score_prediction_folder(exps, str(tmp_path), progress=False).summary()
    assert summary["missing"] == ["vidA/1/00001", "vidB/0"]
    assert summary["n"] == 4 and set(summary["per_expression"]) == {"vidA/0", "vidA/1", "vidB/0", "vidB/1"}
    expected = {f"{e.video}/{e.exp_id}": expected_scores(preds[e.video, e.exp_id], e.gts) for e in exps}
    for key, (j, f) in expected.items():
        assert summary["per_expression"][key] == pytest.approx({"J": j, "F": f})
    assert summary["per_expression"]["vidB/0"] == {"J": 0.0, "F": 0.0}
    j = sum(v[0] for v in expected.values()) / 4
    f = sum(v[1] for v in expected.values()) / 4
    assert (summary["J"], summary["F"], summary["JF"]) == pytest.approx((j, f, (j + f) / 2))
    json.dumps(summary)  # plain Python values only
    table = format_video_table(summary, title="toy")
    assert table.splitlines()[0] == "toy" and f"{100 * (j + f) / 2:.2f}" in table and "missing" in table


def test_revos_groups_skip_type_2_and_average_the_groups(tmp_path):
    gt = np.zeros((8, 12), bool)
    gt[2:5, 3:9] = True
    perfect, wrong = gt, np.zeros_like(gt)  # (J, F) = (1, 1) and (0, 0)
    exps = [Expression("v1", str(i), [gt, gt], type_id=0) for i in range(3)]  # 3 referring, all perfect
    exps.append(Expression("v2", "0", [gt, gt], type_id=1))  # 1 reasoning, half right
    exps.append(Expression("v2", "1", [gt], type_id=2))  # not scored: no prediction, yet not missing
    for e in exps[:3]:
        for frame in e.frames:
            write_mask_png(str(tmp_path / e.video / e.exp_id / f"{frame}.png"), perfect)
    write_mask_png(str(tmp_path / "v2/0/00000.png"), perfect)
    write_mask_png(str(tmp_path / "v2/0/00001.png"), wrong)

    summary = score_prediction_folder(exps, str(tmp_path), progress=False).summary(groups=True)
    assert summary["referring"] == {"J": 1.0, "F": 1.0, "JF": 1.0, "n": 3}
    assert summary["reasoning"] == {"J": 0.5, "F": 0.5, "JF": 0.5, "n": 1}
    # Overall = mean of the two groups (0.75), not the mean of the four expressions (3.5 / 4 = 0.875).
    assert (summary["J"], summary["F"], summary["JF"], summary["n"]) == (0.75, 0.75, 0.75, 4)
    assert "v2/1" not in summary["per_expression"] and summary["missing"] == []
    assert "referring" in format_video_table(summary) and "reasoning" in format_video_table(summary)
    json.dumps(summary)
    plain = score_prediction_folder(exps, str(tmp_path), progress=False).summary()
    assert plain["J"] == 0.875 and "referring" not in plain


def test_prediction_size_mismatch_names_the_file(tmp_path):
    exp = Expression("vid", "0", [np.zeros((10, 14), bool)])
    write_mask_png(str(tmp_path / "vid/0/00000.png"), np.zeros((14, 10), bool))
    with pytest.raises(ValueError, match=r"vid[/\\]0[/\\]00000\.png"):
        score_prediction_folder([exp], str(tmp_path), progress=False)


def test_corrupt_png_raises_naming_it(tmp_path):
    garbage = tmp_path / "vid/0/00000.png"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"this is not a PNG")
    with pytest.raises(ValueError, match="00000.png"):
        read_prediction_png(str(garbage))
    with pytest.raises(ValueError, match="00000.png"):
        score_prediction_folder([Expression("vid", "0", [np.zeros((6, 6), bool)])], str(tmp_path), progress=False)
    truncated = tmp_path / "cut.png"
    write_mask_png(str(truncated), np.eye(40, dtype=bool))
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.png"):
        read_prediction_png(str(truncated))


def test_read_prediction_png(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1, 2] = mask[4, 6] = True
    assert read_prediction_png(str(tmp_path / "absent.png")) is None
    cv2.imwrite(str(tmp_path / "ones.png"), mask.astype(np.uint8))  # 0/1 values, not 0/255
    assert (read_prediction_png(str(tmp_path / "ones.png")) == mask).all()
    colour = np.zeros((5, 7, 3), np.uint8)
    colour[..., 0] = mask * 128  # only one channel set
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    assert (read_prediction_png(str(tmp_path / "colour.png")) == mask).all()


def test_write_mask_png(tmp_path):
    mask = np.random.default_rng(0).random((13, 21)) < 0.5
    path = tmp_path / "a/b/c.png"
    write_mask_png(str(path), mask)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.shape == (13, 21) and set(np.unique(raw)) <= {0, 255}
    assert ((raw == 255) == mask).all()


def test_submission_zip(tmp_path):
    pred = tmp_path / "pred"
    names = ["v1/0/00000.png", "v1/0/00005.png", "v1/1/00000.png", "v2/3/00010.png"]
    for i, name in enumerate(names):
        write_mask_png(str(pred / name), np.eye(4 + i, dtype=bool))
    (pred / "summary.json").write_text("{}")  # not a prediction: left out
    (pred / "v1/notes.png").write_bytes(b"")  # wrong depth: left out
    zip_path = tmp_path / "submission.zip"
    assert write_submission_zip(str(pred), str(zip_path)) == 4
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == names
        for name in names:
            assert archive.read(name) == (pred / name).read_bytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        write_submission_zip(str(tmp_path / "empty"), str(tmp_path / "empty.zip"))


# ---------------------------------------------------------------- accumulation


def test_video_scores_gather_and_summary(monkeypatch):
    scores = VideoScores()
    scores.add("b/0", 0.5, 0.25)
    scores.add("a/0", 1.0, 0.5)
    scores.add_missing("a/0/00003")
    scores.gather()  # single process: unchanged
    assert scores.summary()["per_expression"] == {"a/0": {"J": 1.0, "F": 0.5}, "b/0": {"J": 0.5, "F": 0.25}}

    # Two ranks: the other scored "c/1" and, as a padded sampler does, "a/0" again.
    # `gather` gathers the scores, then the missing names: the other rank's contributions, call by call.
    other_rank = iter([[("a/0", (1.0, 0.5, None)), ("c/1", (0.0, 0.25, None))], ["c/1"]])
    monkeypatch.setattr(vm, "gather_lists", lambda items: list(items) + next(other_rank))
    scores.gather()
    summary = scores.summary()
    assert summary["n"] == 3 and list(summary["per_expression"]) == ["a/0", "b/0", "c/1"]
    assert summary["missing"] == ["a/0/00003", "c/1"]
    assert (summary["J"], summary["F"]) == pytest.approx((0.5, 1 / 3))
    assert VideoScores().summary(groups=True)["n"] == 0
    with pytest.raises(ValueError):
        scores.add("x/0", 1.0, 1.0, group="other")
