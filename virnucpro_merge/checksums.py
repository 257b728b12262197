"""Checksums of what a merge wrote, so that a merged file can later prove it is intact.

HDF5 keeps no checksum of contiguous data. A merge therefore records, in its
report, a checksum of each block of rows it wrote, computed from the bytes it
already holds in memory to count NaN rows (never by reading the output back), and
one of each block of IDs::

    merge_report/
        embedding_checksums   (b, 3) int64: first row, end row, checksum of the rows (rows_checksum)
        id_checksums          (c, 3) int64: first row, end row, CRC-32 of the IDs (ids_crc)

The rows' checksum (``"wsum64-crc32"``, :func:`rows_checksum`) is built for speed
from numpy and the standard library alone: each row's bytes, read as little-endian
64-bit words, are summed with a distinct odd weight per word (modulo 2**64); the
block's checksum is the CRC-32 of those row sums in order. It changes when any one bit
does, when a sector is zeroed or garbled, when rows or words move, and when two bits
do, but for one blind spot: two flips of the same high bit in two words of one row can
cancel (always for bit 63, the sign of an odd-numbered float; half the time for bit 62,
and so on down), as a multiplication modulo 2**64 carries no high bit down. Mixing the
high bits down (``u ^ (u >> 32)``) closes it but cost a non-durable merge a further
quarter of its time, where this sum costs ~10 %; ``verify --against`` compares every
bit. It runs at ~17 GB/s here, five times :func:`zlib.crc32` of the same bytes
(``benchmarks/bench_merge.py`` prints both).

The blocks are whatever the merge wrote at a time (a window of a shard, a chunk, a
block in index order): together they cover every row exactly once, which
:mod:`virnucpro_merge.verify` checks before it recomputes each one. A virtual output
records ID checksums only (its embeddings are the shards').
"""

from __future__ import annotations

import functools
import threading
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import h5py
import numpy as np

__all__ = ["ALGORITHM", "ROW_TABLE", "ID_TABLE", "rows_checksum", "row_sums", "nonfinite_rows", "extremes_of",
           "ids_crc", "summary_entry", "table_crc", "Checksums", "IdSink", "ChecksummedIds", "read_checksums"]

#: The name of the checksum, as the report's summary gives it.
ALGORITHM = "wsum64-crc32"
#: The report's datasets of checksums: of the rows, of the IDs.
ROW_TABLE, ID_TABLE = "embedding_checksums", "id_checksums"


