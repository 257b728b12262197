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
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from ._files import file_key, fingerprint
from .crosscheck import Comparison, compare_many, compare_with_checkpoints
from .errors import (
    DuplicateIdError,
    MergeError,
    MislabelledShardError,
    MissingIdsError,
    ShardError,
    UnreadableShardError,
)
from .ids import IdLookup
from .ranks import rank_of, rank_ranges
from .readahead import ReadAhead, ShardIds, read_ahead, read_metas
from .salvage import Salvage, Scratch, has_checkpoints, salvage_rank, usual_dimension
from .shards import ABSENT, ShardMeta, open_shard, read_shard_meta
from .statuses import ShardStatus, unfinished
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
    fingerprint: dict[str, Any] | None = None  # size and mtime (of ``source``) when planned
    salvage: Salvage | None = None  # a salvaged rank's: where its rows came from
    model_dtypes: tuple[str, ...] = ()  # those its rank's checkpoints name, when its rows were compared with them

    @property
    def usable(self) -> bool:
        return self.status is not ShardStatus.FAILED

    @property
    def source(self) -> Path:
        """The file its rows are read from: the shard, or the one written from a salvaged
        rank's checkpoints."""
        return self.path if self.salvage is None or self.salvage.file is None else self.salvage.file

    @property
    def origin(self) -> Path:
        """What a message about its rows names: the shard, or a salvaged rank's checkpoint folder."""
        return self.path if self.salvage is None else self.salvage.folder


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
        """The shards whose rows go into the output (a salvaged rank's included)."""
        return [s for s in self.shards if s.status in (ShardStatus.OK, ShardStatus.SALVAGED)]

    @property
    def failed_shards(self) -> list[ShardPlan]:
        return [s for s in self.shards if not s.usable]

    @property
    def unfinished_shards(self) -> list[ShardPlan]:
        """The shards a partial merge records as failed, those left out and the salvaged ranks'
        when no expected IDs say whether their checkpoints hold all they were given."""
        return [s for s in self.shards if unfinished(s.status, self.num_expected is not None)]

    @property
    def partial(self) -> bool:
        return bool(self.unfinished_shards or self.missing_ids)

    def same_rows_as(self, other: MergePlan) -> bool:
        """Whether both plans put the same shards' rows in the same places."""
        return [(s.status, s.offset) for s in self.shards] == [(s.status, s.offset) for s in other.shards]

    def id_reads(self) -> list[ShardIds]:
        """What reading the usable shards' IDs takes, in order (``check_ids`` reads them)."""
        return [ShardIds(s.source, s.origin, s.num_sequences) for s in self.shards if s.usable]


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


def up_to_first_absent(paths: list[Path], saved: Path | None = None) -> list[Path]:
    """The shards a strict merge looks at: those up to the first that does not exist,
    which fails in its turn (a stray ``shard_200000.h5`` among 8 shards lists 199,992
    absent ones: no other work is done on them) -- but one whose rank has checkpoints in
    ``saved`` does not stop the list (they may stand in for it)."""
    for at, path in enumerate(paths):
        if not os.path.lexists(path) and not has_checkpoints(path, saved):
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
        now = fingerprint(shard.source)
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


