"""Merge shards into one output: plan (IDs only), then stream the embeddings."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
import contextlib
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ._atomic import atomic_output, check_room
from ._copy import (
    OUTPUT_DTYPE,
    BlockWriter,
    RowWriter,
    Written,
    copy_embeddings_h5py,
    copy_ids,
    count_nonfinite_raw,
    raw_copy_in_background,
    raw_copyable,
    reserve,
)
from .errors import MergeError, NonFiniteError, OutputError
from ._reorder import RowOrder, index_order, write_in_order
from .plan import OK, MergePlan, ShardPlan, check_ids, plan_merge, read_layout, refuse_changed
from .report import build_report, read_merge_report, record_nonfinite, write_report
from .shards import EMBEDDINGS, SEQUENCE_IDS, first_line
from .sources import relative_source, resolve_source
from .validation import as_id_set

__all__ = ["CHUNK_SIZE", "aggregate_shards", "materialize", "write_merge"]

logger = logging.getLogger("virnucpro_merge")

#: Rows per streaming chunk by default.
CHUNK_SIZE = 10000


def _check_output_path(output: Path, shard_files: Sequence[Path]) -> None:
    """Refuse an output that would overwrite one of the inputs."""
    target = output.resolve()
    for shard in shard_files:
        if shard.resolve() == target or (
            output.exists() and shard.exists() and os.path.samefile(shard, output)
        ):
            raise OutputError(f"{output}: the output path is also an input shard")


LAYOUTS = ("contiguous", "virtual")
ORDERS = ("shards", "index")


def _check_options(chunk_size: int, layout: str, order: str, expected, fail_on_nonfinite: bool) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise MergeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if layout not in LAYOUTS:
        raise MergeError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if order not in ORDERS:
        raise MergeError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "index":
        if layout == "virtual":
            raise MergeError("order='index' writes the embeddings, so it needs layout='contiguous'")
        if expected is None or isinstance(expected, (set, frozenset)):
            raise MergeError("order='index' needs expected_sequence_ids in index order (a list, not a set)")
    if fail_on_nonfinite and layout == "virtual":
        raise MergeError("fail_on_nonfinite reads every embedding, which layout='virtual' never does")


def aggregate_shards(
    shard_files: Sequence[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    expected_sequence_ids: Collection[str] | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    partial: bool = False,
    progress: bool = False,
    fail_on_nonfinite: bool = False,
    layout: str = "contiguous",
    order: str = "shards",
    client: object | None = None,
) -> Path:
    """Merge shard files into one HDF5 file, checking that no sequence is lost.

    Every shard's metadata is read first; then the embeddings are streamed,
    ``chunk_size`` rows at a time, into a temporary file while the IDs are read and
    checked (on the other core). The temporary file replaces ``output_path`` only
    when both are done and sound; a failed check stops the copy and removes it.

    Parameters
    ----------
    shard_files : sequence of path-like
        The shards, merged in this order (then in-shard row order). A merged
        output is a valid shard too (a re-run loop); its lineage is recorded.
    output_path : path-like
        The merged file to write. An existing file is replaced only on success.
    expected_sequence_ids : collection of str, optional
        Every ID the run was given; absent ones are an error (or, with
        ``partial=True``, recorded). IDs present but not expected are logged.
    chunk_size : int
        Rows of embeddings read and written at a time; bounds memory.
    partial : bool
        Accept a run where workers failed: skip absent or unreadable shards and
        record missing IDs instead of raising. Duplicates are still an error.
    progress : bool
        Show a progress bar (tqdm) while copying.
    fail_on_nonfinite : bool
        Refuse embeddings holding NaN or Inf (:class:`NonFiniteError`). Either
        way, the rows holding them are counted per shard in the report
        (``nonfinite_rows``).
    layout : {"contiguous", "virtual"}
        ``"virtual"`` copies no embeddings: the output maps each shard's rows in
        place (an HDF5 virtual dataset, NaN where a source goes missing), with
        the IDs and the report stored for real. The shards must then stay where
        they are; :func:`materialize` makes a self-contained copy.
    order : {"shards", "index"}
        ``"index"`` writes rows in the order of ``expected_sequence_ids`` (a
        list in index order), missing ones left out and their index positions
        recorded (``missing_positions``); IDs not in the index come last.
    client : dask.distributed.Client, optional
        Plan on this Dask cluster: shards scanned by its workers, IDs checked
        hash-partitioned across them (:mod:`virnucpro_merge.cluster`); then
        write as usual. ``expected_sequence_ids`` may then be the path
        (``pathlib.Path``) of an expected-ID file, read by the workers.

    Returns
    -------
    Path
        ``output_path``.

    Raises
    ------
    MergeError
        (a ``ValueError``) No shards; a duplicate ID (:class:`DuplicateIdError`);
        missing expected IDs (:class:`MissingIdsError`); NaN or Inf with
        ``fail_on_nonfinite`` (:class:`NonFiniteError`); a bad shard
        (:class:`ShardError`); an unusable output path (:class:`OutputError`).
    """
    if not shard_files:
        raise MergeError("No shard files provided")
    _check_options(chunk_size, layout, order, expected_sequence_ids, fail_on_nonfinite)
    if client is not None and order == "index":
        raise MergeError("order='index' is not available with a Dask client (it needs the IDs in one place)")
    shard_paths = [Path(p) for p in shard_files]
    output = Path(output_path)
    _check_output_path(output, shard_paths)

    logger.debug("phase: plan")
    if client is None and layout == "contiguous" and order == "shards":
        _merge_while_checking(shard_paths, output, expected_sequence_ids, partial=partial, chunk_size=chunk_size,
                              progress=progress, fail_on_nonfinite=fail_on_nonfinite)
        return output
    plan = plan_merge(shard_paths, expected_sequence_ids, partial=partial, client=client, keep_ids=order == "index")
    report = build_report(plan, chunk_size, layout=layout, order=order)
    row_order = None
    if order == "index":
        row_order = index_order(plan, list(expected_sequence_ids))
        report["missing_positions"] = row_order.missing_positions.tolist()
    write_merge(plan, output, report, chunk_size=chunk_size, progress=progress,
                fail_on_nonfinite=fail_on_nonfinite, row_order=row_order)
    return output


#: The ID step of a write: given the output's ``sequence_ids``, write them and
#: return the final plan and its report.
IdStep = Callable[[h5py.Dataset], tuple[MergePlan, dict]]


class _LayoutChanged(Exception):
    """A shard's IDs could not be read (partial merge): the rows after it move."""

    def __init__(self, plan: MergePlan) -> None:
        super().__init__("layout changed")
        self.plan = plan


