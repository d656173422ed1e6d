"""Reading videos (placeholder until the reader lands)."""

from __future__ import annotations


def uniform_indices(length: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over `length` frames (the centre of each of `count` equal segments);
    every frame when `length <= count`."""
    if length <= count:
        return list(range(length))
    return sorted({int((k + 0.5) * length / count) for k in range(count)})
