"""The OpenAI-compatible server on the tiny model, driven over loopback by the `openai` package and plain `httpx`:
answers equal to `chat.py`'s, batching of concurrent requests, the image cache, every bad input, and (slow) a load
test of `python serve.py` itself."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs fastapi and uvicorn: pip install -r requirements-demo.txt")
openai = pytest.importorskip("openai", reason="the server tests drive it with openai: pip install -r requirements-demo.txt")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

import chat  # noqa: E402
from model.inference import answer, image_key  # noqa: E402
from model.loading import load_for_inference  # noqa: E402
from model.openai_api import ServerSettings, build_app  # noqa: E402
from model.serving import Batcher, GenerationSettings, Question  # noqa: E402
from model.session import ChatSession  # noqa: E402
from tests.lisa_fixtures import free_port, write_seg_emitter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "seg_serve"  # the model's name: the last part of its folder
TOKENS = 3  # the emitter answers "[SEG] . [SEG]": two masks


@pytest.fixture(scope="module")
def seg_dir(tiny_dir):
    return write_seg_emitter(str(tiny_dir / "lisa"), str(tiny_dir / NAME), after_seg=".")


@pytest.fixture(scope="module")
def seg_model(seg_dir):
    return load_for_inference(seg_dir, "fp32")


def random_image(seed: int, size: tuple[int, int] = (37, 51)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def question(prompt: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]}]


@contextlib.contextmanager
def serving(model, processor, **settings) -> Iterator[str]:
    """The server's app under uvicorn in a thread on a free loopback port; its URL. Always shut down (its batcher's
    worker with it)."""
    app = build_app(model, processor, ServerSettings(model_name=NAME, max_new_tokens=TOKENS, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    """The folder the module's server reads local images from, with one image in it, and one image beside it."""
    root = tmp_path_factory.mktemp("local")
    (root / "allowed").mkdir()
    Image.fromarray(random_image(7)).save(root / "allowed" / "inside.png")
    Image.fromarray(random_image(8)).save(root / "outside.png")
    return root / "allowed"


@pytest.fixture(scope="module")
def url(seg_model, allowed) -> Iterator[str]:
    model, processor = seg_model
    with serving(model, processor, max_wait_ms=0, max_image_pixels=3000, local_files=str(allowed)) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def decoded(entry: dict) -> np.ndarray:
    return mask_utils.decode(entry["rle"]).astype(bool)


def test_openai_client_answers_as_chat(url, seg_dir, tmp_path, capsys):
    """The same image and prompt through `chat.py` (its PNG masks, its printed answer and scores) and through the
    server with the official client: the same text and tokens, the same masks (IoU 1.0), the same scores."""
    image = random_image(0)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    prompt = "What is the red thing? Please output segmentation mask."
    chat.main(["--version", seg_dir, "--precision", "fp32", "--max_new_tokens", str(TOKENS), "--vis_save_path",
               str(tmp_path), "--image", str(path), "--prompt", prompt])
    printed = capsys.readouterr().out
    chat_text = re.search(r"^Answer: (.*)$", printed, re.M).group(1)
    chat_scores = [float(s) for s in re.findall(r"\(predicted IoU (-?[\d.]+)\)", printed)]
    chat_masks = [np.asarray(Image.open(tmp_path / f"photo_mask_{k}.png")) > 0 for k in range(2)]

    completion = client(url).chat.completions.create(model=NAME, messages=question(prompt, data_uri(image)))
    choice = completion.choices[0]
    assert choice.message.content == chat_text == "[SEG].[SEG]"
    assert (choice.finish_reason, completion.usage.completion_tokens) == ("length", TOKENS)
    masks = choice.message.masks  # beside OpenAI's fields: the client keeps what it does not know
    assert len(masks) == len(chat_masks) == 2
    for entry, expected, score in zip(masks, chat_masks, chat_scores):
        assert entry["rle"]["size"] == list(image.shape[:2])
        mask = decoded(entry)
        assert mask.any() and np.array_equal(mask, expected)
        ys, xs = np.nonzero(expected)
        assert entry["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert entry["score"] == pytest.approx(score, abs=5e-4)


def test_follow_up_turn_continues_the_conversation_as_chat(url, seg_model):
    """Earlier turns sent in `messages` give the answer `ChatSession` gives to a follow-up."""
    image = random_image(1)
    session = ChatSession(*seg_model, max_new_tokens=TOKENS)
    session.set_image(image)
    first, second = session.ask("Segment the cat."), session.ask("And the dog?")
    messages = question("Segment the cat.", data_uri(image)) + [
        {"role": "assistant", "content": first.answer.text}, {"role": "user", "content": "And the dog?"},
    ]
    reply = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": messages}, timeout=120)
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert message["content"] == second.answer.text
    for entry, mask in zip(message["masks"], second.answer.masks, strict=True):
        assert np.array_equal(decoded(entry), mask.numpy())
    # The same question without the earlier turns is another prompt, hence other masks (the answer text is fixed).
    alone = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": question("And the dog?", data_uri(image))},
                       timeout=120).json()
    assert reply.json()["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"]


