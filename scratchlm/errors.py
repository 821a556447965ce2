"""Error types shared across the package (introduced in Chapter 06)."""

from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint, weights or config file that cannot be used.

    One type for every way a saved file can be wrong (missing, truncated, not safetensors, malformed
    JSON, missing fields, failed checksum, shapes that do not fit), so callers catch one thing; the
    message always names the path and what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