def _placed(shards: list[ShardPlan], *, same_dims: bool = True) -> MergePlan:
    """Check the shards agree on the dimension (unless not ``same_dims``: a check of IDs
    alone), then place their rows one after another."""
    dims = [s for s in shards if s.usable and s.embedding_dim > 0]
    for shard in dims[1:] if same_dims else ():
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
               checkpoints: Path | None = None, scratch: Scratch | None = None,
               meanwhile: Callable[[], object] | None = None) -> MergePlan:
    """Read every shard's metadata (no IDs) and place the shards' rows one after another;
    ``meanwhile()`` is called while processes read the metadata, where they do
    (``readahead.read_metas``).

    With ``checkpoints`` (the run's checkpoints folder), each shard's rows are first
    compared with those its rank's checkpoints hold (:mod:`.crosscheck`): a shard they
    contradict is an error, or with ``partial``, left out. With ``scratch`` as well, a rank
    whose shard is absent, unreadable or (with ``partial``) contradicted gives the rows its
    checkpoints hold instead (:mod:`.salvage`, written into ``scratch``). A check of IDs
    alone (``storage=False``) reads no shard's rows: it compares none, and salvages the
    checkpoints' IDs only.

    Raises
    ------
    MergeError
        No shards; a shard listed twice; with ``partial=False``, an absent or
        unreadable shard whose rank's checkpoints give nothing, or one its checkpoints
        contradict (:class:`MislabelledShardError`), or a damaged checkpoint;
        always, a shard of an unsupported shape or dtype, or shards of different
        embedding dimensions.
    """
    paths = shard_paths(shard_files)
    salvaging = checkpoints is not None and scratch is not None
    saved = checkpoints if salvaging else None  # (where a rank without a usable shard gets its rows)
    if not partial:
        paths = up_to_first_absent(paths, saved=saved)
    refuse_repeated_paths(paths)
    against = checkpoints if storage or salvaging else None  # (what the shards are compared with)
    compared = compare_many(paths, against, rows=storage) if against is not None else {}
    metas = read_metas(paths, storage=storage, meanwhile=meanwhile)
    shards, errors, lacking = _drafts(paths, metas, against, compared, saved=saved, partial=partial, rows=storage)
    if saved is not None and scratch is not None and (errors or lacking):
        shards = _salvaged(shards, errors, lacking, saved, scratch, partial=partial, rows=storage)
    if not partial:
        _refuse_unusable(shards, errors)
    return _placed(shards, same_dims=storage)


def _drafts(paths: list[Path], metas: list[ShardMeta | ShardError], against: Path | None,
            compared: dict[Path, Comparison | MergeError], *, saved: Path | None, partial: bool, rows: bool
            ) -> tuple[list[ShardPlan], dict[Path, UnreadableShardError], dict[Path, int]]:
    """Each shard as its metadata (``metas``, in order) shows it, compared with its rank's
    checkpoints (in ``against``, where given); the shards that cannot be used, with why (refused
    unless the merge goes on without them); and, where a rank's rows can be taken from its
    checkpoints (in ``saved``), how many of their IDs each usable shard lacks."""
    shards, errors, lacking = [], {}, {}
    for path, meta in zip(paths, metas, strict=True):
        try:
            shard, unheld = _drafted(meta, against, compared.get(path), rows=rows)
        except UnreadableShardError as err:
            _refuse_unless_kept(err, path, saved, partial=partial)
            errors[path] = err
            shards.append(_failed(err, partial=True))
            continue
        if unheld and saved is not None and shard.merged_from is None:
            lacking[path] = unheld
        shards.append(shard)
    return shards, errors, lacking


def _drafted(meta: ShardMeta | ShardError, against: Path | None, known: Comparison | MergeError | None, *,
             rows: bool) -> tuple[ShardPlan, int]:
    """A shard as its metadata shows it (the error reading it raised), compared with its rank's
    checkpoints (in ``against``, where given: ``known``, as compared already), and how many of
    their IDs it lacks."""
    if isinstance(meta, ShardError):
        raise meta
    shard = _readable(meta)
    if against is None:
        return shard, 0
    return _against_checkpoints(shard, against, known, rows=rows)


def _refuse_unusable(shards: list[ShardPlan], errors: dict[Path, UnreadableShardError]) -> None:
    """Raise the error of the first shard that cannot be used (a strict merge)."""
    for shard in shards:
        if not shard.usable:
            raise errors[shard.path]


def _against_checkpoints(shard: ShardPlan, checkpoints: Path, known: Comparison | MergeError | None, *,
                         rows: bool) -> tuple[ShardPlan, int]:
    """A readable shard compared with its rank's checkpoints (``known``: as compared already):
    refused if they contradict it, with the model dtypes they name, and how many of their IDs
    it lacks."""
    unheld = refuse_contradicted(shard.path, checkpoints, rows=rows, known=known)
    if isinstance(known, Comparison):
        shard = replace(shard, model_dtypes=known.model_dtypes)
    return shard, unheld


