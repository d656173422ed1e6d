"""A LISA model behind OpenAI's chat-completions API (FastAPI): what `serve.py` runs.

`POST /v1/chat/completions` takes OpenAI's request — `messages` whose user turns hold text parts and one `image_url`
part, a `data:image/...;base64,` URI (or, where the server allows it, a local file) — and answers in OpenAI's response
shape. The answer's text is `choices[0].message.content`, `[SEG]` kept as `chat.py` prints it; beside it,
`choices[0].message.masks` holds one entry per `[SEG]`, in order: `{"rle": {"size": [h, w], "counts": str}, "box":
[x0, y0, x1, y1], "score": float}`, the mask as COCO's compressed RLE at the image's size (`pycocotools.mask.decode`),
its box in pixel edges, and the mask decoder's predicted IoU. Earlier turns in `messages` continue a conversation as
the chat does. `GET /v1/models` names the one model served, `GET /health` says the server is up.

A bad request is answered with a 4xx status and OpenAI's error body, `{"error": {"message", "type", "param",
"code"}}`, and the server goes on serving. Answers come from `model.serving.Batcher`, which batches concurrent
requests; requests are checked (image decoded, prompt measured against the context) before they are queued, so a
bad one never reaches a batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from model.inference import Answer, image_key
from model.lisa import LisaForCausalLM
from model.processing import LisaProcessor
from model.serving import Batcher, GenerationSettings, Question
from model.session import user_message
from utils.images import ImageError, decode_image
from utils.masks import compressed_rle, mask_box

# Parameters of OpenAI's request that are taken only at the value that asks for nothing this server lacks.
ONLY_DEFAULT = {
    "n": (1, "one answer per request: n must be 1"),
    "stream": (False, "streaming is not supported (the masks come with the whole answer): stream must be false"),
    "logprobs": (False, "log-probabilities are not returned: logprobs must be false"),
    "presence_penalty": (0, "presence_penalty is not supported: it must be 0"),
    "frequency_penalty": (0, "frequency_penalty is not supported: it must be 0"),
}
TAKEN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "user", *ONLY_DEFAULT}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # OpenAI's -> the chat's


@dataclass
class ServerSettings:
    """What `serve.py`'s flags set (see its --help)."""

    model_name: str
    max_new_tokens: int = 512
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    cache_images: int = 8
    max_image_pixels: int = 50_000_000
    local_files: str | None = None


