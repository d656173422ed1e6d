"""Reading image files: what the data readers, `chat.py` and the web demo share."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB.

    Grayscale, palette and RGBA files are converted (alpha dropped) so both image paths see three channels.

    Returns:
        `np.ndarray` of shape (H, W, 3), dtype uint8.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later in a worker
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None
