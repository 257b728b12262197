"""The merged HDF5 file: created, filled with the shards' rows (or mapped onto them), reported.

:func:`write_contiguous` writes a self-contained output: the raw-copyable shards are
copied on a second thread from the start while an *ID step* writes the IDs (and, for
a plain merge, checks them: the final plan is known only when it returns);
:func:`write_virtual` writes an output whose embeddings stay in the shards. Both
write into a temporary file that :mod:`virnucpro_merge.outputs` moves into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from ..checksums import ChecksummedIds, Checksums, IdSink, summary_entry
from ..errors import OutputError
from ..health import RankTally
from ..outputs import Pending, atomic_output
from ..plan import MergePlan, ShardPlan, refuse_changed
from ..report import record_health, record_nonfinite, write_report
from ..shards import EMBEDDINGS, SEQUENCE_IDS, first_line
from ..sources import hdf5_source_name, relative_source, resolve_source
from . import sysio
from .copy import (
    OUTPUT_DTYPE,
    BlockWriter,
    RowWriter,
    copy_embeddings_h5py,
    copy_ids,
    finish_tally,
    raw_copy_in_background,
    raw_copyable,
)
from .reorder import RowOrder, write_in_order

__all__ = ["IdStep", "output_file", "copy_planned_ids", "write_contiguous", "write_virtual"]

logger = logging.getLogger("virnucpro_merge")

#: The ID step of a write: given the output's ``sequence_ids``, write the IDs there
#: and return the final plan and its report.
IdStep = Callable[[IdSink], tuple[MergePlan, dict[str, Any]]]


@contextmanager
def output_file(output: Path, size: int, *, durable: bool = True) -> Iterator[Pending]:
    """:func:`~.atomic.atomic_output`, with a failure to write it reported as :class:`OutputError`."""
    with atomic_output(output, size, durable=durable) as pending:
        try:
            yield pending
        except (OSError, RuntimeError) as err:  # reads raise ShardError: this is the output side
            # (h5py reports a failed final flush, e.g. a full disk, as RuntimeError)
            msg = f"{output}: cannot write the merged file ({first_line(err)})"
            raise OutputError(msg) from err


def copy_planned_ids(plan: MergePlan, report: dict[str, Any], *, chunk_size: int) -> IdStep:
    """The ID step of a merge planned beforehand: copy each shard's IDs into place."""

    def step(ids_out: IdSink) -> tuple[MergePlan, dict[str, Any]]:
        for shard in plan.copied_shards:
            copy_ids(shard, ids_out, chunk_size)
        return plan, report

    return step


def _create(temp: Path) -> h5py.File:
    """The output file, opened by HDF5 without a sieve buffer.

    Raw bytes are copied into the embeddings beside HDF5's own writes; a sieve
    buffer (HDF5's cache of a small stretch of raw data) could hold a stale copy of
    rows copied meanwhile and write it back over them when the file closes.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_sieve_buf_size(0)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    return h5py.File(h5py.h5f.create(os.fsencode(temp), h5py.h5f.ACC_TRUNC, fapl=fapl))


def _create_embeddings(out: h5py.File, rows: int, dim: int) -> h5py.Dataset:
    """A contiguous float32 dataset whose bytes are placed in the file right away.

    Contiguous rows read fast (a random row in microseconds, where h5py's guessed
    chunks would split rows into column strips), and a known byte offset lets shards
    of the same layout be copied as raw bytes. No fill: every row gets written.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return out.create_dataset(EMBEDDINGS, shape=(rows, dim), dtype=OUTPUT_DTYPE, dcpl=dcpl, fill_time="never")


class _NoBar(contextlib.nullcontext[None]):
    """A progress bar that shows nothing (cheaper than a disabled tqdm, ~10 ms to create)."""

    def update(self, n: int) -> None:
        pass


@dataclass
class _Output:
    """The output being written: its file, where its rows go, its IDs, their checksums."""

    file: h5py.File
    temp: Path
    data_offset: int  # where the embeddings' bytes are in the file (0 where there are no rows)
    row_bytes: int
    written: sysio.Written
    ids: ChecksummedIds
    checksums: Checksums


