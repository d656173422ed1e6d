"""Conversation formats, as Jinja chat templates.

Each assistant turn, with its end-of-turn token, sits inside a `{% generation %}` block: the tokenizer's
`apply_chat_template(..., return_assistant_tokens_mask=True)` then marks exactly the tokens a model is trained
to produce. A prompt for generation ends with the assistant prefix (`add_generation_prompt=True`).

* `llava_1_5` — the llava-1.5 (llava-hf) format: `USER: <image>\\n{q} ASSISTANT: {a}</s>`.
* `llava_v1` — the original LISA default: the Vicuna v1 system prompt, then the same turns.
* `llava_llama_2` — the LLaMA-2 chat format of the original's `llava_llama_2`.
* `llava_v1_im_start_end` — `llava_v1` with every `<image>` of a user message written
  `<im_start><image><im_end>` (the original's `mm_use_im_start_end`): the prompt format of the released LISA
  checkpoints (`model/convert_lisa.py`).
* `qwen2_5_vl` — Qwen2.5-VL's ChatML format (`<|im_start|>role\n...<|im_end|>`, Qwen's default system prompt),
  with every `<image>` written `<|vision_start|><|image_pad|><|vision_end|>`.
* `qwen3_vl` — Qwen3-VL-Instruct's: the same, without a system turn unless the conversation has one.
"""

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

_VICUNA_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CHAT_TEMPLATES = {
    "llava_1_5": "{{ bos_token }}" + _VICUNA_TURNS,
    "llava_v1": (
        "{{ bos_token }}{% if messages[0]['role'] != 'system' %}{{ \"" + LLAVA_V1_SYSTEM + " \" }}{% endif %}"
        + _VICUNA_TURNS
    ),
    "llava_llama_2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = \"" + LLAMA_2_SYSTEM + "\" %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if loop.first %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' }}{% generation %}{{ message['content'] + ' ' + eos_token }}{% endgeneration %}"
        "{% endif %}{% endfor %}"
    ),
}

# The prompt format of the released LISA checkpoints: `llava_v1` with the image between `<im_start>` and
# `<im_end>` (the original's `mm_use_im_start_end`). The space after "ASSISTANT:" belongs to the answer, as in the
# original's labels: their legacy tokenizer may give it a "▁" token of its own, the first one to be predicted.
CHAT_TEMPLATES["llava_v1_im_start_end"] = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}{{ \"" + LLAVA_V1_SYSTEM + " \" }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] | replace('<image>', '<im_start><image><im_end>') + ' ' }}"
    "{% else %}{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2.5-VL-Instruct's and Qwen3-VL-Instruct's own formats for string contents; their templates write an image as the
# content item {"type": "image"}, which LISA's data writes as `<image>` in the text. The newline after `<|im_end|>`
# opens the next turn and is not part of the answer.
QWEN_SYSTEM = "You are a helpful assistant."


def _chatml(default_system: str | None) -> str:
    """Qwen's ChatML turns; a conversation without a system message gets `default_system`'s turn, if any."""
    system = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        if default_system else ""
    )
    return system + (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}"
        "{{ message['content'] | replace('<image>', '<|vision_start|><|image_pad|><|vision_end|>') + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


CHAT_TEMPLATES["qwen2_5_vl"] = _chatml(QWEN_SYSTEM)
CHAT_TEMPLATES["qwen3_vl"] = _chatml(None)
