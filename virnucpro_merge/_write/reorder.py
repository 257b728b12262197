"""Writing the output in the run's input order (``order="index"``).

Stride distribution interleaves a run: worker ``r`` of ``N`` holds index positions
``r, r+N, ...``. To write rows in index order with bounded memory, the output is
filled block by block (``chunk_size`` rows): each block's rows are gathered from
every shard that holds some of them (one contiguous span read per shard for a
stride run), then written in one piece. A contiguous float32 shard's span is read
as raw bytes (one ``preadv``; the first shards' files kept open as plain files, as many as
the process may open: at 1,024 shards, every block reads from every shard); another's
through HDF5.

Where each index position's row is found comes from the planning step's check of the
IDs, which kept each row's place in the index (4 to 8 bytes an ID; found by the IDs'
64-bit hashes, each match checked by its bytes: a hash collision cannot put a row in the
wrong place). The index's IDs are written from the index; only the IDs the index does
not hold (written last) are read from the shards again.
"""

from __future__ import annotations

import resource
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from .._files import OpenFiles
from ..checksums import Checksums, IdSink, nonfinite_rows, row_sums
from ..errors import ExpectedIdsError, UnreadableShardError, shown_id
from ..health import RankTally
from ..ids import IdLookup
from ..plan import MergePlan, ShardPlan
from ..shards import embeddings_of, first_line, open_shard_file, read_id_rows, read_rows
from .copy import OUTPUT_DTYPE, BlockWriter, raw_copyable, read_raw_rows

__all__ = ["RowOrder", "index_lookup", "index_order", "write_in_order"]

_MAX_OPEN = 32  # shard files kept open at once by HDF5
_MAX_RAW_OPEN = 4096  # shard files kept open as plain files (fewer where the process may open fewer)
_BLOCK_BYTES = 32 * 2**20  # each of the two block buffers holds at most this (and chunk_size rows)


@dataclass
class RowOrder:
    """Output row ``i`` is global source row ``source_rows[i]`` (shards concatenated)."""

    source_rows: np.ndarray
    index: IdLookup  # the index's IDs
    ordered: np.ndarray  # the index positions of the first ``len(ordered)`` output rows
    missing_positions: np.ndarray  # index positions with no row (missing sequences)

    def ordered_ids(self, start: int, stop: int) -> np.ndarray:
        """The IDs of output rows ``start`` to ``stop`` (below ``len(ordered)``) as their UTF-8
        bytes, as a shard stores them (read from the index's lookup a block at a time: no
        Python str an ID held)."""
        block = np.empty(min(stop, self.ordered.size) - start, dtype=object)
        block[:] = self.index.encoded[self.ordered[start:stop]].tolist()
        return block


def index_lookup(index_ids: Collection[str] | IdLookup) -> IdLookup:
    """The index's IDs as a lookup, refused if one is there twice (the index order then has
    no one place for it)."""
    lookup = IdLookup.of(index_ids)
    if lookup.distinct != lookup.n:
        twice = min((positions for positions in lookup.by_bytes.values() if len(positions) > 1), key=min)
        said = shown_id(lookup.encoded[twice[0]].decode("utf-8", "surrogateescape"))
        msg = (f"order='index' needs an index without repeated sequence IDs ({said} is there {len(twice)} times, "
               f"at positions {', '.join(map(str, twice[:3]))}{', ...' if len(twice) > 3 else ''})")
        raise ExpectedIdsError(msg)
    return lookup


def index_order(plan: MergePlan) -> RowOrder:
    """Work out where each output row comes from: from each row's place in the index, as
    the check of the IDs found it (by hash, then by the ID's bytes: ``plan.ids``, planned
    with ``keep_ids`` against an :func:`index_lookup`). Rows and places are kept in 4 bytes
    each where they fit (at 10^7 IDs, 80 MB less at the merge's peak)."""
    assert plan.ids is not None
    assert plan.ids.lookup is not None
    places = plan.ids.row_places()
    narrow = np.dtype(np.int32 if max(places.size, plan.ids.lookup.n) < 2**31 else np.int64)
    rows, placed = np.arange(places.size, dtype=narrow), places >= 0
    row_at: np.ndarray = np.full(plan.ids.lookup.n, -1, narrow)
    row_at[places[placed]] = rows[placed]  # (one row a place: the plan refused a duplicate)
    extra = rows[~placed]  # (the rows of IDs the index does not hold: written last)
    del rows, placed
    found = row_at >= 0
    source_rows = np.concatenate([row_at[found], extra])
    del row_at, extra
    positions = np.arange(plan.ids.lookup.n, dtype=narrow)
    return RowOrder(source_rows=source_rows, index=plan.ids.lookup, ordered=positions[found],
                    missing_positions=positions[~found])


