"""Writing predicted masks as image files: the mask itself (8-bit, 0/255) and the image with it overlaid; for a video,
one mask file per frame and the frames with their masks overlaid."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

# One colour per mask of an answer (RGB), cycled: red first, as the original's overlay.
PALETTE = [(255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220), (255, 120, 0), (120, 60, 0)]


def mask_colour(k: int) -> tuple[int, int, int]:
    return PALETTE[k % len(PALETTE)]


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    """The image with the pixels inside the mask blended with `colour` (weight `alpha`).

    Args:
        image: (H, W, 3) uint8 RGB; mask: (H, W) bool.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    blended = image.astype(np.float32)
    blended[mask] = (1 - alpha) * blended[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return np.round(blended).astype(np.uint8)


class FileStems:
    """Names for the mask files of the images of one session: an image's own file stem, or `{stem}_2`, `{stem}_3`,
    ... for another image whose stem is taken (`a/photo.jpg` and `b/photo.png`), so that their masks do not
    overwrite each other. The same file keeps its name."""

    def __init__(self):
        self._stems: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        key = os.path.realpath(path)
        if key not in self._stems:
            stem = os.path.splitext(os.path.basename(path))[0]
            name, n = stem, 1
            while name in self._stems.values():
                n += 1
                name = f"{stem}_{n}"
            self._stems[key] = name
        return self._stems[key]


def save_masks(image: np.ndarray, masks: list[np.ndarray], out_dir: str, stem: str, start: int = 0) -> list[tuple[str, str]]:
    """Writes `{out_dir}/{stem}_mask_{k}.png` (L, 0/255) and `{stem}_masked_img_{k}.png` (overlay in colour k)
    for k = start, start + 1, ...

    Args:
        image: (H, W, 3) uint8 RGB; masks: (H, W) bool each, at the image's size.

    Returns:
        (mask path, overlay path) per mask.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k, mask in enumerate(masks, start=start):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of shape {mask.shape} for an image of size {image.shape[:2]}")
        mask_path = os.path.join(out_dir, f"{stem}_mask_{k}.png")
        overlay_path = os.path.join(out_dir, f"{stem}_masked_img_{k}.png")
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_path)
        Image.fromarray(overlay(image, mask, mask_colour(k))).save(overlay_path)
        paths.append((mask_path, overlay_path))
    return paths


def save_video_masks(
    masks: Iterable[tuple[int, np.ndarray]], frame_names: list[str], out_dir: str, start: int = 0
) -> list[str]:
    """Writes a video's masks as they come, one 8-bit (0/255) PNG per `[SEG]` and frame:
    `{out_dir}/{start + k}/{frame name}.png` for the k-th `[SEG]` (the layout the video benchmarks' submissions use).

    Args:
        masks: (frame index, (n, H, W) bool), each frame once, in any order (`model.video.segment_video`).
        frame_names: the video's frame names, by index.

    Returns:
        the n folders, in `[SEG]` order.
    """
    folders: list[str] = []
    for index, frame_masks in masks:
        if not folders:
            folders = [os.path.join(out_dir, str(start + k)) for k in range(len(frame_masks))]
            for folder in folders:
                os.makedirs(folder, exist_ok=True)
        for folder, mask in zip(folders, frame_masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(folder, f"{frame_names[index]}.png"))
    return folders


def overlay_video_frames(
    read_frame: Callable[[int], np.ndarray], frame_names: list[str], folders: list[str], start: int = 0
) -> Iterator[np.ndarray]:
    """The frames of a video with the masks `save_video_masks` wrote in `folders` overlaid, each `[SEG]` in its
    colour (numbered from `start`), in frame order; a frame without a mask file shows none."""
    for index, name in enumerate(frame_names):
        frame = read_frame(index)
        for k, folder in enumerate(folders):
            path = os.path.join(folder, f"{name}.png")
            if os.path.exists(path):
                frame = overlay(frame, np.array(Image.open(path)) > 0, mask_colour(start + k))
        yield frame
