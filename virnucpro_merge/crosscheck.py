"""Whether a shard's rows are those of its IDs, as its rank's checkpoints show.

After a resume, the pipeline writes ``shard_<rank>.h5`` with its IDs in another order
than its rows (``UPSTREAM-RUN-FOLDER.md``): row and ID counts agree, so nothing in the
shard alone shows it. The rank's checkpoints hold the same sequences with their own
rows, written as they were computed: every ID in both must have a bit-identical row
(compared in the narrower of the two dtypes). An ID that several checkpoints hold with
different rows (recomputed after a resume) is right in the shard if it matches any of
them. A checkpoint that cannot vouch for anything -- damaged, or of another dimension --
and a rank folder that cannot be listed are passed over and logged.

Cost: each checkpoint of the rank is read once, and the shard's rows that it covers
(``benchmarks/bench_checkpoints.py`` measures it); :func:`compare_many` shares the ranks out
to this machine's cores when there is enough to read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._processes import pool, pool_size
from .checkpoints import Checkpoint, CheckpointFile, checkpointed_ids, rank_checkpoints, read_checkpoint
from .errors import CheckpointError, MergeError, shown_id
from .ranks import rank_of
from .shards import embeddings_of, open_shard, read_id_bytes, read_rows

__all__ = ["Disagreement", "Comparison", "compare_with_checkpoints", "compare_many", "rows_against_checkpoints"]

logger = logging.getLogger("virnucpro_merge")


@dataclass(frozen=True)
class Disagreement:
    """How a shard's rows disagree with its rank's checkpoints."""

    rank: int
    #: IDs of the shard found in a checkpoint, and of those, how many have another row there
    checked: int
    differing: int
    first_id: str
    checkpoints: Path

    def __str__(self) -> str:
        return (f"its IDs do not match its rows: {self.differing:,} of the {self.checked:,} rows that rank "
                f"{self.rank}'s checkpoints hold differ from them (first: {shown_id(self.first_id)}; "
                f"checkpoints in {self.checkpoints})")


@dataclass(frozen=True)
class Comparison:
    """A shard against its rank's checkpoints: how its rows disagree (None: they do not), and
    how many IDs the checkpoints hold that it lacks (a shard cut short, or empty: salvageable)."""

    disagreement: Disagreement | None = None
    unheld: int = 0
    #: the model dtypes its checkpoints name (``"torch.float16"``), sorted (when rows are compared)
    model_dtypes: tuple[str, ...] = ()


def rows_against_checkpoints(shard: Path, checkpoints: Path) -> Disagreement | None:
    """Compare the rows of ``shard`` with those its rank's checkpoints
    (``checkpoints/shard_<rank>``) hold for the same IDs: None when every one is
    bit-identical (or nothing is in both), else how they disagree.

    Raises
    ------
    UnreadableShardError
        The shard's IDs or rows cannot be read.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(), empty=(),
    ...                     short={}, checkpoint_every=25, resumed=(1,))
    >>> rows_against_checkpoints(run.shard_files[0], run.directory / "checkpoints") is None
    True
    >>> print(rows_against_checkpoints(run.shard_files[1], run.directory / "checkpoints"))  # doctest: +ELLIPSIS
    its IDs do not match its rows: ... of the ... rows that rank 1's checkpoints hold differ from them (first: ...)
    """
    return compare_with_checkpoints(shard, checkpoints).disagreement


def compare_with_checkpoints(shard: Path, checkpoints: Path, *, rows: bool = True) -> Comparison:
    """:func:`rows_against_checkpoints`, and how many IDs the checkpoints hold that the shard
    lacks (counted in the same pass). Without ``rows``, only the IDs are read: the IDs the
    shard lacks are counted, and no row is compared.

    Raises
    ------
    UnreadableShardError
        The shard's IDs or rows cannot be read.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(), empty=(2,),
    ...                     short={}, checkpoint_every=25)
    >>> compare_with_checkpoints(run.shard_files[2], run.directory / "checkpoints")  # an empty shard
    Comparison(disagreement=None, unheld=75, model_dtypes=())
    """
    rank = rank_of(shard)
    if rank is None:
        return Comparison()
    found = rank_checkpoints(checkpoints / f"shard_{rank}")
    if found.problem is not None:
        logger.warning("%s: not compared with its checkpoints: %s", shard, found.problem)
    if not found.files:
        return Comparison()
    unheld: set[bytes] = set()
    with open_shard(shard) as handle:
        emb = embeddings_of(handle, shard)
        if emb.shape[0] == 0:
            return Comparison(unheld=_count_ids(found.files))
        ids = read_id_bytes(handle, shard)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        if not rows:
            return Comparison(unheld=_count_ids(found.files, np.unique(ordered)))
        agreed: set[bytes] = set()
        differed: dict[bytes, None] = {}  # (in the order found: the first is named)
        models: set[str] = set()
        for entry in found.files:
            try:
                checkpoint = read_checkpoint(entry.path)
            except CheckpointError as err:
                logger.warning("Not compared with its shard: %s", err)
                continue
            models.update([checkpoint.model_dtype] if checkpoint.model_dtype else [])
            both = _rows_in_shard(checkpoint, ordered, order, emb.shape[1])
            if both is None:
                continue
            at, theirs, names, outside = both
            unheld.update(outside.tolist())
            narrower = emb.dtype if emb.dtype.itemsize <= theirs.dtype.itemsize else theirs.dtype
            same = (_bits(read_rows(emb, at), narrower) == _bits(theirs, narrower)).all(axis=1)
            agreed.update(names[same].tolist())
            differed.update(dict.fromkeys(names[~same].tolist()))
    conflicting = agreed.intersection(differed)
    if conflicting:
        logger.warning("%s: %d IDs are held with different rows by different checkpoints of rank %d; the shard "
                       "agrees with one of them", shard, len(conflicting), rank)
    differing = [name for name in differed if name not in agreed]
    if not differing:
        return Comparison(unheld=len(unheld), model_dtypes=tuple(sorted(models)))
    return Comparison(Disagreement(rank, len(agreed) + len(differing), len(differing), differing[0].decode("utf-8"),
                                   found.folder), len(unheld), tuple(sorted(models)))


def _count_ids(files: list[CheckpointFile], but: np.ndarray | None = None) -> int:
    """The distinct IDs of the checkpoints that can be read (IDs only), but those in ``but``
    (sorted UTF-8 bytes)."""
    ids = checkpointed_ids(files)
    if but is None or not ids:
        return len(ids)
    theirs = np.array([i.encode("utf-8") for i in ids], dtype=bytes)
    where = np.minimum(np.searchsorted(but, theirs), max(len(but) - 1, 0))
    return int((but[where] != theirs).sum()) if len(but) else len(ids)


def _rows_in_shard(checkpoint: Checkpoint, ordered: np.ndarray, order: np.ndarray, dim: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """For one checkpoint: the shard rows of its IDs that the shard holds (sorted), its rows
    for them (in the same order), those IDs, and its IDs the shard lacks; None when it cannot
    vouch for anything."""
    path = checkpoint.path
    if checkpoint.embeddings.shape[1:] != (dim,) or not checkpoint.sequence_ids:
        if checkpoint.sequence_ids:
            logger.warning("Not compared with its shard: %s: rows of dimension %d, the shard's %d", path,
                           checkpoint.embeddings.shape[1], dim)
        return None
    theirs = np.array([i.encode("utf-8") for i in checkpoint.sequence_ids], dtype=bytes)
    where = np.searchsorted(ordered, theirs)
    inside = where < len(ordered)
    inside[inside] = ordered[where[inside]] == theirs[inside]
    at = order[where[inside]]
    sort = np.argsort(at, kind="stable")
    at, mine = at[sort], np.flatnonzero(inside)[sort]
    keep = np.ones(len(at), dtype=bool)
    keep[1:] = at[1:] != at[:-1]  # an ID twice in one checkpoint: its first row
    return at[keep], checkpoint.embeddings[mine[keep]], theirs[mine[keep]], theirs[~inside]


def _bits(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows as the unsigned integers of their bits (a NaN equals the same NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):  # (a float32 row narrowed to a checkpoint's float16)
        return np.ascontiguousarray(rows, dtype=dtype).view(f"u{np.dtype(dtype).itemsize}")


#: Bytes of checkpoints from which the comparisons are shared out to processes.
_SHARED_FROM = 64 * 2**20


class _Kept(logging.Handler):
    """The log records of a comparison made in another process, to be told in this one."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # (plain text: it travels back pickled)
        self.records.append(record)


