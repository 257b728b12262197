"""The run's geometry: which worker wrote which file, and which sequences it was given.

A run of ``N`` workers gives worker ``r`` the sequence-index positions
``r, r + N, r + 2N, ...`` (the stride distribution), and worker ``r`` writes
``shard_<r>.h5``. A run folder holds those shards and, by the pipeline's
convention, the run's ``sequence_index.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import MergeError

__all__ = [
    "INDEX_NAME",
    "shard_name",
    "shard_path",
    "rank_of",
    "rank_paths",
    "stride_positions",
    "folder_shards",
    "expand_shard_args",
]

#: The sequence index the pipeline writes into its run folder.
INDEX_NAME = "sequence_index.json"

_SHARD_NAME = re.compile(r"^shard_(\d+)\.h5$")


def shard_name(rank: int) -> str:
    """The file name worker ``rank`` writes: ``shard_<rank>.h5``."""
    return f"shard_{rank}.h5"


def shard_path(directory: str | os.PathLike[str], rank: int) -> Path:
    """``directory/shard_<rank>.h5``."""
    return Path(directory) / shard_name(rank)


def rank_of(path: str | os.PathLike[str]) -> int | None:
    """The rank in a shard's file name (``shard_07.h5`` -> 7), or None for another name."""
    match = _SHARD_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def rank_paths(directory: str | os.PathLike[str], world_size: int) -> list[Path]:
    """The shard path of every rank, ``directory/shard_<rank>.h5``, absent files included.

    >>> [p.name for p in rank_paths("run", 3)]
    ['shard_0.h5', 'shard_1.h5', 'shard_2.h5']
    """
    return [shard_path(directory, rank) for rank in range(world_size)]


def stride_positions(n_sequences: int, world_size: int, rank: int) -> np.ndarray:
    """Index positions assigned to ``rank``: ``rank, rank + N, rank + 2N, ...``.

    >>> stride_positions(10, 4, 1).tolist()
    [1, 5, 9]
    """
    return np.arange(rank, n_sequences, world_size)


def folder_shards(directory: str | os.PathLike[str]) -> list[Path]:
    """A run folder's shards in rank order, ranks ``0 .. highest``.

    A rank without a file in between is a worker that never wrote one, and is
    listed all the same (a strict merge then names it; a partial one records it as
    failed).

    Raises
    ------
    MergeError
        The folder holds no ``shard_<N>.h5`` file.
    """
    directory = Path(directory)
    found = {}
    for entry in directory.iterdir():
        rank = rank_of(entry)
        if rank is not None:
            found[rank] = entry
    if not found:
        msg = f"{directory}: no shard_<N>.h5 files in this folder"
        raise MergeError(msg)
    return [found.get(rank, shard_path(directory, rank)) for rank in range(max(found) + 1)]


def expand_shard_args(args: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Turn command-line arguments into shard paths.

    A directory stands for its ``shard_<rank>.h5`` files in numeric rank order
    (``shard_2`` before ``shard_10``), as :func:`folder_shards` lists them; a file
    stands for itself.
    """
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        paths.extend(folder_shards(path) if path.is_dir() else [path])
    return paths
