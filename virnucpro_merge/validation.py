"""Sequence-ID checks: duplicates within and across shards, missing and extra IDs."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from .errors import DuplicateIdError
from .shards import iter_id_chunks, open_shard, read_shard_meta

__all__ = ["IdRegistry", "validate_shard_completeness", "as_id_set", "warn_extra"]

logger = logging.getLogger("virnucpro_merge")


def as_id_set(ids: Collection[str]) -> set[str] | frozenset[str]:
    """Return ``ids`` as a set, without copying one that already is."""
    return ids if isinstance(ids, (set, frozenset)) else set(ids)


def read_all_ids(handle, path: Path) -> list[str]:
    """Every sequence ID of one open shard, in row order."""
    ids: list[str] = []
    for chunk in iter_id_chunks(handle, path):
        ids.extend(chunk)
    return ids


class IdRegistry:
    """The IDs of every shard accepted so far; refuses a shard that repeats one.

    Shards are added whole (after all their IDs were read), so a shard that fails
    half-way through reading leaves the registry as it was.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._shards: list[Path] = []

    def add_shard(self, path: Path, ids: Sequence[str]) -> None:
        """Record a shard's IDs; raise DuplicateIdError naming the ID and the shard."""
        shard_ids = set(ids)
        if len(shard_ids) != len(ids):
            raise DuplicateIdError(_first_repeat(ids), path, path)
        if not self.seen.isdisjoint(shard_ids):
            dup = next(i for i in ids if i in self.seen)
            raise DuplicateIdError(dup, path, self._shard_holding(dup))
        self.seen |= shard_ids
        self._shards.append(path)

    def _shard_holding(self, sequence_id: str) -> Path:
        # Only on the error path: re-read earlier shards rather than keep an
        # ID -> shard map for every sequence of the run.
        for path in self._shards:
            with open_shard(path) as handle:
                if any(sequence_id in chunk for chunk in iter_id_chunks(handle, path)):
                    return path
        raise AssertionError(f"{sequence_id!r} was seen but is in no accepted shard")


def _first_repeat(ids: Sequence[str]) -> str:
    seen: set[str] = set()
    for sequence_id in ids:
        if sequence_id in seen:
            return sequence_id
        seen.add(sequence_id)
    raise AssertionError("no repeated ID")


def warn_extra(extra: Collection[str]) -> None:
    """Log the IDs present in the shards but not expected (a warning, not an error)."""
    if extra:
        logger.warning(
            "Found %d extra sequences not in the expected set (first 10: %s)",
            len(extra),
            sorted(extra)[:10],
        )


def validate_shard_completeness(
    shard_files: Sequence[str | os.PathLike[str]], expected_ids: Collection[str]
) -> tuple[set[str], set[str]]:
    """Compare the IDs in some shards with the IDs a run should have produced.

    Reads sequence IDs only, never embeddings. Empty and ``(0, 0)`` shards are fine.

    Parameters
    ----------
    shard_files : sequence of path-like
        The shard files to read.
    expected_ids : collection of str
        Every sequence ID the run was given.

    Returns
    -------
    missing_ids, extra_ids : set of str
        Expected IDs found in no shard, and IDs found but not expected.

    Raises
    ------
    ShardError
        A shard is absent, unreadable or not shaped like a shard.

    Examples
    --------
    >>> validate_shard_completeness([], {"a"})
    ({'a'}, set())
    """
    seen: set[str] = set()
    for path in shard_files:
        with open_shard(path) as handle:
            read_shard_meta(handle, path)
            for chunk in iter_id_chunks(handle, path):
                seen.update(chunk)
    expected = as_id_set(expected_ids)
    return set(expected - seen), seen - expected