@functools.lru_cache(maxsize=8)
def _word_weights(words: int) -> np.ndarray:
    """The weight of each 64-bit word of a row: distinct, odd, spread over all 64 bits."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    return (np.arange(1, words + 1, dtype=np.uint64) * golden) | np.uint64(1)


def rows_checksum(block: np.ndarray) -> int:
    """The checksum of a block of float32 rows, as the output stores them (little-endian).

    Each row's bytes, zero-padded to a multiple of 8, are read as little-endian
    uint64 words ``u_j``; the row's sum is ``sum(w_j * u_j) mod 2**64`` with
    ``w_j = ((j + 1) * 0x9E3779B97F4A7C15 mod 2**64) | 1``; the block's checksum is the
    CRC-32 of the row sums, each as 8 little-endian bytes, in row order.

    >>> rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    >>> rows_checksum(rows) == rows_checksum(rows.copy()) != rows_checksum(rows[::-1])
    True
    """
    data = np.ascontiguousarray(block, dtype="<f4")
    if data.ndim != 2 or data.shape[0] == 0:
        return zlib.crc32(b"")
    return zlib.crc32(row_sums(data).data.cast("B"))


def row_sums(block: np.ndarray) -> np.ndarray:
    """Each row's weighted 64-bit sum (:func:`rows_checksum`), as little-endian uint64: the
    checksum's own, and a key under which rows with the same bytes meet (:mod:`.health`).

    >>> rows = np.array([[1, 2], [3, 4], [1, 2]], dtype=np.float32)
    >>> sums = row_sums(rows)
    >>> bool(sums[0] == sums[2] != sums[1])
    True
    """
    data = np.ascontiguousarray(block, dtype="<f4")
    if data.ndim != 2 or data.shape[0] == 0:
        return np.zeros(0 if data.ndim != 2 else data.shape[0], "<u8")
    if data.shape[1] % 2:  # an odd width: pad each row to whole 64-bit words
        data = np.concatenate([data, np.zeros((data.shape[0], 1), "<f4")], axis=1)
    words = data.view("<u8")
    return np.einsum("ij,j->i", words, _word_weights(words.shape[1])).astype("<u8", copy=False)


def nonfinite_rows(block: np.ndarray, extremes: tuple[float, float] | None = None) -> int:
    """How many rows of ``block`` hold a NaN or an Inf (one fast pass when there are none):
    what a merge counts as it checksums the rows, and ``verify`` counts again.
    ``extremes``: the block's :func:`extremes`, when already taken.

    >>> nonfinite_rows(np.array([[1.0, np.nan], [2.0, 3.0], [np.inf, 0.0]], dtype=np.float32))
    2
    """
    low, high = extremes_of(block) if extremes is None else extremes
    if block.size == 0 or (np.isfinite(low) and np.isfinite(high)):
        return 0  # NaN poisons min and max; +Inf would be the max, -Inf the min
    return int(block.shape[0] - np.isfinite(block).all(axis=1).sum())


def extremes_of(block: np.ndarray) -> tuple[float, float]:
    """The least and the greatest value of ``block`` (NaN when it holds one; 0, 0 when empty).

    >>> extremes_of(np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32))
    (-2.0, 3.0)
    """
    return (float(block.min()), float(block.max())) if block.size else (0.0, 0.0)


def ids_crc(ids: Sequence[str | bytes] | np.ndarray) -> int:
    """The CRC-32 of a block of IDs: their UTF-8 bytes, each ended by a NUL byte (which
    no stored ID can hold), so that ``["ab", "c"]`` and ``["a", "bc"]`` differ.

    >>> ids_crc(["ab", "c"]) == ids_crc([b"ab", b"c"]) != ids_crc(["a", "bc"])
    True
    """
    items: list[Any] = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if not items:
        return 0
    if isinstance(items[0], str):
        return zlib.crc32(("\0".join(items) + "\0").encode("utf-8", "surrogateescape"))
    return zlib.crc32(b"\0".join(items) + b"\0")


def summary_entry(*, embeddings: bool) -> dict[str, Any]:
    """The report summary's ``checksums``: the algorithm, and whether the rows have a table of
    checksums (not in a virtual output). The report adds the CRC of each of its tables
    (:func:`table_crc`) when it is stored."""
    return {"algorithm": ALGORITHM, "embeddings": embeddings}


def table_crc(values: np.ndarray) -> int:
    """The CRC-32 of one of a report's tables, as stored and as read back: strings as
    :func:`ids_crc` takes them, numbers as little-endian 64-bit integers.

    >>> table_crc(np.array(["b", "a"], dtype=object)) == ids_crc(["b", "a"])
    True
    >>> table_crc(np.arange(6).reshape(2, 3)) == table_crc(np.arange(6, dtype=np.int32).reshape(2, 3))
    True
    """
    if values.dtype.kind in "OSU":
        return ids_crc(values)
    return zlib.crc32(np.ascontiguousarray(values, dtype="<i8").tobytes())


class Checksums:
    """The checksums of one output, taken as its blocks are written (from any thread)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []
        self.ids: list[tuple[int, int, int]] = []
        self._lock = threading.Lock()

    def add_rows(self, start: int, block: np.ndarray, sums: np.ndarray | None = None) -> None:
        """Record the rows ``block`` written at output row ``start`` (``sums``: their
        :func:`row_sums`, when already taken)."""
        sums = row_sums(block) if sums is None else sums
        entry = (start, start + len(block), zlib.crc32(sums.data.cast("B")) if len(block) else zlib.crc32(b""))
        with self._lock:
            self.rows.append(entry)

    def add_ids(self, start: int, block: Sequence[str | bytes] | np.ndarray) -> None:
        """Record the IDs ``block`` written at output row ``start``."""
        entry = (start, start + len(block), ids_crc(block))
        with self._lock:
            self.ids.append(entry)

    def tables(self, *, rows: bool = True) -> dict[str, np.ndarray]:
        """The checksum tables to store in the report (``rows=False``: of the IDs only)."""
        entries = {ROW_TABLE: self.rows, ID_TABLE: self.ids} if rows else {ID_TABLE: self.ids}
        return {name: np.array(sorted(found), dtype=np.int64).reshape(-1, 3) for name, found in entries.items()}


class IdSink(Protocol):
    """Where a merge writes IDs: ``sink[start:stop] = block``."""

    def __setitem__(self, where: slice, block: Sequence[str | bytes] | np.ndarray) -> None: ...


class ChecksummedIds:
    """The output's ``sequence_ids``, each block checksummed as it is written into it."""

    def __init__(self, dataset: h5py.Dataset, checksums: Checksums) -> None:
        self.dataset, self.checksums = dataset, checksums

    def __setitem__(self, where: slice, block: Sequence[str | bytes] | np.ndarray) -> None:
        self.dataset[where] = block
        if len(block):
            self.checksums.add_ids(where.start or 0, block)


def read_checksums(group: h5py.Group) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ``(rows, ids)`` checksum tables of a report's group (None where absent: a file
    merged before checksums existed, or a virtual output's embeddings)."""
    return tuple(group[name][:] if name in group else None for name in (ROW_TABLE, ID_TABLE))  # type: ignore[return-value]
