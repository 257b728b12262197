"""Small helpers shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from virnucpro_merge.report import seal


def read_datasets(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ``embeddings`` and ``sequence_ids`` of a shard or merged file."""
    with h5py.File(path, "r") as f:
        return f["embeddings"][:], f["sequence_ids"].asstr()[:].tolist()


def ids(prefix: str, n: int, start: int = 0) -> list[str]:
    """``n`` distinct sequence IDs: ``prefix0``, ``prefix1``, ..."""
    return [f"{prefix}{i}" for i in range(start, start + n)]


def edit_summary(path, edit, *, reseal=True):
    """Change a merged file's report summary in place, as an edited file would be: its checksums
    made anew to match (``reseal``: so that what the cross-checks catch is tested), or not (as
    damage would leave it)."""
    with h5py.File(path, "r+") as f:
        group = f["merge_report"]
        summary = json.loads(group["summary"].asstr()[()])
        edit(summary)
        if reseal:
            seal(group, summary, tables_of(group))
        else:
            del group["summary"]
            group["summary"] = json.dumps(summary)


def tables_of(group):
    """A report group's tables as stored (what :func:`seal` takes)."""
    return {name: group[name][()] for name in group if name != "summary"}
