"""Turning images and conversations into model inputs, shared by training, evaluation and chat.

Two image paths feed LISA, as in the original's data sets (`utils/*_dataset.py`) and `chat.py`:
  * the vision-language model's, through its family's image processor into the family's `ImageInputs` (CLIP's resize
    + centre crop for LLaVA, dynamic resolution patches for the Qwen families: `model.families`);
  * the mask head's, its family's (SAM's longest side + padding, SAM 2's square resize, ...). The size the image
    fills of the mask head's input is kept so predicted masks can be mapped back.

Text goes through a chat template whose assistant turns are wrapped in ``{% generation %}`` blocks, so the
tokenizer itself reports which tokens are answer tokens (the only ones that carry a training label).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from model.families import CHAT_TEMPLATES, mask_head_family, vlm_family
from model.families.base import ImageInputs, MaskHeadFamily, VlmFamily
from model.losses import IGNORE_LABEL

SEG_TOKEN = "[SEG]"
# The image's place in a user message, as LISA's data writes it; each family's chat templates turn it into the
# model's own image tokens.
IMAGE_PLACEHOLDER = "<image>"
PROCESSOR_CONFIG_NAME = "lisa_processor.json"

logger = logging.getLogger(__name__)


class NothingFits(ValueError):
    """No conversation of a training sample fits the length limit whole enough to train on (`fit_to_length`)."""


@dataclass
class Fitted:
    """What `LisaProcessor.fit_to_length` did to one sample's conversations.

    kept: the conversations kept, in order; truncated: how many of them were cut; dropped: "conversation k: why" of
    each conversation left out.
    """

    kept: list[int]
    truncated: int
    dropped: list[str]


NOT_MODEL_INPUTS = ("sample_ids", "truncated_rows", "dropped_rows")  # LisaBatch attributes that are not mapped


@dataclass
class LisaBatch(Mapping):
    """R conversations about N images, as `LisaForCausalLM` takes them: `model(**batch)` for the training /
    teacher-forced forward, `model.generate(**batch)` for prompts made with `add_generation_prompt`.

    As a mapping it holds the model inputs that are set (labels and masks only when present); `sample_ids`,
    `truncated_rows` and `dropped_rows` are attributes only, for messages and the training log.

    input_ids, attention_mask: (R, L); labels: (R, L), `IGNORE_LABEL` where no loss is taken.
    An image is a picture or a video; a video is the F_i frames sampled of it, and its rows show every frame (one
    `<image>` each). Frames are what the two image paths take: F = N for pictures only.

    image_inputs: the vision-language model's input of the F frames, its family's `ImageInputs`.
    sam_pixel_values: (F, 3, S, S) the mask head's input.
    image_index: (R,) the image of each row; frame_image: (F,) the image of each frame;
    resized_sizes, original_sizes: (F, 2) sizes inside SAM's input and originally.
    masks: per frame, (n_i, H, W) bool ground truth, one per `[SEG]` of its image's rows in order.
    truncated_rows: rows cut to the length limit; dropped_rows: "sample_id conversation k: why" of the conversations
        left out (`LisaProcessor.fit_to_length`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_inputs: ImageInputs
    sam_pixel_values: torch.Tensor
    image_index: torch.Tensor
    frame_image: torch.Tensor
    resized_sizes: torch.Tensor
    original_sizes: torch.Tensor
    labels: torch.Tensor | None = None
    masks: list[torch.Tensor] | None = None
    sample_ids: list[str] = field(default_factory=list)
    truncated_rows: int = 0
    dropped_rows: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LisaBatch":
        """The batch on `device`; floating-point tensors (the images) also in `dtype`."""

        def move(value: torch.Tensor) -> torch.Tensor:
            return value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else None)

        moved = {key: move(self[key]) for key in self if key not in ("masks", "image_inputs")}
        moved["image_inputs"] = self.image_inputs.to(device, dtype)
        if self.masks is not None:
            moved["masks"] = [move(m) for m in self.masks]
        return replace(self, **moved)

    def __getitem__(self, key: str):
        if key not in self._model_inputs():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._model_inputs())

    def __len__(self) -> int:
        return len(self._model_inputs())

    def _model_inputs(self) -> list[str]:
        return [f.name for f in fields(self) if f.name not in NOT_MODEL_INPUTS and getattr(self, f.name) is not None]


