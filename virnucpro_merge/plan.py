"""The planning step: shard metadata and ID findings in, a :class:`MergePlan` out.

Nothing here writes, and nothing here knows of Dask. A plan is made in two steps:

1. :func:`draft_plan` reads every shard's metadata (shapes, dtypes) and places the
   shards' rows one after another; broken or mismatched shards are refused here,
   before any ID is read;
2. the IDs are checked, and the draft settled into the final plan: in this process
   by :func:`check_ids`, or from a cluster's findings by :func:`plan_from_scan` (the
   cluster hands over plain data: each shard's metadata or error, and the
   :class:`~virnucpro_merge.validation.Findings`).

A merge that would fail (a duplicate, a missing sequence, a broken shard, a
dimension mismatch) fails in the time it takes to read the IDs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._files import file_key, fingerprint
from .crosscheck import rows_against_checkpoints
from .errors import (
    DuplicateIdError,
    MergeError,
    MislabelledShardError,
    MissingIdsError,
    ShardError,
    UnreadableShardError,
)
from .ranks import rank_of, rank_ranges
from .shards import ABSENT, ShardMeta, iter_id_chunks, open_shard, read_shard_meta
from .statuses import ShardStatus
from .validation import Findings, IdIndex, warn_extra

__all__ = [
    "ShardStatus",
    "ShardPlan",
    "MergePlan",
    "IdsHook",
    "draft_plan",
    "refuse_contradicted",
    "check_ids",
    "plan_from_scan",
    "refuse_changed",
    "up_to_first_absent",
    "refuse_repeated_paths",
    "shard_paths",
    "failed_summary",
]

logger = logging.getLogger("virnucpro_merge")


@dataclass(frozen=True)
class ShardPlan:
    """One input shard, as the merge will treat it."""

    path: Path
    status: ShardStatus
    num_sequences: int = 0
    offset: int = 0
    embedding_dim: int = 0
    dtype: np.dtype | None = None
    data_offset: int | None = None
    error: str | None = None
    merged_from: dict[str, Any] | None = None  # the report summary, when the input is itself a merge
    fingerprint: dict[str, Any] | None = None  # size and mtime when planned

    @property
    def usable(self) -> bool:
        return self.status is not ShardStatus.FAILED


@dataclass
class MergePlan:
    """Everything the write step needs, worked out from metadata and IDs alone."""

    shards: list[ShardPlan]
    total_sequences: int
    embedding_dim: int
    missing_ids: list[str] = field(default_factory=list)
    #: missing IDs that differ from a present one only by Unicode normalisation, with it
    missing_twins: dict[str, str] = field(default_factory=dict)
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
            if s.usable and s.fingerprint is not None and s.dtype is not None
        )
        missing = sum(map(len, self.missing_ids)) * 4 + 32 * len(self.missing_ids)
        return embeddings + besides + missing + 2**20

    @property
    def copied_shards(self) -> list[ShardPlan]:
        """The shards whose rows go into the output."""
        return [s for s in self.shards if s.status is ShardStatus.OK]

    @property
    def failed_shards(self) -> list[ShardPlan]:
        return [s for s in self.shards if not s.usable]

    @property
    def partial(self) -> bool:
        return bool(self.failed_shards or self.missing_ids)

    def same_rows_as(self, other: MergePlan) -> bool:
        """Whether both plans put the same shards' rows in the same places."""
        return [(s.status, s.offset) for s in self.shards] == [(s.status, s.offset) for s in other.shards]


def shard_paths(shard_files: object, *, allow_empty: bool = False) -> list[Path]:
    """``shard_files`` as a list of paths, checked: a list (or tuple, or array) of str or
    path-like, not one path (whose characters would be taken for shards).

    Raises
    ------
    MergeError
        Something else was given, or (unless ``allow_empty``) no shard at all.
    """
    if isinstance(shard_files, str | bytes | os.PathLike):
        msg = (f"shard_files must be a list of shard paths, not the one path {shard_files!r} "
               "(a run folder's shards: virnucpro_merge.ranks.folder_shards)")
        raise MergeError(msg)
    try:
        given = list(shard_files)  # type: ignore[call-overload]
    except TypeError:
        msg = f"shard_files must be a list of shard paths, not {type(shard_files).__name__}"
        raise MergeError(msg) from None
    wrong = [p for p in given if not isinstance(p, str | os.PathLike)]
    if wrong:
        msg = f"shard_files must hold paths (str or pathlib.Path), not {type(wrong[0]).__name__}"
        raise MergeError(msg)
    if not given and not allow_empty:
        msg = "No shard files provided"
        raise MergeError(msg)
    return [p if isinstance(p, Path) else Path(p) for p in given]


