"""Qwen3.5 (`Qwen3_5ForConditionalGeneration`): Qwen3-VL's image path without DeepStack (patches, grid and 2 x 2 patch
merger; `model.families.qwen2_5_vl`'s image inputs, positions and generation inputs) in front of a hybrid language
model: three Gated DeltaNet (linear-attention) layers for every full-attention layer.

A DeltaNet layer keeps a fixed-size recurrent state and a short convolution over its inputs instead of keys and values,
so left padding could leak into every later token of a row. transformers zeroes the padded positions' inputs to each
DeltaNet layer (with no bias in its projections, padding then adds nothing to the state and the convolution sees
zeros, as before an unpadded row), so batched, left-padded, KV-cached generation equals each row's recomputation as
for the other families (`tests/test_model.py`); its cache holds each DeltaNet layer's state and each full layer's keys
and values. Its chat format is Qwen3.5's own, always without thinking.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX, Qwen3_5Tokenizer

from model.families.base import holds_all
from model.families.qwen2_5_vl import (
    TINY_MERGE_SIZE,
    TINY_PATCH_SIZE,
    Qwen2_5_VLFamily,
    QwenVLTextImageProcessor,
    qwen_token_ids,
    tiny_qwen_processor,
    tiny_qwen_text,
)

# Qwen3.5's hub template for string contents, as it writes a conversation with thinking off (the default of
# Qwen3.5-0.8B's template; the 27B's defaults to thinking): no default system turn; the assistant turns after the last
# user turn open with an empty reasoning block, earlier ones without (the hub template drops reasoning from history);
# the generation prompt ends with the empty block, so the answer and its [SEG] follow at once. The block belongs to the
# prompt, outside `{% generation %}`: it is never trained.
QWEN3_5_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '<|im_start|>system\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<|im_start|>user\\n' + message['content'] | replace('<image>', '<|vision_start|><|image_pad|><|vision_end|>') "
    "+ '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.index0 > ns.last_user %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


class Qwen3_5Family(Qwen2_5_VLFamily):
    name = "qwen3_5"
    title = "Qwen3.5"
    model_class = Qwen3_5ForConditionalGeneration
    chat_templates = {"qwen3_5": QWEN3_5_TEMPLATE}
    # LoRA on the full-attention layers' q_proj and v_proj, as LISA's recipe, and on the DeltaNet layers' in_proj_qkv:
    # their fused query, key and value projection, the only place to adapt a linear-attention layer's query and value
    # (q_proj / v_proj alone would adapt 6 of Qwen3.5-0.8B's 24 layers). Their beta and decay projections
    # (in_proj_b, in_proj_a: one output per head) and the output gate (in_proj_z) stay frozen.
    lora_targets = ("q_proj", "v_proj", "in_proj_qkv")
    # One output per value head (16 in Qwen3.5-0.8B): bitsandbytes' 4-bit CPU kernel on AVX512-BF16 hosts takes only
    # multiples of 32, and they hold 16 x 1024 weights each; they stay in full precision.
    unquantized_linears = ("in_proj_a", "in_proj_b")

    def owns(self, weight_names: Iterable[str]) -> bool:
        # Its DeltaNet layers (Qwen3.5-MoE's have them too, but its configs say "qwen3_5_moe") and its vision patches.
        return holds_all(
            weight_names, r"model\.language_model\.layers\.\d+\.linear_attn\.in_proj_qkv\.weight",
            r"model\.visual\.patch_embed\.proj\.weight",
        )

    # The base `image_encoder_outputs` (no DeepStack features, which Qwen3-VL's adds).

    def build_tiny(self, seed: int = 0) -> tuple[Qwen3_5ForConditionalGeneration, QwenVLTextImageProcessor]:
        from model import tiny  # the shared tiny-base parts; `model.tiny` itself builds on the families

        torch.manual_seed(seed)
        tokenizer = tiny.build_qwen_tokenizer(Qwen3_5Tokenizer, PRETOKENIZE_REGEX)
        tokenizer.add_tokens(["<think>", "</think>"])  # added tokens, not special ones, as in the hub tokenizer
        config = Qwen3_5Config(
            text_config=dict(
                **{**tiny_qwen_text(), "num_hidden_layers": 4},
                vocab_size=tiny.padded_vocab_size(tokenizer), eos_token_id=tokenizer.pad_token_id,
                pad_token_id=tokenizer.pad_token_id,
                # DeltaNet and full-attention layers alternating (Qwen3.5's period is 3 DeltaNet, 1 full attention). With
                # one full-attention layer of four, the toy run's [SEG] queries followed the question too little (toy
                # ReasonSeg val gIoU 0.514 with the SAM 3 tracker, against the query-blind 0.401).
                layer_types=["linear_attention", "full_attention"] * 2,
                # The full layer: 4 heads of 32 (q_proj 256 wide: query and output gate); a quarter of each head's
                # dimensions rotate, as in Qwen3.5 (64 of 256), 4 frequency pairs interleaved t h w t.
                head_dim=2 * tiny.LLM_HIDDEN_SIZE // 4,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                                 "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                # The DeltaNet layers: 4 key and 4 value heads of 16. Their 4-wide in_proj_a / in_proj_b are, as the
                # 0.8B's 16-wide ones, no multiple of 32 (see `unquantized_linears`).
                linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                linear_conv_kernel_dim=4,
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH_SIZE,
                spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2, out_hidden_size=tiny.LLM_HIDDEN_SIZE,
                num_position_embeddings=16,  # learnt on a 4 x 4 grid, interpolated (48 x 48 in Qwen3.5)
            ),
            **qwen_token_ids(tokenizer),
            tie_word_embeddings=False,  # see Qwen2_5_VLFamily.build_tiny
        )
        model = Qwen3_5ForConditionalGeneration(config)
        with torch.no_grad():
            # transformers zeroes the padding token's embedding row; a trained checkpoint's is not zero. A zero row
            # would enter the DeltaNet layers as zeros, masked or not, and hide a padding leak from the tests.
            pad_row = model.get_input_embeddings().weight[tokenizer.pad_token_id]
            pad_row.normal_(0.0, config.text_config.initializer_range)
        tiny.set_generation_tokens(model, tokenizer)
        return model, tiny_qwen_processor(tokenizer, QWEN3_5_TEMPLATE, image_mean=[0.5] * 3, image_std=[0.5] * 3)
