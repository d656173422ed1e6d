"""Evaluation throughput at batch 1 vs batch 8: the tiny model (on the CPU or `--device cuda`) over the toy ReasonSeg
val split.

Runs `model.evaluation.evaluate`, the loop of `eval_reasonseg.py`, in both modes and prints samples/s and the
batch-8 speed-up (target >= 2.5x in generate mode), and how much the per-sample IoUs move with the batch:
padded rows take other attention kernels, so logits differ in the last bits, and the random tiny model's
mask logits sit so close to 0 that a few pixels can flip.

    python -m benchmarks.eval [--samples 48] [--max_new_tokens 32] [--repeats 2] [--device cpu|cuda]
"""

import argparse
import tempfile
import time

import torch

from datasets.hybrid import build_val_dataset
from datasets.toy import ToyWriter
from benchmarks.devices import add_device_argument, check_device
from model.evaluation import MODES, evaluate
from model.loading import load_for_inference
from model.tiny import write_tiny
from utils.cli import HelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--samples", type=int, default=48, help="toy ReasonSeg val images")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="tokens per answer (the random model seldom stops early)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best is kept)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to compare")
    add_device_argument(parser)
    args = parser.parse_args()
    device = check_device(parser, args.device)

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny(f"{tmp}/tiny")
        ToyWriter(f"{tmp}/data", seed=0).reason_seg({"val": args.samples})
        model, processor = load_for_inference(f"{tmp}/tiny/lisa", "fp32", device=device)
        dataset = build_val_dataset(f"{tmp}/data", "ReasonSeg|val")
        print(f"{len(dataset)} samples, tiny model, {args.device}, {torch.get_num_threads()} threads, "
              f"max_new_tokens {args.max_new_tokens}")
        for mode in MODES:
            rates, summaries = {}, {}
            for batch_size in args.batch_sizes:
                evaluate(model, processor, dataset, mode, batch_size, args.max_new_tokens, progress=False)  # warm-up
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    report = evaluate(model, processor, dataset, mode, batch_size, args.max_new_tokens, progress=False)
                    best = min(best, time.perf_counter() - start)
                rates[batch_size] = len(dataset) / best
                summaries[batch_size] = report.summary
                print(f"{mode:>8}  batch {batch_size:>2}: {rates[batch_size]:7.1f} samples/s")
            low, high = args.batch_sizes[0], args.batch_sizes[-1]
            moved = max(
                abs(iou - summaries[low]["per_sample"][key]) for s in summaries.values() for key, iou in s["per_sample"].items()
            )
            print(f"{mode:>8}  speed-up batch {high} vs {low}: {rates[high] / rates[low]:.2f}x; max per-sample IoU change: {moved:.2e}")


if __name__ == "__main__":
    main()