def up_to_first_absent(paths: list[Path]) -> list[Path]:
    """The shards a strict merge looks at: those up to the first that does not exist,
    which fails in its turn (a stray ``shard_200000.h5`` among 8 shards lists 199,992
    absent ones: no other work is done on them)."""
    for at, path in enumerate(paths):
        if not os.path.lexists(path):
            return paths[: at + 1]
    return paths


def refuse_repeated_paths(paths: Sequence[Path]) -> None:
    """Refuse a shard given twice (under any name)."""
    first: dict[tuple[Any, ...], Path] = {}
    cwd = os.getcwd()
    for path in paths:
        key = file_key(path, cwd)
        if key in first:
            raise ShardError(path, f"listed twice (also as {first[key]})")
        first[key] = path


def refuse_changed(shard: ShardPlan) -> None:
    """Refuse a shard whose file was rewritten or removed since ``shard`` was planned."""
    try:
        now = fingerprint(shard.path)
    except OSError:
        now = None
    if now != shard.fingerprint:
        raise ShardError(shard.path, "changed while the merge was running")


def _readable(meta: ShardMeta) -> ShardPlan:
    return ShardPlan(
        path=meta.path,
        status=ShardStatus.OK if meta.num_sequences else ShardStatus.EMPTY,
        num_sequences=meta.num_sequences,
        embedding_dim=meta.embedding_dim,
        dtype=meta.dtype,
        data_offset=meta.data_offset,
        merged_from=meta.merged_from,
        fingerprint=meta.fingerprint,
    )


def _failed(err: UnreadableShardError, *, partial: bool) -> ShardPlan:
    """A crashed worker's shard: left out with ``partial`` (see :func:`failed_summary`), an error otherwise."""
    if not partial:
        raise err
    return ShardPlan(path=Path(err.path), status=ShardStatus.FAILED, error=err.problem)


def failed_summary(plan: MergePlan, most: int = 10) -> list[str]:
    """The failed shards of a plan, a line each -- but the absent files of a run folder's ranks
    in one line, as ranges (a stray ``shard_200000.h5`` leaves 199,99x of them)."""
    absent = [s for s in plan.failed_shards if s.error == ABSENT and rank_of(s.path) is not None]
    if len(plan.failed_shards) <= most:
        absent = []  # a few: a line each
    lines = []
    if len(absent) > 1:
        ranks = [rank_of(s.path) or 0 for s in absent]
        lines.append(f"{len(absent):,} absent shards, ranks {rank_ranges(ranks, most)} (in {absent[0].path.parent})")
    summarised = {id(s) for s in absent} if len(absent) > 1 else set()
    others = [s for s in plan.failed_shards if id(s) not in summarised]
    lines += [f"{s.path}: {s.error}" for s in others[:most]]
    if len(others) > most:
        lines.append(f"... and {len(others) - most:,} more failed shards")
    return lines


def _placed(shards: list[ShardPlan]) -> MergePlan:
    """Check the shards agree on the dimension, then place their rows one after another."""
    dims = [s for s in shards if s.usable and s.embedding_dim > 0]
    for shard in dims[1:]:
        if shard.embedding_dim != dims[0].embedding_dim:
            raise ShardError(
                shard.path,
                f"embedding dimension {shard.embedding_dim} differs from "
                f"{dims[0].embedding_dim} in {dims[0].path}",
            )
    offset, placed = 0, []
    for shard in shards:
        placed.append(replace(shard, offset=offset))
        offset += shard.num_sequences
    return MergePlan(shards=placed, total_sequences=offset, embedding_dim=dims[0].embedding_dim if dims else 0)


def _settled(shards: list[ShardPlan], findings: Findings, *, partial: bool) -> MergePlan:
    """The final plan: the shards placed, the findings checked (a duplicate always raises;
    missing IDs raise unless ``partial``, which records them)."""
    plan = _placed(shards)
    if findings.duplicate is not None:
        raise DuplicateIdError(*findings.duplicate)
    if findings.num_expected is not None:
        plan.num_expected = findings.num_expected
        plan.num_extra = len(findings.extra)
        warn_extra(findings.extra)
        if findings.missing:
            if not partial:
                raise MissingIdsError(findings.missing, findings.twins)
            plan.missing_ids = findings.missing
            plan.missing_twins = findings.twins
    return plan


