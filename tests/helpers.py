"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def read_datasets(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ``embeddings`` and ``sequence_ids`` of a shard or merged file."""
    with h5py.File(path, "r") as f:
        return f["embeddings"][:], f["sequence_ids"].asstr()[:].tolist()


def ids(prefix: str, n: int, start: int = 0) -> list[str]:
    """``n`` distinct sequence IDs: ``prefix0``, ``prefix1``, ..."""
    return [f"{prefix}{i}" for i in range(start, start + n)]
