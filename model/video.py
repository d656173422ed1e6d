"""Reasoning segmentation on videos: a question about a video, an answer, and one mask track per `[SEG]`.

The recipe of LISA's video successors (VISA, VideoLISA, Sa2VA):

1. **Key frames.** `num_frames` frames sampled uniformly over the whole video reach the vision-language model, each
   as one image of its family (`LisaProcessor` writes the video's `<image>` once per frame); the answer's `[SEG]`
   queries are decoded on each key frame by the image mask head.
2. **Every frame**, by one of `PROPAGATIONS`:
   * `memory`: the key-frame masks become mask prompts of the mask head's video model (SAM 2's, the SAM 3 tracker's),
     each key frame a conditioning memory, and its memory modules carry them forward from the first key frame to the
     end, then backward to the start;
   * `per_frame`: the `[SEG]` queries are decoded on every frame by the image mask head (VideoLISA's way; the only
     one for the original SAM, which has no memory).

Frames are read when needed and masks leave as they are made (`segment_video` yields them frame by frame), so memory
does not grow with the video's length: the video model's session keeps the pixels of the frame at hand only, and the
outputs of the frames its memory can still read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedModel

from model.inference import Answer, answer
from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor
from utils.video import uniform_indices

logger = logging.getLogger(__name__)

PROPAGATIONS = ("memory", "per_frame")
# Frames of a video the model sees by default (as the peers): in training, and when answering.
TRAIN_FRAMES = 8
ANSWER_FRAMES = 16
# Text tokens a video prompt keeps free beside its frames' image tokens when the frames are capped to the context.
TEXT_RESERVE = 512


class Frames(Protocol):
    """A video's frames, read one at a time (`utils.video.VideoReader`, a data set's frame list)."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray:
        """Frame `index`, (H, W, 3) uint8 RGB."""
        ...


@dataclass
class VideoAnswer:
    """The model's reply about a video: the `Answer` on its key frames (masks (T, H, W) per `[SEG]` over
    `key_frames`), and which frames those were."""

    answer: Answer
    key_frames: list[int]

    @property
    def text(self) -> str:
        return self.answer.text


def default_propagation(model: LisaForCausalLM) -> str:
    """`memory` where the mask head has a video model, else `per_frame`."""
    return "memory" if model.sam_family.video_model_class is not None else "per_frame"


def frames_that_fit(token_counts: list[int], context: int, reserve: int = TEXT_RESERVE) -> int:
    """How many frames of `token_counts` image tokens each (the first frames') leave `reserve` positions of a `context`
    free: LLaVA-1.5's 4,096 positions hold 6 frames of 576 tokens."""
    total, count = 0, 0
    for tokens in token_counts:
        if total + tokens > context - reserve:
            break
        total, count = total + tokens, count + 1
    return max(count, 1)


def key_frames(model: LisaForCausalLM, processor: LisaProcessor, frames: Frames, num_frames: int) -> list[int]:
    """`num_frames` frames spread uniformly over the video, fewer (with a warning) where their image tokens would not
    leave `TEXT_RESERVE` positions of the language model's context.

    Raises:
        ValueError: an empty video.
    """
    if len(frames) == 0:
        raise ValueError("a video without frames")
    chosen = uniform_indices(len(frames), num_frames)
    counts = [processor.preprocess_image(frames.read(chosen[0])).token_counts[0]] * len(chosen)
    fit = frames_that_fit(counts, model.context_length)
    if fit < len(chosen):
        logger.warning(
            "%d frames of %d image tokens each do not fit the model's context of %d positions: %d frames are used",
            len(chosen), counts[0], model.context_length, fit,
        )
        chosen = uniform_indices(len(frames), fit)
    return chosen


