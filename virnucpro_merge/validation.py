"""Sequence-ID checks: duplicates within and across shards, missing and extra IDs.

The shards' IDs are kept as 64-bit hashes of their UTF-8 bytes (8 bytes an ID), and
the expected IDs as a :class:`~virnucpro_merge.ids.IdLookup` (their bytes in one array,
their sorted hashes and order: about 26 bytes an ID of 10 characters), never as a Python
str each: a run of 10^7 IDs is checked in a few hundred MB rather than ~1.4 GB. Hashes
only ever *suggest*; every answer is exact:

- no two equal hashes means no two equal IDs; equal hashes send the check to an
  exact re-read of the IDs (rare: a real duplicate, or a 1-in-10^12 collision);
- a shard's ID is expected when the lookup finds its hash *and* its bytes there (the
  one collision rule); each expected position found is marked, and the missing IDs
  are the positions never marked, named from the lookup's bytes.
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ids import FoundIds, HashedIds, IdLookup, hashes_of, repeated_hashes, utf8_ids
from .shards import iter_id_chunks, open_shard

__all__ = ["Findings", "IdIndex", "normalisation_twins", "warn_extra"]

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


def _utf8(chunk: Sequence[bytes] | Sequence[str] | np.ndarray | FoundIds) -> list[bytes]:
    """A chunk of IDs as their UTF-8 bytes (a chunk read ahead as it is: it carries its hashes)."""
    assert not isinstance(chunk, FoundIds), "IDs found in a lookup come only to an index with one"
    items: list[Any] = chunk if isinstance(chunk, HashedIds) else \
        chunk.tolist() if isinstance(chunk, np.ndarray) else list(chunk)
    return utf8_ids(items) if items and isinstance(items[0], str) else items


def _places_of_rows(at: np.ndarray, unexpected: np.ndarray, dtype: type[np.signedinteger]) -> np.ndarray:
    """Each row's place in the expected IDs (-1: not expected), from the places of the
    expected rows in row order (:meth:`IdLookup.positions`)."""
    places = np.full(unexpected.size, -1, dtype)
    expected = np.flatnonzero(~unexpected)
    if at.size != expected.size:
        msg = "every row's place is kept only for expected IDs without repeats"
        raise ValueError(msg)
    places[expected] = at
    return places


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
    expected : collection of str, or IdLookup, optional
        The IDs the run should have produced (a lookup: as
        :func:`~virnucpro_merge.expected.read_expected_lookup` reads a file, with no Python
        str an ID).
    """

    def __init__(self, expected: Collection[str] | IdLookup | None = None, *, keep_places: bool = False) -> None:
        self.lookup = None if expected is None else IdLookup.of(expected)
        self._present = np.zeros(self.lookup.n if self.lookup is not None else 0, dtype=bool)
        # Every ID's hash is kept without expected IDs (row_hashes); else only the unexpected
        # IDs' (an expected one found twice is told by its position, marked twice), and, when
        # asked, every row's place in the expected IDs (row_places).
        self._places: list[np.ndarray] | None = [] if keep_places and self.lookup is not None else None
        self._marked_twice = False
        self.shards: list[Path] = []
        self._names: list[Path] = []
        self.extra: list[str] = []
        self._hashes: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None

    def add_shard(self, path: Path, chunks: Iterable[Sequence[bytes] | Sequence[str] | np.ndarray | FoundIds],
                  name: Path | None = None) -> None:
        """Take in the IDs of the shard file ``path`` (called ``name`` in messages: a
        salvaged rank's checkpoints), all or nothing (a read that fails adds none). Each
        chunk holds IDs as their UTF-8 bytes (as ``shards.iter_id_byte_chunks`` reads them)
        or as str, or as the lookup ``expected`` found them where they were read (``FoundIds``)."""
        hashes: list[np.ndarray] = []
        found: list[np.ndarray] = []
        places: list[np.ndarray] = []
        extra: list[str] = []
        for chunk in chunks:
            if self.lookup is None:
                hashes.append(hashes_of(_utf8(chunk)))
                continue
            at, unexpected, chunk_hashes, others = self._looked_up(chunk)
            hashes.append(chunk_hashes[unexpected])
            found.append(at)
            if self._places is not None:
                places.append(_places_of_rows(at, unexpected, self.lookup.position_type))
            extra.extend(other.decode("utf-8", "surrogateescape") for other in others)
        self._hashes.append(np.concatenate(hashes) if hashes else np.empty(0, np.int64))
        if self._places is not None:
            self._places.append(np.concatenate(places) if places else np.empty(0, np.int32))
        if found:
            marks = np.concatenate(found)
            ordered = np.sort(marks)  # (quicker than np.unique for a chunk's worth)
            if self._present[marks].any() or bool((ordered[1:] == ordered[:-1]).any()):
                self._marked_twice = True  # (an expected ID in two places: the exact re-read names it)
            self._present[marks] = True
        self.shards.append(path)
        self._names.append(path if name is None else name)
        self.extra.extend(extra)
        self._sorted = None

    def _looked_up(self, chunk: Sequence[bytes] | Sequence[str] | np.ndarray | FoundIds
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]]:
        """A chunk's expected IDs' places, a mask of the others, every hash, and the others' bytes."""
        assert self.lookup is not None
        if isinstance(chunk, FoundIds):  # (looked up where read: the expected IDs' bytes were not sent)
            if chunk.lookup != id(self.lookup):
                msg = "IDs found in another lookup than this index's"
                raise ValueError(msg)
            return chunk.positions, chunk.unexpected, chunk.hashes, chunk.others
        raw = _utf8(chunk)
        at, unexpected, hashes = self.lookup.positions(raw)
        return at, unexpected, hashes, [raw[i] for i in np.flatnonzero(unexpected).tolist()]

    @property
    def num_expected(self) -> int | None:
        """How many distinct IDs were expected (None: no expected IDs were given)."""
        return None if self.lookup is None else self.lookup.distinct

    @property
    def num_present(self) -> int:
        """How many distinct expected IDs the shards taken in hold."""
        return 0 if self.lookup is None else self.lookup.distinct - len(self.missing())

    def row_hashes(self) -> np.ndarray:
        """Every ID's hash, in row order of the accepted shards (one after another): kept
        without expected IDs."""
        assert self.lookup is None, "an IdIndex without expected IDs keeps every ID's hash"
        return self._joined_hashes()

    def row_places(self) -> np.ndarray:
        """Every row's place in the expected IDs, or -1 for an ID not expected, in row
        order of the accepted shards (kept with ``keep_places``; an ID listed twice in the
        expected IDs: a :class:`ValueError` when the rows were taken in)."""
        assert self._places is not None, "IdIndex(expected, keep_places=True) keeps every row's place"
        return np.concatenate(self._places or [np.empty(0, np.int32)])

    def _joined_hashes(self) -> np.ndarray:
        """The hashes kept, shard after shard, in a new array."""
        return np.concatenate(self._hashes or [np.empty(0, np.int64)])

    def _sorted_hashes(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = self._joined_hashes()  # (a new array: sorted in place)
            self._sorted.sort()
        return self._sorted

    def drop_sorted(self) -> None:
        """Let go of the sorted copy of the hashes (8 bytes an ID) once checks are done."""
        self._sorted = None

    def has_repeated_hash(self) -> bool:
        """Whether some ID may be there twice (then :meth:`find_duplicate` re-reads the IDs to be sure)."""
        return self._marked_twice or bool(repeated_hashes(self._sorted_hashes()).size)

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
        """The expected IDs found in no shard, sorted (exact: every match was checked by its bytes)."""
        if self.lookup is None:
            return []
        return sorted(set(self.lookup.ids(np.flatnonzero(~self._present))))

    def findings(self) -> Findings:
        """The duplicate, missing and extra IDs of the shards taken in (a duplicate is an
        error of its own: then the missing IDs are not worked out)."""
        duplicate = self.find_duplicate()
        missing = [] if duplicate else self.missing()
        present = itertools.chain(self.extra, self.lookup.ids() if self.lookup is not None else ())  # (read only
        return Findings(  # for a missing ID that is not ASCII; the missing are skipped)
            duplicate=duplicate,
            missing=missing,
            extra=list(self.extra),
            num_expected=self.num_expected,
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
