"""The query-blind baseline of a toy video split: every shape of every frame, whatever the expression.

    python -m examples.toy_video_baseline --val_dataset "mevis|OUT/data/mevis|valid_u" --out OUT/baseline_video_masks
    python eval_reasonseg.py --pred_dir OUT/baseline_video_masks --val_dataset "mevis|OUT/data/mevis|valid_u"

Toy shapes are saturated colours on a grey background, so the union of all shapes is the set of saturated pixels
(as `examples/toy_baseline.py` does for images). The masks are written in the benchmarks' submission layout,
`OUT/<video>/<exp_id>/<frame>.png`. A model that beats this has used the expression, not just found "a shape".
"""

from __future__ import annotations

import argparse

import numpy as np

from datasets.vos import load_video_expressions, parse_video_set
from utils.images import load_image
from utils.video_metrics import write_mask_png

SATURATION_THRESHOLD = 60  # max - min channel; the grey background with its noise stays far below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val_dataset", required=True, help='toy video split, e.g. "mevis|OUT/data/mevis|valid_u"')
    parser.add_argument("--out", required=True, help="folder for the <video>/<exp_id>/<frame>.png masks")
    args = parser.parse_args()
    expressions = load_video_expressions(*parse_video_set(args.val_dataset))
    for expression in expressions:
        for k, frame in enumerate(expression.frames):
            pixels = load_image(expression.frame_path(k)).astype(np.int16)
            union = pixels.max(axis=2) - pixels.min(axis=2) > SATURATION_THRESHOLD
            write_mask_png(f"{args.out}/{expression.video}/{expression.exp_id}/{frame}.png", union)
    print(f"wrote the baseline masks of {len(expressions)} expressions to {args.out}")


if __name__ == "__main__":
    main()
