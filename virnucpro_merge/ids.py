"""Sequence IDs as the package holds them: encoded, hashed, looked up.

A run's IDs are held as 64-bit hashes (8 bytes an ID) and, where they must be named or
compared, as their UTF-8 bytes in one numpy array, never as millions of Python strings.
A hash only ever suggests: two IDs are the same only when their bytes are (the one
collision rule, which :class:`IdLookup`, :class:`~virnucpro_merge.validation.IdIndex` and
``verify`` follow).

- :func:`encode_ids`, :func:`encode_and_hash_ids`: IDs as an array of their UTF-8 bytes;
- :func:`id_hashes`: the hash of each ID (as str or as its bytes);
- :class:`SortedHashes`: where hashes sit among sorted hashes;
- :func:`repeated_hashes`: the hashes that occur more than once (candidates, to be
  confirmed by bytes);
- :class:`IdLookup`: where each of a run's IDs sits in its index.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["id_hashes", "repeated_hashes", "SortedHashes", "encode_ids", "encode_and_hash_ids", "as_bytes",
           "utf8_ids", "wasteful_width", "hash_order", "HashedIds", "FoundIds", "hashes_of", "IdLookup", "MAX_WIDTH",
           "LOOKUP_BLOCK"]

#: Past this many bytes an ID, a lookup keeps its IDs as bytes objects instead of one fixed-width array.
MAX_WIDTH = 1024
#: IDs encoded and hashed at a time when a lookup is built from str.
LOOKUP_BLOCK = 2**16
_COUNTED_AT_ONCE = 2**20  # hashes put in their buckets at a time


#: The 64-bit hash of an ID (Python's own; tests swap in a colliding one).
_id_hash = hash


def id_hashes(ids: Collection[str] | Collection[bytes]) -> np.ndarray:
    """The 64-bit hash of each ID, as str or as its UTF-8 bytes (this process's, and its
    forked children's; not for sending to others)."""
    return np.fromiter(map(_id_hash, ids), dtype=np.int64, count=len(ids))


class HashedIds(list[bytes]):
    """A chunk of IDs as their UTF-8 bytes, with their hashes (:func:`id_hashes`), worked out
    where the IDs were read (in a forked process: the same hashes as here).

    >>> chunk = HashedIds([b"s1", b"s2"])
    >>> chunk.hashes.tolist() == id_hashes([b"s1", b"s2"]).tolist(), list(chunk)
    (True, [b's1', b's2'])
    """

    def __init__(self, ids: Sequence[bytes]) -> None:
        super().__init__(ids)
        self.hashes = id_hashes(self)
        #: where :meth:`IdLookup.look_up` found them: the expected ones' positions and a mask of
        #: the others, and the ``id`` of the lookup (the same object in a forked process)
        self.found: tuple[np.ndarray, np.ndarray, int] | None = None


@dataclass(frozen=True)
class FoundIds:
    """A chunk of a shard's IDs as a lookup found them (:meth:`IdLookup.found_ids`), without
    the bytes of those it found: what a check of the IDs needs, not what a merge writes
    (about 17 bytes an ID to send from a process that read them, against some 60).

    >>> lookup = IdLookup.from_ids(["s0", "s1"])
    >>> found = lookup.found_ids(HashedIds([b"s1", b"zz"]))
    >>> len(found), found.positions.tolist(), found.others
    (2, [1], [b'zz'])
    """

    hashes: np.ndarray  #: every ID's
    positions: np.ndarray  #: the expected ones' places in the lookup's index
    unexpected: np.ndarray  #: a mask of those the lookup does not hold
    others: list[bytes]  #: their bytes, in order
    lookup: int  #: the ``id`` of the lookup that found them (the same object in a forked process)

    def __len__(self) -> int:
        return self.hashes.size


def hashes_of(ids: Sequence[bytes]) -> np.ndarray:
    """The hashes of a chunk of IDs (as bytes): those it carries, if :class:`HashedIds`."""
    return ids.hashes if isinstance(ids, HashedIds) else id_hashes(ids)


def repeated_hashes(ordered: np.ndarray) -> np.ndarray:
    """The hashes that occur more than once in the sorted hashes ``ordered``, each once.

    >>> repeated_hashes(np.array([1, 2, 2, 3, 3, 3])).tolist()
    [2, 3]
    """
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


class SortedHashes:
    """Sorted 64-bit hashes, and where given hashes sit among them: the answers of
    :func:`numpy.searchsorted`, kept in range.

    Hashes of IDs are spread evenly over their 64 bits, so their top bits place each one
    in one of about a quarter as many buckets as there are hashes: a table of where each
    bucket starts (1 to 2 bytes a hash) sends a key to its few candidates, which a short
    walk settles. About three times as fast as :func:`numpy.searchsorted` on keys sorted
    first, and keys need no sorting. Where the hashes are not spread evenly (a bucket of
    more than :data:`_CROWDED`: hashes made to collide, in tests), the search is numpy's.

    Examples
    --------
    >>> table = SortedHashes(np.array([3, 5, 5, 9]))
    >>> table.first_at_least(np.array([0, 5, 6, 99])).tolist()
    [0, 1, 3, 3]
    >>> [found.tolist() for found in table.find(np.array([5, 6]))]
    [[1, 3], [True, False]]
    """

    _CROWDED = 64  # hashes in a bucket past which the buckets are no help

    def __init__(self, ordered: np.ndarray) -> None:
        self.ordered = ordered  # (sorted; not copied)
        self._shift = np.uint64(64 - max(1, (max(ordered.size, 2) // 4 - 1).bit_length()))
        self._starts = self._bucket_starts()  # (made here: a process forked later shares it)

    def _buckets(self, keys: np.ndarray) -> np.ndarray:
        """Each key's bucket: its top bits, in the order of signed hashes."""
        return ((keys.astype(np.int64, copy=False).view(np.uint64) ^ np.uint64(1 << 63)) >> self._shift
                ).astype(np.intp)

    def _bucket_starts(self) -> np.ndarray | None:
        """Where each bucket starts among the hashes (and where the last ends); None where a
        bucket is crowded. Counted a part of the hashes at a time (a bucket number is 8 bytes)."""
        counts = np.zeros(1 << (64 - int(self._shift)), dtype=np.int64)
        for start in range(0, self.ordered.size, _COUNTED_AT_ONCE):
            counts += np.bincount(self._buckets(self.ordered[start : start + _COUNTED_AT_ONCE]),
                                  minlength=counts.size)
        if counts.max(initial=0) > self._CROWDED:
            return None
        starts = np.zeros(counts.size + 1, dtype=np.int32 if self.ordered.size < 2**31 else np.int64)
        np.cumsum(counts, out=starts[1:])
        return starts

    def first_at_least(self, keys: np.ndarray) -> np.ndarray:
        """For each key, the first position whose hash is not below it, or the last
        position if every hash is (0 for no hashes)."""
        size = self.ordered.size
        if not size:
            return np.zeros(keys.size, dtype=np.intp)
        starts = self._starts
        if starts is None:
            return np.minimum(np.searchsorted(self.ordered, keys), size - 1)
        bucket = self._buckets(keys)
        at, ends = starts[bucket].astype(np.intp), starts[bucket + 1]
        walking = np.flatnonzero(at < ends)
        while walking.size:  # (one step for every key still below the hash it stands on)
            walking = walking[self.ordered[at[walking]] < keys[walking]]
            at[walking] += 1
            walking = walking[at[walking] < ends[walking]]
        return np.minimum(at, size - 1)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key, its :meth:`first_at_least` position, and whether the hash there is the key."""
        at = self.first_at_least(keys)
        return at, (self.ordered[at] == keys) if self.ordered.size else np.zeros(keys.size, dtype=bool)


def encode_ids(ids: Sequence[str] | np.ndarray, *, max_width: int | None = None) -> np.ndarray:
    """IDs as an array of their UTF-8 bytes: fixed width (``dtype='S'``), compact, quick to
    pickle and to sort (UTF-8 bytes sort as the strings do); a bytes array is returned as it is.

    With ``max_width``, the array keeps every ID's bytes exactly, in no wasteful width: IDs
    of which one is longer than ``max_width`` bytes or many times as long as most
    (:func:`wasteful_width`: each row would be that long) or ends in a NUL byte (which a
    fixed-width array drops) are kept as ``bytes`` objects instead.

    Examples
    --------
    >>> encode_ids(["seq1", "séq2"])
    array([b'seq1', b's\\xc3\\xa9q2'], dtype='|S5')
    >>> encode_ids(["seq1", "x" * 40], max_width=16).dtype
    dtype('O')
    >>> encode_ids(["seq1", "seq1\\x00"], max_width=16).tolist()
    [b'seq1', b'seq1\\x00']
    """
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        return ids
    return _encoded(ids, "\x00".join(ids), max_width)


def _encoded(ids: Sequence[str] | np.ndarray, joined: str, max_width: int | None) -> np.ndarray:
    """:func:`encode_ids`, given the IDs joined by NUL (a NUL that no ID holds parts them:
    one pass over the str objects, the rest in numpy)."""
    if not len(ids):
        return np.empty(0, dtype="S1")
    raw = np.frombuffer(joined.encode(), dtype=np.uint8)
    ends = np.flatnonzero(raw == 0)
    if ends.size != len(ids) - 1:  # an ID holds a NUL: each is encoded by itself
        return _encoded_one_by_one(ids, max_width)
    ends = np.append(ends, raw.size)
    lengths = np.diff(ends, prepend=-1) - 1
    widest = max(int(lengths.max()), 1)
    if max_width is not None and (widest > max_width or wasteful_width(widest, float(lengths.mean()))):
        return _encoded_one_by_one(ids, max_width)
    rows = np.zeros((len(ids), widest), dtype=np.uint8)
    rows[np.arange(widest) < lengths[:, None]] = raw[raw != 0]  # (row by row, each ID's bytes in order)
    return rows.view(f"S{widest}").ravel()


def _encoded_one_by_one(ids: Sequence[str] | np.ndarray, max_width: int | None) -> np.ndarray:
    """:func:`encode_ids` of IDs one or more of which hold a NUL or are longer than ``max_width``."""
    source = [i.encode() for i in ids]
    widest = max(map(len, source))
    if max_width is not None and (widest > max_width or any(i[-1:] == b"\x00" for i in source)
                                  or wasteful_width(widest, sum(map(len, source)) / len(source))):
        kept = np.empty(len(ids), dtype=object)
        kept[:] = source
        return kept
    return np.fromiter(source, dtype=f"S{max(widest, 1)}", count=len(source))


def encode_and_hash_ids(ids: Sequence[str], *, max_width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """IDs as :func:`encode_ids` gives them, and the hash of each one's bytes
    (:func:`id_hashes`: what a shard's IDs, read as bytes, hash to).

    >>> encoded, hashes = encode_and_hash_ids(["seq1"])
    >>> hashes.tolist() == [hash(b"seq1")]
    True
    """
    encoded = encode_ids(ids, max_width=max_width)
    return encoded, id_hashes(encoded.tolist())


def hash_order(hashes: np.ndarray) -> np.ndarray:
    """The order that sorts a block's hashes, ties kept in place: worked out where the block
    was read, it leaves :class:`IdLookup` a merge of sorted blocks, not a sort.

    >>> hash_order(np.array([5, 1, 5, 0])).tolist()
    [3, 1, 0, 2]
    """
    return hashes.argsort(kind="stable").astype(np.int32 if hashes.size < 2**31 else np.int64, copy=False)


def utf8_ids(ids: Iterable[str]) -> list[bytes]:
    """IDs of str as the UTF-8 bytes a shard stores (an ID read with ``surrogateescape`` gets its
    bytes back): what :func:`id_hashes` must see to hash a str as its stored bytes hash.

    >>> utf8_ids(["seq1", "s\\udce9"])
    [b'seq1', b's\\xe9']
    """
    return [i.encode("utf-8", "surrogateescape") for i in ids]


def as_bytes(value: object) -> bytes:
    """An encoded ID (a numpy bytes scalar, or bytes) as ``bytes``."""
    return value if isinstance(value, bytes) else bytes(value)  # type: ignore[call-overload]


def wasteful_width(widest: int, mean: float) -> bool:
    """Whether IDs held at the width of the widest (``dtype='S'``) would take many times
    their own bytes (``mean`` a row): one long ID among millions of short ones. Then they are
    held as bytes objects instead, about 40 bytes an ID more, never ten times as much.

    >>> wasteful_width(1000, 16.0), wasteful_width(40, 16.0), wasteful_width(100, 90.0)
    (True, False, False)
    """
    return widest > 64 and widest > 4 * mean


def _too_wide(blocks: Sequence[np.ndarray]) -> bool:
    """Whether fixed-width blocks joined into one array would each take the widest block's
    width many times over their own (:func:`wasteful_width`)."""
    if not blocks:
        return False
    widest = max(b.dtype.itemsize for b in blocks)
    return wasteful_width(widest, sum(b.dtype.itemsize * b.size for b in blocks) / sum(b.size for b in blocks))


class IdLookup:
    """Where each of a run's IDs sits in its index: sorted 64-bit hashes of the UTF-8 bytes,
    the positions in that order, and the bytes themselves, to check every match (a hash
    only suggests: the collision rule). Built from blocks of encoded IDs and their hashes
    (``encode_and_hash_ids``), in index order.

    Examples
    --------
    >>> lookup = IdLookup([encode_and_hash_ids(["s0", "s1", "s2"])])
    >>> positions, unexpected, _ = lookup.positions([b"s2", b"zz"])
    >>> positions.tolist(), unexpected.tolist()
    ([2], [False, True])
    """

    def __init__(self, id_blocks: Iterable[tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]]
                 ) -> None:
        blocks, runs, places = [], [], []
        self.n = 0
        for block, block_hashes, *given in id_blocks:  # (encoded, hashed and maybe ordered, where they were read)
            if block.size:
                order = given[0] if given else hash_order(block_hashes)
                blocks.append(block)
                runs.append(block_hashes[order])
                places.append((order if self.n + block.size < 2**31 else order.astype(np.int64)) + self.n)
                self.n += block.size
        if any(b.dtype == object for b in blocks) or _too_wide(blocks):
            self.encoded = np.concatenate([b.astype(object) for b in blocks])
        else:
            self.encoded = np.concatenate(blocks) if blocks else np.empty(0, "S1")
        del blocks
        self.position_type = np.int32 if self.n < 2**31 else np.int64  # what a shard's positions are kept as
        # The blocks' hashes, each block sorted, are merged by a stable sort, which takes sorted runs
        # as they come (3.6 times as fast as sorting them all at 10^7), and keeps an ID listed twice
        # in its places in order.
        sorted_runs = np.concatenate(runs) if runs else np.empty(0, np.int64)
        del runs
        merged = sorted_runs.argsort(kind="stable")
        self.sorted = sorted_runs[merged]
        del sorted_runs
        self.order = np.concatenate(places).astype(self.position_type)[merged] if places else \
            np.empty(0, self.position_type)
        del places, merged
        self.table = SortedHashes(self.sorted)
        # A hash that several expected IDs share (an ID listed twice, or a collision):
        # those IDs are looked up by their bytes instead.
        self.shared = repeated_hashes(self.sorted)
        self.by_bytes: dict[bytes, list[int]] = {}
        for position in self.order[np.isin(self.sorted, self.shared)].tolist():
            self.by_bytes.setdefault(as_bytes(self.encoded[position]), []).append(position)

    @property
    def shared_without_copy(self) -> bool:
        """Whether a forked process can look IDs up here without copying the lookup.

        Not where it holds its IDs as bytes objects: a look at each touches its count of
        references, which copies the page it lies on.
        """
        return self.encoded.dtype != object

    @classmethod
    def of(cls, expected: Collection[str] | IdLookup) -> IdLookup:
        """``expected`` as a lookup: itself, if it is one.

        >>> lookup = IdLookup.of({"a"})
        >>> IdLookup.of(lookup) is lookup, lookup.n
        (True, 1)
        """
        if isinstance(expected, IdLookup):
            return expected
        return cls.from_ids(expected if isinstance(expected, Sequence) else list(expected))

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> IdLookup:
        """The lookup of IDs of str, in their order (encoded and hashed a block at a time).

        >>> IdLookup.from_ids(["b", "a", "b"]).distinct
        2
        """
        return cls(encode_and_hash_ids(ids[start : start + LOOKUP_BLOCK], max_width=MAX_WIDTH)
                   for start in range(0, len(ids), LOOKUP_BLOCK))

    @functools.cached_property
    def distinct(self) -> int:
        """How many distinct IDs it holds (an ID listed twice counts once)."""
        return self.n - sum(len(positions) - 1 for positions in self.by_bytes.values())

    def ids(self, positions: np.ndarray | None = None) -> Iterator[str]:
        """Its IDs as str, at ``positions`` (by default all, in order), decoded one by one as asked."""
        chosen = self.encoded if positions is None else self.encoded[positions]
        for start in range(0, chosen.size, LOOKUP_BLOCK):
            for value in chosen[start : start + LOOKUP_BLOCK].tolist():
                yield value.decode("utf-8", "surrogateescape")

    def found_ids(self, chunk: HashedIds) -> FoundIds:
        """``chunk`` as this lookup finds it, without the bytes of the IDs it holds."""
        at, unexpected, hashes = self.positions(chunk)
        return FoundIds(hashes, at, unexpected, [chunk[i] for i in np.flatnonzero(unexpected).tolist()], id(self))

    def look_up(self, chunk: HashedIds) -> None:
        """Find ``chunk``'s IDs now (in a process forked with this lookup, say), for
        :meth:`positions` to give later without looking again."""
        at, unexpected, _ = self.positions(chunk)
        chunk.found = (at, unexpected, id(self))

    def positions(self, raw: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a block of a shard's IDs (their UTF-8 bytes, as ``shards.iter_id_byte_chunks``
        yields them): the index positions of the expected ones, in the block's order (an ID
        listed twice in the index: its positions one after the other), a mask of those that
        are not expected, and every ID's hash (as :meth:`look_up` found them in this lookup,
        if it did)."""
        if isinstance(raw, HashedIds) and raw.found is not None and raw.found[2] == id(self):
            return raw.found[0], raw.found[1], raw.hashes
        hashes = hashes_of(raw)
        block = np.empty(len(raw), dtype=object)
        block[:] = raw
        expected = np.zeros(len(raw), bool)
        if not self.n:
            return np.empty(0, np.int64), ~expected, hashes
        shared = np.isin(hashes, self.shared) if self.shared.size else np.zeros(len(raw), bool)
        where, matched = self.table.find(hashes)
        candidates = np.flatnonzero(matched & ~shared)
        found = self.order[where[candidates]]
        same = self.encoded[found] == block[candidates]  # every match checked: a collision is not a match
        expected[candidates[same]] = True
        positions, rows = [found[same]], [candidates[same]]
        for i in np.flatnonzero(shared).tolist():
            also = self.by_bytes.get(raw[i])
            if also:
                expected[i] = True
                positions.append(np.array(also, dtype=np.int64))
                rows.append(np.full(len(also), i))
        if len(rows) == 1:
            return positions[0], ~expected, hashes
        in_block_order = np.concatenate(rows).argsort(kind="stable")  # (the IDs that share a hash, in their places)
        return np.concatenate(positions)[in_block_order], ~expected, hashes
