"""Reading videos: a video file (through OpenCV's FFmpeg backend) or a folder of frame images, one frame at a time;
which frames of a video to take; and writing frames back as an mp4.

A video is never held in memory whole: `VideoReader` counts the frames of a file by decoding it once at opening
(the container's frame count, `CAP_PROP_FRAME_COUNT`, is an estimate some containers get wrong) and decodes a frame
when it is asked for. EXIF orientation does not exist for video files; frames of a folder are read with
`utils.images.load_image`, which applies it, as for every other image of the project.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from utils.errors import FileProblem
from utils.images import ImageError, load_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_video(path: str | os.PathLike) -> bool:
    """Whether a path names a video: a folder (of frames) or a file with a video extension."""
    return os.path.isdir(path) or os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS
# A forward jump of at most this many frames is decoded through instead of seeking (a seek lands on the key frame
# before the target and decodes forward from there anyway).
MAX_DECODE_AHEAD = 32


class VideoError(FileProblem):
    """A video file or frame folder that is missing, not a video, empty, or has a frame that cannot be decoded; `path`
    names the file or folder."""


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of a name by value: "2.jpg" before "10.jpg"."""
    parts = re.split(r"(\d+)", name.lower())
    # re.split with a group alternates text (even positions) and digits (odd positions): tuples compare cleanly.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name


def _frame_files(folder: str) -> list[str]:
    names = [
        n for n in os.listdir(folder)
        if not n.startswith(".") and os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS and os.path.isfile(os.path.join(folder, n))
    ]
    return sorted(names, key=natural_key)


