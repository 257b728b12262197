"""Writing the output in the run's input order (``order="index"``).

Stride distribution interleaves a run: worker ``r`` of ``N`` holds index positions
``r, r+N, ...``. To write rows in index order with bounded memory, the output is
filled block by block (``chunk_size`` rows): each block's rows are gathered from
every shard that holds some of them (one contiguous span read per shard for a
stride run), then written in one piece.

Where each index position's row is found comes from the planning step's check of the
IDs, which kept each row's place in the index (4 to 8 bytes an ID; found by the IDs'
64-bit hashes, each match checked by its bytes: a hash collision cannot put a row in the
wrong place). Every ID is compared again, as a string, with the ID read from the shard as
its row is written.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .._files import OpenFiles
from ..checksums import Checksums, IdSink, nonfinite_rows, row_sums
from ..errors import ExpectedIdsError, ShardError, UnreadableShardError
from ..health import RankTally
from ..ids import IdLookup
from ..plan import MergePlan, ShardPlan
from ..shards import embeddings_of, first_line, open_shard_file, read_id_rows, read_rows
from .copy import OUTPUT_DTYPE, BlockWriter

__all__ = ["RowOrder", "index_lookup", "index_order", "write_in_order"]

# Read a shard's span covering a block's rows when it is at most this many times
# longer than the rows wanted (always true for stride runs); else read row by row.
_MAX_OPEN = 32  # shard files kept open at once
_BLOCK_BYTES = 32 * 2**20  # each of the two block buffers holds at most this (and chunk_size rows)


@dataclass
class RowOrder:
    """Output row ``i`` is global source row ``source_rows[i]`` (shards concatenated)."""

    source_rows: np.ndarray
    ordered_ids: np.ndarray  # the index's IDs of the first ``len(ordered_ids)`` output rows
    missing_positions: np.ndarray  # index positions with no row (missing sequences)


def index_lookup(index_ids: Collection[str] | IdLookup) -> IdLookup:
    """The index's IDs as a lookup, refused if one is there twice (the index order then has
    no one place for it)."""
    lookup = IdLookup.of(index_ids)
    if lookup.distinct != lookup.n:
        msg = "order='index' needs an index without repeated sequence IDs"
        raise ExpectedIdsError(msg)
    return lookup


def index_order(plan: MergePlan) -> RowOrder:
    """Work out where each output row comes from: from each row's place in the index, as
    the check of the IDs found it (by hash, then by the ID's bytes: ``plan.ids``, planned
    with ``keep_ids`` against an :func:`index_lookup`)."""
    assert plan.ids is not None
    assert plan.ids.lookup is not None
    places = plan.ids.row_places()
    expected = np.flatnonzero(places >= 0)
    row_at = np.full(plan.ids.lookup.n, -1, np.int64)
    row_at[places[expected]] = expected  # (one row a place: the plan refused a duplicate)
    found = row_at >= 0
    return RowOrder(
        source_rows=np.concatenate([row_at[found], np.flatnonzero(places < 0)]),  # extra IDs go last
        ordered_ids=np.fromiter(plan.ids.lookup.ids(np.flatnonzero(found)), dtype=object, count=int(found.sum())),
        missing_positions=np.flatnonzero(~found),
    )


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
    ordered = order.ordered_ids.size
    for start in range(0, ordered, block_rows):  # the index's IDs first, before the disk is busy
        ids_out[start : min(start + block_rows, ordered)] = order.ordered_ids[start : start + block_rows]
    handles: OpenFiles[Path, h5py.File] = OpenFiles(open_shard_file, _MAX_OPEN)
    try:
        for turn, out_start in enumerate(range(0, order.source_rows.size, block_rows)):
            source = order.source_rows[out_start : out_start + block_rows]
            owner = np.searchsorted(starts, source, side="right") - 1
            block = buffers[turn % 2][: source.size]
            block_ids = np.empty(source.size, dtype=object)
            for k in np.unique(owner):
                shard = shards[k]
                slots = np.flatnonzero(owner == k)
                local = source[slots] - shard.offset
                sort = np.argsort(local, kind="stable")
                slots, local = slots[sort], local[sort]
                handle = handles.get(shard.source)
                try:
                    _gather(embeddings_of(handle, shard.source), local, block, slots)
                    block_ids[slots] = read_id_rows(handle, shard.source, local, text=True)
                except OSError as err:
                    raise UnreadableShardError(shard.origin, f"cannot read rows ({first_line(err)})") from err
            sums = row_sums(block)
            checksums.add_rows(out_start, block, sums)
            bad = _nonfinite_mask(block)
            if bad is not None:
                for k, n in zip(*np.unique(owner[bad], return_counts=True), strict=True):
                    nonfinite[str(shards[k].path)] += int(n)
            _tally(block, sums, bad, owner, source, shards, tallies or {})
            _check_ids(block_ids, order, out_start, shards, owner)
            writer.write(block, out_start)  # waits for the write of two blocks ago
            if out_start + source.size > ordered:  # IDs not in the index, read from the shards
                first = max(out_start, ordered)
                ids_out[first : out_start + source.size] = block_ids[first - out_start :]
        writer.wait()
    finally:
        handles.close()
    return nonfinite


def _tally(block: np.ndarray, sums: np.ndarray, bad: np.ndarray | None, owner: np.ndarray, source: np.ndarray,
           shards: Sequence[ShardPlan], tallies: Mapping[str, RankTally]) -> None:
    """Each shard's rows of an ordered block, summed up in its tally (with their rows in the shard)."""
    for k in np.unique(owner):
        tally = tallies.get(str(shards[k].path))
        if tally is not None:
            mine = np.flatnonzero(owner == k)
            nonfinite = 0 if bad is None else int(bad[mine].sum())
            tally.add(block[mine], sums[mine], nonfinite, rows=source[mine] - shards[k].offset)


def _check_ids(block_ids: np.ndarray, order: RowOrder, out_start: int, shards: Sequence[ShardPlan],
               owner: np.ndarray) -> None:
    """Each ordered row's ID, read from its shard, must be the index's ID at that place."""
    stop = min(out_start + block_ids.size, order.ordered_ids.size)
    if stop <= out_start:
        return
    expected = order.ordered_ids[out_start:stop]
    got = block_ids[: stop - out_start]
    if not np.array_equal(got, expected):
        bad = int(np.flatnonzero(got != expected)[0])
        raise ShardError(
            shards[owner[bad]].origin,
            f"row for {expected[bad]!r} holds {got[bad]!r} (64-bit hash collision; please report)",
        )
