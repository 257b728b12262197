"""Sequence-ID checks: duplicates within and across shards, missing and extra IDs.

The run's IDs are kept as 64-bit hashes (8 bytes an ID), not as strings: a run of
10^7 IDs is checked in ~100 MB rather than ~1 GB. Hashes only ever *suggest*; every
answer is exact:

- no two equal hashes means no two equal IDs; equal hashes send the check to an
  exact re-read of the IDs (rare: a real duplicate, or a 1-in-10^12 collision);
- whether an ID is expected is asked of the expected set itself (a block of IDs at
  a time, one by one only in a block holding an unexpected ID), so the number of
  expected IDs present is exact; an expected ID whose hash is in no shard is surely
  missing, and when those sure ones account for the exact missing count, they are
  all of them (otherwise, once in a blue moon, an exact set difference is made).
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ids import SortedHashes, id_hashes, repeated_hashes
from .shards import iter_id_chunks, open_shard

__all__ = ["Findings", "IdIndex", "as_id_set", "normalisation_twins", "warn_extra"]

logger = logging.getLogger("virnucpro_merge")


@dataclass(frozen=True)
class Findings:
    """What the ID checks of a run found: plain data, the same however they ran
    (:class:`IdIndex` in one process, or :mod:`virnucpro_merge.cluster`)."""

    #: the first repeated ID in shard order, with its shard and the shard it was first in
    duplicate: tuple[str, Path, Path] | None
    #: expected IDs found in no shard, sorted
    missing: list[str]
    #: IDs found but not expected
    extra: list[str]
    #: how many distinct IDs were expected (None: no expected IDs were given)
    num_expected: int | None
    #: missing IDs that differ from a present ID only by Unicode normalisation, with that ID
    twins: dict[str, str] = field(default_factory=dict)


def normalisation_twins(missing: Collection[str], present: Iterable[str]) -> dict[str, str]:
    r"""The missing IDs that differ from a ``present`` one only by Unicode normalisation
    (NFC or NFD), each with that present ID. IDs are compared exactly (two spellings are
    two IDs), but such a pair looks like one ID twice: the messages say so.

    >>> normalisation_twins(["cafe\u0301", "x"], ["caf\u00e9", "y"]) == {"cafe\u0301": "caf\u00e9"}
    True
    """
    lost = {unicodedata.normalize("NFC", m): m for m in missing if not m.isascii()}
    if not lost:  # ASCII IDs have no twins: the common case costs nothing
        return {}
    gone = set(missing)
    twins: dict[str, str] = {}
    for candidate in present:
        if candidate.isascii() or candidate in gone:
            continue
        twin = lost.get(unicodedata.normalize("NFC", candidate))
        if twin is not None and twin != candidate:
            twins.setdefault(twin, candidate)
    return twins


def as_id_set(ids: Collection[str]) -> set[str] | frozenset[str]:
    """Return ``ids`` as a set, without copying one that already is."""
    return ids if isinstance(ids, (set, frozenset)) else set(ids)


def _iter_shard_ids(shards: Iterable[tuple[Path, Path]]) -> Iterable[tuple[Path, str]]:
    """Each ID of the shards (the file, and the name to say), with the shard's name."""
    for path, name in shards:
        with open_shard(path) as handle:
            for chunk in iter_id_chunks(handle, name):
                for sequence_id in chunk:
                    yield name, sequence_id


