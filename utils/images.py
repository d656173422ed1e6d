"""Reading image files: what the data readers, `chat.py`, the web demo and the server share.

A photo is read the right way up: a camera stores its pixels as the sensor saw them and writes how to turn them in
the EXIF Orientation tag, which image viewers, LabelMe and OpenCV's `imread` (the original LISA's reader) apply.
Annotations are drawn on the turned image, so every image here is turned too, and its size is the turned size.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


# EXIF orientations that turn the image by 90 or 270 degrees (transposed or not): height and width swap.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded, or one larger than allowed."""


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Reads an image file as RGB, turned as its EXIF orientation says (the way it is displayed).

    Grayscale, palette and RGBA files are converted (alpha dropped) so both image paths see three channels.

    Args:
        max_pixels: refuse an image of more pixels (read from its header, before its pixels are decoded); None: any.

    Returns:
        `np.ndarray` of shape (H, W, 3), dtype uint8.
    """
    return _read(path, str(path), max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """`load_image` of an image file's bytes (an upload); `name` says where they came from in error messages."""
    return _read(io.BytesIO(data), name, max_pixels)


def _read(source: str | os.PathLike | BinaryIO, name: str, max_pixels: int | None) -> np.ndarray:
    try:
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageError(f"{name}: an image of {image.width} x {image.height} pixels, more than the {max_pixels} allowed")
            image.load()  # decode now, so a truncated file fails here and not later in a worker
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise ImageError(f"{name}: cannot read image ({error})") from None


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) of an opened image as `load_image` returns it, from its header (no pixel is decoded)."""
    width, height = image.size
    # Pillow decodes a whole PNG to look for EXIF after its pixels (50 ms for 2000x2000); the PNG standard puts the
    # chunk before them, where the header's reading has found it.
    exif = image.getexif() if image.format != "PNG" or "exif" in image.info else {}
    if exif.get(ExifTags.Base.Orientation) in SWAPPING_ORIENTATIONS:
        return width, height
    return height, width
