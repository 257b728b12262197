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
from .errors import MergeError, OutputError, ShardError, UnreadableShardError
from .plan import MergePlan, ShardPlan, plan_merge
from .report import build_report, write_report
from .shards import EMBEDDINGS, SEQUENCE_IDS, first_line, open_shard, read_shard_meta

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

    Returns
    -------
    Path
        ``output_path``.

    Raises
    ------
    MergeError
        (a ``ValueError``) No shards; a duplicate ID (:class:`DuplicateIdError`);
        missing expected IDs (:class:`MissingIdsError`); a bad shard
        (:class:`ShardError`); an unusable output path (:class:`OutputError`).
    """
    if not shard_files:
        raise MergeError("No shard files provided")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise MergeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    shard_paths = [Path(p) for p in shard_files]
    output = Path(output_path)
    _check_output_path(output, shard_paths)

    plan = plan_merge(shard_paths, expected_sequence_ids, partial=partial)
    report = build_report(plan, chunk_size)
    with atomic_output(output) as temp:
        try:
            _write(plan, temp, report, chunk_size=chunk_size, progress=progress)
        except OSError as err:  # reads raise ShardError, so this is the output side
            raise OutputError(f"{output}: cannot write the merged file ({first_line(err)})") from err
    logger.info("Aggregation complete: %s, %d sequences", output, plan.total_sequences)
    return output


def _write(plan: MergePlan, temp: Path, report: dict, *, chunk_size: int, progress: bool) -> None:
    dim = plan.embedding_dim
    with h5py.File(temp, "w") as out:
        emb_out = out.create_dataset(EMBEDDINGS, shape=(plan.total_sequences, dim), dtype="float32")
        ids_out = out.create_dataset(
            SEQUENCE_IDS, shape=(plan.total_sequences,), dtype=h5py.string_dtype("utf-8")
        )
        buffer = np.empty((min(chunk_size, max(plan.total_sequences, 1)), dim), dtype="float32")
        with tqdm(
            total=plan.total_sequences, unit="seq", desc="Merging", disable=not progress
        ) as bar:
            for shard in plan.shards:
                if shard.status == "ok":
                    _copy_shard(shard, emb_out, ids_out, buffer, bar)
        write_report(out, report)
        out.flush()


def _copy_shard(
    shard: ShardPlan, emb_out: h5py.Dataset, ids_out: h5py.Dataset, buffer: np.ndarray, bar: tqdm
) -> None:
    """Stream one shard's rows into the output at ``shard.offset``."""
    chunk_size = buffer.shape[0]
    logger.debug("Copying %s: %d sequences at row %d", shard.path, shard.num_sequences, shard.offset)
    with open_shard(shard.path) as handle:
        meta = read_shard_meta(handle, shard.path)
        if (meta.num_sequences, meta.embedding_dim) != (shard.num_sequences, shard.embedding_dim):
            raise ShardError(shard.path, "changed while the merge was running")
        emb, ids = handle[EMBEDDINGS], handle[SEQUENCE_IDS].asstr(encoding="utf-8")
        for chunk_start in range(0, shard.num_sequences, chunk_size):
            chunk_end = min(chunk_start + chunk_size, shard.num_sequences)
            rows = chunk_end - chunk_start
            try:
                if emb.dtype == buffer.dtype:
                    emb.read_direct(buffer, np.s_[chunk_start:chunk_end], np.s_[0:rows])
                else:  # float16 -> float32: numpy's cast is exact
                    buffer[:rows] = emb[chunk_start:chunk_end]
                chunk_ids = ids[chunk_start:chunk_end]
            except OSError as err:
                raise UnreadableShardError(shard.path, f"cannot read rows {chunk_start}-{chunk_end} ({first_line(err)})") from err
            start, stop = shard.offset + chunk_start, shard.offset + chunk_end
            emb_out.write_direct(buffer, np.s_[0:rows], np.s_[start:stop])
            ids_out[start:stop] = chunk_ids
            bar.update(rows)
    logger.debug("Merged %s: %d sequences", shard.path, shard.num_sequences)