class _Sources:
    """Where the rows of ordered blocks are read: the raw bytes of contiguous float32 shards
    (plain files), the others' through HDF5; the IDs through HDF5."""

    def __init__(self, scratch_rows: int, dim: int) -> None:
        self.h5: OpenFiles[Path, h5py.File] = OpenFiles(open_shard_file, _MAX_OPEN)
        # Every block reads the shards in the same order: past as many as are kept open, the
        # least recently used would be the next one wanted. The first ones stay open, the others
        # are opened for each read.
        self.raw: dict[Path, BinaryIO] = {}
        self.raw_limit = _raw_limit()
        self.scratch = np.empty((scratch_rows, dim), OUTPUT_DTYPE)

    def gather(self, shard: ShardPlan, local: np.ndarray, block: np.ndarray, slots: np.ndarray) -> None:
        """``block[slots]`` = the shard's rows ``local`` (sorted)."""
        try:
            span = int(local[-1]) - int(local[0]) + 1
            if raw_copyable(shard) and span <= self.scratch.shape[0]:
                block[slots] = self._span(shard, int(local[0]), span)[local - local[0]]
            else:
                _gather(embeddings_of(self.h5.get(shard.source), shard.source), local, block, slots)
        except OSError as err:
            raise UnreadableShardError(shard.origin, f"cannot read rows ({first_line(err)})") from err

    def _span(self, shard: ShardPlan, first: int, count: int) -> np.ndarray:
        """The shard's rows ``first`` to ``first + count`` as raw bytes, in the scratch buffer."""
        rows = self.scratch[:count]
        kept = self.raw.get(shard.source)
        if kept is None and len(self.raw) < self.raw_limit:
            kept = self.raw[shard.source] = open(shard.source, "rb", buffering=0)  # noqa: SIM115 (closed in close)
        if kept is not None:
            read_raw_rows(kept.fileno(), shard, first, rows)
        else:
            with open(shard.source, "rb", buffering=0) as once:
                read_raw_rows(once.fileno(), shard, first, rows)
        return rows

    def ids(self, shard: ShardPlan, local: np.ndarray) -> np.ndarray:
        """The shard's IDs at rows ``local`` (sorted), as str."""
        try:
            return read_id_rows(self.h5.get(shard.source), shard.source, local, text=True)
        except OSError as err:
            raise UnreadableShardError(shard.origin, f"cannot read rows ({first_line(err)})") from err

    def close(self) -> None:
        self.h5.close()
        while self.raw:
            self.raw.popitem()[1].close()


