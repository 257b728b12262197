"""The shard files a virtual output reads from: where they are and whether they changed.

A virtual output stores no embeddings; its ``embeddings`` dataset maps each shard's
rows in place. HDF5 does not fail when a source file is later moved or deleted: it
silently returns the fill value (NaN here), or, for a relative source path, the
rows of any same-named file it finds in the current working folder. So every source
is recorded with its size and modification time, and checked whenever the output is
read through this package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._files import fingerprint

__all__ = ["relative_source", "hdf5_source_name", "resolve_source", "source_problems"]


def relative_source(shard: Path, output: Path) -> str:
    """The shard's path as a virtual output should store it: relative to the output's folder.

    HDF5 resolves a relative source path against the folder of the virtual file *as
    it is opened*, so the run folder can be moved or copied as a whole. An output
    reached through a symlink is opened from two folders (the link's and its
    target's): then the path is absolute, right from both.
    """
    if output.is_symlink() or output.parent.resolve() != output.resolve().parent:
        return str(shard.resolve())
    try:
        return os.path.relpath(shard.resolve(), output.resolve().parent)
    except ValueError:  # another drive (Windows): only an absolute path works
        return str(shard.resolve())


def hdf5_source_name(stored: str) -> str:
    """A source path as HDF5 must be given it: its ``%`` are printf codes (``%b``), so ``%%``."""
    return stored.replace("%", "%%")


def resolve_source(stored: str, output: Path) -> Path:
    """Where a stored source path points, seen from the output's folder (as the user named it)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(output).parent / path


def source_problems(output: Path, sources: list[dict[str, Any]]) -> list[str]:
    """One line for each recorded source that is missing or changed since the merge."""
    problems = []
    for source in sources:
        path = resolve_source(source["path"], output)
        if not path.exists():
            # HDF5 then reads NaN -- or, for a relative path, a same-named file in the
            # current folder if there is one: either way not what was merged.
            problems.append(f"{path}: source shard of the virtual output {output} is missing")
        elif fingerprint(path) != {"size": source["size"], "mtime_ns": source["mtime_ns"]}:
            problems.append(f"{path}: source shard of the virtual output {output} changed since the merge")
    return problems
