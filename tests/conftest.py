import pytest

from model.tiny import write_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny base written once per session: `llava/`, `sam/` and an untrained `lisa/`."""
    out = tmp_path_factory.mktemp("tiny")
    write_tiny(str(out))
    return out
