"""End to end: `app.py` served on 127.0.0.1 with a tiny model, driven in headless Chromium (Playwright)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.lisa_fixtures import free_port, write_seg_emitter

CHROMIUM = "/usr/bin/chromium"
MISSING = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
MISSING += [] if os.path.exists(CHROMIUM) else [CHROMIUM]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"the web demo test needs {', '.join(MISSING)}: pip install -r requirements-demo.txt; "
        "apt-get install chromium (.ci/system-deps does)",
    ),
]
# No internet here or in CI: nothing in Chromium may phone home (or wait on a network that is not there).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120  # imports (torch, transformers, gradio) on a busy 2-core machine
ANSWER_TIMEOUT_MS = 60_000
MAX_NEW_TOKENS = 4  # the emitter answers "[SEG].[SEG]." ...: two masks per answer


def toy_image(path: Path) -> Path:
    """Coloured shapes on grey, so the overlay has something to cover."""
    image = Image.new("RGB", (96, 72), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    draw.rectangle((50, 20, 88, 64), fill=(30, 60, 220))
    draw.polygon([(10, 68), (30, 46), (46, 68)], fill=(240, 220, 40))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def served_app(tiny_dir, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """URL and output (stdout and stderr) of `app.py` serving a tiny model that always emits [SEG] (a random tiny
    model rarely does, and the test needs masks to check the overlay and the PNG downloads)."""
    tmp = tmp_path_factory.mktemp("app")
    version = write_seg_emitter(str(tiny_dir / "lisa"), str(tmp / "seg_emitter"))
    port = free_port()
    log = open(tmp / "server.log", "w")
    command = [
        sys.executable, "app.py", "--version", version, "--host", "127.0.0.1", "--port", str(port),
        "--precision", "fp32", "--max_new_tokens", str(MAX_NEW_TOKENS), "--vis_save_path", str(tmp / "vis"),
        "--num_frames", "2", "--propagate", "per_frame",
    ]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{(tmp / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py not serving after {START_TIMEOUT_S} s:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, tmp / "server.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def server(served_app) -> str:
    return served_app[0]


@pytest.fixture
def page(server, tmp_path):
    """A fresh headless Chromium page (own user-data folder) on the demo; fails on requests leaving the machine."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(30_000)
        outside: list[str] = []

        def local_only(route):
            if route.request.url.startswith(server) or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", local_only)
        page = context.new_page()
        page.goto(server)
        page.locator("#submit").wait_for()
        yield page
        context.close()
    assert not outside, f"the page tried to reach the internet: {outside}"


def upload(page, path: Path) -> None:
    page.locator("#image_in input[type=file]").set_input_files(str(path))
    page.locator("#image_in img").wait_for()  # the preview: the upload has finished


def ask(page, prompt: str) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#submit").click()


def download(page, name: str):
    """The download link of the PNG `name` in the file list."""
    return page.locator(f"#files a[href$='/{name}']")


