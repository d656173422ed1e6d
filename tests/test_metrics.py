"""LISA's metrics against an independent numpy rendering of the original's `intersectionAndUnionGPU` +
`validate` arithmetic."""

import numpy as np
import pytest
import torch

from utils.metrics import SegMetrics, format_table, intersection_and_union, pair_iou


def reference_counts(pred, target):
    """The original, step by step, in numpy: pred := 255 where target is 255; 2-bin histograms on [0, 1]."""
    pred = pred.astype(np.int64).ravel().copy()
    target = target.astype(np.int64).ravel()
    pred[target == 255] = 255
    hist = lambda x: np.histogram(x, bins=2, range=(0, 1))[0]
    inter = hist(pred[pred == target])
    return inter, hist(pred) + hist(target) - inter


def reference_scores(pairs):
    """gIoU (mean of I/(U+1e-5), +1 where U == 0) and cIoU (sum I / (sum U + 1e-10)) of the foreground."""
    inters, unions, ious = [], [], []
    for pred, target in pairs:
        inter, union = reference_counts(pred, target)
        iou = inter / (union + 1e-5)
        iou[union == 0] += 1.0
        inters.append(inter[1]), unions.append(union[1]), ious.append(iou[1])
    return float(np.mean(ious)), float(np.sum(inters) / (np.sum(unions) + 1e-10))


def random_pairs(seed, count=40):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        h, w = rng.integers(5, 40, size=2)
        target = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        target[rng.random((h, w)) < 0.2] = 255  # ignore regions
        pred = rng.random((h, w)) < rng.random()
        if i % 7 == 0:  # empty / empty (outside the ignored pixels): the "no object" pair
            target[target == 1] = 0
            pred = np.zeros((h, w), dtype=bool)
        if i % 11 == 0:  # prediction only inside the ignored region: free
            target[target == 1] = 0
            pred = target == 255
        pairs.append((pred, target))
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_the_original(seed):
    for pred, target in random_pairs(seed):
        inter, union, _ = intersection_and_union(pred, target)
        ref_inter, ref_union = reference_counts(pred, target)
        assert inter.tolist() == ref_inter.tolist() and union.tolist() == ref_union.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_giou_ciou_match_the_original(seed):
    pairs = random_pairs(seed)
    metrics = SegMetrics()
    for i, (pred, target) in enumerate(pairs):
        metrics.add(pred, target, (i, 0), f"p{i}", is_sentence=i % 3 == 0)
    summary = metrics.summary()
    giou, ciou = reference_scores(pairs)
    assert summary["giou"] == pytest.approx(giou, abs=1e-12) and summary["ciou"] == pytest.approx(ciou, abs=1e-12)
    assert summary["n"] == len(pairs)
    long_pairs = [p for i, p in enumerate(pairs) if i % 3 == 0]
    short_pairs = [p for i, p in enumerate(pairs) if i % 3 != 0]
    assert summary["long"]["giou"] == pytest.approx(reference_scores(long_pairs)[0], abs=1e-12)
    assert summary["short"]["ciou"] == pytest.approx(reference_scores(short_pairs)[1], abs=1e-12)
    assert summary["long"]["n"] + summary["short"]["n"] == len(pairs)
    assert len(summary["per_sample"]) == len(pairs)


def test_pair_conventions():
    target = np.array([[1, 1, 0], [0, 255, 255]], dtype=np.uint8)
    assert pair_iou(0, 0) == 1.0  # empty / empty
    # the prediction inside the ignored pixels costs nothing: I = 2, U = 2
    pred = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
    inter, union, area = intersection_and_union(pred, target)
    assert (int(inter[1]), int(union[1]), int(area[1])) == (2, 2, 2)
    assert pair_iou(2, 2) == 2 / (2 + 1e-5)  # the original's epsilon, not exactly 1
    # an empty prediction of a non-empty target scores 0
    assert pair_iou(*[int(x[1]) for x in intersection_and_union(np.zeros_like(pred), target)[:2]]) == 0.0
    # torch tensors give the same counts
    t_inter, t_union, _ = intersection_and_union(torch.from_numpy(pred), torch.from_numpy(target))
    assert t_inter.tolist() == inter.tolist() and t_union.tolist() == union.tolist()
    with pytest.raises(ValueError):
        intersection_and_union(pred[:1], target)


def test_summary_is_independent_of_arrival_order():
    pairs = random_pairs(3)
    forward, shuffled = SegMetrics(), SegMetrics()
    for i, (pred, target) in enumerate(pairs):
        forward.add(pred, target, (i, 0), f"p{i}")
    for i in np.random.default_rng(0).permutation(len(pairs)):
        shuffled.add(*pairs[i], (int(i), 0), f"p{i}")
    assert forward.summary() == shuffled.summary()
    assert list(shuffled.summary()["per_sample"]) == [f"p{i}" for i in range(len(pairs))]


def test_no_target_accuracy():
    metrics = SegMetrics()
    empty = np.zeros((4, 4), dtype=np.uint8)
    full = np.ones((4, 4), dtype=np.uint8)
    metrics.add(np.zeros((4, 4), bool), empty, (0, 0), "a")  # no target, answered with no mask
    metrics.add(np.ones((4, 4), bool), empty, (1, 0), "b")  # no target, but a mask
    metrics.add(np.ones((4, 4), bool), full, (2, 0), "c")  # a target
    summary = metrics.summary()
    assert summary["no_target_acc"] == 0.5 and summary["n_no_target"] == 2
    assert summary["per_sample"] == {"a": 1.0, "b": 0.0, "c": pytest.approx(1.0, abs=1e-6)}
    assert "no-target accuracy: 50.00" in format_table(summary)
    assert "no_target_acc" not in SegMetrics().summary()


def _gather_worker(rank, world, init_file, pairs, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metrics = SegMetrics()
    for i in range(rank, len(pairs), world):
        metrics.add(*pairs[i], (i, 0), f"p{i}", is_sentence=i % 2 == 0)
    queue.put((rank, metrics.summary()))
    dist.destroy_process_group()


@pytest.mark.slow
def test_merge_across_processes_is_identical(tmp_path):
    import torch.multiprocessing as mp

    pairs = random_pairs(4)
    single = SegMetrics()
    for i, pair in enumerate(pairs):
        single.add(*pair, (i, 0), f"p{i}", is_sentence=i % 2 == 0)
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "init"), pairs, queue), nprocs=2, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    assert results[0] == results[1] == single.summary()
