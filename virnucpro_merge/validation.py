"""Sequence-ID checks: duplicates within and across shards, missing and extra IDs.

The run's IDs are kept as 64-bit hashes (8 bytes an ID), not as strings: a run of
10^7 IDs is checked in ~100 MB rather than ~1 GB. Hashes only ever *suggest*
duplicates: no two equal hashes means no two equal IDs, and equal hashes send the
check to an exact re-read of the IDs (rare: a real duplicate, or a 1-in-10^12
collision).

Missing and extra IDs are exact set algebra on the strings: a working set of the
expected IDs not yet found (about 27 bytes an ID, the strings being the caller's)
loses each ID as a shard shows it, so what is left at the end is missing; a block
of IDs that did not all match is looked up one by one for the IDs not expected.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from .shards import iter_id_chunks, open_shard, read_shard_meta

__all__ = ["IdIndex", "id_hashes", "validate_shard_completeness", "as_id_set", "warn_extra"]

logger = logging.getLogger("virnucpro_merge")


def as_id_set(ids: Collection[str]) -> set[str] | frozenset[str]:
    """Return ``ids`` as a set, without copying one that already is."""
    return ids if isinstance(ids, (set, frozenset)) else set(ids)


#: The 64-bit hash of an ID (Python's own; tests swap in a colliding one).
_id_hash = hash


def id_hashes(ids: Collection[str]) -> np.ndarray:
    """The 64-bit hash of each ID (this process's; not for sending to others)."""
    return np.fromiter(map(_id_hash, ids), dtype=np.int64, count=len(ids))


def _iter_shard_ids(paths: Iterable[Path]) -> Iterable[tuple[Path, str]]:
    for path in paths:
        with open_shard(path) as handle:
            for chunk in iter_id_chunks(handle, path):
                for sequence_id in chunk:
                    yield path, sequence_id


class IdIndex:
    """The sequence IDs of the shards accepted so far, checked against ``expected``.

    Parameters
    ----------
    expected : set of str, optional
        The IDs the run should have produced.
    """

    #: IDs matched against the expected ones at a time: a block holding an
    #: unexpected ID is looked up again, ID by ID
    BLOCK = 1024

    def __init__(self, expected: set[str] | frozenset[str] | None = None) -> None:
        self.expected = expected
        self.shards: list[Path] = []
        self.num_ids = 0
        self.num_chars = 0  # total length of the IDs, to size the output
        self.extra: list[str] = []
        self._unseen = None if expected is None else set(iter(expected))  # sized to fit, unlike set.copy()
        self._unseen_exact = True  # False once a shard that took IDs off it failed
        self._missing: list[str] | None = None
        self._hashes: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None

    def add_shard(self, path: Path, chunks: Iterable[list[str]]) -> None:
        """Take in one shard's IDs, all or nothing (a read that fails adds none)."""
        hashes, extra, chars = [], [], 0
        try:
            for chunk in chunks:
                hashes.append(id_hashes(chunk))
                chars += sum(map(len, chunk))
                if self.expected is not None:
                    extra.extend(self._take_off(chunk))
        except BaseException:
            if hashes and self.expected is not None:
                self._unseen_exact = False  # this shard's first IDs were taken off: missing() re-reads
            raise
        self._hashes.append(np.concatenate(hashes) if hashes else np.empty(0, np.int64))
        self.shards.append(path)
        self.num_ids += self._hashes[-1].size
        self.num_chars += chars
        self.extra.extend(extra)
        self._sorted = None

    def _take_off(self, chunk: list[str]) -> list[str]:
        """Take ``chunk``'s IDs off the unseen ones; return those not expected."""
        extra = []
        for start in range(0, len(chunk), self.BLOCK):
            block = chunk[start : start + self.BLOCK]
            before = len(self._unseen)
            collections.deque(map(self._unseen.discard, block), maxlen=0)  # (difference_update may
            # copy the whole table to clear away deleted entries: twice its memory for a moment)
            if before - len(self._unseen) < len(block):  # not expected, or seen already
                extra.extend(itertools.filterfalse(self.expected.__contains__, block))
        return extra

    def row_hashes(self) -> np.ndarray:
        """Every ID's hash, in row order of the accepted shards (one after another)."""
        return np.concatenate(self._hashes or [np.empty(0, np.int64)])

    def _sorted_hashes(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = self.row_hashes()  # a new array: sorted in place
            self._sorted.sort()
        return self._sorted

    def let_go(self) -> None:
        """Keep only the row hashes: drop the sorted copy, the unseen set and the extras."""
        self._sorted = self._unseen = self._missing = None
        self.extra = []

    def has_repeated_hash(self) -> bool:
        ordered = self._sorted_hashes()
        return bool(np.any(ordered[1:] == ordered[:-1]))

    def find_duplicate(self) -> tuple[str, Path, Path] | None:
        """The first repeated ID in shard order, with its shard and first shard; else None."""
        if not self.has_repeated_hash():
            return None
        first_shard: dict[str, Path] = {}
        for path, sequence_id in _iter_shard_ids(self.shards):
            if sequence_id in first_shard:
                return sequence_id, path, first_shard[sequence_id]
            first_shard[sequence_id] = path
        logger.debug("64-bit hash collision between distinct IDs; no duplicate")
        return None

    def missing(self) -> list[str]:
        """The expected IDs found in no accepted shard, sorted.

        Final: ask once every shard is in (the working set is let go then).
        """
        if not self.expected:
            return []
        if self._missing is None:
            if self._unseen_exact:
                self._missing = sorted(self._unseen)
            else:
                seen = {sequence_id for _, sequence_id in _iter_shard_ids(self.shards)}
                self._missing = sorted(self.expected - seen)
            self._unseen = None
        return self._missing


def warn_extra(extra: Collection[str]) -> None:
    """Log the IDs present in the shards but not expected (a warning, not an error)."""
    if extra:
        logger.warning(
            "Found %d extra sequences not in the expected set (first 10: %s)",
            len(extra),
            sorted(extra)[:10],
        )


def validate_shard_completeness(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_ids: Collection[str] | os.PathLike[str],
    *,
    client: object | None = None,
) -> tuple[set[str], set[str]]:
    """Compare the IDs in some shards with the IDs a run should have produced.

    Reads sequence IDs only, never embeddings. Empty and ``(0, 0)`` shards are fine.

    Parameters
    ----------
    shard_files : sequence of path-like
        The shard files to read.
    expected_ids : collection of str
        Every sequence ID the run was given. With a ``client``, also the path
        (``pathlib.Path``) of an expected-ID file, which the workers then read.
    client : dask.distributed.Client, optional
        Scan the shards on this cluster's workers and check the IDs
        hash-partitioned across them, so that no process holds them all.

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
    if client is not None:
        from .cluster import validate_on_cluster

        return validate_on_cluster(shard_files, expected_ids, client=client)
    index = IdIndex(as_id_set(expected_ids))
    for path in map(Path, shard_files):
        with open_shard(path) as handle:
            read_shard_meta(handle, path)
            index.add_shard(path, iter_id_chunks(handle, path))
    return set(index.missing()), set(index.extra)