def test_answer_masks_and_follow_up(page, tmp_path):
    from playwright.sync_api import expect

    upload(page, toy_image(tmp_path / "shapes.png"))
    ask(page, "Can you segment the red circle in this image?")
    chat = page.locator("#chatbot")
    expect(chat).to_contain_text("(2 masks)", timeout=ANSWER_TIMEOUT_MS)
    expect(chat).to_contain_text("[SEG]")
    expect(chat).to_contain_text(re.compile(r"predicted IoU: mask 0: -?\d\.\d\d, mask 1: -?\d\.\d\d"))
    expect(page.locator("#image_out img")).to_be_visible()
    for name in ("image_mask_0.png", "image_masked_img_0.png", "image_mask_1.png", "image_masked_img_1.png"):
        expect(download(page, name)).to_have_count(1)

    # A follow-up continues the conversation: both turns stay shown and the new masks are numbered on.
    ask(page, "Please segment the largest object in this image and explain why.")
    expect(download(page, "image_mask_3.png")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    expect(chat).to_contain_text("red circle")
    expect(chat).to_contain_text("largest object")
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

    page.locator("#clear").click()
    expect(chat).not_to_contain_text("red circle")
    expect(page.locator("#image_out img")).to_have_count(0)


def test_bad_input_shows_message_and_server_keeps_serving(page, tmp_path):
    from playwright.sync_api import expect

    ask(page, "Can you segment the red circle in this image?")
    expect(page.get_by_text("No image: please upload an image first.")).to_be_visible()

    upload(page, toy_image(tmp_path / "shapes.png"))
    ask(page, "   ")
    expect(page.get_by_text("Empty prompt: please type a question.")).to_be_visible()

    # A PNG cut in half: its header reads (so the upload is accepted), its pixels do not.
    page.locator("#clear").click()
    # Clearing is a round trip to the server: uploading before it is back would have the upload cleared.
    expect(page.locator("#image_in img")).to_have_count(0)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(toy_image(tmp_path / "whole.png").read_bytes()[:200])
    page.locator("#image_in input[type=file]").set_input_files(str(truncated))
    page.locator("#image_in img").wait_for(state="attached")
    ask(page, "Can you segment the red circle in this image?")
    expect(page.get_by_text("Cannot read the uploaded image")).to_be_visible()
    page.screenshot(path=str(tmp_path / "bad_input.png"), full_page=True)

    # The server still answers.
    upload(page, toy_image(tmp_path / "shapes2.png"))
    ask(page, "Can you segment the red circle in this image?")
    expect(page.locator("#chatbot")).to_contain_text("(2 masks)", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#image_out img")).to_be_visible()


def toy_video(path: Path, length: int = 5) -> Path:
    """A red square moving right over grey, 48x64 frames."""
    from utils.video import write_video

    frames = []
    for t in range(length):
        frame = np.full((48, 64, 3), 128, np.uint8)
        frame[12:32, 4 + 6 * t: 24 + 6 * t] = (220, 30, 30)
        frames.append(frame)
    write_video(path, frames, fps=5)
    return path


def test_video_answer_overlay_video_and_mask_files(served_app, page, tmp_path):
    """On the Video tab: the answer, the overlay video and one mask PNG per [SEG] and frame; a follow-up numbers its
    masks on; an unreadable video gets a message."""
    from playwright.sync_api import expect

    vis = served_app[1].parent / "vis"
    page.get_by_role("tab", name="Video").click()
    page.locator("#video_in input[type=file]").set_input_files(str(toy_video(tmp_path / "clip.mp4")))
    page.locator("#video_in video").wait_for(state="attached")  # the preview: the upload has finished
    ask(page, "Which shape moves to the right? Please output segmentation mask.")
    chat = page.locator("#chatbot")
    expect(chat).to_contain_text("(2 masks)", timeout=ANSWER_TIMEOUT_MS)
    expect(chat).to_contain_text(re.compile(r"predicted IoU: mask 0: -?\d\.\d\d, mask 1: -?\d\.\d\d"))
    expect(page.locator("#video_out video")).to_have_attribute("src", re.compile(r"clip_answer_1\.webm"))
    # The browser plays it (metadata loaded: not an error).
    page.wait_for_function("document.querySelector('#video_out video').readyState >= 1")
    expect(page.locator("#files a[href$='/clip_masks_0-1.zip']")).to_have_count(1)
    (conversation,) = vis.glob("conversation_*/clip")
    for k in ("0", "1"):
        pngs = sorted(p.name for p in (conversation / k).iterdir())
        assert pngs == [f"{i:05d}.png" for i in range(5)]
        for name in pngs:
            with Image.open(conversation / k / name) as mask:
                assert mask.size == (64, 48) and mask.mode == "L"

    ask(page, "And where does it end up?")
    expect(page.locator("#files a[href$='/clip_masks_2-3.zip']")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#video_out video")).to_have_attribute("src", re.compile(r"clip_answer_2\.webm"))
    assert sorted(p.name for p in conversation.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    expect(chat).to_contain_text("moves to the right")
    page.screenshot(path=str(tmp_path / "video.png"), full_page=True)

    # An mp4 cut short: the upload is accepted, the video cannot be read; the message names it as uploaded.
    page.locator("#clear").click()
    expect(page.locator("#video_in video")).to_have_count(0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((tmp_path / "clip.mp4").read_bytes()[:100])
    page.locator("#video_in input[type=file]").set_input_files(str(broken))
    page.locator("#video_in video").wait_for(state="attached")
    ask(page, "Which shape moves to the right?")
    expect(page.get_by_text("Cannot read the uploaded video: broken.mp4")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)


def test_start_up_prints_the_address_and_no_advice_about_flags_it_lacks(served_app):
    url, log = served_app
    output = log.read_text()
    assert f"Serving on {url}" in output
    assert "share=True" not in output  # Gradio's advice; app.py has no such setting
