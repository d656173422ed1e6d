"""Serve a LISA model over HTTP with OpenAI's chat-completions API: answers with text and masks.

    python serve.py --version DIR [--host 127.0.0.1] [--port 8000]

`POST /v1/chat/completions` takes OpenAI's `messages`, the image as an `image_url` part holding a
`data:image/...;base64,` URI (a local path only under --allow_local_files), and answers in OpenAI's response shape:
`choices[0].message.content` is the text with `[SEG]` as `chat.py` prints it, `choices[0].message.masks` one entry per
`[SEG]` in order, `{"rle": {"size": [h, w], "counts": str}, "box": [x0, y0, x1, y1], "score": float}` (COCO RLE at the
image's size, its box, the mask decoder's predicted IoU). `GET /v1/models` lists the model (named by the last part of
--version), `GET /health` says the server is up. Requests that arrive together are answered by one batched generation
(--max_batch_size, --max_wait_ms). Bad requests get a 4xx and OpenAI's error body.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from model.cli import add_model_arguments, load_model
from model.openai_api import ServerSettings, build_app
from utils.cli import HelpFormatter, non_negative_int, positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on")
    parser.add_argument("--max_batch_size", type=positive_int, default=8,
                        help="requests answered by one batched generation at most; more raise throughput and the "
                             "memory one generation takes; 1: one request at a time")
    parser.add_argument("--max_wait_ms", type=float, default=10.0,
                        help="how long a request waits for others to join its batch, in milliseconds (added to its "
                             "latency when it arrives alone)")
    parser.add_argument("--cache_images", type=non_negative_int, default=8,
                        help="images whose mask-head encoding is kept for later questions about them (follow-ups "
                             "skip SAM's image encoder); each takes 2 MiB of the model's device for SAM in bf16, 42 "
                             "MiB for SAM 2; 0: none")
    parser.add_argument("--max_image_pixels", type=positive_int, default=50_000_000,
                        help="larger images are refused (read from the file's header, before decoding)")
    parser.add_argument("--allow_local_files", metavar="DIR",
                        help="also take an image_url that is a path (or file:// URL) of a file under DIR; without it "
                             "only data: URIs are taken")
    args = parser.parse_args(argv)
    if args.max_wait_ms < 0:
        parser.error(f"--max_wait_ms must be 0 or more, not {args.max_wait_ms}")
    if args.allow_local_files is not None and not os.path.isdir(args.allow_local_files):
        parser.error(f"--allow_local_files {args.allow_local_files}: no such folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, processor = load_model(args)
    settings = ServerSettings(
        model_name=os.path.basename(os.path.normpath(args.version)), max_new_tokens=args.max_new_tokens,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, cache_images=args.cache_images,
        max_image_pixels=args.max_image_pixels, local_files=args.allow_local_files,
    )
    uvicorn.run(build_app(model, processor, settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