def _checking_ids(layout: MergePlan, expected: set[str] | frozenset[str] | None, *, partial: bool,
                  chunk_size: int) -> IdStep:
    """The ID step of a plain merge: check the IDs, writing them out as they are read."""

    def step(ids_out: h5py.Dataset) -> tuple[MergePlan, dict]:
        def write_ids(shard: ShardPlan, chunks: Iterator[list[str]]) -> Iterator[list[str]]:
            start = shard.offset
            for chunk in chunks:
                ids_out[start : start + len(chunk)] = chunk
                start += len(chunk)
                yield chunk

        plan = check_ids(layout, expected, partial=partial, on_ids=write_ids)
        if [(s.status, s.offset) for s in plan.shards] != [(s.status, s.offset) for s in layout.shards]:
            raise _LayoutChanged(plan)
        return plan, build_report(plan, chunk_size)

    return step


def _planned_ids(plan: MergePlan, report: dict, *, chunk_size: int, copy: bool) -> IdStep:
    """The ID step of a merge planned beforehand: copy the IDs, if ``copy`` (index order
    writes them itself)."""

    def step(ids_out: h5py.Dataset) -> tuple[MergePlan, dict]:
        if copy:
            for shard in plan.shards:
                if shard.status == OK:
                    copy_ids(shard, ids_out, chunk_size)
        return plan, report

    return step


def _merge_while_checking(
    paths: list[Path],
    output: Path,
    expected_ids: Collection[str] | None,
    *,
    partial: bool,
    chunk_size: int,
    progress: bool,
    fail_on_nonfinite: bool,
) -> None:
    """A plain merge: the embeddings are copied while the IDs are checked.

    Checking the IDs takes about a third of the copy's time; done first, it would
    add that to every merge. The copy goes to the temporary file, which a failed
    check removes, so ``output`` sees nothing either way until the check passed.
    Where the output's folder cannot hold the merge, the IDs are checked first
    (a duplicate is then reported before the lack of space).
    """
    expected = None if expected_ids is None else as_id_set(expected_ids)
    layout = read_layout(paths, partial=partial)
    size = layout.output_bytes
    try:
        check_room(output, size)
    except (OSError, MergeError):
        plan = check_ids(layout, expected, partial=partial)
        write_merge(plan, output, build_report(plan, chunk_size), chunk_size=chunk_size, progress=progress,
                    fail_on_nonfinite=fail_on_nonfinite)
        return
    while True:
        try:
            with _output_file(output, size) as temp:
                plan, nonfinite = _write(layout, temp, _checking_ids(layout, expected, partial=partial,
                                         chunk_size=chunk_size), chunk_size=chunk_size, progress=progress)
                _refuse_nonfinite(nonfinite, fail_on_nonfinite)
            break
        except _LayoutChanged as changed:
            logger.debug("Layout changed: merging again without the shards that failed")
            layout = changed.plan
    _log_done(output, plan)