def draft_plan(shard_files: Sequence[str | os.PathLike[str]], *, partial: bool = False, storage: bool = True,
               checkpoints: Path | None = None) -> MergePlan:
    """Read every shard's metadata (no IDs) and place the shards' rows one after another.

    With ``checkpoints`` (the run's checkpoints folder), each shard's rows are first
    compared with those its rank's checkpoints hold (:mod:`.crosscheck`): a shard they
    contradict is an error, or with ``partial``, left out (its IDs then missing).

    Raises
    ------
    MergeError
        No shards; a shard listed twice; with ``partial=False``, an absent or
        unreadable shard, or one its checkpoints contradict
        (:class:`MislabelledShardError`); always, a shard of an unsupported shape or
        dtype, or shards of different embedding dimensions.
    """
    paths = shard_paths(shard_files)
    if not partial:
        paths = up_to_first_absent(paths)
    refuse_repeated_paths(paths)
    shards = []
    for path in paths:
        try:
            with open_shard(path) as handle:
                shard = _readable(read_shard_meta(handle, path, storage=storage))
            if checkpoints is not None:
                refuse_contradicted(path, checkpoints)
            shards.append(shard)
        except UnreadableShardError as err:
            shards.append(_failed(err, partial=partial))
    return _placed(shards)


def refuse_contradicted(path: Path, checkpoints: Path) -> None:
    """Raise :class:`MislabelledShardError` when the rank's checkpoints hold other rows
    for some of the shard's IDs than the shard does."""
    disagreement = rows_against_checkpoints(path, checkpoints)
    if disagreement is not None:
        raise MislabelledShardError(path, str(disagreement))


#: Wraps one shard's stream of ID chunks (a merge writes them out as they go by).
IdsHook = Callable[[ShardPlan, Iterator[list[str]]], Iterator[list[str]]]


def check_ids(
    draft: MergePlan,
    expected: set[str] | frozenset[str] | None,
    *,
    partial: bool = False,
    keep_ids: bool = False,
    on_ids: IdsHook | None = None,
) -> MergePlan:
    """Read and check the IDs of the shards of ``draft`` in this process; return the final plan.

    A shard whose IDs cannot be read is failed (with ``partial``), which moves the
    rows of the shards after it: compare with :meth:`MergePlan.same_rows_as`.
    ``keep_ids`` keeps the IDs' hashes in the plan (``plan.ids``, 8 bytes an ID,
    for writing in index order); otherwise they are let go.
    """
    index = IdIndex(expected)
    shards: list[ShardPlan] = []
    for shard in draft.shards:
        if shard.usable:
            try:
                refuse_changed(shard)
                with open_shard(shard.path) as handle:
                    chunks = iter_id_chunks(handle, shard.path)
                    index.add_shard(shard.path, chunks if on_ids is None else on_ids(shard, chunks))
            except UnreadableShardError as err:
                shard = _failed(err, partial=partial)
        logger.debug("Planned %s: %s, %d sequences", shard.path, shard.status, shard.num_sequences)
        shards.append(shard)
    plan = _settled(shards, index.findings(), partial=partial)
    index.extra = []
    index.drop_sorted()
    plan.ids = index if keep_ids else None
    _log_plan(plan)
    return plan


def plan_from_scan(
    scans: Sequence[ShardMeta | ShardError], findings: Findings, *, partial: bool = False
) -> MergePlan:
    """The plan of shards read elsewhere (on a cluster's workers): each shard's metadata,
    or the error that reading it gave, in shard order, and the findings of their IDs."""
    shards = []
    for scan in scans:
        if isinstance(scan, ShardMeta):
            shards.append(_readable(scan))
        elif isinstance(scan, UnreadableShardError):
            shards.append(_failed(scan, partial=partial))
        else:
            raise scan
    plan = _settled(shards, findings, partial=partial)
    _log_plan(plan)
    return plan


def _log_plan(plan: MergePlan) -> None:
    logger.info(
        "Plan: %d shards (%d failed), %d sequences, dimension %d",
        len(plan.shards),
        len(plan.failed_shards),
        plan.total_sequences,
        plan.embedding_dim,
    )
