"""Masks as JSON-ready values: COCO's compressed RLE (pycocotools) and the box around a mask."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def compressed_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask as COCO's compressed RLE: `{"size": [H, W], "counts": str}` (`pycocotools.mask.decode` reads it
    back)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_box(mask: np.ndarray) -> list[int]:
    """The smallest box holding an (H, W) bool mask, `[x0, y0, x1, y1]` in pixel edges (x1, y1 exclusive: the box is
    x1 - x0 pixels wide); `[0, 0, 0, 0]` for an empty mask."""
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(columns) == 0:
        return [0, 0, 0, 0]
    return [int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1]
