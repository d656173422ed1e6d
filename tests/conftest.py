import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest

from model.tiny import write_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny base written once per session: `llava/`, `sam/` and an untrained `lisa/`."""
    out = tmp_path_factory.mktemp("tiny")
    write_tiny(str(out))
    return out


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
