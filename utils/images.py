"""Reading image files: what the data readers, `chat.py` and the web demo share.

A photo is read the right way up: a camera stores its pixels as the sensor saw them and writes how to turn them in
the EXIF Orientation tag, which image viewers, LabelMe and OpenCV's `imread` (the original LISA's reader) apply.
Annotations are drawn on the turned image, so every image here is turned too, and its size is the turned size.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


# EXIF orientations that turn the image by 90 or 270 degrees (transposed or not): height and width swap.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB, turned as its EXIF orientation says (the way it is displayed).

    Grayscale, palette and RGBA files are converted (alpha dropped) so both image paths see three channels.

    Returns:
        `np.ndarray` of shape (H, W, 3), dtype uint8.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later in a worker
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) of an opened image as `load_image` returns it, from its header (no pixel is decoded)."""
    width, height = image.size
    # Pillow decodes a whole PNG to look for EXIF after its pixels (50 ms for 2000x2000); the PNG standard puts the
    # chunk before them, where the header's reading has found it.
    exif = image.getexif() if image.format != "PNG" or "exif" in image.info else {}
    if exif.get(ExifTags.Base.Orientation) in SWAPPING_ORIENTATIONS:
        return width, height
    return height, width
