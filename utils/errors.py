"""The project's errors about one file: which file, and what is wrong with it."""

from __future__ import annotations

import os


class FileProblem(ValueError):
    """A file (or folder) that cannot be used, and why.

    `path` names it. The exception can be rebuilt from its arguments alone, which is what `torch.utils.data.DataLoader`
    does when it re-raises an error of a worker in the main process.
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(self.path if reason is None else f"{self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)