@torch.no_grad()
def ask_video(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    frames: Frames,
    conversations: list[list[dict[str, str]]],
    num_frames: int = ANSWER_FRAMES,
    max_new_tokens: int = 512,
    key: list[int] | None = None,
) -> list[VideoAnswer]:
    """Answers the last user turn of each conversation (whose first user turn holds `<image>`, which stands for the
    video) about one video: one generation batch on the same key frames, read, preprocessed and encoded once.

    Args:
        num_frames: key frames the model sees (`key_frames`), unless `key` names them.

    Returns:
        one `VideoAnswer` per conversation, in order.
    """
    key = key if key is not None else key_frames(model, processor, frames, num_frames)
    clip = np.stack([frames.read(k) for k in key])
    replies = answer(model, processor, [clip], conversations, image_index=[0] * len(conversations),
                     max_new_tokens=max_new_tokens)
    for reply in replies:
        if len(key) == 1:  # one frame: the answer's masks are (H, W)
            reply.masks = [m[None] for m in reply.masks]
    return [VideoAnswer(answer=reply, key_frames=key) for reply in replies]


@torch.no_grad()
def segment_video(
    model: LisaForCausalLM,
    frames: Frames,
    replies: list[VideoAnswer],
    propagate: str = "per_frame",
    video_model: PreTrainedModel | None = None,
    batch_size: int = 4,
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """The masks of every `[SEG]` of `replies` (answers about the video on the same key frames, `ask_video`) on every
    frame of the video. The replies share the frames' work: their queries are decoded together on each frame's
    encoding (`per_frame`), their `[SEG]`s are the objects of one video-model session (`memory`).

    Args:
        propagate: one of `PROPAGATIONS`.
        video_model: the mask head's video model (`load_video_model`), for `memory`.
        batch_size: frames encoded together by the image mask head (`per_frame`).

    Yields:
        (frame index, one (n, H, W) bool array per reply, n its `[SEG]` count), each frame once: in order for
        `per_frame`; for `memory` from the first key frame to the end, then from the frame before it back to the
        start. Nothing when no reply holds a `[SEG]`.
    """
    if propagate not in PROPAGATIONS:
        raise ValueError(f"propagate {propagate!r}: choose from {', '.join(PROPAGATIONS)}")
    if len({tuple(r.key_frames) for r in replies}) > 1:
        raise ValueError("segment_video: the replies were made on different key frames")
    counts = [len(r.answer.masks) for r in replies]
    if not sum(counts):
        return
    split_at = np.cumsum(counts)[:-1]
    if propagate == "per_frame":
        queries = torch.cat([r.answer.queries for r in replies if r.answer.masks])
        masks = decode_every_frame(model, frames, queries, batch_size)
    elif video_model is None:
        raise ValueError("memory propagation needs the mask head's video model (load_video_model)")
    else:
        key_masks = torch.stack([m for r in replies for m in r.answer.masks])  # (n, T, H, W)
        masks = propagate_with_memory(model, video_model, frames, replies[0].key_frames, key_masks)
    for index, joint in masks:
        yield index, np.split(joint, split_at)


def load_video_model(model: LisaForCausalLM, source: str | None = None) -> PreTrainedModel:
    """The mask head's video model: the memory modules of `source` (default: the checkpoint the mask head was trained
    from, `LisaConfig.mask_head_source`) with LISA's mask head in it.

    Raises:
        ValueError: no video model for the mask head's family, no source known, or a source that does not fit.
    """
    source = source or model.config.mask_head_source
    if source is None:
        raise ValueError(
            "the model folder does not say which checkpoint its mask head came from: name the video model whose "
            "memory modules to use (e.g. facebook/sam2.1-hiera-large)"
        )
    return model.sam_family.load_video_model(model.sam, source)


class LazyVideoModel:
    """The mask head's video model for `memory` propagation (`load_video_model`), loaded when first needed and then
    shared: by a chat's turns, the demo's tabs (threads), an evaluation's videos.

    Args:
        source: the checkpoint to read the memory modules from; None: the model folder's `mask_head_source`.
    """

    def __init__(self, model: LisaForCausalLM, source: str | None = None):
        self.model, self.source = model, source
        self._loaded: PreTrainedModel | None = None
        self._lock = threading.Lock()

    def get(self) -> PreTrainedModel:
        """The video model, loaded on the first call.

        Raises:
            ValueError: it cannot be loaded: why, and from where.
        """
        with self._lock:
            if self._loaded is None:
                named = self.source or "the checkpoint the model folder records (mask_head_source)"
                try:
                    self._loaded = load_video_model(self.model, self.source)
                except (ValueError, OSError) as error:  # OSError: a folder or hub id that is not there
                    raise ValueError(f"cannot load the video model for memory propagation from {named}: {error}") from None
            return self._loaded


def decode_every_frame(
    model: LisaForCausalLM, frames: Frames, queries: torch.Tensor, batch_size: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, (n, H, W) bool) for every frame in order: the (n, C) `queries` decoded on each frame's own
    image-mask-head encoding, `batch_size` frames encoded at a time."""
    for start in range(0, len(frames), batch_size):
        indices = range(start, min(start + batch_size, len(frames)))
        images = [frames.read(i) for i in indices]
        inputs = [model.sam_family.preprocess(image, model.sam_image_size) for image in images]
        pixels = torch.stack([p for p, _ in inputs]).to(model.device, model.dtype)
        for i, image, (_, resized), features in zip(indices, images, inputs, model.embed_images(pixels)):
            logits, _ = model.decode_masks(features, queries, resized, image.shape[:2])
            yield i, (logits > 0).cpu().numpy()


def propagate_with_memory(
    model: LisaForCausalLM,
    video_model: PreTrainedModel,
    frames: Frames,
    key: list[int],
    key_masks: torch.Tensor,
) -> Iterator[tuple[int, np.ndarray]]:
    """Carries (n, T, H, W) masks on the frames `key` through the video with the video model's memory (see the
    module docstring); yields (frame index, (n, H, W) bool) as `segment_video` says.

    Each `[SEG]` is one object of the session. The session is built here (transformers' video processor, which would
    build it, needs torchvision): frames go in as the image mask head's input, masks as the video model's mask
    prompts (resized to its input, >= 0.5).
    """
    family = model.sam_family
    size = model.sam_image_size
    height, width = frames.read(key[0]).shape[:2]
    session = family.video_session_class(
        video_height=height, video_width=width, inference_device=model.device,
        inference_state_device=model.device, video_storage_device="cpu", dtype=video_model.dtype,
    )
    objects = list(range(key_masks.shape[0]))
    # The outputs of frames the memory may still read: the last `num_maskmem` frames' memories and the object
    # pointers of the last `max_object_pointers_in_encoder`, beside the conditioning (key) frames, always kept.
    window = max(video_model.config.num_maskmem, video_model.config.max_object_pointers_in_encoder) + 1

    def pixels(index: int) -> torch.Tensor:
        return family.preprocess(frames.read(index), size)[0][None]

    def masks_of(output) -> np.ndarray:
        low_res = output.pred_masks[:, 0]  # (n, h, w) logits
        return (family.postprocess(low_res, size, (size, size), (height, width)) > 0).cpu().numpy()

    def forget(index: int, keep: range) -> None:
        """Drops the frame's pixels, and the outputs its memory no longer reads."""
        session.processed_frames.pop(index, None)
        for outputs in session.output_dict_per_obj.values():
            for old in [f for f in outputs["non_cond_frame_outputs"] if abs(f - index) >= window and f not in keep]:
                del outputs["non_cond_frame_outputs"][old]

    with torch.inference_mode():
        for t, index in enumerate(key):
            for obj in objects:
                prompt = key_masks[obj, t].float()[None, None]
                prompt = torch.nn.functional.interpolate(prompt, (size, size), mode="bilinear", antialias=True) >= 0.5
                session.add_mask_inputs(session.obj_id_to_idx(obj), index, prompt.float())
            session.obj_with_new_inputs = list(objects)
            # Frames go in as a stream (`frame=`): the session then holds the frame at hand only, and counts no
            # frames of the video it was not given.
            video_model(session, frame_idx=index, frame=pixels(index))
            session.processed_frames.pop(index, None)
        start = key[0]
        # The frames right after the first key frame are those the backward pass reads first: kept until it runs.
        near_start = range(start, start + window)
        for order, reverse in ((range(start, len(frames)), False), (range(start - 1, -1, -1), True)):
            for index in order:
                yield index, masks_of(video_model(session, frame_idx=index, frame=pixels(index), reverse=reverse))
                forget(index, near_start if not reverse else range(0))
