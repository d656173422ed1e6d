"""Reading image files: what the data readers, `chat.py`, the web demo and the server share."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded, or one larger than allowed."""


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Reads an image file as RGB.

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
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise ImageError(f"{name}: cannot read image ({error})") from None
