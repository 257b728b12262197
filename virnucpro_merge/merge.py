"""Merge shards into one output: plan (IDs only), then stream the embeddings."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ._atomic import atomic_output
from ._copy import (
    OUTPUT_DTYPE,
    copy_embeddings_h5py,
    copy_ids,
    count_nonfinite_raw,
    raw_copy_in_background,
    raw_copyable,
    recheck,
)
from .errors import MergeError, NonFiniteError, OutputError
from .plan import OK, MergePlan, plan_merge
from .report import build_report, record_nonfinite, write_report
from .shards import EMBEDDINGS, SEQUENCE_IDS, first_line

__all__ = ["CHUNK_SIZE", "aggregate_shards"]

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


def aggregate_shards(
    shard_files: Sequence[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    expected_sequence_ids: Collection[str] | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    partial: bool = False,
    progress: bool = False,
    fail_on_nonfinite: bool = False,
) -> Path:
    """Merge shard files into one HDF5 file, checking that no sequence is lost.

    Every shard's metadata and IDs are read and checked first; only then are the
    embeddings streamed, ``chunk_size`` rows at a time, into a temporary file that
    replaces ``output_path`` when complete.

    Parameters
    ----------
    shard_files : sequence of path-like
        The shards, merged in this order (then in-shard row order).
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
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise MergeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    shard_paths = [Path(p) for p in shard_files]
    output = Path(output_path)
    _check_output_path(output, shard_paths)

    logger.debug("phase: plan")
    plan = plan_merge(shard_paths, expected_sequence_ids, partial=partial)
    report = build_report(plan, chunk_size)
    with atomic_output(output, plan.output_bytes) as temp:
        try:
            nonfinite = _write(plan, temp, report, chunk_size=chunk_size, progress=progress)
        except (OSError, RuntimeError) as err:  # reads raise ShardError: this is the output side
            # (h5py reports a failed final flush, e.g. a full disk, as RuntimeError)
            raise OutputError(f"{output}: cannot write the merged file ({first_line(err)})") from err
        if fail_on_nonfinite and any(nonfinite.values()):
            raise NonFiniteError(nonfinite)
    logger.debug("phase: done")
    logger.info("Aggregation complete: %s, %d sequences", output, plan.total_sequences)
    return output


def _create_embeddings(out: h5py.File, rows: int, dim: int) -> h5py.Dataset:
    """A contiguous float32 dataset whose bytes are placed in the file right away.

    Contiguous rows read fast (a random row in microseconds, where h5py's guessed
    chunks would split rows into column strips), and a known byte offset lets shards
    of the same layout be copied as raw bytes. No fill: every row gets written.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return out.create_dataset(EMBEDDINGS, shape=(rows, dim), dtype=OUTPUT_DTYPE, dcpl=dcpl, fill_time="never")


def _write(plan: MergePlan, temp: Path, report: dict, *, chunk_size: int, progress: bool) -> dict[str, int]:
    """Write the output file; return the rows holding NaN or Inf, per shard path."""
    shards = [s for s in plan.shards if s.status == OK]
    nonfinite: dict[str, int] = {}
    for shard in shards:
        recheck(shard)
    raw = [s for s in shards if raw_copyable(s)]
    buffer = np.empty((min(chunk_size, max(plan.total_sequences, 1)), plan.embedding_dim), OUTPUT_DTYPE)
    bar = tqdm(total=plan.total_sequences, unit="seq", desc="Merging", disable=not progress)
    with bar, h5py.File(temp, "w") as out:
        emb_out = _create_embeddings(out, plan.total_sequences, plan.embedding_dim)
        ids_out = out.create_dataset(SEQUENCE_IDS, shape=(plan.total_sequences,), dtype=h5py.string_dtype())
        for shard in shards:
            if shard not in raw:
                nonfinite[str(shard.path)] = copy_embeddings_h5py(shard, emb_out, buffer, bar.update)
        out.flush()
        data_offset = emb_out.id.get_offset() if raw else None
        with raw_copy_in_background(raw, temp, data_offset, chunk_size, bar.update):
            for shard in shards:
                copy_ids(shard, ids_out, chunk_size)
            for shard in raw:
                nonfinite[str(shard.path)] = count_nonfinite_raw(shard, buffer)
            record_nonfinite(report, nonfinite)
            write_report(out, report)
        for shard in shards:
            logger.debug("Merged %s: %d sequences at row %d", shard.path, shard.num_sequences, shard.offset)
    nonfinite = {str(s.path): nonfinite[str(s.path)] for s in shards}  # in shard order
    if any(nonfinite.values()):
        logger.warning("%d rows of embeddings hold NaN or Inf (see the report's nonfinite_rows)",
                       sum(nonfinite.values()))
    return nonfinite
