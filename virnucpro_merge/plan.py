"""The planning step: read every shard's metadata and IDs, decide, write nothing.

Two passes: :func:`read_layout` reads metadata only (shapes, dtypes, where each
shard's rows go); :func:`check_ids` then reads the IDs and decides. A merge that
would fail (a duplicate, a missing sequence, a broken shard, a dimension mismatch)
fails in the time it takes to read the IDs: a plain merge copies embeddings into
its temporary file meanwhile, and throws them away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DuplicateIdError, MergeError, MissingIdsError, ShardError, UnreadableShardError
from .shards import ShardMeta, iter_id_chunks, open_shard, read_shard_meta
from .sources import fingerprint
from .validation import IdIndex, as_id_set, warn_extra

__all__ = ["ShardPlan", "MergePlan", "plan_merge", "read_layout", "check_ids", "refuse_changed", "OK", "EMPTY", "FAILED"]

logger = logging.getLogger("virnucpro_merge")

# A shard is "ok" (rows to copy), "empty" (a valid shard with no rows) or "failed"
# (absent or unreadable; skipped by a partial merge, its reason in ``error``).
OK, EMPTY, FAILED = "ok", "empty", "failed"


@dataclass(frozen=True)
class ShardPlan:
    """One input shard, as the merge will treat it."""

    path: Path
    status: str
    num_sequences: int = 0
    offset: int = 0
    embedding_dim: int = 0
    dtype: np.dtype | None = None
    data_offset: int | None = None
    error: str | None = None
    merged_from: dict | None = None  # the report summary, when the input is itself a merge
    fingerprint: dict | None = None  # size and mtime when planned

    @property
    def usable(self) -> bool:
        return self.status in (OK, EMPTY)


@dataclass
class MergePlan:
    """Everything the write step needs, worked out from metadata and IDs alone."""

    shards: list[ShardPlan]
    total_sequences: int
    embedding_dim: int
    missing_ids: list[str] = field(default_factory=list)
    num_extra: int = 0
    num_expected: int | None = None
    ids: IdIndex | None = field(default=None, repr=False)  # the IDs' hashes, for order="index"

    @property
    def output_bytes(self) -> int:
        """A generous estimate of the merged file's size, known before any ID is read
        (for the free-space check): the float32 embeddings, plus what each shard holds
        besides its own (mostly IDs: at least 64 bytes a row), plus the missing IDs."""
        embeddings = self.total_sequences * self.embedding_dim * 4
        besides = sum(
            max(s.fingerprint["size"] - s.num_sequences * s.embedding_dim * s.dtype.itemsize, 64 * s.num_sequences)
            for s in self.shards
            if s.usable and s.fingerprint is not None
        )
        missing = sum(map(len, self.missing_ids)) * 4 + 32 * len(self.missing_ids)
        return embeddings + besides + missing + 2**20

    @property
    def failed_shards(self) -> list[ShardPlan]:
        return [s for s in self.shards if not s.usable]

    @property
    def partial(self) -> bool:
        return bool(self.failed_shards or self.missing_ids)


def _check_dims(metas: list[ShardPlan]) -> int:
    """The run's embedding dimension; every shard that has one must agree."""
    dims = [s for s in metas if s.usable and s.embedding_dim > 0]
    if not dims:
        return 0
    first = dims[0]
    for shard in dims[1:]:
        if shard.embedding_dim != first.embedding_dim:
            raise ShardError(
                shard.path,
                f"embedding dimension {shard.embedding_dim} differs from "
                f"{first.embedding_dim} in {first.path}",
            )
    return first.embedding_dim


def _refuse_repeated_paths(paths: list[Path]) -> None:
    first: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in first:
            raise ShardError(path, f"listed twice (also as {first[key]})")
        first[key] = path


def shard_plan(meta: ShardMeta) -> ShardPlan:
    """The plan of a shard that was read (and found sound)."""
    return ShardPlan(
        path=meta.path,
        status=OK if meta.num_sequences else EMPTY,
        num_sequences=meta.num_sequences,
        embedding_dim=meta.embedding_dim,
        dtype=meta.dtype,
        data_offset=meta.data_offset,
        merged_from=meta.merged_from,
        fingerprint=meta.fingerprint,
    )


def failed_shard(err: UnreadableShardError, *, partial: bool) -> ShardPlan:
    """A crashed worker's shard: skipped by a partial merge, an error otherwise."""
    if not partial:
        raise err
    logger.warning("Skipping %s (partial merge)", err)
    return ShardPlan(path=Path(err.path), status=FAILED, error=err.problem)


def assemble_plan(
    shards: list[ShardPlan],
    *,
    duplicate: tuple[str, Path, Path] | None,
    ids: IdIndex | None = None,
) -> MergePlan:
    """Check dimensions and duplicates, then place the shards' rows one after another."""
    dim = _check_dims(shards)
    if duplicate is not None:
        raise DuplicateIdError(*duplicate)
    offset, placed = 0, []
    for shard in shards:
        placed.append(replace(shard, offset=offset))
        offset += shard.num_sequences
    return MergePlan(shards=placed, total_sequences=offset, embedding_dim=dim, ids=ids)


