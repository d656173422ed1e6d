"""Where a model or weights named on the command line live: a local path, or a Hugging Face hub id.

A path that does not exist must fail at once, offline, before a run writes anything: handed to `from_pretrained`,
an absolute path fails with a puzzling repo-id validation error and a relative one waits on the network first.
"""

from __future__ import annotations

import os

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def location_problem(name: str) -> str | None:
    """Why `name` can be neither an existing local path nor a hub id, or None when it can be one of them.

    A hub id is `namespace/name`. Anything else that does not exist locally — an absolute or `./` path, a bare
    name, a deeper path, or `namespace/name` whose namespace is a local folder (`runs/lisa-7b`) — is taken for a
    local path that is missing.
    """
    if os.path.exists(name):
        return None
    parts = name.split("/")
    is_hub_id = len(parts) == 2 and not os.path.isdir(parts[0]) and not name.startswith(("~", "."))
    if is_hub_id:
        try:
            validate_repo_id(name)
            return None
        except HFValidationError:
            pass
    return f"{name}: no such file or folder"