def test_models_health_and_response_shape(url):
    models = httpx.get(f"{url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME] and models["object"] == "list"
    assert [m.id for m in client(url).models.list().data] == [NAME]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    body = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": NAME, "messages": question("Segment it.", data_uri(random_image(2))), "max_tokens": 1, "temperature": 0,
    }).json()
    assert body["object"] == "chat.completion" and body["model"] == NAME and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == "[SEG]"
    assert len(choice["message"]["masks"]) == 1 and choice["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 1


def test_concurrent_requests_share_one_generation_and_keep_their_answers(seg_model, monkeypatch):
    """Four clients at once, each about its own image with a prompt of its own length: one left-padded generation
    answers them all, and each gets the masks of its own image (as answered alone)."""
    model, processor = seg_model
    images = [random_image(10 + i, (30 + 3 * i, 40 - 2 * i)) for i in range(4)]
    prompts = ["Segment it." + " Please" * (3 * i) for i in range(4)]
    alone = [answer(model, processor, [im], [[{"role": "user", "content": f"<image>\n{p}"}]], max_new_tokens=TOKENS)[0]
             for im, p in zip(images, prompts)]
    batch_sizes = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: batch_sizes.append(kw["input_ids"].shape[0]) or generate(**kw))
    with serving(model, processor, max_batch_size=4, max_wait_ms=5000) as url, ThreadPoolExecutor(4) as pool:
        ask = lambda i: client(url).chat.completions.create(model=NAME, messages=question(prompts[i], data_uri(images[i])))
        replies = list(pool.map(ask, range(4)))
    assert batch_sizes == [4]
    for reply, expected, image in zip(replies, alone, images):
        masks = reply.choices[0].message.masks
        assert reply.choices[0].message.content == expected.text
        assert [decoded(m).shape for m in masks] == [image.shape[:2]] * 2
        for entry, mask in zip(masks, expected.masks, strict=True):
            assert np.array_equal(decoded(entry), mask.numpy())


def test_batcher_answers_alike_questions_together_and_each_with_its_own_answer(tiny_dir, monkeypatch):
    """The random tiny model, whose answers depend on the prompt: questions queued together are answered by one
    generation when their settings are alike and the longest prompt leaves every row its answer length, else apart;
    each answer is the one the question gets alone. The mask head encodes each image once, in a batch and after."""
    model, processor = load_for_inference(str(tiny_dir / "lisa"), "fp32")
    images = [random_image(40), random_image(41, (20, 30))]
    asked = [  # (image, prompt, max_new_tokens)
        (0, "What is this?", 30),
        (1, "Where is the red cat sitting, please tell me?", 30),
        (0, "Hm?", 4),  # other settings
        (1, None, 30),  # a prompt that leaves it fewer than 30 new tokens: alone
        (1, "And here?", 30),
    ]
    length = lambda prompt: len(processor.encode_conversation(
        [{"role": "user", "content": f"<image>\n{prompt}"}], add_generation_prompt=True)[0])
    long_prompt = "word"
    while length(long_prompt + " word") + 30 <= model.context_length:
        long_prompt += " word"
    long_prompt += " word"
    conversations = [[{"role": "user", "content": f"<image>\n{long_prompt if prompt is None else prompt}"}] for _, prompt, _ in asked]
    questions = [
        Question(processor.process_sample(images[i], [messages], add_generation_prompt=True), image_key(images[i]),
                 GenerationSettings(tokens))
        for (i, _, tokens), messages in zip(asked, conversations)
    ]
    assert questions[3].prompt_tokens + 30 > model.context_length > questions[3].prompt_tokens
    alone = [answer(model, processor, [images[i]], [messages], max_new_tokens=tokens)[0]
             for (i, _, tokens), messages in zip(asked, conversations)]
    assert len({a.text for a in alone}) == len(alone)  # a mix-up would show

    calls, encoded = [], []
    generate, embed = model.generate, model.embed_images
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append((kw["input_ids"].shape[0], kw["max_new_tokens"])) or generate(**kw))
    monkeypatch.setattr(model, "embed_images", lambda pixels: encoded.append(pixels.shape[0]) or embed(pixels))
    batcher = Batcher(model, processor, max_batch_size=8, max_wait_ms=2000)
    try:
        replies = [future.result(timeout=300) for future in [batcher.submit(q) for q in questions]]
    finally:
        batcher.close()
    assert calls == [(3, 30), (1, 4), (1, 30)]
    assert encoded == [2]  # the first batch asks about both images, image 1 twice
    assert not batcher.worker.is_alive()
    for reply, expected in zip(replies, alone):
        assert reply.token_ids == expected.token_ids and reply.text == expected.text
        assert len(reply.masks) == len(expected.masks)