@contextmanager
def _opened(draft: MergePlan, temp: Path, *, progress: bool, durable: bool) -> Iterator[_Output]:
    """The output file of ``draft``, its datasets made (the embeddings' bytes placed at once)."""
    row_bytes = draft.embedding_dim * OUTPUT_DTYPE.itemsize
    bar = tqdm(total=draft.total_sequences, unit="seq", desc="Merging") if progress else _NoBar()
    checksums = Checksums()
    with bar, _create(temp) as out:
        emb_out = _create_embeddings(out, draft.total_sequences, draft.embedding_dim)
        data_offset = emb_out.id.get_offset()
        if data_offset is not None:
            sysio.reserve(temp, data_offset, draft.total_sequences * row_bytes)
        ids_out = ChecksummedIds(
            out.create_dataset(SEQUENCE_IDS, shape=(draft.total_sequences,), dtype=h5py.string_dtype()), checksums)
        out.flush()  # HDF5's own writes are done: from here on the embeddings' bytes are written directly
        written = sysio.Written(temp, data_offset if durable else None, row_bytes, bar)
        try:
            yield _Output(out, temp, data_offset or 0, row_bytes, written, ids_out, checksums)
        finally:
            written.close()


#: What a route of :func:`write_contiguous` returns: the final plan, its report, and the
#: rows holding NaN or Inf per shard path (none counted where the final plan moved rows).
_Written = tuple[MergePlan, dict[str, Any], dict[str, int]]


def _in_index_order(out: _Output, draft: MergePlan, id_step: IdStep, row_order: RowOrder, chunk_size: int,
                    tallies: dict[str, RankTally]) -> _Written:
    """Rows in the index's order, block by block; then the ID step (the IDs are the order's)."""
    writer = BlockWriter(out.temp, out.data_offset, out.row_bytes, out.written)
    try:
        nonfinite = write_in_order(draft, row_order, writer, out.ids, chunk_size, out.checksums, tallies)
    finally:
        writer.close()
    plan, report = id_step(out.ids)
    return plan, report, nonfinite


def _shard_by_shard(out: _Output, draft: MergePlan, id_step: IdStep, chunk_size: int,
                    tallies: dict[str, RankTally]) -> _Written:
    """Rows shard by shard: the raw-copyable shards copied on a second thread from the start,
    while the ID step runs here; then the others through h5py. Where the ID step's plan moves
    rows (a shard whose IDs could not be read), the copy is stopped and nothing more written."""
    shards = draft.copied_shards
    copyable = [raw_copyable(s) for s in shards]  # (told apart once: a shard's equality compares all it holds)
    raw = [s for s, yes in zip(shards, copyable, strict=True) if yes]
    rest = [s for s, yes in zip(shards, copyable, strict=True) if not yes]
    with raw_copy_in_background(raw, out.temp, out.data_offset, chunk_size, out.written, out.checksums,
                                tallies) as copying:
        plan, report = id_step(out.ids)
        if not plan.same_rows_as(draft):
            copying.stop()
            return plan, report, {}
        nonfinite = _copy_through_h5py(rest, out, min(chunk_size, draft.total_sequences), draft.embedding_dim, tallies)
        nonfinite.update(copying.nonfinite())
    return plan, report, nonfinite


def _copy_through_h5py(shards: list[ShardPlan], out: _Output, rows: int, dim: int,
                       tallies: dict[str, RankTally]) -> dict[str, int]:
    """The shards that cannot be copied as raw bytes (float16, chunked, compressed...), read by h5py."""
    if not shards:
        return {}
    buffer = np.empty((rows, dim), OUTPUT_DTYPE)
    row_writer = RowWriter(out.temp, out.data_offset, out.row_bytes, out.written)
    try:
        return {str(shard.path): copy_embeddings_h5py(shard, row_writer, buffer, out.checksums,
                                                      tallies.get(str(shard.path))) for shard in shards}
    finally:
        row_writer.close()