class IdIndex:
    """The sequence IDs of the shards accepted so far, checked against ``expected``.

    Parameters
    ----------
    expected : set of str, optional
        The IDs the run should have produced.
    """

    #: IDs looked up in the expected set at a time; a block that holds an
    #: unexpected ID is looked up again, one ID at a time
    BLOCK = 1024

    def __init__(self, expected: set[str] | frozenset[str] | None = None) -> None:
        self.expected = expected
        self.shards: list[Path] = []
        self._names: list[Path] = []
        self.num_present = 0  # IDs that are in ``expected``
        self.extra: list[str] = []
        self._hashes: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None

    def add_shard(self, path: Path, chunks: Iterable[list[str]], name: Path | None = None) -> None:
        """Take in the IDs of the shard file ``path`` (called ``name`` in messages: a
        salvaged rank's checkpoints), all or nothing (a read that fails adds none)."""
        hashes: list[np.ndarray] = []
        extra: list[str] = []
        present = 0
        for chunk in chunks:
            hashes.append(id_hashes(chunk))
            if self.expected is not None:
                present += self._look_up(chunk, extra)
        self._hashes.append(np.concatenate(hashes) if hashes else np.empty(0, np.int64))
        self.shards.append(path)
        self._names.append(path if name is None else name)
        self.num_present += present
        self.extra.extend(extra)
        self._sorted = None

    def _look_up(self, chunk: list[str], extra: list[str]) -> int:
        """How many of ``chunk``'s IDs are expected; the others go to ``extra``."""
        assert self.expected is not None
        present = 0
        for start in range(0, len(chunk), self.BLOCK):
            block = chunk[start : start + self.BLOCK]
            if self.expected.issuperset(block):  # the usual case, in one call
                present += len(block)
                continue
            known = np.fromiter(map(self.expected.__contains__, block), dtype=np.bool_, count=len(block))
            present += int(known.sum())
            extra.extend(itertools.compress(block, ~known))
        return present

    def row_hashes(self) -> np.ndarray:
        """Every ID's hash, in row order of the accepted shards (one after another)."""
        return np.concatenate(self._hashes or [np.empty(0, np.int64)])

    def _sorted_hashes(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = self.row_hashes()  # a new array: sorted in place
            self._sorted.sort()
        return self._sorted

    def drop_sorted(self) -> None:
        """Let go of the sorted copy of the hashes (8 bytes an ID) once checks are done."""
        self._sorted = None

    def has_repeated_hash(self) -> bool:
        return bool(repeated_hashes(self._sorted_hashes()).size)

    def find_duplicate(self) -> tuple[str, Path, Path] | None:
        """The first repeated ID in shard order, with its shard and first shard; else None."""
        if not self.has_repeated_hash():
            return None
        first_shard: dict[str, Path] = {}
        for path, sequence_id in _iter_shard_ids(zip(self.shards, self._names, strict=True)):
            if sequence_id in first_shard:
                return sequence_id, path, first_shard[sequence_id]
            first_shard[sequence_id] = path
        logger.debug("64-bit hash collision between distinct IDs; no duplicate")
        return None

    def missing(self) -> list[str]:
        """The expected IDs found in no shard, sorted."""
        if not self.expected:
            return []
        if self.has_repeated_hash():  # counts are unreliable with duplicates: be plain
            return self._missing_plainly()
        num_missing = len(self.expected) - self.num_present
        if num_missing == 0:
            return []
        wanted = id_hashes(self.expected)  # in the set's order
        order = np.argsort(wanted)
        wanted.sort()  # = wanted[order]; sorted, searchsorted reads memory in order (~20x faster)
        absent = np.empty(wanted.size, dtype=bool)
        absent[order] = self._absent(wanted)
        del wanted, order
        in_order = list(self.expected)  # the same order as the hashes
        surely_missing = [in_order[i] for i in np.flatnonzero(absent).tolist()]
        del in_order
        if len(surely_missing) == num_missing:
            return sorted(surely_missing)
        return self._missing_plainly()

    def _absent(self, wanted: np.ndarray, block: int = 2**20) -> np.ndarray:
        """For each of the sorted hashes ``wanted``: is it no shard ID's hash?"""
        table = SortedHashes(self._sorted_hashes())
        absent = np.empty(wanted.size, dtype=bool)
        for start in range(0, wanted.size, block):  # a block at a time: 8 bytes an ID less at the peak
            absent[start : start + block] = ~table.find(wanted[start : start + block])[1]
        return absent

    def _missing_plainly(self) -> list[str]:
        assert self.expected is not None
        seen = {sequence_id for _, sequence_id in _iter_shard_ids(zip(self.shards, self._names, strict=True))}
        return sorted(self.expected - seen)

    def findings(self) -> Findings:
        """The duplicate, missing and extra IDs of the shards taken in (a duplicate is an
        error of its own: then the missing IDs are not worked out)."""
        duplicate = self.find_duplicate()
        missing = [] if duplicate else self.missing()
        present = itertools.chain(self.extra, self.expected or ())  # (the missing are skipped)
        return Findings(
            duplicate=duplicate,
            missing=missing,
            extra=list(self.extra),
            num_expected=None if self.expected is None else len(self.expected),
            twins=normalisation_twins(missing, present),
        )


def warn_extra(extra: Collection[str]) -> None:
    """Log the IDs present in the shards but not expected (a warning, not an error)."""
    if extra:
        logger.warning(
            "Found %d extra sequences not in the expected set (first 10: %s)",
            len(extra),
            sorted(extra)[:10],
        )