def test_an_image_sent_again_reuses_its_mask_head_embedding(seg_model, monkeypatch):
    """Within --cache_images the mask head encodes an image once, whatever the question; past it, again."""
    model, processor = seg_model
    encoded = []
    embed = model.embed_images
    monkeypatch.setattr(model, "embed_images", lambda pixels: encoded.append(pixels.shape[0]) or embed(pixels))
    first, second, third = (random_image(20 + i) for i in range(3))
    with serving(model, processor, max_wait_ms=0, cache_images=2) as url:
        ask = lambda image, prompt: client(url).chat.completions.create(model=NAME, messages=question(prompt, data_uri(image)))
        replies = [ask(first, "Segment it."), ask(first, "Now segment something else, please.")]
        assert encoded == [1]
        ask(second, "Segment it."), ask(third, "Segment it."), ask(second, "Again.")
        assert encoded == [1, 1, 1]
        ask(first, "Segment it.")  # the least recently used: gone
        assert encoded == [1, 1, 1, 1]
    cached = replies[0].choices[0].message.masks
    uncached = answer(model, processor, [first], [[{"role": "user", "content": "<image>\nSegment it."}]], max_new_tokens=TOKENS)[0]
    for entry, mask in zip(cached, uncached.masks, strict=True):
        assert np.array_equal(decoded(entry), mask.numpy())


def text_request(**fields) -> dict:
    return {"model": NAME, "messages": question("Segment it.", data_uri(random_image(3))), **fields}


def bad_requests(allowed: Path) -> dict[str, tuple[object, int, str | None]]:
    """Name -> (body, status, error code) of each kind of bad request."""
    image_part = {"type": "image_url", "image_url": {"url": data_uri(random_image(3))}}
    local = lambda url: {"model": NAME, "messages": question("Segment it.", url)}
    return {
        "malformed JSON": (b'{"model": "seg_serve", "messages": [', 400, None),
        "not an object": (b"[1, 2]", 400, None),
        "no image": ({"model": NAME, "messages": [{"role": "user", "content": "Segment it."}]}, 400, "image_missing"),
        "two images": ({"model": NAME, "messages": [{"role": "user", "content": [image_part, image_part]}]}, 400, "too_many_images"),
        "image in a later turn too": (text_request(messages=question("A", data_uri(random_image(3))) + [
            {"role": "assistant", "content": "[SEG]"}, {"role": "user", "content": [image_part, {"type": "text", "text": "B"}]},
        ]), 400, "too_many_images"),
        "base64 of no image": (local("data:image/png;base64," + base64.b64encode(b"not an image").decode()), 400, "invalid_image"),
        "not base64": (local("data:image/png;base64,@@@"), 400, "invalid_image"),
        "not a data URI of an image": (local("data:text/plain;base64,aGk="), 400, "invalid_image_url"),
        "image over --max_image_pixels": (local(data_uri(random_image(3, (60, 60)))), 400, "invalid_image"),
        "prompt past the context": (text_request(messages=question("word " * 1100, data_uri(random_image(3)))), 400, "context_length_exceeded"),
        "answer past the context": (text_request(max_tokens=5000), 400, "context_length_exceeded"),
        "n > 1": (text_request(n=2), 400, "unsupported_value"),
        "stream": (text_request(stream=True), 400, "unsupported_value"),
        "unsupported parameter": (text_request(tools=[{"type": "function"}]), 400, "unsupported_parameter"),
        "bad max_tokens": (text_request(max_tokens=0), 400, "invalid_value"),
        "bad temperature": (text_request(temperature=5), 400, "invalid_value"),
        "only the placeholder": (text_request(messages=question("<image>", data_uri(random_image(3)))), 400, None),
        "assistant last": (text_request(messages=question("A", data_uri(random_image(3))) + [{"role": "assistant", "content": "x"}]), 400, None),
        "unknown role": (text_request(messages=[{"role": "robot", "content": "x"}]), 400, None),
        "unknown part": (text_request(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), 400, "unsupported_content"),
        "web URL": (local("https://example.com/cat.png"), 400, "invalid_image_url"),
        "local path outside the folder": (local(str(allowed.parent / "outside.png")), 403, "local_file_not_allowed"),
        "local path climbing out": (local("../outside.png"), 403, "local_file_not_allowed"),
        "missing local file": (local("nothing_here.png"), 400, "invalid_image"),
        "other model": (text_request(model="gpt-4o"), 404, "model_not_found"),
    }