@contextmanager
def _output_file(output: Path, size: int) -> Iterator[Path]:
    """:func:`atomic_output`, with a failure to write it reported as :class:`OutputError`."""
    with atomic_output(output, size) as temp:
        try:
            yield temp
        except (OSError, RuntimeError) as err:  # reads raise ShardError: this is the output side
            # (h5py reports a failed final flush, e.g. a full disk, as RuntimeError)
            raise OutputError(f"{output}: cannot write the merged file ({first_line(err)})") from err


def _refuse_nonfinite(nonfinite: dict[str, int], fail_on_nonfinite: bool) -> None:
    if fail_on_nonfinite and any(nonfinite.values()):
        raise NonFiniteError(nonfinite)


def _log_done(output: Path, plan: MergePlan) -> None:
    logger.debug("phase: done")
    logger.info("Aggregation complete: %s, %d sequences", output, plan.total_sequences)


def write_merge(
    plan: MergePlan,
    output: Path,
    report: dict,
    *,
    chunk_size: int,
    progress: bool,
    fail_on_nonfinite: bool = False,
    row_order: RowOrder | None = None,
) -> None:
    """The write step of a merge planned beforehand: into ``output``, atomically."""
    virtual = report["layout"] == "virtual"
    size = plan.output_bytes - (plan.total_sequences * plan.embedding_dim * 4 if virtual else 0)
    with _output_file(output, size) as temp:
        if virtual:
            _write_virtual(plan, temp, output, report, chunk_size=chunk_size)
        else:
            ids = _planned_ids(plan, report, chunk_size=chunk_size, copy=row_order is None)
            _, nonfinite = _write(plan, temp, ids, chunk_size=chunk_size, progress=progress, row_order=row_order)
            _refuse_nonfinite(nonfinite, fail_on_nonfinite)
    _log_done(output, plan)


def materialize(
    virtual_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
) -> Path:
    """Turn a virtual output into a self-contained one (embeddings copied in).

    The source shards are checked first (present and unchanged since the virtual
    merge); the copy then takes the normal fast path. The new report lists those
    sources as its shards, keeps the virtual one's findings (missing IDs, failed
    shards, partial, lineage) and names it in ``materialized_from``.

    Raises
    ------
    MergeError
        The file is not a virtual output, or a source shard is missing or changed.
    """
    virtual, output = Path(virtual_path), Path(output_path)
    old = read_merge_report(virtual)
    if old.get("layout") != "virtual":
        raise MergeError(f"{virtual}: not a virtual output (its embeddings are already in the file)")
    if old["source_problems"]:
        raise MergeError(old["source_problems"][0])
    sources = [resolve_source(s["path"], virtual) for s in old["sources"]]
    _check_output_path(output, [virtual, *sources])
    plan = plan_merge(sources)
    if plan.total_sequences != old["total_sequences"]:
        raise MergeError(f"{virtual}: its sources hold {plan.total_sequences} rows, not {old['total_sequences']}")
    report = build_report(plan, chunk_size)  # its shards: the sources it was copied from
    keep = ("failed_shards", "lineage", "num_expected", "num_missing", "num_extra", "partial", "missing_ids")
    report.update({k: old[k] for k in keep}, materialized_from=str(virtual))
    write_merge(plan, output, report, chunk_size=chunk_size, progress=progress)
    return output


def _create_output(temp: Path) -> h5py.File:
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


class _NoBar(contextlib.nullcontext):
    """A progress bar that shows nothing (cheaper than a disabled tqdm, ~10 ms to create)."""

    def update(self, n: int) -> None:
        pass


