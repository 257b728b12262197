"""Merge shards into one output: :func:`aggregate_shards` and :func:`materialize`.

:func:`aggregate_shards` checks its arguments, then hands the merge to one of four
routes, each a straight line:

- **plain** (the default): the embeddings are copied while the IDs are checked;
- **cluster-planned** (``client=``): the IDs are checked on a Dask cluster first;
- **virtual** (``layout="virtual"``): planned, then the shards' rows are mapped, not copied;
- **index order** (``order="index"``): planned, then rows are written in the index's order.

Every route writes into a temporary file beside the output that replaces it only
when the merge is complete and sound (:mod:`virnucpro_merge._write`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._write.outfile import IdStep, copy_planned_ids, output_file, write_contiguous, write_virtual
from ._write.reorder import RowOrder, index_lookup, index_order
from .checks import expected_in_memory, plan_merge
from .checksums import IdSink
from .errors import MergeError, NonFiniteError, OutputError, UnreadableShardError, twins_note
from .ids import IdLookup
from .outputs import check_output_folder, refuse_overwriting, room_problem
from .plan import MergePlan, ShardPlan, check_ids, draft_plan, failed_summary, shard_paths
from .ranks import checkpoints_of
from .readahead import ReadAhead, read_ahead
from .report import build_report, read_merge_report
from .salvage import Scratch, has_checkpoints, scratch_folder
from .shards import first_line
from .sources import resolve_source

__all__ = ["CHUNK_SIZE", "LAYOUTS", "ORDERS", "OUTPUT_IS_THE_EXPECTED_FILE", "aggregate_shards", "materialize"]

logger = logging.getLogger("virnucpro_merge")

#: Rows per streaming chunk by default.
CHUNK_SIZE = 10000
#: The values of ``layout`` and ``order``.
LAYOUTS = ("contiguous", "virtual")
ORDERS = ("shards", "index")

_OUTPUT_IS_AN_INPUT = "the output path is also an input shard"
#: Why an output path that is the expected-ID file is refused (a pipe is checked before it is read).
OUTPUT_IS_THE_EXPECTED_FILE = "the output path is the expected-ID file"


def _virtual(shard: ShardPlan) -> bool:
    return shard.merged_from is not None and shard.merged_from.get("layout") == "virtual"


def _log_left_out(plan: MergePlan, already: MergePlan | None = None) -> None:
    """Say what a partial merge leaves out: the shards not said of ``already`` (a run of
    absent ranks in one line), and the expected IDs it lacks."""
    known = {s.path for s in already.failed_shards} if already is not None else set()
    new = [s for s in plan.failed_shards if s.path not in known]
    if new:
        for line in failed_summary(replace(plan, shards=new)):
            logger.warning("Skipping %s (partial merge)", line)
    if plan.missing_ids:
        logger.warning("Missing %d expected sequences (partial merge). First 10 missing IDs: %s%s",
                       len(plan.missing_ids), plan.missing_ids[:10], twins_note(plan.missing_twins))


def _refuse_writing_onto_inputs(output: Path, plan: MergePlan) -> None:
    """The output is none of the files the merge reads: a virtual input's sources included."""
    sources = [resolve_source(src["path"], s.path) for s in plan.shards if _virtual(s)
               for src in (s.merged_from or {}).get("sources", [])]
    refuse_overwriting(output, sources, "the output path is a source of a virtual input")


@dataclass(frozen=True)
class _Options:
    """How the rows are written, whichever route writes them."""

    chunk_size: int
    partial: bool
    progress: bool
    fail_on_nonfinite: bool
    durable: bool = True
    checkpoints: Path | None = None  # the run's checkpoints folder, to check the shards' rows against
    scratch: Scratch | None = None  # where a rank's checkpointed rows are written, when they may stand in for its shard


