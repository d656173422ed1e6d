"""Visual question answering: LLaVA-Instruct-150k (`llava_dataset/{name}.json`, images from coco/train2017),
multi-turn, no masks (the original's `utils/vqa_dataset.py`)."""

from __future__ import annotations

import os

import numpy as np

from datasets.common import SampleError, Sample, read_image, read_json
from datasets.templates import IMAGE_PLACEHOLDER

ROLES = {"human": "user", "gpt": "assistant"}
VQA_DATA = "llava_instruct_150k"  # the LLaVA-Instruct json LISA trains on


def to_messages(turns: list[dict], path: str) -> list[dict[str, str]]:
    """A LLaVA conversation as chat messages: a leading "gpt" turn is dropped, turns must alternate
    human/gpt, and `<image>` is moved to the front of the first human turn (followed by a newline)."""
    if turns and turns[0].get("from") == "gpt":
        turns = turns[1:]
    messages = []
    for i, t in enumerate(turns):
        role = ROLES.get(t.get("from")) if isinstance(t, dict) else None
        if role != ("user" if i % 2 == 0 else "assistant") or not isinstance(t.get("value"), str):
            raise SampleError(path, f"turn {i} is not an alternating human/gpt turn with a string value")
        content = t["value"]
        if IMAGE_PLACEHOLDER in content or i == 0:
            content = content.replace(IMAGE_PLACEHOLDER, "").strip()
            if i == 0:
                content = f"{IMAGE_PLACEHOLDER}\n{content}"
        messages.append({"role": role, "content": content})
    if len(messages) < 2:
        raise SampleError(path, "a conversation needs a question and an answer")
    return messages


class VQADataset:
    """Training VQA: a random item; its whole multi-turn conversation is one conversation, with no mask."""

    def __init__(self, dataset_dir: str, vqa_data: str = VQA_DATA):
        self.json_path = os.path.join(dataset_dir, "llava_dataset", f"{vqa_data}.json")
        self.items = read_json(self.json_path)
        if not isinstance(self.items, list) or not all(isinstance(i, dict) and {"image", "conversations"} <= i.keys() for i in self.items):
            raise SampleError(self.json_path, "expected a list of {'image', 'conversations'} items")
        self.image_root = os.path.join(dataset_dir, "coco", "train2017")
        self.name = vqa_data

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, rng: np.random.Generator) -> Sample:
        item = self.items[rng.integers(len(self.items))]
        messages = to_messages(item["conversations"], f"{self.json_path} (item {item.get('id', item['image'])})")
        image = read_image(os.path.join(self.image_root, item["image"]))
        masks = np.zeros((0, *image.shape[:2]), dtype=bool)
        stem = os.path.splitext(os.path.basename(item["image"]))[0]
        question = messages[0]["content"].removeprefix(f"{IMAGE_PLACEHOLDER}\n")
        return Sample(f"{self.name}/{stem}", image, [messages], masks, queries=[question])