def apply_expected(
    plan: MergePlan, *, num_expected: int, missing: list[str], extra: Collection[str], partial: bool
) -> None:
    """Record the comparison with the expected IDs; missing ones raise unless partial."""
    plan.num_expected = num_expected
    plan.num_extra = len(extra)
    warn_extra(extra)
    if missing:
        if not partial:
            raise MissingIdsError(missing)
        logger.warning(
            "Missing %d expected sequences (partial merge). First 10 missing IDs: %s",
            len(missing),
            missing[:10],
        )
        plan.missing_ids = missing


def refuse_changed(shard: ShardPlan) -> None:
    """Refuse a shard whose file was rewritten or removed since ``shard`` was planned."""
    try:
        now = fingerprint(shard.path)
    except OSError:
        now = None
    if now != shard.fingerprint:
        raise ShardError(shard.path, "changed while the merge was running")


IdsHook = Callable[[ShardPlan, Iterator[list[str]]], Iterator[list[str]]]


def read_layout(shard_files: Sequence[str | os.PathLike[str]], *, partial: bool = False) -> MergePlan:
    """Read every shard's metadata (no IDs) and place the shards' rows one after another.

    Raises
    ------
    MergeError
        As :func:`plan_merge`, for everything found without reading IDs.
    """
    if not shard_files:
        raise MergeError("No shard files provided")
    paths = [Path(p) for p in shard_files]
    _refuse_repeated_paths(paths)
    shards = []
    for path in paths:
        try:
            with open_shard(path) as handle:
                shards.append(shard_plan(read_shard_meta(handle, path)))
        except UnreadableShardError as err:
            shards.append(failed_shard(err, partial=partial))
    return assemble_plan(shards, duplicate=None)


def check_ids(
    layout: MergePlan,
    expected: set[str] | frozenset[str] | None,
    *,
    partial: bool = False,
    keep_ids: bool = False,
    on_ids: IdsHook | None = None,
) -> MergePlan:
    """Read the IDs of the shards of ``layout`` and check them; return the final plan.

    ``on_ids(shard, chunks)`` may wrap each shard's stream of ID chunks (a merge
    writes them out as they go by). A shard whose IDs cannot be read is failed (with
    ``partial``), which moves the rows of the shards after it: compare offsets.
    """
    index = IdIndex(expected)
    shards: list[ShardPlan] = []
    for shard in layout.shards:
        if shard.usable:
            try:
                refuse_changed(shard)
                with open_shard(shard.path) as handle:
                    chunks = iter_id_chunks(handle, shard.path)
                    index.add_shard(shard.path, chunks if on_ids is None else on_ids(shard, chunks))
            except UnreadableShardError as err:
                shard = failed_shard(err, partial=partial)
        logger.debug("Planned %s: %s, %d sequences", shard.path, shard.status, shard.num_sequences)
        shards.append(shard)

    plan = assemble_plan(shards, duplicate=index.find_duplicate(), ids=index)
    if expected is not None:
        apply_expected(plan, num_expected=len(expected), missing=index.missing(), extra=index.extra, partial=partial)
    index.extra = []
    index.drop_sorted()
    if not keep_ids:
        plan.ids = None
    _log_plan(plan)
    return plan


def plan_merge(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_sequence_ids: Collection[str] | os.PathLike[str] | None = None,
    *,
    partial: bool = False,
    client: object | None = None,
    keep_ids: bool = False,
) -> MergePlan:
    """Read every shard's metadata and IDs and decide what the merge will write.

    With a Dask ``client``, the shards are read by its workers and the IDs checked
    hash-partitioned across them (:mod:`virnucpro_merge.cluster`); the plan is the same.
    ``keep_ids`` keeps the IDs' hashes in the plan (``plan.ids``, 8 bytes an ID), for
    writing in index order; otherwise they are let go before the copy starts.

    Raises
    ------
    MergeError
        No shards; with ``partial=False``, any unreadable or absent shard or any
        missing expected ID; always, a duplicate ID, a shard of an unsupported
        shape or dtype, or shards of different embedding dimensions.
    """
    if not shard_files:
        raise MergeError("No shard files provided")
    if client is not None:
        from .cluster import plan_on_cluster

        _refuse_repeated_paths([Path(p) for p in shard_files])
        plan = plan_on_cluster(list(map(Path, shard_files)), expected_sequence_ids, partial=partial, client=client)
        _log_plan(plan)
        return plan
    expected = None if expected_sequence_ids is None else as_id_set(expected_sequence_ids)
    layout = read_layout(shard_files, partial=partial)
    return check_ids(layout, expected, partial=partial, keep_ids=keep_ids)


def _log_plan(plan: MergePlan) -> None:
    logger.info(
        "Plan: %d shards (%d failed), %d sequences, dimension %d",
        len(plan.shards),
        len(plan.failed_shards),
        plan.total_sequences,
        plan.embedding_dim,
    )