class LisaProcessor:
    """Turns images and chat messages into LISA model inputs, and back.

    Wraps the base model's own processor (its family's `load_processor`: tokenizer, image processor, chat template)
    and adds the mask head's image path. Saved beside the model weights; `from_pretrained` of the same folder restores
    it.
    """

    def __init__(
        self,
        vlm_processor: Any,
        sam_image_size: int,
        vlm_family: VlmFamily,
        sam_family: MaskHeadFamily,
        seg_token: str = SEG_TOKEN,
        conv_type: str | None = None,
    ):
        """`vlm_family`: the family of `vlm_processor`'s model; `sam_image_size`, `sam_family`: the mask head's input
        size and family; `conv_type`: the conversation format to use (`set_chat_template`), None: `vlm_processor`'s
        own chat template."""
        self.vlm_family = vlm_family
        if not isinstance(vlm_processor, vlm_family.processor_class):
            raise TypeError(f"a {type(vlm_processor).__name__} is not the processor of a {vlm_family.title} model")
        self.vlm_processor = vlm_processor
        self.sam_family = sam_family
        self.tokenizer = vlm_processor.tokenizer
        self.image_processor = vlm_processor.image_processor
        self.sam_image_size = sam_image_size
        self.seg_token = seg_token
        self.seg_token_id = self.tokenizer.convert_tokens_to_ids(seg_token)
        self.image_token_id = vlm_processor.image_token_id
        if self.tokenizer.pad_token_id is None:
            # LLaMA tokenizers ship without a pad token; LISA pads with <unk>.
            self.tokenizer.pad_token = self.tokenizer.unk_token
        if conv_type is not None:
            self.set_chat_template(conv_type)
        if self.chat_template is None:
            raise ValueError("The processor has no chat template; pass one of " + ", ".join(CHAT_TEMPLATES))

    # ----------------------------------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> "LisaProcessor":
        config_file = os.path.join(path, PROCESSOR_CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file}: not a LISA folder (no {PROCESSOR_CONFIG_NAME})")
        with open(config_file) as f:
            config = json.load(f)
        # The families by name, as saved; folders written before other families were supported name none: theirs are
        # LLaVA and SAM.
        vlm = vlm_family(config.get("vlm_family", "llava"), source=config_file)
        sam = mask_head_family(config.get("sam_family", "sam"), source=config_file)
        return cls(
            vlm.load_processor(path), sam_image_size=config["sam_image_size"], vlm_family=vlm, sam_family=sam,
            seg_token=config["seg_token"],
        )

    def save_pretrained(self, path: str) -> None:
        self.vlm_processor.save_pretrained(path)
        config = {
            "sam_image_size": self.sam_image_size, "seg_token": self.seg_token,
            "vlm_family": self.vlm_family.name, "sam_family": self.sam_family.name,
        }
        with open(os.path.join(path, PROCESSOR_CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2)

    # ------------------------------------------------------------------------------------------------ text
    @property
    def chat_template(self) -> str | None:
        return self.vlm_processor.chat_template

    def set_chat_template(self, conv_type: str) -> None:
        """Selects one of the conversation formats of `model.families.CHAT_TEMPLATES` that fit the model's family."""
        if conv_type not in CHAT_TEMPLATES:
            raise ValueError(f"unknown conv_type {conv_type!r}; choose from {', '.join(CHAT_TEMPLATES)}")
        if conv_type not in self.vlm_family.chat_templates:
            raise ValueError(
                f"conv_type {conv_type!r} is not a format of {self.vlm_family.title} models; choose from "
                f"{', '.join(self.vlm_family.chat_templates)}"
            )
        self.vlm_processor.chat_template = CHAT_TEMPLATES[conv_type]

    @property
    def image_seq_length(self) -> int:
        """Number of image tokens every image takes (576 for llava-1.5, 256 for LISA v1).

        Raises:
            ValueError: for the Qwen families, whose images take a number of tokens that depends on their size.
        """
        return self.vlm_family.image_seq_length(self.vlm_processor)

    def encode_conversation(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = False,
        image_tokens: int | Sequence[int] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Tokenizes one conversation.

        Args:
            messages: chat messages `{"role": "user"|"assistant"|"system", "content": str}`; the image is the
                literal `<image>` in a user message.
            add_generation_prompt: end with the assistant prefix, for generation.
            image_tokens: image tokens the conversation's image takes (its `ImageInputs.token_counts`), or per
                image token of the template in order (a video's frames); None: `image_seq_length`, for families where
                every image takes the same number.

        Returns:
            `input_ids` with each image token of the template repeated its `image_tokens` times, and `labels`: the
            same ids on assistant answers and their end-of-turn token, `IGNORE_LABEL` everywhere else.

        Raises:
            ValueError: the template holds another number of images than `image_tokens` has counts.
        """
        if image_tokens is None:
            image_tokens = self.image_seq_length
        encoded = self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        images = encoded["input_ids"].count(self.image_token_id)
        counts = [image_tokens] * images if isinstance(image_tokens, int) else list(image_tokens)
        if len(counts) != images:
            raise ValueError(f"a conversation showing {images} images, for {len(counts)} images given")
        counts.reverse()
        input_ids, labels = [], []
        for token, is_answer in zip(encoded["input_ids"], encoded["assistant_masks"]):
            if token == self.image_token_id:
                count = counts.pop()
                input_ids += [token] * count
                labels += [IGNORE_LABEL] * count
            else:
                input_ids.append(token)
                labels.append(token if is_answer else IGNORE_LABEL)
        return input_ids, labels

    def fit_to_length(self, encoded: list[tuple[list[int], list[int]]], max_text_tokens: int) -> tuple[
        list[tuple[list[int], list[int]]], Fitted
    ]:
        """Training conversations cut after their first `max_text_tokens` text tokens (chat markup included, the
        image's own tokens not counted), ids and labels alike.

        A conversation the cut would part from its image, from one of its `[SEG]` (whose mask would have no query)
        or from its whole answer (nothing left to train) is dropped instead.

        Args:
            encoded: per conversation, `encode_conversation`'s (input_ids, labels).

        Returns:
            the (input_ids, labels) kept, and what was done.
        """
        rows, fitted = [], Fitted(kept=[], truncated=0, dropped=[])
        for k, (ids, labels) in enumerate(encoded):
            end = self._text_prefix_end(ids, max_text_tokens)
            cut = ids[end:]
            if (problem := self._cut_problem(cut, labels[:end])) is not None:
                fitted.dropped.append(f"conversation {k}: {problem} lies beyond its first {max_text_tokens} text tokens")
                continue
            rows.append((ids[:end], labels[:end]))
            fitted.kept.append(k)
            fitted.truncated += bool(cut)
        return rows, fitted

    def _cut_problem(self, cut: list[int], kept_labels: list[int]) -> str | None:
        """What cutting off the ids `cut` would take from a conversation that training needs; None: nothing."""
        if self.image_token_id in cut:
            return "its image"
        if self.seg_token_id in cut:
            return f"a {self.seg_token}"
        if cut and all(label == IGNORE_LABEL for label in kept_labels):
            return "its whole answer"
        return None

    def _text_prefix_end(self, input_ids: list[int], max_text_tokens: int) -> int:
        """The end of the shortest prefix of `input_ids` holding `max_text_tokens` text (non-image) tokens, with
        the image tokens right after it; `len(input_ids)` when it has no more text tokens."""
        text = 0
        for position, token in enumerate(input_ids):
            if token != self.image_token_id:
                if text == max_text_tokens:
                    return position
                text += 1
        return len(input_ids)

    def decode_answer(self, token_ids: list[int] | torch.Tensor) -> str:
        """Text of generated ids, cut at the end-of-turn token, keeping `[SEG]`.

        Added tokens that strip the whitespace beside them when encoding (those of the released LISA tokenizers:
        `[SEG]`, `<im_start>`, ...) are decoded as the original's tokenizer (transformers 4.31, slow) decoded them:
        each such token and each text run between them decoded on its own, joined by single spaces ("Sure, [SEG] .").
        One decode of all ids would glue them to the words before them ("Sure,[SEG] .").
        """
        token_ids = [int(t) for t in token_ids]
        if self.tokenizer.eos_token_id in token_ids:
            token_ids = token_ids[: token_ids.index(self.tokenizer.eos_token_id)]
        token_ids = [t for t in token_ids if t != self.tokenizer.pad_token_id]
        stripping = {i for i, token in self.tokenizer.added_tokens_decoder.items() if token.lstrip or token.rstrip}
        pieces, run = [], []
        for token_id in token_ids:
            if token_id in stripping:
                pieces += [self.tokenizer.decode(run, skip_special_tokens=False)] if run else []
                pieces.append(self.tokenizer.convert_ids_to_tokens(token_id))
                run = []
            else:
                run.append(token_id)
        if run:
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=False))
        return " ".join(pieces).strip()

    # ---------------------------------------------------------------------------------------------- images
    def set_max_pixels(self, max_pixels: int | None) -> None:
        """Caps the pixels (so the tokens) of one image for the dynamic-resolution families; saved with the image
        processor. None: the default budget (`model.families.base.IMAGE_TOKEN_BUDGET` tokens, or the base's own cap
        where lower).

        Raises:
            ValueError: a cap below one image token, or a cap for a family whose images all take one size (LLaVA).
        """
        self.vlm_family.set_max_pixels(self.vlm_processor, max_pixels)

    def preprocess_image(self, image: np.ndarray) -> ImageInputs:
        """(H, W, 3) uint8 -> the image as the vision-language model takes it (a batch of one), with its image-token
        count."""
        return self.vlm_family.preprocess_image(self.vlm_processor, image)

    def preprocess_sam(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 -> (3, S, S) float32 mask-head pixel values and the (h', w') the image fills of them."""
        return self.sam_family.preprocess(image, self.sam_image_size)

    # ----------------------------------------------------------------------------------------------- batch
    def __call__(
        self,
        images: list[np.ndarray],
        conversations: list[list[list[dict[str, str]]]],
        masks: list[np.ndarray] | None = None,
        sample_ids: list[str] | None = None,
        add_generation_prompt: bool = False,
        max_text_tokens: int | None = None,
    ) -> LisaBatch:
        """Model inputs for N images and the conversations about each.

        Args:
            images: N (H_i, W_i, 3) uint8 RGB pictures or (T_i, H_i, W_i, 3) video frames.
            conversations: per image, its chat message lists (see `process_sample`).
            masks: per image, (n_i, H_i, W_i) (or (n_i, T_i, H_i, W_i)) bool ground truth, one per `[SEG]`; None at
                inference.
            sample_ids: per image, a name for error messages.
            add_generation_prompt: prompts for generation: each conversation ends with the assistant prefix, rows
                are left-padded and carry no labels. Otherwise whole conversations, right-padded, with labels.
            max_text_tokens: training: cut the conversations to this many text tokens (`process_sample`).
        """
        sample_ids = sample_ids if sample_ids is not None else [""] * len(images)
        masks = masks if masks is not None else [None] * len(images)
        items = [
            self.process_sample(image, convs, image_masks, sample_id, add_generation_prompt, max_text_tokens)
            for image, convs, image_masks, sample_id in zip(images, conversations, masks, sample_ids, strict=True)
        ]
        return self.collate(items, padding_side="left" if add_generation_prompt else "right")

    def process_sample(
        self,
        image: np.ndarray,
        conversations: list[list[dict[str, str]]],
        masks: np.ndarray | None = None,
        sample_id: str = "",
        add_generation_prompt: bool = False,
        max_text_tokens: int | None = None,
    ) -> dict[str, Any]:
        """One image (a picture, or a video's sampled frames) with the conversations about it.

        Args:
            image: (H, W, 3) uint8 RGB, or (T, H, W, 3) for T frames of a video.
            conversations: chat message lists, each mentioning `<image>` once; for a video it stands for all its
                frames, in order (`<image>` repeated T times before the template writes the family's image tokens).
            masks: (n, H, W) bool, or (n, T, H, W) for a video, one per `[SEG]` in the conversations, in order; None
                when there is no ground truth (inference). A training sample without targets (VQA) passes an empty
                (0, H, W) array.
            sample_id: a name for error messages (usually the image path).
            add_generation_prompt: end each conversation with the assistant prefix; the item then has no labels.
            max_text_tokens: training only: each conversation cut to this many text tokens (`fit_to_length`); one
                that cannot be is dropped with its masks, named in a warning. None: whole conversations.

        Returns:
            an item for `collate`.

        Raises:
            NothingFits: `max_text_tokens` leaves no conversation.
        """
        frames = image if image.ndim == 4 else image[None]
        if masks is not None and image.ndim == 3:
            masks = masks[:, None]
        height, width = frames.shape[1:3]
        frame_inputs = [self.preprocess_image(frame) for frame in frames]
        image_input = type(frame_inputs[0]).cat(frame_inputs)
        if len(frames) > 1:
            video = IMAGE_PLACEHOLDER * len(frames)
            conversations = [
                [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, video)} for m in conversation]
                for conversation in conversations
            ]
        encoded = [self.encode_conversation(c, add_generation_prompt, image_input.token_counts) for c in conversations]
        if masks is not None:
            if masks.shape[1:] != frames.shape[:3]:
                raise ValueError(f"{sample_id}: masks of shape {masks.shape} for frames of shape {frames.shape[:3]}")
            seg_count = sum(ids.count(self.seg_token_id) for ids, _ in encoded)
            if seg_count != len(masks):
                raise ValueError(
                    f"{sample_id}: {seg_count} {self.seg_token} tokens in its conversations but {len(masks)} ground-truth masks"
                )
        fitted = Fitted(kept=list(range(len(encoded))), truncated=0, dropped=[])
        if max_text_tokens is not None:
            if add_generation_prompt:
                raise ValueError("max_text_tokens cuts training conversations, not generation prompts")
            seg_counts = [ids.count(self.seg_token_id) for ids, _ in encoded]
            encoded, fitted = self.fit_to_length(encoded, max_text_tokens)
            for reason in fitted.dropped:
                logger.warning("%s: %s; the conversation is left out", sample_id, reason)
            if not encoded:
                raise NothingFits(f"{sample_id}: no conversation fits in {max_text_tokens} text tokens")
            if masks is not None:
                # Conversation k owns the masks of its [SEG] tokens, which follow those of conversations 0 .. k-1.
                starts = np.cumsum([0, *seg_counts])
                masks = masks[np.concatenate([np.arange(starts[k], starts[k + 1]) for k in fitted.kept])]
        sam_inputs = [self.preprocess_sam(frame) for frame in frames]
        return {
            "sample_id": sample_id,
            "image": image_input,
            "sam_pixel_values": torch.stack([pixels for pixels, _ in sam_inputs]),
            "resized_sizes": [size for _, size in sam_inputs],
            "original_size": (height, width),
            "input_ids": [ids for ids, _ in encoded],
            "labels": None if add_generation_prompt else [labels for _, labels in encoded],
            # Per frame, the masks of every [SEG] on it.
            "masks": None if masks is None else [
                torch.from_numpy(np.ascontiguousarray(masks[:, t], dtype=bool)) for t in range(len(frames))
            ],
            "fitted": fitted,
        }

    def collate(self, items: list[dict[str, Any]], padding_side: str = "right") -> LisaBatch:
        """Batches `process_sample` items.

        Rows are the conversations of all items, item by item; `image_index[r]` is the item of row r. Frames are the
        items' frames, item by item; `frame_image[f]` is the item of frame f.
        Use left padding for generation, right padding for training. `masks` is None when no item has any, and
        `labels` when the items are generation prompts.
        """
        for key in ("masks", "labels"):
            if len({item[key] is None for item in items}) > 1:
                names = ", ".join(item["sample_id"] for item in items)
                raise ValueError(f"a batch mixes samples with and without {key}: {names}")
        rows = [(ids, i) for i, item in enumerate(items) for ids in item["input_ids"]]
        row_labels = None if items[0]["labels"] is None else [labels for item in items for labels in item["labels"]]
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_LABEL, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
            input_ids[r, span] = torch.tensor(ids)
            attention_mask[r, span] = 1
            if row_labels is not None:
                labels[r, span] = torch.tensor(row_labels[r])
        images = [item["image"] for item in items]
        frame_image = [i for i, item in enumerate(items) for _ in item["resized_sizes"]]
        return LisaBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_inputs=type(images[0]).cat(images),
            sam_pixel_values=torch.cat([item["sam_pixel_values"] for item in items]),
            image_index=torch.tensor([i for _, i in rows], dtype=torch.long),
            frame_image=torch.tensor(frame_image, dtype=torch.long),
            resized_sizes=torch.tensor([size for item in items for size in item["resized_sizes"]], dtype=torch.long),
            original_sizes=torch.tensor([items[i]["original_size"] for i in frame_image], dtype=torch.long),
            labels=None if row_labels is None else labels,
            masks=None if items[0]["masks"] is None else [m for item in items for m in item["masks"]],
            sample_ids=[item["sample_id"] for item in items],
            truncated_rows=sum(item["fitted"].truncated for item in items),
            dropped_rows=[f"{item['sample_id']} {reason}" for item in items for reason in item["fitted"].dropped],
        )
