import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model.tiny import write_tiny

# The (vision-language model, mask head) pairs of families the model tests run over: every pair of LLaVA-1.5 and
# Qwen2.5-VL with SAM and SAM 2, Qwen3-VL (which adds DeepStack to Qwen2.5-VL's inputs) and Qwen3.5 (Qwen3-VL's image
# path before a hybrid linear/full-attention language model) with SAM 2, InternVL3 (tiles) with SAM, and
# Qwen2.5-VL with the SAM 3 tracker; the first is LISA's original.
PAIRS = [
    ("llava", "sam"), ("llava", "sam2"), ("qwen2_5_vl", "sam"), ("qwen2_5_vl", "sam2"), ("qwen3_vl", "sam2"),
    ("qwen3_5", "sam2"), ("internvl", "sam"), ("qwen2_5_vl", "sam3_tracker"),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped, with the reason (listed by -rs), where torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bash benchmarks/cuda_check.sh runs them on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@dataclass
class TinyBase:
    """A tiny base of one pair of families, as `python -m model.tiny --vlm V --sam S` writes it."""

    root: Path
    vlm: str
    sam: str

    @property
    def vlm_dir(self) -> Path:
        return self.root / self.vlm

    @property
    def sam_dir(self) -> Path:
        return self.root / self.sam

    @property
    def lisa_dir(self) -> Path:
        return self.root / "lisa"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny base written once per session: `llava/`, `sam/` and an untrained `lisa/`."""
    out = tmp_path_factory.mktemp("tiny")
    write_tiny(str(out))
    return out


@pytest.fixture(scope="session", params=PAIRS, ids="+".join)
def tiny_base(request, tiny_dir, tmp_path_factory) -> TinyBase:
    """The tiny base of each pair of families in turn (a test using it runs once per pair); written once per session."""
    vlm, sam = request.param
    if (vlm, sam) == PAIRS[0]:
        return TinyBase(tiny_dir, vlm, sam)
    out = tmp_path_factory.mktemp(f"tiny_{vlm}_{sam}")
    write_tiny(str(out), vlm=vlm, sam=sam)
    return TinyBase(out, vlm, sam)


@pytest.fixture(scope="module")
def sam_modeling() -> Iterator[types.ModuleType]:
    """`segment_anything.modeling`, imported without the package `__init__` (which imports torchvision).

    A bare module object with the package's `__path__` stands in for `segment_anything`, so that only the
    modeling subpackage runs; `sys.modules` is restored afterwards.
    """
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("segment-anything==1.0 is not installed (test-only requirement)")
    saved = {name: module for name, module in sys.modules.items() if name.partition(".")[0] == "segment_anything"}
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package
    try:
        yield importlib.import_module("segment_anything.modeling")
    finally:
        for name in [name for name in sys.modules if name.partition(".")[0] == "segment_anything"]:
            del sys.modules[name]
        sys.modules.update(saved)