def write_contiguous(
    draft: MergePlan,
    temp: Path,
    id_step: IdStep,
    *,
    chunk_size: int,
    progress: bool,
    row_order: RowOrder | None = None,
    durable: bool = True,
) -> tuple[MergePlan, dict[str, int]]:
    """Write a self-contained output of ``draft``'s rows into ``temp``, with the
    checksums of every block of rows and IDs written (:mod:`..checksums`): in the index's
    order (``row_order``), or shard by shard.

    Returns the final plan (the ID step's) and the rows holding NaN or Inf per
    shard path. Where the final plan moves rows (a shard whose IDs could not be
    read), the copy is stopped there and ``temp`` holds nothing usable. Without
    ``durable``, the written rows are not sent on to the disk as they go.
    """
    shards = draft.copied_shards
    for shard in shards:
        refuse_changed(shard)
    tallies = {str(s.path): RankTally() for s in shards}
    with _opened(draft, temp, progress=progress, durable=durable) as out:
        if row_order is not None:
            plan, report, nonfinite = _in_index_order(out, draft, id_step, row_order, chunk_size, tallies)
        else:
            plan, report, nonfinite = _shard_by_shard(out, draft, id_step, chunk_size, tallies)
        if not plan.same_rows_as(draft):
            return plan, {}
        record_nonfinite(report, nonfinite)
        record_health(report, {str(s.path): finish_tally(s, tallies[str(s.path)]) for s in shards})
        report["checksums"] = summary_entry(embeddings=True)
        write_report(out.file, report, out.checksums.tables())
        for shard in shards:  # a worker that rewrote its file meanwhile
            refuse_changed(shard)
    for shard in shards:
        logger.debug("Merged %s: %d sequences at row %d", shard.path, shard.num_sequences, shard.offset)
    nonfinite = {str(s.path): nonfinite[str(s.path)] for s in shards}  # in shard order
    if any(nonfinite.values()):
        logger.warning("%d rows of embeddings hold NaN or Inf (see the report's nonfinite_rows)",
                       sum(nonfinite.values()))
    return plan, nonfinite


def write_virtual(plan: MergePlan, temp: Path, output: Path, report: dict[str, Any], *, chunk_size: int) -> None:
    """Write a virtual output: IDs and report for real, embeddings mapped from the shards."""
    shards = plan.copied_shards
    report["sources"] = []
    layout = h5py.VirtualLayout(shape=(plan.total_sequences, plan.embedding_dim), dtype=OUTPUT_DTYPE)
    for shard in shards:
        refuse_changed(shard)
        stored = relative_source(shard.path, output)
        shape = (shard.num_sequences, shard.embedding_dim)
        layout[shard.offset : shard.offset + shard.num_sequences] = h5py.VirtualSource(
            hdf5_source_name(stored), EMBEDDINGS, shape=shape, dtype=shard.dtype
        )
        report["sources"].append({"path": stored, **(shard.fingerprint or {})})
    record_nonfinite(report, None)  # never read: not counted
    report["checksums"] = summary_entry(embeddings=False)  # rows: the shards'
    checksums = Checksums()
    with h5py.File(temp, "w") as out:
        if plan.total_sequences:
            out.create_virtual_dataset(EMBEDDINGS, layout, fillvalue=np.nan)
        else:
            out.create_dataset(EMBEDDINGS, shape=(0, plan.embedding_dim), dtype=OUTPUT_DTYPE)
        ids_out = ChecksummedIds(
            out.create_dataset(SEQUENCE_IDS, shape=(plan.total_sequences,), dtype=h5py.string_dtype()), checksums)
        for shard in shards:
            copy_ids(shard, ids_out, chunk_size)
        write_report(out, report, checksums.tables(rows=False))
    _check_mapping(temp, output, [s.path for s in shards])


def _check_mapping(temp: Path, output: Path, shards: list[Path]) -> None:
    """Read back what the virtual output maps: each source must be its shard, seen from the
    output's folder (a source HDF5 would look for elsewhere would read as NaN, silently)."""
    with h5py.File(temp, "r") as out:
        dset = out[EMBEDDINGS]
        stored = [m.file_name.replace("%%", "%") for m in dset.virtual_sources()] if dset.is_virtual else []
    for name, shard in zip(stored, shards, strict=True):
        found = resolve_source(name, output)
        if not (found.exists() and os.path.samefile(found, shard)):
            msg = f"{output}: its source {name} would not be {shard} when read (is a folder on the way a link?)"
            raise OutputError(msg)
