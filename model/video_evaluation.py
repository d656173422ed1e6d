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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedModel

from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor
from model.video import ANSWER_FRAMES, PROPAGATIONS, ask_video, default_propagation, segment_video
from utils.distributed import rank_and_world
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
    progress: bool = True,
) -> VideoScores:
    """J and F of `model` on every expression of `expressions` that has masks (type 2 left out).

    Under `torch.distributed`, rank r takes expressions r, r + world, ...; every rank returns the scores of all
    (`VideoScores.gather`). The model is put in eval mode for the run and back in its previous mode afterwards.

    Args:
        question: the question about an expression (the user message, starting with `<image>`), e.g.
            `datasets.vos.eval_question`.
        num_frames: key frames the model sees (`ask_video`).
        max_new_tokens: generation budget per answer.
        propagate: one of `PROPAGATIONS`; None: `default_propagation(model)`.
        video_model: the mask head's video model (`load_video_model`), needed by `memory`.
        save_dir: also write each frame's mask as `save_dir/<video>/<exp_id>/<frame>.png` (0/255; the benchmarks'
            submission layout); expressions without masks are then predicted too, and only written.

    Returns:
        `VideoScores` of the expressions with masks (call `summary(groups=...)`: ReVOS's referring / reasoning).
    """
    propagate = propagate or default_propagation(model)
    if propagate not in PROPAGATIONS:
        raise ValueError(f"propagate {propagate!r}: choose from {', '.join(PROPAGATIONS)}")
    if propagate == "memory" and video_model is None:
        raise ValueError("memory propagation needs the mask head's video model (model.video.load_video_model)")
    rank, world = rank_and_world()
    share = [e for e in list(expressions)[rank::world] if getattr(e, "type_id", None) != SKIPPED_TYPE]
    scores = VideoScores()
    was_training = model.training
    model.eval()
    try:
        for expression in tqdm(share, desc="J&F", disable=not progress or rank != 0, dynamic_ncols=True):
            type_id = getattr(expression, "type_id", None)
            if type_id is not None and type_id not in GROUPS:
                raise ValueError(f"{expression_key(expression)}: unknown type_id {type_id!r}")
            if not expression.has_masks and save_dir is None:
                continue  # nothing to score, nothing to write
            result = _run_expression(
                model, processor, expression, question(expression), num_frames, max_new_tokens, propagate,
                video_model, save_dir,
            )
            if result is not None:
                scores.add(expression_key(expression), *result, GROUPS.get(type_id))
    finally:
        model.train(was_training)
    scores.gather()
    return scores


def _run_expression(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    expression: Any,
    text: str,
    num_frames: int,
    max_new_tokens: int,
    propagate: str,
    video_model: PreTrainedModel | None,
    save_dir: str | None,
) -> tuple[float, float] | None:
    """Answers one expression and scores (and writes) its frames as they come; (J, F), or None without masks."""
    frames = expression.frames_reader()
    reply = ask_video(model, processor, frames, [{"role": "user", "content": text}], num_frames=num_frames,
                      max_new_tokens=max_new_tokens)
    folder = os.path.join(save_dir, expression.video, expression.exp_id) if save_dir is not None else None
    js, fs = [], []
    done = set()

    def take(index: int, mask: np.ndarray) -> None:
        if folder is not None:
            write_mask_png(os.path.join(folder, f"{expression.frames[index]}.png"), mask)
        if expression.has_masks:
            j, f = frame_scores(mask, expression.mask(index))
            js.append(j), fs.append(f)
        done.add(index)

    # No [SEG]: segment_video yields nothing, and every frame gets the empty mask below.
    for index, masks in segment_video(model, frames, reply, propagate, video_model=video_model):
        if index not in done:
            take(index, np.asarray(masks).any(axis=0))
    for index in range(len(frames)):
        if index not in done:
            take(index, np.zeros(_frame_size(frames, index), dtype=bool))
    if not expression.has_masks:
        return None
    return math.fsum(js) / len(js), math.fsum(fs) / len(fs)
