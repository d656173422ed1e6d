"""Throughput and latency of `serve.py`'s server under concurrent clients, batching on and off, side by side.

    python -m benchmarks.serve [--clients 1,4,16] [--requests 4] [--new_tokens 16] [--pair tiny] [--threads 2]

The server (`model.openai_api` under uvicorn, in this process) answers on loopback 127.0.0.1. Each client, a thread
with its own HTTP connection, asks `--requests` questions one after the other about its own 480 x 640 JPEG (sent as a
base64 data URI, as applications send it), prompts of different lengths, and waits for each answer before the next.
Batching off is `--max_batch_size 1`; on, `--max_batch_size` (default: the most clients) with `--max_wait_ms`. Every
answer is exactly `--new_tokens` tokens long (the end of turn is held off until then), so both modes do the same
work; each client's image is encoded by the mask head once and then taken from the image cache, in both modes.

Throughput is answers per second of wall clock over the whole run of a client count; latency, seconds from sending a
request to its answer (percentiles over all requests). Random weights: `--pair tiny` is the tiny test base (where the
Python overhead of a generation step weighs most), or one of `benchmarks.backbones`' real-width pairs cut to
`--fraction` of their depth (bf16).
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from benchmarks.backbones import PAIRS
from model.lisa import LisaForCausalLM
from model.loading import load_lisa
from model.openai_api import ServerSettings, build_app
from model.processing import LisaProcessor
from model.tiny import write_tiny
from utils.cli import HelpFormatter, positive_int

NAME = "lisa"
PROMPTS = [
    "What is the object that keeps the food cold in this kitchen? Please output segmentation mask.",
    "Segment the cat.",
    "Where would a person sit down in this room to read a book? Please output segmentation mask and explain why.",
    "Please segment the largest object in this image.",
]


def build_model(pair: str, fraction: float) -> tuple[LisaForCausalLM, LisaProcessor]:
    if pair == "tiny":
        with tempfile.TemporaryDirectory() as tmp:
            write_tiny(tmp)
            model, processor = load_lisa(f"{tmp}/lisa")
        return model.eval(), processor
    config, processor = PAIRS[pair](fraction)
    torch.manual_seed(0)
    return LisaForCausalLM._from_config(config, dtype=torch.bfloat16).eval(), processor


def photo(seed: int) -> str:
    """A 480 x 640 JPEG (smooth colours and some noise, about a photo's size in bytes) as a data URI."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * rng.uniform(0.1, 0.4), y * rng.uniform(0.1, 0.5), (x + y) * rng.uniform(0.05, 0.2)], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class Server:
    """The app under uvicorn in a thread, with the sizes of the batches its model generated."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, settings: ServerSettings):
        self.batch_sizes: list[int] = []
        # Port 0: the system picks a free one.
        self.server = uvicorn.Server(uvicorn.Config(build_app(model, processor, settings), host="127.0.0.1", port=0,
                                                    log_level="warning"))

    def __enter__(self) -> "Server":
        self.thread = threading.Thread(target=self.server.run)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()


def run_clients(url: str, clients: int, requests: int, new_tokens: int, images: list[str]) -> tuple[float, list[float]]:
    """(wall seconds of the whole run, each request's latency)."""

    def client(c: int) -> list[float]:
        latencies = []
        with httpx.Client(timeout=3600) as http:
            for r in range(requests):
                body = {"model": NAME, "max_tokens": new_tokens, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": PROMPTS[(c + r) % len(PROMPTS)]},
                    {"type": "image_url", "image_url": {"url": images[c]}},
                ]}]}
                started = time.perf_counter()
                reply = http.post(url, json=body)
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()
                assert reply.json()["usage"]["completion_tokens"] == new_tokens, reply.text
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [latency for per_client in pool.map(client, range(clients)) for latency in per_client]
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--clients", default="1,4,16", help="numbers of concurrent clients, comma-separated")
    parser.add_argument("--requests", type=positive_int, default=4, help="questions each client asks, one after the other")
    parser.add_argument("--new_tokens", type=positive_int, default=16, help="tokens of every answer")
    parser.add_argument("--max_batch_size", type=positive_int, help="batching on: the server's --max_batch_size "
                        "(default: the most clients)")
    parser.add_argument("--max_wait_ms", type=float, default=10.0, help="batching on: the server's --max_wait_ms")
    parser.add_argument("--pair", default="tiny", choices=["tiny", *PAIRS], help="the model: the tiny test base or a "
                        "real-width pair of benchmarks.backbones")
    parser.add_argument("--fraction", type=float, default=0.25, help="depth fraction of a real-width pair")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights: keep the CPU off its slow path for denormals
    counts = [int(c) for c in args.clients.split(",")]
    max_batch_size = args.max_batch_size or max(counts)

    model, processor = build_model(args.pair, args.fraction)
    # Every answer `--new_tokens` long: the end of turn is not generated before.
    model.vlm.generation_config.min_new_tokens = args.new_tokens
    generate = model.generate
    modes = {"off": 1, "on": max_batch_size}
    images = [photo(c) for c in range(max(counts))]
    print(f"{args.pair}{'' if args.pair == 'tiny' else f' at depth {args.fraction}'}, {model.device.type}, "
          f"{args.threads} torch thread(s); {args.requests} requests per client, {args.new_tokens} tokens per answer; "
          f"batching on: --max_batch_size {max_batch_size} --max_wait_ms {args.max_wait_ms:g}")
    header = f"{'clients':>7} {'batching':>8} {'answers/s':>10} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'mean batch':>10}"
    print(header)
    rows, results = {}, {}
    for mode, batch_size in modes.items():
        settings = ServerSettings(model_name=NAME, max_new_tokens=args.new_tokens, max_batch_size=batch_size,
                                  max_wait_ms=args.max_wait_ms, cache_images=max(counts))
        with Server(model, processor, settings) as server:
            model.generate = lambda **kw: server.batch_sizes.append(kw["input_ids"].shape[0]) or generate(**kw)
            run_clients(server.url, 1, 1, args.new_tokens, images)  # warm-up
            for clients in counts:
                server.batch_sizes.clear()
                wall, latencies = run_clients(server.url, clients, args.requests, args.new_tokens, images)
                p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
                results[clients, mode] = len(latencies) / wall
                rows[clients, mode] = (f"{clients:>7} {mode:>8} {results[clients, mode]:>10.2f} {p50:>7.2f} {p90:>7.2f} "
                                       f"{p99:>7.2f} {np.mean(server.batch_sizes):>10.2f}")
                print(rows[clients, mode], flush=True)
    model.generate = generate
    print(f"\nside by side\n{header}")
    for clients in counts:
        print(rows[clients, "off"], rows[clients, "on"], sep="\n")
    for clients in counts:
        print(f"{clients} client(s): batching on / off throughput {results[clients, 'on'] / results[clients, 'off']:.2f}x"
              + (" (target at 16 clients: >= 2x)" if clients == 16 else ""))


if __name__ == "__main__":
    main()