class RequestError(Exception):
    """A request the server does not answer: its HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


class ChatCompletions:
    """Requests into `Question`s and `Answer`s into responses, for one model."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, settings: ServerSettings):
        self.model, self.processor, self.settings = model, processor, settings
        self.local_root = None if settings.local_files is None else os.path.realpath(settings.local_files)
        end = model.vlm.generation_config.eos_token_id
        self.end_ids = {processor.tokenizer.eos_token_id, *(end if isinstance(end, list) else [end])}

    # ------------------------------------------------------------------------------------------ request
    def question(self, body: bytes) -> Question:
        """The question a request's body asks.

        Raises:
            RequestError: anything the server cannot answer, naming the parameter.
        """
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"the request body is not valid JSON: {error}") from None
        if not isinstance(request, dict):
            raise RequestError("the request body must be a JSON object")
        self._check_parameters(request)
        if request.get("model") != self.settings.model_name:
            raise RequestError(
                f"the model {request.get('model')!r} does not exist: this server serves {self.settings.model_name!r}",
                "model", "model_not_found", status=404, kind="not_found_error",
            )
        image, messages = self._conversation(request.get("messages"))
        item = self.processor.process_sample(image, [messages], add_generation_prompt=True)
        return Question(item, image_key(image), self._settings(request, len(item["input_ids"][0])))

    def _check_parameters(self, request: dict) -> None:
        for name, value in request.items():
            if value is None:
                continue  # an explicit null is OpenAI's default
            if name not in TAKEN:
                raise RequestError(f"unsupported parameter: {name}", name, "unsupported_parameter")
            if name in ONLY_DEFAULT and value != ONLY_DEFAULT[name][0]:
                raise RequestError(ONLY_DEFAULT[name][1], name, "unsupported_value")

    def _settings(self, request: dict, prompt_tokens: int) -> GenerationSettings:
        room = self.model.context_length - prompt_tokens
        if room < 1:
            raise RequestError(
                f"the prompt takes {prompt_tokens} tokens (image tokens included), the model's context "
                f"{self.model.context_length}: shorten the messages", "messages", "context_length_exceeded",
            )
        name = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
        requested = request.get(name)
        if requested is not None:
            if not _is_int(requested) or requested < 1:
                raise RequestError(f"{name} must be a positive integer, not {requested!r}", name, "invalid_value")
            if requested > room:
                raise RequestError(
                    f"the model's context is {self.model.context_length} tokens: {prompt_tokens} in the messages and "
                    f"{requested} in the answer do not fit", name, "context_length_exceeded",
                )
        temperature, top_p = request.get("temperature"), request.get("top_p")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
            raise RequestError(f"temperature must be a number from 0 to 2, not {temperature!r}", "temperature", "invalid_value")
        if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
            raise RequestError(f"top_p must be a number above 0 and at most 1, not {top_p!r}", "top_p", "invalid_value")
        return GenerationSettings(
            max_new_tokens=requested if requested is not None else min(self.settings.max_new_tokens, room),
            temperature=float(temperature or 0), top_p=float(1 if top_p is None else top_p),
        )

    def _conversation(self, messages: Any) -> tuple[np.ndarray, list[dict[str, str]]]:
        """The image and the chat messages of OpenAI's `messages`; `<image>` goes before the text of the user turn
        that held the image."""
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list of messages", "messages")
        turns, images = [], []  # images: (turn index, url, param)
        for m, message in enumerate(messages):
            param = f"messages[{m}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise RequestError(f"{param} must be a message whose role is one of {', '.join(ROLES)}", param)
            role = ROLES[message["role"]]
            texts = []
            for p, part in self._parts(message.get("content"), f"{param}.content"):
                if part["type"] == "text":
                    texts.append(part["text"])
                elif role == "user":
                    images.append((len(turns), part["image_url"]["url"], f"{param}.content[{p}].image_url"))
                else:
                    raise RequestError(f"{param}.content[{p}]: images go in user messages only", f"{param}.content")
            turns.append((role, "\n".join(texts), param))
        if not images:
            raise RequestError(
                "messages hold no image: the model answers about one image, sent as an image_url part of a user message",
                "messages", "image_missing",
            )
        if len(images) > 1:
            raise RequestError(f"messages hold {len(images)} images: the model takes one image per conversation",
                               images[1][2], "too_many_images")
        if turns[-1][0] != "user":
            raise RequestError("the last message must be the user's question", f"messages[{len(turns) - 1}]")
        [(image_turn, url, image_param)] = images
        image = self._image(url, image_param)
        chat = []
        for t, (role, text, param) in enumerate(turns):
            if role != "user":
                chat.append({"role": role, "content": text})
                continue
            try:
                chat.append(user_message(text, with_image=t == image_turn))
            except ValueError as error:  # no text once a typed <image> is dropped
                raise RequestError(f"{param}: {error}", param) from None
        return image, chat

    @staticmethod
    def _parts(content: Any, param: str) -> list[tuple[int, dict]]:
        """A message's content as OpenAI's list of parts (a string is one text part), each checked."""
        if isinstance(content, str):
            return [(0, {"type": "text", "text": content})]
        if not isinstance(content, list):
            raise RequestError(f"{param} must be a string or a list of content parts", param)
        for p, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(part["image_url"].get("url"), str):
                continue
            raise RequestError(
                f"{param}[{p}] must be a part {{\"type\": \"text\", \"text\": str}} or {{\"type\": \"image_url\", "
                f"\"image_url\": {{\"url\": str}}}}", f"{param}[{p}]", "unsupported_content",
            )
        return list(enumerate(content))

    def _image(self, url: str, param: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an `image_url`: a base64 data URI, or a file under the folder local files may come
        from."""
        limit = self.settings.max_image_pixels
        if url.startswith("data:"):
            header, comma, data = url.partition(",")
            if not comma or not header.startswith("data:image/") or not header.endswith(";base64"):
                raise RequestError(f"{param}: a data URI must be data:image/<type>;base64,<data>", param, "invalid_image_url")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{param}: the data URI's data is not valid base64", param, "invalid_image") from None
            return self._decode(raw, param, limit)
        if url.startswith(("http://", "https://")):
            raise RequestError(f"{param}: the server fetches no URLs: send the image as a data:image/...;base64 URI",
                               param, "invalid_image_url")
        if self.local_root is None:
            raise RequestError(f"{param}: local files are not read (the server was started without --allow_local_files): "
                               "send the image as a data:image/...;base64 URI", param, "invalid_image_url")
        path = url.removeprefix("file://")
        resolved = os.path.realpath(os.path.join(self.local_root, path))
        if os.path.commonpath([self.local_root, resolved]) != self.local_root:
            raise RequestError(f"{param}: {path} is outside the folder the server reads images from", param,
                               "local_file_not_allowed", status=403, kind="permission_error")
        try:
            with open(resolved, "rb") as f:
                raw = f.read()
        except OSError:
            raise RequestError(f"{param}: {path}: no readable file there", param, "invalid_image") from None
        return self._decode(raw, param, limit)

    @staticmethod
    def _decode(raw: bytes, param: str, limit: int) -> np.ndarray:
        try:
            return decode_image(raw, param, limit)
        except ImageError as error:
            raise RequestError(str(error), param, "invalid_image") from None

    # ----------------------------------------------------------------------------------------- response
    def response(self, question: Question, answer: Answer) -> dict[str, Any]:
        """OpenAI's chat-completion object of an answer, with its masks beside the text."""
        tokens = answer.token_ids
        stopped = len(tokens) < question.settings.max_new_tokens or (tokens and tokens[-1] in self.end_ids)
        masks = [
            {"rle": compressed_rle(mask), "box": mask_box(mask), "score": score}
            for mask, score in zip((m.numpy() for m in answer.masks), answer.scores)
        ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.settings.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "masks": masks},
                "finish_reason": "stop" if stopped else "length",
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": question.prompt_tokens, "completion_tokens": len(tokens),
                      "total_tokens": question.prompt_tokens + len(tokens)},
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no count


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_app(model: LisaForCausalLM, processor: LisaProcessor, settings: ServerSettings) -> FastAPI:
    """The server's app; its batcher's worker runs from the app's start-up to its shutdown (the requests queued by
    then answered)."""
    completions = ChatCompletions(model, processor, settings)
    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal batcher
        batcher = Batcher(model, processor, settings.max_batch_size, settings.max_wait_ms, settings.cache_images)
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="LISA", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # Unknown routes and methods, in OpenAI's error shape too.
        return RequestError(str(error.detail), code=None, status=error.status_code).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the client gets OpenAI's shape, not a bare text page.
        return RequestError("the server failed to answer: see its log", status=500, kind="server_error").response()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        # Decoding the image and measuring the prompt run in a worker thread: the event loop keeps accepting requests.
        question = await run_in_threadpool(completions.question, await request.body())
        reply = await asyncio.wrap_future(batcher.submit(question))
        return JSONResponse(await run_in_threadpool(completions.response, question, reply))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0, "owned_by": "lisa"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
