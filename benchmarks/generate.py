"""Cached generation with [SEG] collection vs the original LISA's approach, tiny model (on the CPU or `--device cuda`).

The original generated with the KV cache off and read the [SEG] hidden states from the last step, which had
re-run the whole sequence; every step therefore costs a full forward over the growing sequence. Ours keeps
the cache and collects the hidden states step by step. Both produce `--new_tokens` tokens (EOS suppressed).

    python -m benchmarks.generate [--new_tokens 256] [--repeats 3] [--device cpu|cuda]
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from benchmarks.devices import add_device_argument, check_device, synchronize
from model.loading import load_lisa
from model.tiny import write_tiny
from utils.cli import HelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--new_tokens", type=int, default=256, help="tokens generated per run")
    parser.add_argument("--prompt_tokens", type=int, default=300, help="approximate prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (the best is kept)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = check_device(parser, args.device)
    torch.set_num_threads(1)  # steadier timings on a shared 2-core machine

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny(tmp)
        model, processor = load_lisa(f"{tmp}/lisa")
    model.to(device).eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    question = "What is the red circle in this image? Please output segmentation mask."
    messages = [{"role": "user", "content": "<image>\n" + question}]
    while len(processor.encode_conversation(messages, add_generation_prompt=True)[0]) < args.prompt_tokens:
        messages += [{"role": "assistant", "content": "Sure, it is [SEG]."}, {"role": "user", "content": question}]
    inputs = processor([image], [[messages]], add_generation_prompt=True).to(device)
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    def ours():
        model.generate(**inputs, **common)

    @torch.no_grad()
    def original():
        out = model.vlm.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["image_inputs"].pixel_values,
            use_cache=False, output_hidden_states=True, return_dict_in_generate=True, do_sample=False, **common,
        )
        # The original read every [SEG] query from the last step's full-sequence hidden states.
        hidden = out.hidden_states[-1][-1]
        is_query = model.query_positions(out.sequences[:, :-1])
        model.text_hidden_fcs(hidden[is_query])
        model.embed_images(inputs["sam_pixel_values"])

    timings = {}
    for name, fn in (("cached + collected (ours)", ours), ("no cache, full recompute (original)", original)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
        print(f"{name:38s} {best:7.3f} s  {args.new_tokens / best:8.1f} tokens/s")
    ours_s, original_s = timings.values()
    print(f"prompt: {inputs['input_ids'].shape[1]} tokens, {args.new_tokens} new tokens, on {args.device}")
    print(f"speed-up: {original_s / ours_s:.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