def _write(
    layout: MergePlan,
    temp: Path,
    id_step: IdStep,
    *,
    chunk_size: int,
    progress: bool,
    row_order: RowOrder | None = None,
) -> tuple[MergePlan, dict[str, int]]:
    """Write a self-contained output of ``layout``'s rows.

    The raw-copyable shards are copied on a second thread from the start, while
    ``id_step`` writes the IDs (and, for a plain merge, checks them). Returns the
    final plan, and the rows holding NaN or Inf per shard path.
    """
    shards = [s for s in layout.shards if s.status == OK]
    nonfinite: dict[str, int] = {}
    for shard in shards:
        refuse_changed(shard)
    raw = [s for s in shards if raw_copyable(s)] if row_order is None else []
    rows = min(chunk_size, layout.total_sequences) if row_order is None and len(raw) < len(shards) else 0
    buffer = np.empty((rows, layout.embedding_dim), OUTPUT_DTYPE)  # only the h5py path uses it
    row_bytes = layout.embedding_dim * OUTPUT_DTYPE.itemsize
    bar = tqdm(total=layout.total_sequences, unit="seq", desc="Merging") if progress else _NoBar()
    with bar, _create_output(temp) as out:
        emb_out = _create_embeddings(out, layout.total_sequences, layout.embedding_dim)
        data_offset = emb_out.id.get_offset()
        if data_offset is not None:
            reserve(temp, data_offset, layout.total_sequences * row_bytes)
        ids_out = out.create_dataset(SEQUENCE_IDS, shape=(layout.total_sequences,), dtype=h5py.string_dtype())
        out.flush()  # HDF5's own writes are done: from here on the embeddings' bytes are written directly
        written = Written(temp, data_offset, row_bytes, bar)
        try:
            if row_order is not None:
                writer = BlockWriter(temp, data_offset, row_bytes, written)
                try:
                    nonfinite = write_in_order(layout, row_order, writer, ids_out, chunk_size)
                finally:
                    writer.close()
            with raw_copy_in_background(raw, temp, data_offset, chunk_size, written):
                plan, report = id_step(ids_out)
                if len(raw) < len(shards) and row_order is None:
                    writer = RowWriter(temp, data_offset, row_bytes, written)
                    try:
                        for shard in shards:
                            if shard not in raw:
                                nonfinite[str(shard.path)] = copy_embeddings_h5py(shard, writer, buffer)
                    finally:
                        writer.close()
                for shard in raw:
                    nonfinite[str(shard.path)] = count_nonfinite_raw(shard, chunk_size)
                record_nonfinite(report, nonfinite)
                write_report(out, report)
            for shard in shards:  # a worker that rewrote its file meanwhile
                refuse_changed(shard)
        finally:
            written.close()
        for shard in shards:
            logger.debug("Merged %s: %d sequences at row %d", shard.path, shard.num_sequences, shard.offset)
    nonfinite = {str(s.path): nonfinite[str(s.path)] for s in shards}  # in shard order
    if any(nonfinite.values()):
        logger.warning("%d rows of embeddings hold NaN or Inf (see the report's nonfinite_rows)",
                       sum(nonfinite.values()))
    return plan, nonfinite


def _write_virtual(plan: MergePlan, temp: Path, output: Path, report: dict, *, chunk_size: int) -> None:
    """Write a virtual output: IDs and report for real, embeddings mapped from the shards."""
    shards = [s for s in plan.shards if s.status == OK]
    report["sources"] = []
    layout = h5py.VirtualLayout(shape=(plan.total_sequences, plan.embedding_dim), dtype=OUTPUT_DTYPE)
    for shard in shards:
        refuse_changed(shard)
        stored = relative_source(shard.path, output)
        shape = (shard.num_sequences, shard.embedding_dim)
        layout[shard.offset : shard.offset + shard.num_sequences] = h5py.VirtualSource(
            stored, EMBEDDINGS, shape=shape, dtype=shard.dtype
        )
        report["sources"].append({"path": stored, **shard.fingerprint})
    record_nonfinite(report, None)  # never read: not counted
    with h5py.File(temp, "w") as out:
        if plan.total_sequences:
            out.create_virtual_dataset(EMBEDDINGS, layout, fillvalue=np.nan)
        else:
            out.create_dataset(EMBEDDINGS, shape=(0, plan.embedding_dim), dtype=OUTPUT_DTYPE)
        ids_out = out.create_dataset(SEQUENCE_IDS, shape=(plan.total_sequences,), dtype=h5py.string_dtype())
        for shard in shards:
            copy_ids(shard, ids_out, chunk_size)
        write_report(out, report)