def _refuse_unless_kept(err: UnreadableShardError, path: Path, checkpoints: Path | None, *, partial: bool) -> None:
    """Raise ``err`` unless the merge goes on without the shard: a partial one, or one that takes
    the rank's rows from its checkpoints (``checkpoints``, when salvaging) where they hold some."""
    if partial:
        return
    if isinstance(err, MislabelledShardError):
        if checkpoints is not None:
            raise MislabelledShardError(err.path, f"{err.problem} (a partial merge salvages what they hold)") from None
        raise err
    if checkpoints is None or not has_checkpoints(path, checkpoints):
        raise err


def _first(lines: list[str]) -> str:
    return lines[0] + (f"; and {len(lines) - 1:,} more" if len(lines) > 1 else "")


def _salvaged(shards: list[ShardPlan], errors: dict[Path, UnreadableShardError], lacking: dict[Path, int],
              checkpoints: Path, scratch: Scratch, *, partial: bool, rows: bool) -> list[ShardPlan]:
    """``shards``, each failed one replaced by the rows its rank's checkpoints hold, where they
    hold any, and each that lacks some of them by its rows and theirs."""
    dim = _known_dimension(shards, errors, lacking, checkpoints)
    out = []
    for shard in shards:
        rank = _rank_to_salvage(shard, errors, lacking)
        if rank is None:
            out.append(shard)
            continue
        problem, keep = _what_to_salvage(shard, errors.get(shard.path), lacking.get(shard.path, 0))
        found = salvage_rank(rank, shard.path, problem, checkpoints / f"shard_{rank}", scratch, dim=dim,
                             partial=partial, rows=rows, keep=keep)
        if found is None or found.file is None:
            out.append(shard if found is None else replace(
                shard, error=f"{shard.error}; its rank's checkpoints gave no row ({_first(found.skipped)})"))
            continue
        salvaged = _plan_of_salvage(shard, found)
        out.append(salvaged)
        if dim is None:  # (nothing said it before: the first salvaged rank's)
            dim = salvaged.embedding_dim
    return out


def _rank_to_salvage(shard: ShardPlan, errors: dict[Path, UnreadableShardError], lacking: dict[Path, int]
                     ) -> int | None:
    """The rank of a shard whose rows are taken from its rank's checkpoints (one that cannot be
    used, or lacks some of theirs), else None."""
    rank = rank_of(shard.path)
    return rank if rank is not None and (shard.path in errors or shard.path in lacking) else None


def _known_dimension(shards: list[ShardPlan], errors: dict[Path, UnreadableShardError], lacking: dict[Path, int],
                     checkpoints: Path) -> int | None:
    """The embedding dimension of the first usable shard that says it, else the one most of the
    checkpoints of the ranks to salvage have, else None."""
    dims = [s.embedding_dim for s in shards if s.usable and s.embedding_dim > 0]
    if dims:
        return dims[0]
    return usual_dimension([checkpoints / f"shard_{rank}" for s in shards
                            if (rank := _rank_to_salvage(s, errors, lacking)) is not None])


def _plan_of_salvage(shard: ShardPlan, found: Salvage) -> ShardPlan:
    """The plan of a shard whose rank's rows were salvaged (``found``): the file written from them."""
    logger.info("Salvaged %s", found)
    assert found.file is not None
    with open_shard(found.file) as handle:
        meta = read_shard_meta(handle, found.file, storage=False)
    return ShardPlan(path=shard.path, status=ShardStatus.SALVAGED, num_sequences=meta.num_sequences,
                     embedding_dim=meta.embedding_dim, dtype=meta.dtype, error=found.problem,
                     fingerprint=meta.fingerprint, salvage=found)


def _what_to_salvage(shard: ShardPlan, err: UnreadableShardError | None, lacking: int) -> tuple[str, str]:
    """Why a rank's rows are taken from its checkpoints, and which of its shard's own rows go in
    too (``salvage_rank``'s ``keep``): none where the shard cannot be read or holds none, those
    shown right where it is mislabelled, all where it only lacks ``lacking`` of theirs."""
    if err is None:
        return f"it lacks {lacking:,} sequences that its rank's checkpoints hold", "all" if shard.num_sequences else \
            "none"
    return err.problem, "shown" if isinstance(err, MislabelledShardError) else "none"


