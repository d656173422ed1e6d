"""LISA: a vision-language model whose `[SEG]` tokens prompt SAM's mask decoder.

The language model answers; for every `[SEG]` in the answer, the last-layer (post-norm) hidden state at the
position *before* it — the position whose logits predict `[SEG]` — is projected by `text_hidden_fcs` to a
256-d sparse prompt of SAM's mask decoder, which turns it into one mask (the original's `model/LISA.py`).

The vision-language model and the mask head are each of a family of `model.families`; this module is the same for
every pair: the image inputs, positions and generation inputs are the family's, carried here without looking inside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.utils import ModelOutput

from model.families import mask_head_family, vlm_family
from model.families.base import ImageInputs
from model.losses import causal_lm_loss, dice_per_mask, mean_over_masks, next_token_targets, sigmoid_ce_per_mask

logger = logging.getLogger(__name__)

# LISA answers greedily, one answer per prompt, without a repetition penalty (an answer may hold several [SEG]). Pinned
# here, as bases ship generation configs that decode otherwise (Qwen2.5-VL-Instruct: repetition_penalty 1.05).
DECODING = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}


@strict
class LisaConfig(PreTrainedConfig):
    r"""
    vlm_config: the vision-language model: the config of a family of `model.families.VLM_FAMILIES` (a `LlavaConfig`,
        `Qwen2_5_VLConfig`, ...).
    sam_config: the segmentation model: the config of a family of `model.families.MASK_HEAD_FAMILIES` (a
        `SamConfig`, `Sam2Config`, ...).
    seg_token_id: id of `[SEG]` in the tokenizer saved beside the model.
    mask_head_source: the folder or hub id the mask head was loaded from at training init; on videos, the memory
        modules of its video model (SAM 2's, the SAM 3 tracker's: their released checkpoints hold them) are read
        from it (`model.video`).
    out_dim: width of SAM's prompt embeddings, the output of `text_hidden_fcs`.
    ce_loss_weight, bce_loss_weight, dice_loss_weight: LISA's loss weights (1.0, 2.0, 0.5).
    """

    model_type = "lisa"
    # The family of each part is its config's `model_type`; without one, LISA's original pair.
    sub_configs_defaults = {
        "vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="llava"),
        "sam_config": SubConfigSpec(config_class=AutoConfig, model_type="sam"),
    }

    vlm_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    seg_token_id: int | None = None
    mask_head_source: str | None = None
    out_dim: int = 256
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "LisaConfig":
        """Raises when a saved config names no vision-language model or mask head: building one from the defaults
        would make a 7B model of random weights (and exhaust a small machine's memory) before the weights are found
        not to fit."""
        if "llava_config" in config_dict and "vlm_config" not in config_dict:
            # Folders written before other families than LLaVA-1.5 were supported name the part `llava_config`.
            config_dict = {("vlm_config" if k == "llava_config" else k): v for k, v in config_dict.items()}
        missing = [key for key in ("vlm_config", "sam_config") if not config_dict.get(key)]
        if missing:
            raise ValueError(f"a LISA config without {' and '.join(missing)}: not a LISA folder's config.json")
        return super().from_dict(config_dict, **kwargs)


# transformers' tokenizer and processor loaders read a folder's config.json through AutoConfig; without this, a LISA
# folder's model type "lisa" is unknown there and every load warns that it instantiates "a model of type ``".
AutoConfig.register(LisaConfig.model_type, LisaConfig)


@dataclass
class LisaOutput(ModelOutput):
    """
    loss: `ce_loss_weight * ce_loss + mask_loss`, present when labels or masks are given.
    mask_loss: `bce_loss_weight * mask_bce_loss + dice_loss_weight * mask_dice_loss`.
    logits: (R, L, vocab) language-model logits, only when asked for (`return_logits`).
    pred_masks: per frame (per image, for pictures), (n_i, H, W) float32 mask logits at the original resolution, one
        per `[SEG]` of its image's rows.
    """

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    mask_bce_loss: torch.Tensor | None = None
    mask_dice_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_masks: list[torch.Tensor] | None = None


@dataclass
class LisaPrediction:
    """What the model generated for one prompt: the new ids and one boolean mask per `[SEG]`, in order — (H, W) on a
    picture, (T, H, W) on the T frames of a video —, with the mask decoder's prediction of each mask's IoU (its
    confidence score; on a video the mean over its frames), and the (n, out_dim) mask queries themselves, to decode on
    other frames of a video."""

    token_ids: list[int]
    masks: list[torch.Tensor]
    scores: list[float]
    queries: torch.Tensor


class LisaForCausalLM(PreTrainedModel):
    config_class = LisaConfig
    base_model_prefix = "lisa"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # `_no_split_modules` and tied weights: `post_init` gathers them from the two parts.

    def __init__(self, config: LisaConfig, vlm: PreTrainedModel | None = None, sam: PreTrainedModel | None = None):
        """`vlm` and `sam`, when given, are used as they are (training init from pretrained parts)."""
        super().__init__(config)
        self.vlm_family = vlm_family(config.vlm_config)
        self.sam_family = mask_head_family(config.sam_config)
        self.vlm = vlm if vlm is not None else self.vlm_family.model_class(config.vlm_config)
        self.sam = sam if sam is not None else self.sam_family.model_class(config.sam_config)
        self.sam_family.prepare(self.sam)
        hidden_size = config.vlm_config.text_config.hidden_size
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, config.out_dim),
            nn.Dropout(0.0),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the projection is LISA's own; the two parts initialise their modules themselves.
        if module in (self.text_hidden_fcs[0], self.text_hidden_fcs[2]):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.vlm.get_output_embeddings()

    @property
    def context_length(self) -> int:
        """Positions the language model was trained for; longer sequences run, but its answers degrade silently."""
        return self.config.vlm_config.text_config.max_position_embeddings

    @property
    def sam_image_size(self) -> int:
        return self.sam_family.image_size(self.config.sam_config)

    # ------------------------------------------------------------------------------------------ SAM side
    def embed_images(self, sam_pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """The mask head's image encoding, once per image.

        Args:
            sam_pixel_values: (N, 3, S, S) images preprocessed for the mask head.

        Returns:
            per image, the feature maps its mask decoder reads (the family's `embed`: SAM's (C, s, s) embedding,
            256 x 64 x 64 for the released SAM; for SAM 2 also its two higher-resolution maps before it). Without
            gradient unless the image encoder has been made trainable (a research option; frozen in LISA's recipe).
        """
        encoder = self.sam.vision_encoder
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(trainable):
            return self.sam_family.embed(self.sam, sam_pixel_values)

    def decode_masks(
        self,
        image_embeddings: tuple[torch.Tensor, ...],
        queries: torch.Tensor,
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of one image, one per `[SEG]` query.

        Args:
            image_embeddings: the image's entry of `embed_images`.
            queries: (n, out_dim) projected `[SEG]` hidden states.

        Returns:
            (n, H, W) float32 mask logits at the original size, and the decoder's (n,) predicted IoU of each mask.
        """
        if queries.shape[0] == 0:
            return queries.new_zeros((0, *original_size), dtype=torch.float32), queries.new_zeros(0)
        low_res, scores = self.sam_family.decode(self.sam, image_embeddings, queries)
        return self.sam_family.postprocess(low_res, self.sam_image_size, resized_size, original_size), scores

    # ---------------------------------------------------------------------------------------- LLM side
    def query_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Where mask queries are read: the position immediately before each `[SEG]`.

        Returns:
            (R, L) bool, True at the positions whose hidden states become mask queries.
        """
        is_seg = input_ids == self.config.seg_token_id
        if attention_mask is not None:
            is_seg &= attention_mask.bool()
        positions = torch.zeros_like(is_seg)
        positions[:, :-1] = is_seg[:, 1:]
        return positions

    @staticmethod
    def row_frames(image_index: torch.Tensor, frame_image: torch.Tensor | None) -> torch.Tensor:
        """The frames R rows show, row after row: (sum over the rows of their image's frame count,). A row about a
        picture shows its one frame, a row about a video all its frames in order; this is the image of each image of
        the rows, as the family's methods take it."""
        if frame_image is None:
            return image_index
        return torch.cat([torch.nonzero(frame_image == i).flatten() for i in image_index.tolist()])

    def _image_features(self, image_inputs: ImageInputs, image_index: torch.Tensor) -> dict[str, ModelOutput]:
        """The VLM's `mm_encoder_outputs` for the images `image_index` of the rows (`row_frames`). The vision tower
        runs once per image, not once per row, and without gradient unless it has been made trainable (frozen in LISA's recipe):
        transformers' `enable_input_require_grads`, which gradient checkpointing needs, makes the tower's patch
        embeddings require grad too, and the frozen tower would be recomputed and back-propagated every step."""
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.vlm_family.image_encoder_parameters(self.vlm))
        with torch.set_grad_enabled(trainable):
            return {"image": self.vlm_family.image_encoder_outputs(self.vlm, image_inputs, image_index)}

    def _language_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_inputs: ImageInputs,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """Last-layer, post-norm hidden states (R, L, h); `image_index`: the image of each image the rows show, row
        after row (`row_frames`)."""
        outputs = self.vlm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self.vlm_family.position_ids(self.vlm, input_ids, attention_mask, image_inputs, image_index),
            mm_encoder_outputs=self._image_features(image_inputs, image_index),
            use_cache=False,
        )
        return outputs.last_hidden_state

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        image_inputs: ImageInputs,
        sam_pixel_values: torch.Tensor,
        image_index: torch.LongTensor,
        resized_sizes: torch.LongTensor,
        original_sizes: torch.LongTensor,
        frame_image: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        masks: list[torch.Tensor] | None = None,
        return_logits: bool = False,
    ) -> LisaOutput:
        r"""Training and teacher-forced forward: all conversations are given in full.

        Args:
            input_ids: (R, L) token ids of R conversations, image tokens expanded.
            attention_mask: (R, L) 1 on tokens, 0 on padding.
            image_inputs: the F frames of the N images as the vision-language model's family takes them (its
                `ImageInputs`: LLaVA's pixels, Qwen's patches and patch grids). A picture is one frame; a video's
                conversations show all its frames, and its `[SEG]` are decoded on each.
            sam_pixel_values: (F, 3, S, S) the mask head's pixel values of the same frames.
            image_index: (R,) the image of each conversation.
            resized_sizes, original_sizes: (F, 2) frame sizes inside SAM's input and originally.
            frame_image: (F,) the image of each frame; None: every image is one frame (F = N).
            labels: (R, L) next-token targets, `IGNORE_LABEL` (-100) where no loss is taken; adds `ce_loss`.
            masks: per frame, (n_i, H, W) ground truth, one per `[SEG]` of its image's conversations in row
                order; adds the mask losses (per mask and frame).
            return_logits: also return the logits at every position. The text loss reads them at the labelled
                positions only; at every position they are R·L·vocab values (Qwen's 151,936-row head: 0.9 GB in
                bf16 for 6 rows of 500 tokens).
        """
        if input_ids.shape[1] > self.context_length:
            raise ValueError(
                f"conversations of {input_ids.shape[1]} tokens (image tokens included) are longer than the model's "
                f"context of {self.context_length} positions: shorten them"
            )
        hidden_states = self._language_forward(input_ids, attention_mask, image_inputs, self.row_frames(image_index, frame_image))

        query_mask = self.query_positions(input_ids, attention_mask)
        queries = self.text_hidden_fcs(hidden_states[query_mask])  # (total [SEG], out_dim), row-major order
        query_images = image_index[query_mask.nonzero()[:, 0]]

        if frame_image is None:
            frame_image = torch.arange(sam_pixel_values.shape[0], device=image_index.device)
        image_embeddings = self.embed_images(sam_pixel_values)
        pred_masks = [
            self.decode_masks(image_embeddings[f], queries[query_images == i], resized_sizes[f].tolist(), original_sizes[f].tolist())[0]
            for f, i in enumerate(frame_image.tolist())
        ]

        output = LisaOutput(logits=self.vlm.lm_head(hidden_states) if return_logits else None, pred_masks=pred_masks)
        losses = []
        if labels is not None:
            rows, columns, targets = next_token_targets(labels.to(hidden_states.device))
            output.ce_loss = causal_lm_loss(self.vlm.lm_head(hidden_states[rows, columns]), targets)
            losses.append(self.config.ce_loss_weight * output.ce_loss)
        if masks is not None:
            self._check_mask_counts(pred_masks, masks)
            pairs = [(pred, target.to(pred)) for pred, target in zip(pred_masks, masks)]
            output.mask_bce_loss = mean_over_masks(torch.cat([sigmoid_ce_per_mask(p, t) for p, t in pairs]))
            output.mask_dice_loss = mean_over_masks(torch.cat([dice_per_mask(p, t) for p, t in pairs]))
            output.mask_loss = (
                self.config.bce_loss_weight * output.mask_bce_loss + self.config.dice_loss_weight * output.mask_dice_loss
            )
            losses.append(output.mask_loss)
        if losses:
            output.loss = sum(losses)
        return output

    @staticmethod
    def _check_mask_counts(pred_masks: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        # `LisaProcessor` already refuses a sample whose [SEG] count differs from its mask count, naming it;
        # this guards batches built by other means.
        if [p.shape for p in pred_masks] != [m.shape for m in masks]:
            raise ValueError(
                f"one mask per [SEG] and image: predicted {[tuple(p.shape) for p in pred_masks]}, "
                f"ground truth {[tuple(m.shape) for m in masks]}"
            )

    # --------------------------------------------------------------------------------------- generation
    @contextmanager
    def _next_token_states(self) -> Iterator[list[torch.Tensor]]:
        """Yields a list that fills, at every call of the language model, with its last-layer (post-norm) hidden state
        at the last position, (B, h): while generating, the state that predicts the next token. Only these are kept;
        the VLM's `output_hidden_states` would keep all its layers at every prompt position."""
        states = []
        hook = lambda module, args, output: states.append(output.last_hidden_state[:, -1].clone())
        handle = self.vlm.model.language_model.register_forward_hook(hook)
        try:
            yield states
        finally:
            handle.remove()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        image_inputs: ImageInputs,
        sam_pixel_values: torch.Tensor,
        resized_sizes: torch.LongTensor,
        original_sizes: torch.LongTensor,
        image_index: torch.LongTensor | None = None,
        frame_image: torch.LongTensor | None = None,
        max_new_tokens: int = 512,
        image_embeddings: list[tuple[torch.Tensor, ...]] | None = None,
        **generate_kwargs,
    ) -> list[LisaPrediction]:
        """Answers B prompts (left-padded) about N images, with the KV cache on.

        The hidden states `[SEG]` needs are collected while generating: each step keeps the state that predicted its
        token, so no second pass over the sequence is run. The vision tower and SAM encode each image once, however
        many prompts are about it.

        Args:
            input_ids: (B, L) prompts ending with the assistant prefix, left padded.
            image_inputs, sam_pixel_values, resized_sizes, original_sizes, frame_image: the F frames of the N images
                (see `forward`).
            image_index: (B,) the image of each prompt; None means prompt b is about image b.
            image_embeddings: the F frames' `embed_images`, when already computed (a server's cache); None: computed
                here from `sam_pixel_values`.
            generate_kwargs: passed to the vision-language model's `generate`, over LISA's decoding (`DECODING`:
                greedy, no repetition penalty, whatever the base's generation config says). The end-of-answer ids
                are the VLM's generation config's.

        Returns:
            per prompt: the generated ids (cut after the end-of-turn token), one bool mask per `[SEG]` ((H, W), or
            (T, H, W) on a video's frames), its predicted IoU and its query.

        Raises:
            ValueError: beam search or several answers per prompt were asked for, or the prompt fills the context.
        """
        decoding = {**DECODING, **generate_kwargs}
        if (decoding["num_beams"] or 1) > 1 or (decoding.get("num_return_sequences") or 1) > 1:
            raise ValueError(
                "LISA answers each prompt once, greedily or sampled (its [SEG] states are read along one answer): "
                "num_beams and num_return_sequences must be 1"
            )
        if image_index is None:
            image_index = torch.arange(input_ids.shape[0], device=input_ids.device)
        prompt_length = input_ids.shape[1]
        room = self.context_length - prompt_length
        if room <= 0:
            raise ValueError(
                f"a prompt of {prompt_length} tokens (image tokens included) does not fit the model's context of "
                f"{self.context_length} positions: shorten it"
            )
        if max_new_tokens > room:
            logger.warning(
                "answers limited to %d new tokens: the prompt takes %d of the model's %d positions",
                room, prompt_length, self.context_length,
            )
            max_new_tokens = room
        shown = self.row_frames(image_index, frame_image)
        with self._next_token_states() as states:
            sequences = self.vlm.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                mm_encoder_outputs=self._image_features(image_inputs, shown),
                **self.vlm_family.generation_inputs(self.vlm, input_ids, image_inputs, shown),
                max_new_tokens=max_new_tokens,
                use_cache=True,
                **decoding,
            )
        new_tokens = sequences[:, prompt_length:]
        # states[j] (B, h) predicted new token j: the query of a [SEG] generated at j.
        next_token_states = torch.stack(states, dim=1)
        if image_embeddings is None:
            image_embeddings = self.embed_images(sam_pixel_values)
        eos_ids = self.vlm.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])

        if frame_image is None:
            frame_image = torch.arange(sam_pixel_values.shape[0], device=image_index.device)
        results = []
        for b, (tokens, i) in enumerate(zip(new_tokens.tolist(), image_index.tolist())):
            end = next((j + 1 for j, t in enumerate(tokens) if t in eos_ids), len(tokens))
            tokens = tokens[:end]
            queries = self.text_hidden_fcs(next_token_states[b, [j for j, t in enumerate(tokens) if t == self.config.seg_token_id]])
            decoded = [
                self.decode_masks(image_embeddings[f], queries, resized_sizes[f].tolist(), original_sizes[f].tolist())
                for f in torch.nonzero(frame_image == i).flatten().tolist()
            ]
            logits = torch.stack([frame_logits for frame_logits, _ in decoded], dim=1)  # (n, T, H, W)
            scores = torch.stack([frame_scores for _, frame_scores in decoded], dim=1).float().mean(dim=1)
            masks = logits > 0 if len(decoded) > 1 else logits[:, 0] > 0
            results.append(LisaPrediction(token_ids=tokens, masks=list(masks), scores=scores.tolist(), queries=queries))
        return results
