"""LISA's question and answer templates (the original's `utils/utils.py`), and the messages built from them."""

from __future__ import annotations

import numpy as np

from model.processing import IMAGE_PLACEHOLDER, SEG_TOKEN

SHORT_QUESTION_LIST = [
    IMAGE_PLACEHOLDER + "\n" + "Can you segment the {class_name} in this image?",
    IMAGE_PLACEHOLDER + "\n" + "Please segment the {class_name} in this image.",
    IMAGE_PLACEHOLDER + "\n" + "What is {class_name} in this image? Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\n" + "What is {class_name} in this image? Please output segmentation mask.",
]

LONG_QUESTION_LIST = [
    IMAGE_PLACEHOLDER + "\n" + "{sent} Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\n" + "{sent} Please output segmentation mask.",
]

EXPLANATORY_QUESTION_LIST = [
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
]

ANSWER_LIST = [
    f"It is {SEG_TOKEN}.",
    f"Sure, {SEG_TOKEN}.",
    f"Sure, it is {SEG_TOKEN}.",
    f"Sure, the segmentation result is {SEG_TOKEN}.",
    f"{SEG_TOKEN}.",
]

# Videos: the question asks about the frames given as the image input; an expression is a noun phrase ("the dog
# that jumps") or, for reasoning sets, a sentence. An object absent from every frame shown is answered without [SEG].
VIDEO_SHORT_QUESTION_LIST = [
    IMAGE_PLACEHOLDER + "\n" + "Can you segment {exp} in this video?",
    IMAGE_PLACEHOLDER + "\n" + "Please segment {exp} in this video.",
    IMAGE_PLACEHOLDER + "\n" + "What is {exp} in this video? Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\n" + "Where is {exp} in this video? Please output segmentation mask.",
]

VIDEO_LONG_QUESTION_LIST = [
    IMAGE_PLACEHOLDER + "\n" + "{sent} Please respond with segmentation mask.",
    IMAGE_PLACEHOLDER + "\n" + "{sent} Please output segmentation mask.",
]

VIDEO_NO_TARGET_ANSWER_LIST = [
    "There is no such object in the video.",
    "I cannot find it in this video.",
    "It does not appear in this video.",
]

# Validation is teacher-forced with these exact prompts (the leading space is the original's).
VAL_SHORT_QUESTION = IMAGE_PLACEHOLDER + "\n What is {text} in this image? Please output segmentation mask."
VAL_LONG_QUESTION = IMAGE_PLACEHOLDER + "\n {text} Please output segmentation mask."
VAL_ANSWER = f"{SEG_TOKEN}."


def turn(question: str, answer: str) -> list[dict[str, str]]:
    """A one-round conversation."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def short_question(rng: np.random.Generator, class_name: str) -> str:
    """A random short question about a class name or phrase, lower-cased as in the original."""
    return SHORT_QUESTION_LIST[rng.integers(len(SHORT_QUESTION_LIST))].format(class_name=class_name.lower())


def long_question(rng: np.random.Generator, sentence: str) -> str:
    """A random long question around a sentence, inserted as-is."""
    return LONG_QUESTION_LIST[rng.integers(len(LONG_QUESTION_LIST))].format(sent=sentence)


def seg_answer(rng: np.random.Generator) -> str:
    """A random answer with one `[SEG]`."""
    return ANSWER_LIST[rng.integers(len(ANSWER_LIST))]


def val_conversation(text: str, is_sentence: bool) -> list[dict[str, str]]:
    """The original's teacher-forced validation conversation for one query."""
    question = (VAL_LONG_QUESTION if is_sentence else VAL_SHORT_QUESTION).format(text=text)
    return turn(question, VAL_ANSWER)


def video_short_question(rng: np.random.Generator, expression: str) -> str:
    """A random question about a referring expression in a video, lower-cased as the image questions are (a final
    full stop dropped: the expression sits inside the question)."""
    return video_question(expression, False, int(rng.integers(len(VIDEO_SHORT_QUESTION_LIST))))


def video_long_question(rng: np.random.Generator, sentence: str) -> str:
    """A random question around a sentence (a reasoning query) about a video, inserted as-is."""
    return video_question(sentence, True, int(rng.integers(len(VIDEO_LONG_QUESTION_LIST))))


def video_question(text: str, is_sentence: bool, template: int = 0) -> str:
    """The question about an expression in a video, from template `template` of the short list (a phrase, lower-cased,
    a final full stop dropped) or the long one (a sentence, as-is). Evaluation asks with the first template of each."""
    if is_sentence:
        return VIDEO_LONG_QUESTION_LIST[template].format(sent=text.strip())
    return VIDEO_SHORT_QUESTION_LIST[template].format(exp=text.strip().rstrip(".").strip().lower())


def no_target_answer(rng: np.random.Generator) -> str:
    """A random answer without `[SEG]`: the object asked about is not in the frames shown."""
    return VIDEO_NO_TARGET_ANSWER_LIST[rng.integers(len(VIDEO_NO_TARGET_ANSWER_LIST))]
