"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2.5-VL's image inputs, positions and generation inputs
(`model.families.qwen2_5_vl`), plus DeepStack: features of three of its vision layers are added to the image tokens'
hidden states in the first language-model layers. Its chat format is Qwen3-VL-Instruct's: ChatML without a system turn
unless the conversation has one."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from model.families.base import holds_all
from model.families.qwen2_5_vl import (
    TINY_MERGE_SIZE,
    TINY_PATCH_SIZE,
    Qwen2_5_VLFamily,
    QwenImageInputs,
    QwenVLTextImageProcessor,
    chatml,
    qwen_token_ids,
    tiny_qwen_processor,
    tiny_qwen_text,
)


class Qwen3VLFamily(Qwen2_5_VLFamily):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_class = Qwen3VLForConditionalGeneration
    chat_templates = {"qwen3_vl": chatml(None)}

    def owns(self, weight_names: Iterable[str]) -> bool:
        # Its DeepStack mergers and learnt position embeddings.
        return holds_all(weight_names, r"model\.visual\.deepstack_merger_list\.\d+\.norm\.weight", r"model\.visual\.pos_embed\.weight")

    def image_encoder_outputs(
        self, vlm: Qwen3VLForConditionalGeneration, images: QwenImageInputs, image_index: torch.Tensor
    ) -> BaseModelOutputWithDeepstackFeatures:
        """Also per row, in `deepstack_features[k]`, its image's (n_i, h) features of the k-th DeepStack vision layer,
        which the language model adds to the image tokens' hidden states after its layer k."""
        output = self.encode_images(vlm, images)
        rows = image_index.tolist()
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=[output.pooler_output[i] for i in rows],
            deepstack_features=[[layer[i] for i in rows] for layer in output.deepstack_features],
        )

    def build_tiny(self, seed: int = 0) -> tuple[Qwen3VLForConditionalGeneration, QwenVLTextImageProcessor]:
        from model import tiny  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        tokenizer = tiny.build_qwen_tokenizer()
        config = Qwen3VLConfig(
            text_config=dict(
                **tiny_qwen_text(), vocab_size=tiny.padded_vocab_size(tokenizer), head_dim=tiny.LLM_HIDDEN_SIZE // 4,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                # Qwen3-VL interleaves the t, h and w frequencies (t h w t h w ...); its proportions are 24, 20, 20 of 64.
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True},
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH_SIZE,
                spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2, out_hidden_size=tiny.LLM_HIDDEN_SIZE,
                # Learnt position embeddings on a 4 x 4 grid, interpolated to each image's patch grid (48 x 48 in
                # Qwen3-VL); both vision layers also feed the language model's first two layers (Qwen3-VL: 3 of 24-27).
                num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
            ),
            **qwen_token_ids(tokenizer),
            tie_word_embeddings=False,  # see Qwen2_5_VLFamily.build_tiny
        )
        model = Qwen3VLForConditionalGeneration(config)
        tiny.set_generation_tokens(model, tokenizer)
        # Qwen3-VL normalises pixels to [-1, 1] (mean and std 0.5), where Qwen2.5-VL uses CLIP's.
        return model, tiny_qwen_processor(tokenizer, self.chat_templates["qwen3_vl"], image_mean=[0.5] * 3, image_std=[0.5] * 3)
