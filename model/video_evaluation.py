"""Scoring a LISA model on a video split by J&F: what `eval_reasonseg.py` runs for a video data set.

For each expression the model answers a question about the video (`model.video.ask_video` on its key frames), its
`[SEG]` masks reach every frame (`segment_video`), and each frame is scored as it comes against the ground truth
(`utils.video_metrics.frame_scores`), so no video's masks are ever held together. Several `[SEG]` in one answer are
one target (an expression may name several objects): their masks are united per frame. An answer without `[SEG]` is
an empty mask on every frame. ReVOS expressions of type 2 are left out (the model is not even asked).

Expressions are duck-typed (e.g. `datasets.vos.VideoExpression`; this module reads no data set itself): `video`,
`exp_id`, `frames` (frame names), `type_id` (0 / 1: ReVOS group, 2: left out, None), `has_masks`, `mask(k)` ->
(H, W) ground truth of frame k, and `frames_reader()` -> `model.video.Frames` (optionally with `size(k)` -> (H, W)).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedModel

from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor
from model.video import ANSWER_FRAMES, PROPAGATIONS, ask_video, default_propagation, segment_video
from utils.distributed import rank_and_world
from utils.errors import FileProblem
from utils.images import ImageError
from utils.video_metrics import GROUPS, SKIPPED_TYPE, VideoScores, frame_scores, write_mask_png

logger = logging.getLogger(__name__)


def expression_key(expression: Any) -> str:
    """`"<video>/<exp_id>"`: the expression's name in `VideoScores` and its folder in the submission layout."""
    return f"{expression.video}/{expression.exp_id}"


def _frame_size(frames: Any, index: int) -> tuple[int, int]:
    size = getattr(frames, "size", None)
    return tuple(size(index)) if size is not None else tuple(frames.read(index).shape[:2])


def evaluate_video(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    expressions: Sequence[Any],
    question: Callable[[Any], str],
    num_frames: int = ANSWER_FRAMES,
    max_new_tokens: int = 128,
    propagate: str | None = None,
    video_model: PreTrainedModel | None = None,
    save_dir: str | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> VideoScores:
    """J and F of `model` on every expression of `expressions` that has masks (type 2 left out).

    Under `torch.distributed`, rank r takes the videos r, r + world, ... (in the order they first come) with all their
    expressions; every rank returns the scores of all (`VideoScores.gather`). The model is put in eval mode for the
    run and back in its previous mode afterwards. A video whose frames (or ground truth) cannot be read is named in a
    warning and its expressions score 0, as missing predictions do.

    Args:
        question: the question about an expression (the user message, starting with `<image>`), e.g.
            `datasets.vos.eval_question`.
        num_frames: key frames the model sees (`ask_video`).
        max_new_tokens: generation budget per answer.
        propagate: one of `PROPAGATIONS`; None: `default_propagation(model)`.
        video_model: the mask head's video model (`load_video_model`), needed by `memory`.
        save_dir: also write each frame's mask as `save_dir/<video>/<exp_id>/<frame>.png` (0/255; the benchmarks'
            submission layout); expressions without masks are then predicted too, and only written.
        batch_size: expressions of one video answered in one generation batch, their frames read and encoded once.
            The scores do not depend on it.

    Returns:
        `VideoScores` of the expressions with masks (call `summary(groups=...)`: ReVOS's referring / reasoning).
    """
    propagate = propagate or default_propagation(model)
    if propagate not in PROPAGATIONS:
        raise ValueError(f"propagate {propagate!r}: choose from {', '.join(PROPAGATIONS)}")
    if propagate == "memory" and video_model is None:
        raise ValueError("memory propagation needs the mask head's video model (model.video.load_video_model)")
    rank, world = rank_and_world()
    videos = list(dict.fromkeys(e.video for e in expressions))
    mine = set(videos[rank::world])
    share = []
    for expression in (e for e in expressions if e.video in mine):
        type_id = getattr(expression, "type_id", None)
        if type_id == SKIPPED_TYPE or (not expression.has_masks and save_dir is None):
            continue  # left out of every score; or nothing to score, nothing to write
        if type_id is not None and type_id not in GROUPS:
            raise ValueError(f"{expression_key(expression)}: unknown type_id {type_id!r}")
        share.append(expression)
    scores = VideoScores()
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(share), desc="J&F", disable=not progress or rank != 0, dynamic_ncols=True) as bar:
            for group in _video_batches(share, batch_size):
                try:
                    results = _run_expressions(
                        model, processor, group, [question(e) for e in group], num_frames, max_new_tokens, propagate,
                        video_model, save_dir,
                    )
                except (FileProblem, ImageError) as error:  # a frame, or a ground-truth mask, that cannot be read
                    logger.warning("%s: %s; its %d expression(s) score 0", group[0].video, error, len(group))
                    results = [(0.0, 0.0) if e.has_masks else None for e in group]
                    for expression in group:
                        scores.add_missing(expression_key(expression))
                for expression, result in zip(group, results):
                    if result is not None:
                        scores.add(expression_key(expression), *result, GROUPS.get(getattr(expression, "type_id", None)))
                bar.update(len(group))
    finally:
        model.train(was_training)
    scores.gather()
    return scores


def _video_batches(expressions: list[Any], batch_size: int) -> Iterator[list[Any]]:
    """Runs of at most `batch_size` expressions about the same video (the expressions grouped by video, in order)."""
    group: list[Any] = []
    order = {video: i for i, video in enumerate(dict.fromkeys(e.video for e in expressions))}
    for expression in sorted(expressions, key=lambda e: order[e.video]):
        if group and (len(group) == batch_size or expression.video != group[0].video):
            yield group
            group = []
        group.append(expression)
    if group:
        yield group


def _run_expressions(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    expressions: list[Any],
    texts: list[str],
    num_frames: int,
    max_new_tokens: int,
    propagate: str,
    video_model: PreTrainedModel | None,
    save_dir: str | None,
) -> list[tuple[float, float] | None]:
    """Answers expressions about one video together and scores (and writes) each frame's masks as they come; per
    expression (J, F), or None without masks."""
    frames = expressions[0].frames_reader()
    replies = ask_video(model, processor, frames, [[{"role": "user", "content": t}] for t in texts],
                        num_frames=num_frames, max_new_tokens=max_new_tokens)
    folders = [os.path.join(save_dir, e.video, e.exp_id) if save_dir is not None else None for e in expressions]
    js: list[list[float]] = [[] for _ in expressions]
    fs: list[list[float]] = [[] for _ in expressions]
    done = set()

    def take(index: int, masks: list[np.ndarray]) -> None:
        for e, (expression, folder, mask) in enumerate(zip(expressions, folders, masks)):
            if folder is not None:
                write_mask_png(os.path.join(folder, f"{expression.frames[index]}.png"), mask)
            if expression.has_masks:
                j, f = frame_scores(mask, expression.mask(index))
                js[e].append(j)
                fs[e].append(f)
        done.add(index)

    # A reply without [SEG] has (0, H, W) masks: its union is the empty mask. With no [SEG] in any reply,
    # segment_video yields nothing, and every frame gets the empty masks below.
    for index, masks in segment_video(model, frames, replies, propagate, video_model=video_model):
        if index not in done:
            take(index, [m.any(axis=0) for m in masks])
    for index in range(len(frames)):
        if index not in done:
            take(index, [np.zeros(_frame_size(frames, index), dtype=bool)] * len(expressions))
    return [(math.fsum(j) / len(j), math.fsum(f) / len(f)) if e.has_masks else None for e, j, f in zip(expressions, js, fs)]