def _check_arguments(chunk_size: int, layout: str, order: str, expected: object, fail_on_nonfinite: bool,
                     client: object | None) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        msg = f"chunk_size must be a positive integer, got {chunk_size!r}"
        raise MergeError(msg)
    if layout not in LAYOUTS:
        msg = f"layout must be one of {LAYOUTS}, got {layout!r}"
        raise MergeError(msg)
    if order not in ORDERS:
        msg = f"order must be one of {ORDERS}, got {order!r}"
        raise MergeError(msg)
    if order == "index":
        if layout == "virtual":
            msg = "order='index' writes the embeddings, so it needs layout='contiguous'"
            raise MergeError(msg)
        if expected is None or isinstance(expected, (set, frozenset)):
            msg = "order='index' needs expected_sequence_ids in index order (a list, not a set)"
            raise MergeError(msg)
        if client is not None:
            msg = "order='index' is not available with a Dask client (it needs the IDs in one place)"
            raise MergeError(msg)
    if fail_on_nonfinite and layout == "virtual":
        msg = "fail_on_nonfinite reads every embedding, which layout='virtual' never does"
        raise MergeError(msg)


def aggregate_shards(
    shard_files: Sequence[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    expected_sequence_ids: Collection[str] | os.PathLike[str] | IdLookup | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    partial: bool = False,
    progress: bool = False,
    fail_on_nonfinite: bool = False,
    layout: str = "contiguous",
    order: str = "shards",
    client: object | None = None,
    durable: bool = True,
    checkpoints: str | os.PathLike[str] | bool | None = None,
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
        Read and check the IDs on this cluster's workers
        (:mod:`virnucpro_merge.cluster`); then write as usual.
        ``expected_sequence_ids`` may be the path (``pathlib.Path``) of an
        expected-ID file: then read by the workers (without a client, here, into
        an :class:`~virnucpro_merge.ids.IdLookup`, about 26 bytes an ID, as
        :func:`~virnucpro_merge.expected.read_expected_lookup` gives one: that too
        may be passed).
    durable : bool
        Wait for the output to reach the disk (``fsync``) before it replaces
        ``output_path``: a merge that returned survives a power loss. ``False``
        skips that wait but never the atomic rename: a killed merge still leaves
        no partial output, but a power loss soon after the merge can leave a
        damaged one (:func:`verify_merged` tells).
    checkpoints : path-like, optional
        The pipeline's checkpoints folder (``checkpoints/shard_<rank>/batch_NNNNN.pt``).
        Each shard's rows are compared with those its rank's checkpoints hold for the
        same IDs; a shard they contradict (its IDs do not match its rows, as the
        pipeline writes after a resume) is refused
        (:class:`~virnucpro_merge.errors.MislabelledShardError`): no row a checkpoint
        contradicts is written. A rank whose shard is absent or unreadable (with
        ``partial``, also contradicted), or lacks IDs its checkpoints hold, gives the
        rows its checkpoints hold (:mod:`virnucpro_merge.salvage`; the report's
        ``status`` is ``salvaged``): with the expected IDs, a strict merge succeeds when
        nothing is missing; without them only a partial merge salvages. None (the
        default): where the pipeline puts it beside the shards' run folder, if there;
        False: never.

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
        (:class:`ShardError`; one its checkpoints contradict:
        :class:`MislabelledShardError`); without ``partial``, a damaged checkpoint
        that would stand in for a shard (:class:`CheckpointError`) or an ID two
        checkpoints hold with different rows (:class:`ConflictingCheckpointsError`);
        an unusable output path (:class:`OutputError`).

    Examples
    --------
    >>> from virnucpro_merge import read_merge_report
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> aggregate_shards(run.shard_files, "embeddings.h5", run.index)
    Traceback (most recent call last):
      ...
    virnucpro_merge.errors.UnreadableShardError: run/shard_2.h5: file does not exist
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5", run.index, partial=True)
    >>> report = read_merge_report(merged)
    >>> report["total_sequences"], report["failed_shards"], report["missing_ids"][:2]
    (8, ['run/shard_2.h5'], ['seq000002', 'seq000005'])
    """
    paths = shard_paths(shard_files)
    _check_arguments(chunk_size, layout, order, expected_sequence_ids, fail_on_nonfinite, client)
    output = Path(output_path)
    check_output_folder(output)  # (before reading every shard: said at once)
    refuse_overwriting(output, paths, _OUTPUT_IS_AN_INPUT)
    if isinstance(expected_sequence_ids, os.PathLike):
        refuse_overwriting(output, [Path(expected_sequence_ids)], OUTPUT_IS_THE_EXPECTED_FILE)
    options = _Options(chunk_size, partial, progress, fail_on_nonfinite, durable, checkpoints_of(paths, checkpoints))
    with scratch_folder(output) as scratch:
        if options.checkpoints is not None and layout != "virtual" and (partial or expected_sequence_ids is not None):
            options = replace(options, scratch=scratch)  # (strict, only the expected IDs can show a rank whole)
        try:
            _merge(paths, output, expected_sequence_ids, options, layout=layout, order=order, client=client)
        except UnreadableShardError as err:
            if type(err) is UnreadableShardError and options.scratch is None and \
                    has_checkpoints(Path(err.path), options.checkpoints):
                hint = "with the expected IDs" if layout != "virtual" else "with layout='contiguous'"
                msg = f"{err.problem} (its rank's checkpoints hold rows: a merge {hint} takes them in)"
                raise UnreadableShardError(err.path, msg) from err
            raise
    logger.debug("phase: done")
    return output


def _merge(paths: list[Path], output: Path, expected_sequence_ids: Collection[str] | os.PathLike[str] | IdLookup | None,
           options: _Options, *, layout: str, order: str, client: object | None) -> None:
    """Take the route that ``layout``, ``order`` and ``client`` ask for."""
    logger.debug("phase: plan")
    if client is not None:  # the workers may read an expected-ID file themselves
        plan = plan_merge(paths, expected_sequence_ids, partial=options.partial, client=client,
                          checkpoints=options.checkpoints, scratch=options.scratch)
        _log_left_out(plan)
        _refuse_writing_onto_inputs(output, plan)
        if layout == "virtual":
            _merge_virtually(plan, output, options)
        else:
            _write_planned(plan, output, build_report(plan, options.chunk_size), options)
        return
    expected = expected_in_memory(expected_sequence_ids) if expected_sequence_ids is not None else None
    if layout == "virtual":
        plan = plan_merge(paths, expected, partial=options.partial, checkpoints=options.checkpoints)
        _log_left_out(plan)
        if options.checkpoints is not None and plan.failed_shards:
            logger.warning("layout='virtual' maps shards in place: it takes no rows from checkpoints for the failed "
                           "shards' ranks (layout='contiguous' takes them)")
        _merge_virtually(plan, output, options)
    elif order == "index":
        _merge_in_index_order(paths, output, index_lookup(expected if expected is not None else ()), options)
    else:
        _merge_while_checking(paths, output, expected, options)


def _merge_while_checking(paths: list[Path], output: Path, expected: Collection[str] | IdLookup | None,
                          options: _Options) -> None:
    """The plain route: the embeddings are copied while the IDs are checked.

    Checking the IDs takes about a third of the copy's time; done first, it would
    add that to every merge. The copy goes to the temporary file, which a failed
    check removes, so ``output`` sees nothing either way until the check passed.
    Where the output's folder cannot hold the merge, the IDs are checked first (a
    duplicate is then reported before the lack of space). Where a shard's IDs turn
    out unreadable (a partial merge), the rows after it move: the copy is thrown
    away and the merge written from the final plan.
    """
    # The expected IDs as a lookup, for the processes that read the IDs ahead to look them up in:
    # made while processes read the shards' metadata, where they do (many shards); else, if not
    # one already, made by the ID check beside the copy, and the IDs looked up there.
    looked_up: list[IdLookup] = [expected] if isinstance(expected, IdLookup) else []

    def make_lookup() -> None:
        if expected is not None and not looked_up:
            looked_up.append(IdLookup.of(expected))

    draft = draft_plan(paths, partial=options.partial, checkpoints=options.checkpoints, scratch=options.scratch,
                       meanwhile=make_lookup)
    _log_left_out(draft)
    _refuse_writing_onto_inputs(output, draft)
    lookup = looked_up[0] if looked_up else None
    checked_against = lookup if lookup is not None else expected
    if room_problem(output, draft.output_bytes) is not None:
        plan = check_ids(draft, checked_against, partial=options.partial)
        _log_left_out(plan, draft)
        _write_planned(plan, output, build_report(plan, options.chunk_size), options)
        return
    # (the IDs' readers are forked, with the lookup they find the IDs in, before the copy's threads start)
    with read_ahead(draft.id_reads(), lookup, copied=draft.output_bytes) as ahead, \
            output_file(output, draft.output_bytes, durable=options.durable) as pending:
        step = _checking_ids(draft, checked_against, options, output, ahead)
        plan, nonfinite = write_contiguous(draft, pending.path, step, chunk_size=options.chunk_size,
                                           progress=options.progress, durable=options.durable)
        if plan.same_rows_as(draft):
            _refuse_nonfinite(nonfinite, options)
        else:
            pending.discard()
    _log_left_out(plan, draft)
    if not plan.same_rows_as(draft):
        logger.debug("A shard's IDs could not be read: writing again without it")
        _write_planned(plan, output, build_report(plan, options.chunk_size), options)
        return
    _log_done(output, plan)


def _checking_ids(draft: MergePlan, expected: Collection[str] | IdLookup | None, options: _Options, output: Path,
                  ahead: ReadAhead) -> IdStep:
    """The ID step of the plain route: check the IDs, writing them out as they are read (many
    shards' at a time: a write into the output's IDs costs about as much for 1,000 IDs as
    for 100,000)."""

    def step(ids_out: IdSink) -> tuple[MergePlan, dict[str, Any]]:
        batch = _IdBatch(ids_out, output)

        def write_ids(shard: ShardPlan, chunks: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
            start = shard.offset
            for chunk in chunks:
                batch.add(start, chunk)
                start += len(chunk)
                yield chunk

        plan = check_ids(draft, expected, partial=options.partial, on_ids=write_ids, ahead=ahead)
        batch.flush()
        return plan, build_report(plan, options.chunk_size)

    return step


class _IdBatch:
    """IDs on their way to the output, written when :data:`ID_BATCH` have gathered (or rows
    that do not follow on come)."""

    def __init__(self, ids_out: IdSink, output: Path) -> None:
        self.ids_out, self.output, self.start = ids_out, output, 0
        self.held: list[bytes] = []

    def add(self, start: int, chunk: list[bytes]) -> None:
        if self.held and start != self.start + len(self.held):
            self.flush()
        if not self.held:
            self.start = start
        self.held.extend(chunk)
        if len(self.held) >= ID_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the IDs held. A failed write is the output's (:class:`OutputError`), never the
        shard's being read meanwhile (an ID the output cannot hold is refused as it is read)."""
        if not self.held:
            return
        held, self.held = self.held, []
        try:
            self.ids_out[self.start : self.start + len(held)] = held
        except (OSError, RuntimeError, ValueError, TypeError) as err:
            msg = f"{self.output}: cannot write the merged file's sequence IDs ({first_line(err)})"
            raise OutputError(msg) from err
        self.start += len(held)


#: IDs written into the output at a time, at most about (from the shards' chunks).
ID_BATCH = 2**16


def _merge_virtually(plan: MergePlan, output: Path, options: _Options) -> None:
    """The virtual route: the IDs and the report written, the shards' rows mapped in place.

    A virtual input is refused: its own sources could go missing and nothing reading
    the new output would see it (its rows would be NaN).
    """
    stacked = [s.path for s in plan.shards if _virtual(s)]
    if stacked:
        msg = (f"{stacked[0]}: is a virtual output, which another virtual output cannot map; "
               "materialize it first, or merge it with layout='contiguous'")
        raise MergeError(msg)
    _refuse_writing_onto_inputs(output, plan)
    report = build_report(plan, options.chunk_size, layout="virtual")
    size = plan.output_bytes - plan.total_sequences * plan.embedding_dim * 4
    with output_file(output, size, durable=options.durable) as pending:
        write_virtual(plan, pending.path, output, report, chunk_size=options.chunk_size)
    _log_done(output, plan)


def _merge_in_index_order(paths: list[Path], output: Path, index: IdLookup, options: _Options) -> None:
    """The index-order route: planned (keeping each row's place in the ``index``), then written block by block."""
    plan = plan_merge(paths, index, partial=options.partial, keep_ids=True, checkpoints=options.checkpoints,
                      scratch=options.scratch)
    _log_left_out(plan)
    _refuse_writing_onto_inputs(output, plan)
    report = build_report(plan, options.chunk_size, order="index")
    row_order = index_order(plan)
    report["missing_positions"] = row_order.missing_positions.tolist()
    _write_planned(plan, output, report, options, row_order=row_order)


def _write_planned(plan: MergePlan, output: Path, report: dict[str, Any], options: _Options,
                   row_order: RowOrder | None = None) -> None:
    """The write step of a merge planned beforehand, into ``output``, atomically."""

    def ids_written_by_the_order(ids_out: IdSink) -> tuple[MergePlan, dict[str, Any]]:
        return plan, report

    step = copy_planned_ids(plan, report, chunk_size=options.chunk_size) if row_order is None \
        else ids_written_by_the_order
    with output_file(output, plan.output_bytes, durable=options.durable) as pending:
        _, nonfinite = write_contiguous(plan, pending.path, step, chunk_size=options.chunk_size,
                                        progress=options.progress, row_order=row_order, durable=options.durable)
        _refuse_nonfinite(nonfinite, options)
    _log_done(output, plan)


def _refuse_nonfinite(nonfinite: dict[str, int], options: _Options) -> None:
    if options.fail_on_nonfinite and any(nonfinite.values()):
        raise NonFiniteError(nonfinite)


def _log_done(output: Path, plan: MergePlan) -> None:
    logger.info("Aggregation complete: %s, %d sequences", output, plan.total_sequences)


def materialize(
    virtual_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
    durable: bool = True,
) -> Path:
    """Turn a virtual output into a self-contained one (embeddings copied in).

    The source shards are checked first (present and unchanged since the virtual
    merge); the copy then takes the normal fast path. The new report lists those
    sources as its shards, keeps the virtual one's findings (missing IDs, failed
    shards, partial, lineage) and names it in ``materialized_from``.

    Parameters
    ----------
    virtual_path : path-like
        A virtual output (``aggregate_shards(..., layout="virtual")``).
    output_path : path-like
        The self-contained file to write (atomically, with checksums).
    chunk_size, progress, durable
        As for :func:`aggregate_shards`.

    Returns
    -------
    Path
        ``output_path``.

    Raises
    ------
    MergeError
        The file is not a virtual output, or a source shard is missing or changed.

    Examples
    --------
    >>> from virnucpro_merge import aggregate_shards, get_shard_info
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(), empty=(), short={})
    >>> virtual = aggregate_shards(run.shard_files, "virtual.h5", layout="virtual")  # views, no copy
    >>> materialize(virtual, "embeddings.h5")
    PosixPath('embeddings.h5')
    >>> get_shard_info("embeddings.h5")["num_sequences"]
    12
    """
    virtual, output = Path(virtual_path), Path(output_path)
    old = read_merge_report(virtual)
    if old.get("layout") != "virtual":
        msg = f"{virtual}: not a virtual output (its embeddings are already in the file)"
        raise MergeError(msg)
    if old["source_problems"]:
        raise MergeError(old["source_problems"][0])
    sources = [resolve_source(s["path"], virtual) for s in old["sources"]]
    refuse_overwriting(output, [virtual, *sources], _OUTPUT_IS_AN_INPUT)
    plan = plan_merge(sources or [virtual])  # no source holds a row: the file itself holds all there is
    if plan.total_sequences != old["total_sequences"]:
        msg = f"{virtual}: its sources hold {plan.total_sequences} rows, not {old['total_sequences']}"
        raise MergeError(msg)
    report = build_report(plan, chunk_size)  # its shards: the sources it was copied from
    keep = ("failed_shards", "lineage", "num_expected", "num_missing", "num_extra", "partial", "missing_ids")
    report.update({k: old[k] for k in keep}, materialized_from=str(virtual))
    if not sources:
        report["shards"] = old["shards"]  # all empty: nothing was copied, but these were merged
    _write_planned(plan, output, report, _Options(chunk_size, False, progress, False, durable))
    return output