def _raw_limit() -> int:
    """Plain files kept open: :data:`_MAX_RAW_OPEN` at most, and with the HDF5 files kept open,
    half of what this process may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = _MAX_RAW_OPEN if soft == resource.RLIM_INFINITY else soft // 2 - _MAX_OPEN
    return max(0, min(_MAX_RAW_OPEN, room))


def _by_shard(owner: np.ndarray, source: np.ndarray, shards: Sequence[ShardPlan]
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """A block's rows shard by shard: the shard's number, the rows' places in the block, and
    their rows in the shard (sorted)."""
    by_owner = np.lexsort((source, owner))  # (by shard, then by row: a shard's rows in their order)
    ends = np.flatnonzero(np.diff(owner[by_owner])) + 1
    for slots in np.split(by_owner, ends):
        if slots.size:
            k = int(owner[slots[0]])
            yield k, slots, source[slots] - shards[k].offset


def _gather(dset: h5py.Dataset, local: np.ndarray, block: np.ndarray, slots: np.ndarray) -> None:
    """``block[slots] = dset[local]`` for sorted ``local`` rows.

    In a stride run a shard's rows in a block are consecutive in the shard and
    evenly spaced in the output: HDF5 then reads them straight into place (one
    strided read, no copy); otherwise through :func:`~virnucpro_merge.shards.read_rows`.
    """
    low, count = int(local[0]), local.size
    step = int(slots[1] - slots[0]) if count > 1 else 1
    evenly = step > 0 and np.array_equal(slots, slots[0] + step * np.arange(count))
    if evenly and int(local[-1]) - low + 1 == count and dset.dtype == block.dtype:
        first = int(slots[0])
        dset.read_direct(block, np.s_[low : low + count], np.s_[first : first + step * (count - 1) + 1 : step])
    else:
        block[slots] = read_rows(dset, local)


def _nonfinite_mask(block: np.ndarray) -> np.ndarray | None:
    """Which rows of ``block`` hold NaN or Inf, or None when none do (one fast pass)."""
    if not nonfinite_rows(block):
        return None
    return ~np.isfinite(block).all(axis=1)


def write_in_order(
    plan: MergePlan,
    order: RowOrder,
    writer: BlockWriter,
    ids_out: IdSink,
    block_rows: int,
    checksums: Checksums,
    tallies: Mapping[str, RankTally] | None = None,
) -> dict[str, int]:
    """Fill the output block by block; return the rows holding NaN or Inf, per shard.

    Two block buffers take turns: while ``writer`` writes one on its thread, the
    next is gathered here.
    """
    shards = plan.copied_shards
    starts = np.array([s.offset for s in shards], dtype=np.int64)
    nonfinite = {str(s.path): 0 for s in shards}
    row_bytes = max(plan.embedding_dim, 1) * OUTPUT_DTYPE.itemsize
    block_rows = max(1, min(block_rows, _BLOCK_BYTES // row_bytes))
    buffers = [np.empty((min(block_rows, order.source_rows.size), plan.embedding_dim), OUTPUT_DTYPE)
               for _ in range(2)]
    ordered = order.ordered.size
    for start in range(0, ordered, block_rows):  # the index's IDs first, before the disk is busy
        ids_out[start : min(start + block_rows, ordered)] = order.ordered_ids(start, start + block_rows)
    sources = _Sources(block_rows, plan.embedding_dim)
    try:
        for turn, out_start in enumerate(range(0, order.source_rows.size, block_rows)):
            source = order.source_rows[out_start : out_start + block_rows]
            owner = np.searchsorted(starts, source, side="right") - 1
            block = buffers[turn % 2][: source.size]
            first_extra = max(ordered - out_start, 0)  # (the block's rows from here on: IDs not in the index)
            extra = np.empty(max(source.size - first_extra, 0), dtype=object)
            groups = list(_by_shard(owner, source, shards))
            for k, slots, local in groups:
                sources.gather(shards[k], local, block, slots)
                wanted = slots >= first_extra
                if wanted.any():
                    extra[slots[wanted] - first_extra] = sources.ids(shards[k], local[wanted])
            sums = row_sums(block)
            checksums.add_rows(out_start, block, sums)
            bad = _nonfinite_mask(block)
            if bad is not None:
                for k, n in zip(*np.unique(owner[bad], return_counts=True), strict=True):
                    nonfinite[str(shards[k].path)] += int(n)
            _tally(block, sums, bad, groups, shards, tallies or {})
            writer.write(block, out_start)  # waits for the write of two blocks ago
            if extra.size:
                ids_out[out_start + first_extra : out_start + source.size] = extra
        writer.wait()
    finally:
        sources.close()
    return nonfinite


def _tally(block: np.ndarray, sums: np.ndarray, bad: np.ndarray | None,
           groups: Sequence[tuple[int, np.ndarray, np.ndarray]], shards: Sequence[ShardPlan],
           tallies: Mapping[str, RankTally]) -> None:
    """Each shard's rows of an ordered block, summed up in its tally (with their rows in the shard)."""
    for k, mine, local in groups:
        tally = tallies.get(str(shards[k].path))
        if tally is not None:
            nonfinite = 0 if bad is None else int(bad[mine].sum())
            tally.add(block[mine], sums[mine], nonfinite, rows=local)
