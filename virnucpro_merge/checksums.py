"""Checksums of what a merge wrote, so that a merged file can later prove it is intact.

HDF5 keeps no checksum of contiguous data. A merge therefore records, in its
report, a CRC-32 (:func:`zlib.crc32`: in the standard library, ~3 GB/s here) of each
block of rows it wrote, computed from the bytes it already holds in memory to count
NaN rows (never by reading the output back), and one of each block of IDs::

    merge_report/
        embedding_checksums   (b, 3) int64: first row, end row, CRC-32 of the rows' bytes
        id_checksums          (c, 3) int64: first row, end row, CRC-32 of the IDs (see ids_crc)

The blocks are whatever the merge wrote at a time (a window of a shard, a chunk, a
block in index order): together they cover every row exactly once, which
:mod:`virnucpro_merge.verify` checks before it recomputes each one. A virtual output
records ID checksums only (its embeddings are the shards').
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Protocol

import h5py
import numpy as np

__all__ = ["ALGORITHM", "rows_crc", "ids_crc", "Checksums", "IdSink", "ChecksummedIds", "read_checksums"]

#: The name of the checksum, as the report's summary gives it.
ALGORITHM = "crc32"
_ROWS, _IDS = "embedding_checksums", "id_checksums"


def rows_crc(block: np.ndarray) -> int:
    """The CRC-32 of a block of float32 rows, as the output stores them (little-endian)."""
    data = np.ascontiguousarray(block, dtype="<f4")
    return zlib.crc32(data.data.cast("B"))


def ids_crc(ids: Sequence[str | bytes] | np.ndarray) -> int:
    """The CRC-32 of a block of IDs: their UTF-8 bytes, each ended by a NUL byte (which
    no stored ID can hold), so that ``["ab", "c"]`` and ``["a", "bc"]`` differ.

    >>> ids_crc(["ab", "c"]) == ids_crc([b"ab", b"c"]) != ids_crc(["a", "bc"])
    True
    """
    items: list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if not items:
        return 0
    if isinstance(items[0], str):
        return zlib.crc32(("\0".join(items) + "\0").encode("utf-8", "surrogateescape"))
    return zlib.crc32(b"\0".join(items) + b"\0")


class Checksums:
    """The checksums of one output, taken as its blocks are written (from any thread)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []
        self.ids: list[tuple[int, int, int]] = []
        self._lock = threading.Lock()

    def add_rows(self, start: int, block: np.ndarray) -> None:
        """Record the rows ``block`` written at output row ``start``."""
        entry = (start, start + len(block), rows_crc(block))
        with self._lock:
            self.rows.append(entry)

    def add_ids(self, start: int, block: Sequence[str | bytes] | np.ndarray) -> None:
        """Record the IDs ``block`` written at output row ``start``."""
        entry = (start, start + len(block), ids_crc(block))
        with self._lock:
            self.ids.append(entry)

    def write(self, group: h5py.Group, *, rows: bool = True) -> None:
        """Store the checksums in the report's group (``rows=False``: IDs only)."""
        for name, entries in ((_ROWS, self.rows if rows else None), (_IDS, self.ids)):
            if entries is not None:
                data = np.array(sorted(entries), dtype=np.int64).reshape(-1, 3)
                group.create_dataset(name, data=data)


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
    return tuple(group[name][:] if name in group else None for name in (_ROWS, _IDS))  # type: ignore[return-value]