def refuse_contradicted(path: Path, checkpoints: Path, *, rows: bool = True,
                        known: Comparison | MergeError | None = None) -> int:
    """Raise :class:`MislabelledShardError` when the rank's checkpoints hold other rows
    for some of the shard's IDs than the shard does; return how many IDs they hold that
    it lacks. Without ``rows``, only the IDs are compared (nothing is refused). ``known``:
    the comparison made already (:func:`~virnucpro_merge.crosscheck.compare_many`)."""
    if isinstance(known, MergeError):
        raise known
    found = known if known is not None else compare_with_checkpoints(path, checkpoints, rows=rows)
    if found.disagreement is not None:
        raise MislabelledShardError(path, str(found.disagreement))
    return found.unheld


#: Wraps one shard's stream of ID chunks (a merge writes them out as they go by).
IdsHook = Callable[[ShardPlan, Iterator[list[bytes]]], Iterator[list[bytes]]]


def check_ids(
    draft: MergePlan,
    expected: Collection[str] | IdLookup | None,
    *,
    partial: bool = False,
    keep_ids: bool = False,
    on_ids: IdsHook | None = None,
    progress: bool = False,
    ahead: ReadAhead | None = None,
) -> MergePlan:
    """Read and check the IDs of the shards of ``draft`` in this process; return the final plan.

    A shard whose IDs cannot be read is failed (with ``partial``), which moves the
    rows of the shards after it: compare with :meth:`MergePlan.same_rows_as`.
    ``keep_ids`` keeps every row's place in the expected IDs in the plan (``plan.ids``,
    4 bytes an ID, for writing in index order); otherwise they are let go. The IDs are read ahead
    (:mod:`virnucpro_merge.readahead`): by ``ahead``, made of :meth:`MergePlan.id_reads`
    (and of ``expected`` as a lookup, where given) before the caller started threads, or
    else by one made here.
    """
    if ahead is None:
        lookup = None if expected is None else IdLookup.of(expected)
        with read_ahead(draft.id_reads(), lookup, ids=on_ids is not None) as ahead:
            return check_ids(draft, lookup, partial=partial, keep_ids=keep_ids, on_ids=on_ids, progress=progress,
                             ahead=ahead)
    index = IdIndex(expected, keep_places=keep_ids)
    shards: list[ShardPlan] = []
    usable = 0  # (the usable shards' IDs are read ahead, in their order)
    for shard in tqdm(draft.shards, unit="shard", desc="Checking the IDs", disable=not progress):
        if shard.usable:
            usable += 1
            try:
                refuse_changed(shard)
                chunks = ahead.chunks(usable - 1)
                index.add_shard(shard.source, chunks if on_ids is None else  # (with on_ids, read with their bytes)
                                on_ids(shard, cast("Iterator[list[bytes]]", chunks)), shard.origin)
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


def plan_from_scan(draft: MergePlan, scans: Sequence[ShardMeta | ShardError], findings: Findings, *,
                   partial: bool = False) -> MergePlan:
    """The plan of a draft whose usable shards were read elsewhere (on a cluster's workers,
    by their ``source``): each one's metadata, or the error that reading it gave, in shard
    order, and the findings of their IDs."""
    usable = [s for s in draft.shards if s.usable]
    outcome = dict(zip((id(s) for s in usable), scans, strict=True))
    shards = []
    for shard in draft.shards:
        scan = outcome.get(id(shard))
        if isinstance(scan, UnreadableShardError):
            shard = _failed(scan, partial=partial)
        elif isinstance(scan, ShardError):
            raise scan
        shards.append(shard)
    if findings.duplicate is not None:  # (named by the files read: a salvaged rank's by its checkpoints)
        named = {s.source: s.origin for s in usable}
        sequence_id, repeat, first = findings.duplicate
        findings = replace(findings, duplicate=(sequence_id, named.get(repeat, repeat), named.get(first, first)))
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