class VideoReader:
    """A video file (.mp4 .avi .webm .mov .mkv, through `cv2.VideoCapture`) or a folder of frames (.jpg .jpeg .png,
    natural sort: 2.jpg before 10.jpg). Frames are read when asked for, never all held in memory.

    name: the file's stem or the folder's name.
    frame_names: a folder's file stems; `f"{i:05d}"` for a file.
    fps: frames per second of a file as its container says (None when it says nothing, and for a folder).

    `read(i)` returns frame i as (H, W, 3) uint8 RGB; reading in increasing order decodes forward, a jump seeks
    (`CAP_PROP_POS_FRAMES`) and checks where it landed, falling back to decoding from the start where the container's
    seeking cannot be trusted. Iterating decodes all frames in order on a capture of its own. A reader is not
    thread-safe; it pickles without its open capture (it reopens in the process that unpickles it).

    Raises:
        VideoError: at opening, for a missing path, a file that is not a video or cannot be opened, an empty folder
            or a video without frames; at reading, for a frame that cannot be decoded (naming the file and index).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fps: float | None = None
        self._files: list[str] | None = None
        self._capture = None
        self._position = 0  # index of the frame the open capture decodes next
        self._seekable = True
        self._size: tuple[int, int] | None = None
        if os.path.isdir(self.path):
            self.name = os.path.basename(os.path.normpath(self.path))
            self._files = _frame_files(self.path)
            if not self._files:
                raise VideoError(self.path, f"a folder without frames (none of {', '.join(FRAME_EXTENSIONS)})")
            self.frame_names = [os.path.splitext(f)[0] for f in self._files]
        elif os.path.isfile(self.path):
            stem, extension = os.path.splitext(os.path.basename(self.path))
            if extension.lower() not in VIDEO_EXTENSIONS:
                raise VideoError(self.path, f"not a video file (expected one of {', '.join(VIDEO_EXTENSIONS)} or a folder of frames)")
            self.name = stem
            capture = self._open()
            try:
                fps = capture.get(cv2.CAP_PROP_FPS)
                self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
                count = 0
                while capture.grab():
                    count += 1
            finally:
                capture.release()
            if count == 0:
                raise VideoError(self.path, "a video without any decodable frame")
            self.frame_names = [f"{i:05d}" for i in range(count)]
        else:
            raise VideoError(self.path, "no such video file or frame folder")

    # ------------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.frame_names)

    def read(self, index: int) -> np.ndarray:
        """Frame `index` (negative counts from the end) as (H, W, 3) uint8 RGB."""
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"{self.path}: frame {index} of a video of {length} frames")
        index %= length
        if self._files is not None:
            return self._read_frame_file(index)
        return self._read_from_file(index)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._files is not None:
            for index in range(len(self)):
                yield self._read_frame_file(index)
            return
        capture = self._open()
        try:
            for index in range(len(self)):
                ok, frame = capture.read()
                if not ok or frame is None:
                    raise VideoError(self.path, f"frame {index} cannot be decoded")
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def close(self) -> None:
        """Releases the open capture (a later `read` reopens it)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
            self._position = 0

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_capture"], state["_position"] = None, 0
        return state

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, frames={len(self)}, fps={self.fps})"

    # ------------------------------------------------------------------------------------------------ helpers
    def _read_frame_file(self, index: int) -> np.ndarray:
        path = os.path.join(self.path, self._files[index])
        try:
            frame = load_image(path)
        except ImageError as error:
            raise VideoError(path, f"frame {index} of {self.path} cannot be read ({str(error).removeprefix(path + ': ')})") from None
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise VideoError(path, f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, other frames of {self.path} are {self._size[1]}x{self._size[0]}")
        return frame

    def _open(self):
        # FFmpeg only: OpenCV's other backends would read e.g. an image file or a numbered image pattern as a "video".
        capture = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise VideoError(self.path, "cannot be opened as a video (corrupt, truncated or an unsupported codec)")
        return capture

    def _restart(self) -> None:
        self.close()
        self._capture = self._open()
        self._position = 0

    def _seek(self, index: int) -> bool:
        """Moves the capture to `index`; False where the container's seeking cannot be trusted."""
        if not self._seekable:
            return False
        if self._capture.set(cv2.CAP_PROP_POS_FRAMES, index) and round(self._capture.get(cv2.CAP_PROP_POS_FRAMES)) == index:
            self._position = index
            return True
        self._seekable = False
        return False

    def _read_from_file(self, index: int) -> np.ndarray:
        if self._capture is None:
            self._restart()
        sought = False
        if index < self._position or index - self._position > MAX_DECODE_AHEAD:
            sought = self._seek(index)
            if not sought and index < self._position:
                self._restart()
        while self._position < index:
            if not self._capture.grab():
                self.close()
                raise VideoError(self.path, f"frame {self._position} cannot be decoded (reading up to frame {index})")
            self._position += 1
        ok, frame = self._capture.read()
        if sought and ok and round(self._capture.get(cv2.CAP_PROP_POS_FRAMES)) != index + 1:
            # The seek did not land where it said: decode from the start from now on.
            self._seekable = False
            self._restart()
            return self._read_from_file(index)
        if not ok or frame is None:
            self.close()
            raise VideoError(self.path, f"frame {index} cannot be decoded")
        self._position = index + 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def uniform_indices(length: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over a video of `length` frames: the centre of each of `count` equal
    segments; every frame when `length <= count`. Sorted and unique."""
    if length < 0 or count < 1:
        raise ValueError(f"uniform_indices: length {length} and count {count}; need length >= 0, count >= 1")
    if length <= count:
        return list(range(length))
    # Centre of segment i, (i + 1/2) * length / count, floored; segments are longer than a frame, so all differ.
    return [((2 * i + 1) * length) // (2 * count) for i in range(count)]


def random_indices(rng: np.random.Generator, length: int, count: int) -> list[int]:
    """`count` frame indices spread over the whole video with a random offset inside each of `count` equal segments
    (one frame per segment); every frame when `length <= count`. Sorted and unique."""
    if length < 0 or count < 1:
        raise ValueError(f"random_indices: length {length} and count {count}; need length >= 0, count >= 1")
    if length <= count:
        return list(range(length))
    bounds = [(i * length) // count for i in range(count + 1)]  # segment i is [bounds[i], bounds[i + 1]), never empty
    return [int(lo + rng.integers(hi - lo)) for lo, hi in zip(bounds[:-1], bounds[1:])]


# The codec `write_video` writes by the file's extension (OpenCV's FFmpeg writers): MPEG-4 Part 2 ('mp4v') by default;
# VP8 for .webm, which every browser plays (none plays 'mp4v').
WRITE_CODECS = {".webm": "VP80"}


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes RGB frames ((H, W, 3) or (H, W) uint8, all of one size) as a video: MPEG-4 (OpenCV's 'mp4v'), or VP8 for
    a .webm path (`WRITE_CODECS`).

    The codec needs even sides: an odd height or width gets one more row or column, a copy of the last one.

    Returns:
        the number of frames written.

    Raises:
        ValueError: no frame, frames of different sizes or not uint8 images, a bad fps, or a file that cannot be
            written.
    """
    path = os.fspath(path)
    if not (fps and np.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps must be a positive number, not {fps!r}")
    codec = WRITE_CODECS.get(os.path.splitext(path)[1].lower(), "mp4v")
    writer, size, count = None, None, 0
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[:, :, None], 3, axis=2)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"{path}: frame {count} is {frame.dtype} {frame.shape}; need (H, W, 3) or (H, W) uint8")
            if writer is None:
                size = frame.shape[:2]
                if directory := os.path.dirname(path):
                    os.makedirs(directory, exist_ok=True)
                height, width = size[0] + size[0] % 2, size[1] + size[1] % 2
                writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
                if not writer.isOpened():
                    raise ValueError(f"{path}: cannot be written as a video")
            elif frame.shape[:2] != size:
                raise ValueError(f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was {size[1]}x{size[0]}")
            if size[0] % 2 or size[1] % 2:
                frame = np.pad(frame, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        raise ValueError(f"{path}: no frames to write")
    return count
