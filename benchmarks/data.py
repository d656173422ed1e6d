"""Data loading speed: samples/s of the hybrid loader (decode + masks + SAM/CLIP preprocessing + tokenization)
with 0 and 2 DataLoader workers on ~1024-px images, and the SAM + CLIP preprocessing cost of one 1024-px image.

    python -m benchmarks.data [--dataset_dir DIR] [--samples 200]

Without `--dataset_dir` it writes the toy corpus at 12x scale (images of 768-1152 px) into a temporary folder.
The processor is the tiny model's tokenizer with real image sizes: SAM 1024, CLIP 336 (llava-1.5).
Target: >= 20 samples/s per worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from datasets import HybridDataset, LisaCollator
from datasets.toy import generate
from model.processing import LisaProcessor
from model.tiny import write_tiny
from utils.cli import HelpFormatter


def real_size_processor(folder: str) -> LisaProcessor:
    """The tiny processor with llava-1.5's CLIP input (336 px, patch 14) and SAM's 1024."""
    write_tiny(folder)
    processor = LisaProcessor.from_pretrained(os.path.join(folder, "lisa"))
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    processor.vlm_processor.patch_size = 14
    processor.sam_image_size = 1024
    return processor


def median_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def loader_rate(dataset: HybridDataset, collator: LisaCollator | None, workers: int, samples: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        sampler=range(samples),
        collate_fn=collator or (lambda batch: batch),
        num_workers=workers,
        persistent_workers=False,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not loading speed
    start = time.perf_counter()
    count = sum(len(batch["sample_ids"]) if isinstance(batch, dict) else len(batch) for batch in iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset_dir", help="a LISA data root; default: a 12x toy corpus in a temporary folder")
    parser.add_argument("--samples", type=int, default=200, help="samples per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = args.dataset_dir
        if dataset_dir is None:
            dataset_dir = os.path.join(tmp, "toy")
            generate(dataset_dir, seed=0, progress=True, scale=12)
        processor = real_size_processor(os.path.join(tmp, "tiny"))
        dataset = HybridDataset(dataset_dir, samples_per_epoch=args.samples)
        collator = LisaCollator(processor)

        sizes = [dataset[i].image.shape[:2] for i in range(20)]
        print(f"images: {min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px (longest side)")
        image = np.random.default_rng(0).integers(0, 256, size=(1024, 768, 3), dtype=np.uint8)
        sam_ms = median_ms(lambda: processor.preprocess_sam(image))
        clip_ms = median_ms(lambda: processor.preprocess_clip(image))
        print(f"one 1024x768 image: SAM preprocessing {sam_ms:.1f} ms, CLIP preprocessing {clip_ms:.1f} ms")
        sample = dataset[0]
        print(f"one sample, process_sample: {median_ms(lambda: processor.process_sample(sample.image, sample.conversations, sample.masks)):.1f} ms")
        print(f"one sample, dataset only (decode + masks + text): {median_ms(lambda: dataset[1]):.1f} ms")

        for workers in (0, 2):
            raw = loader_rate(dataset, None, workers, args.samples)
            full = loader_rate(dataset, collator, workers, args.samples)
            per_worker = full / max(workers, 1)
            print(
                f"workers={workers}: {full:.1f} samples/s with preprocessing + collate "
                f"({per_worker:.1f} per worker), {raw:.1f} samples/s dataset only"
            )


if __name__ == "__main__":
    main()
