"""Scoring a LISA model on validation samples (ReasonSeg, referring splits): `evaluate` is what
`eval_reasonseg.py` runs and what training calls for its per-epoch validation.

Samples are `datasets.common.ValSample`-like (see `utils.scoring`): each conversation is the original's
validation prompt followed by the answer "[SEG].".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from model.inference import answer
from model.lisa import LisaForCausalLM
from model.processing import SEG_TOKEN, LisaProcessor
from utils.scoring import EvalReport, Predictor, run_evaluation

MODES = ("generate", "teacher")


def teacher_predictor(model: LisaForCausalLM, processor: LisaProcessor) -> Predictor:
    """The original's protocol: the answer "[SEG]." is given, its `[SEG]` is decoded by one forward pass.

    It never checks that the model would emit `[SEG]` itself; `generate_predictor` does.
    """

    @torch.no_grad()
    def predict(samples: list[Any]) -> list[list[np.ndarray]]:
        batch = processor([s.image for s in samples], [s.conversations for s in samples], sample_ids=[s.sample_id for s in samples])
        # No labels: only the masks are wanted, not the text loss.
        pred_masks = model(**replace(batch, labels=None).to(model.device, model.dtype)).pred_masks
        return [list((logits > 0).cpu().numpy()) for logits in pred_masks]

    return predict


def generate_predictor(model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int) -> Predictor:
    """The model answers the validation prompt itself. A query whose teacher-forced answer holds k `[SEG]` (1 for
    LISA's "[SEG].") is scored on the masks of the first k `[SEG]` the model emits, in order; a `[SEG]` it does not
    emit predicts an empty mask."""

    def predict(samples: list[Any]) -> list[list[np.ndarray]]:
        # One generation row per query, sharing its image; the prompt is the conversation without its answer.
        rows = [(i, c[:-1], c[-1]["content"].count(SEG_TOKEN)) for i, s in enumerate(samples) for c in s.conversations]
        answers = answer(
            model, processor, [s.image for s in samples], [c for _, c, _ in rows], image_index=[i for i, _, _ in rows],
            max_new_tokens=max_new_tokens,
        )
        per_sample = [[] for _ in samples]
        for (i, _, count), a in zip(rows, answers):
            empty = np.zeros(samples[i].image.shape[:2], dtype=bool)
            per_sample[i] += [a.masks[k].numpy() if k < len(a.masks) else empty for k in range(count)]
        return per_sample

    return predict


def evaluate(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    dataset: Any,
    mode: str = "teacher",
    batch_size: int = 1,
    max_new_tokens: int = 128,
    workers: int = 0,
    progress: bool = True,
) -> EvalReport:
    """gIoU / cIoU of `model` on a validation data set (e.g. `datasets.reason_seg.ReasonSegValDataset`).

    Distributed runs split the samples by rank and every rank gets the whole data set's report. The model is
    put in eval mode for the run and back in its previous mode afterwards.

    Args:
        mode: "teacher" (the original's validation, answer "[SEG]." given) or "generate".
        batch_size: images per forward pass / generation batch.
        max_new_tokens: generation budget per answer ("generate" only).
        workers: processes reading samples.

    Returns:
        `EvalReport`: `summary["giou"]`, `summary["ciou"]` (fractions), by query length, per sample.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    predict = teacher_predictor(model, processor) if mode == "teacher" else generate_predictor(model, processor, max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        return run_evaluation(dataset, predict, batch_size=batch_size, workers=workers, progress=progress, description=mode)
    finally:
        model.train(was_training)