def test_bad_input_is_a_4xx_with_an_openai_error_and_the_server_keeps_serving(url, allowed):
    for name, (body, status, code) in bad_requests(allowed).items():
        kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, **kwargs)
        assert reply.status_code == status, (name, reply.text)
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], name
        assert error["code"] == code, (name, error)
    assert httpx.get(f"{url}/nowhere").json()["error"]["message"] == "Not Found"
    # The official client raises OpenAI's own error types with the body.
    with pytest.raises(openai.BadRequestError) as raised:
        client(url).chat.completions.create(model=NAME, messages=question("Segment it.", data_uri(random_image(3))), n=2)
    assert raised.value.body["param"] == "n"
    # Still serving, local files from the allowed folder included.
    for image_url in (data_uri(random_image(3)), "inside.png", f"file://{allowed / 'inside.png'}"):
        reply = client(url).chat.completions.create(model=NAME, messages=question("Segment it.", image_url))
        assert len(reply.choices[0].message.masks) == 2


def test_local_files_are_refused_unless_allowed(seg_model, allowed):
    model, processor = seg_model
    with serving(model, processor, max_wait_ms=0) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                           json={"model": NAME, "messages": question("Segment it.", str(allowed / "inside.png"))})
    assert reply.status_code == 400 and "--allow_local_files" in reply.json()["error"]["message"]


@pytest.mark.slow
def test_load_on_serve_py(seg_dir, seg_model, tmp_path):
    """`python serve.py` under N clients x M requests (loopback only, bounded): every request answered with its own
    image's masks, then a clean shutdown on SIGINT."""
    clients, requests = 4, 3
    model, processor = seg_model
    images = [random_image(30 + c, (24 + 4 * c, 32)) for c in range(clients)]
    expected = [answer(model, processor, [image], [[{"role": "user", "content": "<image>\nSegment it."}]],
                       max_new_tokens=TOKENS)[0] for image in images]
    port = free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "serve.py", "--version", seg_dir, "--precision", "fp32", "--max_new_tokens", str(TOKENS),
               "--port", str(port), "--max_batch_size", "4", "--max_wait_ms", "20"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve.py not serving after 120 s:\n{log.read_text()}"
            time.sleep(0.3)

        def run_client(c: int) -> list[bool]:
            api = client(f"http://127.0.0.1:{port}")
            results = []
            for _ in range(requests):
                reply = api.chat.completions.create(model=NAME, messages=question("Segment it.", data_uri(images[c])))
                message = reply.choices[0].message
                results.append(message.content == expected[c].text and all(
                    np.array_equal(decoded(entry), mask.numpy()) for entry, mask in zip(message.masks, expected[c].masks, strict=True)
                ))
            return results

        with ThreadPoolExecutor(clients) as pool:
            results = [ok for answers in pool.map(run_client, range(clients)) for ok in answers]
        assert results == [True] * (clients * requests)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