def _outcome(shard: Path, checkpoints: Path, rows: bool) -> Comparison | MergeError:
    try:
        return compare_with_checkpoints(shard, checkpoints, rows=rows)
    except MergeError as err:  # (said when the shard is reached in its turn)
        return err


def _outcome_here(task: tuple[Path, Path, bool]) -> tuple[Comparison | MergeError, list[logging.LogRecord]]:
    """Process task: one shard's comparison, with what it logged."""
    kept, handlers, propagate = _Kept(), logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [kept], False
    try:
        return _outcome(*task), kept.records
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def compare_many(shards: Sequence[Path], checkpoints: Path, *, rows: bool = True
                 ) -> dict[Path, Comparison | MergeError]:
    """:func:`compare_with_checkpoints` for each of ``shards``: the comparison, or the error
    it met (the shard cannot be read). Where their ranks' checkpoints hold enough to read
    (64 MiB), the shards are shared out to forked processes (one per usable core, at most
    8), their log records told here; else they are compared here, in turn.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(), empty=(),
    ...                     short={}, checkpoint_every=25, resumed=(1,))
    >>> found = compare_many(run.shard_files, run.directory / "checkpoints")
    >>> [found[p].disagreement is not None for p in run.shard_files]
    [False, True, False, False]
    """
    folders = [checkpoints / f"shard_{rank}" for shard in shards if (rank := rank_of(shard)) is not None]
    total = sum(rank_checkpoints(folder).size for folder in folders) if rows else 0
    workers = pool_size(len(shards)) if total >= _SHARED_FROM else 1
    with pool(workers) as executor:
        if executor is None:
            return {shard: _outcome(shard, checkpoints, rows) for shard in shards}
        found = {}
        for shard, (outcome, records) in zip(shards, executor.map(_outcome_here, [(s, checkpoints, rows)
                                                                                 for s in shards]), strict=True):
            for record in records:
                logger.handle(record)
            found[shard] = outcome
        return found

