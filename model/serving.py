"""Answering concurrent questions in batches: what the server runs between its HTTP requests and the model.

A question is preprocessed where it is asked (in the request's thread: image and prompt into model inputs), then
queued; one worker thread takes the oldest, waits up to `max_wait_ms` from its arrival for more, and answers up to
`max_batch_size` of them with one batched `model.inference.answer_batch` (left-padded prompts, one generation). Each answer is its own question's: rows of a batch do not see each other (the attention mask keeps
padding out), and a batch holds only questions that are generated alike (the same settings) and whose longest prompt
leaves every row its full answer length in the model's context. Questions about the same image share its mask-head
embedding, in a batch and, through `ImageEmbeddingCache`, across batches.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from model.inference import Answer, ImageEmbeddingCache, answer_batch
from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is generated; questions are batched only with questions of equal settings.

    max_new_tokens: the answer's length limit, within the context left by its prompt.
    temperature: 0 answers greedily; above 0 samples, with nucleus `top_p`.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Question:
    """One request, preprocessed.

    item: `processor.process_sample(image, [messages], add_generation_prompt=True)` of a conversation about one
        (H, W, 3) uint8 image that ends with a user turn.
    image_key: `model.inference.image_key(image)`.
    """

    item: dict[str, Any]
    image_key: bytes
    settings: GenerationSettings
    arrived: float = field(default_factory=time.monotonic)

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length, image tokens included."""
        return len(self.item["input_ids"][0])


class Batcher:
    """A queue of questions and the worker thread that answers them in batches (see the module docstring).

    Args:
        max_batch_size: questions answered by one generation at most; 1 answers them one by one.
        max_wait_ms: how long the oldest waiting question waits for others to join its batch.
        cache_images: images whose mask-head embedding is kept for questions asked about them later; 0: none.
    """

    def __init__(
        self,
        model: LisaForCausalLM,
        processor: LisaProcessor,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        cache_images: int = 8,
    ):
        self.model, self.processor = model, processor
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.cache = ImageEmbeddingCache(cache_images) if cache_images > 0 else None
        self.queue: queue.Queue[tuple[Question, Future] | None] = queue.Queue()
        self.closed = False
        self.worker = threading.Thread(target=self._work, name="lisa-batcher", daemon=True)
        self.worker.start()

    def submit(self, question: Question) -> Future[Answer]:
        """Queues `question`; the future holds its `Answer`, or the error answering it raised.

        Raises:
            RuntimeError: the batcher is closed.
        """
        if self.closed:
            raise RuntimeError("the batcher is closed: no more questions are answered")
        future: Future[Answer] = Future()
        self.queue.put((question, future))
        return future

    def close(self) -> None:
        """Answers the questions queued so far, then stops the worker."""
        self.closed = True
        self.queue.put(None)
        self.worker.join()

    # -------------------------------------------------------------------------------------------- the worker
    def _work(self) -> None:
        waiting: list[tuple[Question, Future]] = []
        closing = False
        while waiting or not closing:
            if not waiting:
                item = self.queue.get()
                if item is None:
                    break
                waiting.append(item)
            # Gather until the batch is full or the oldest question has waited long enough; questions that queued
            # while the last batch ran have waited already and join at once.
            while not closing and len(waiting) < self.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, waiting[0][0].arrived + self.max_wait_s - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    waiting.append(item)
            batch, waiting = self._next_batch(waiting)
            # A question whose asker has gone (its future cancelled) is not answered.
            self._answer([item for item in batch if item[1].set_running_or_notify_cancel()])

    def _next_batch(self, waiting: list[tuple[Question, Future]]) -> tuple[list, list]:
        """The oldest question and those after it, in order, that can share its generation; and the others."""
        settings = waiting[0][0].settings
        batch, rest, longest = [], [], 0
        for item in waiting:
            question = item[0]
            fits = max(longest, question.prompt_tokens) + settings.max_new_tokens <= self.model.context_length
            if question.settings == settings and len(batch) < self.max_batch_size and (fits or not batch):
                batch.append(item)
                longest = max(longest, question.prompt_tokens)
            else:
                rest.append(item)
        return batch, rest

    def _answer(self, batch: list[tuple[Question, Future]]) -> None:
        if not batch:
            return
        try:
            answers = self._generate([question for question, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to the request that asked, the worker goes on
            if len(batch) == 1:
                batch[0][1].set_exception(error)
            else:  # one at a time, so that a question that fails fails alone
                for item in batch:
                    self._answer([item])
            return
        for (_, future), reply in zip(batch, answers):
            future.set_result(reply)

    def _generate(self, questions: list[Question]) -> list[Answer]:
        batch = self.processor.collate([question.item for question in questions], padding_side="left")
        settings = questions[0].settings
        return answer_batch(
            self.model, self.processor, batch, settings.max_new_tokens, self.cache,
            [question.image_key for question in questions], **settings.generate_kwargs(),
        )
