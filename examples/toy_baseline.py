"""The query-blind baseline of the toy ReasonSeg split: every shape of the image, whatever the question.

    python examples/toy_baseline.py --dataset_dir OUT/data --split val --out OUT/baseline_masks
    python eval_reasonseg.py --pred_dir OUT/baseline_masks --dataset_dir OUT/data --split val

Toy shapes are saturated colours on a grey background, so the union of all shapes is the set of saturated
pixels. A model that beats this has used the question, not just found "a shape".
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from PIL import Image

SATURATION_THRESHOLD = 60  # max - min channel; the grey background with its noise stays far below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="toy corpus root (python -m datasets.toy --out DIR)")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="ReasonSeg split")
    parser.add_argument("--out", required=True, help="folder for the {stem}.png masks")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    paths = sorted(glob.glob(os.path.join(args.dataset_dir, "reason_seg", "ReasonSeg", args.split, "*.jpg")))
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
        union = pixels.max(axis=2) - pixels.min(axis=2) > SATURATION_THRESHOLD
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(union.astype(np.uint8) * 255).save(os.path.join(args.out, stem + ".png"))
    print(f"wrote {len(paths)} baseline masks to {args.out}")


if __name__ == "__main__":
    main()
