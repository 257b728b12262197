"""What a rank's checkpoints hold, made into a shard that the merge reads like any other.

A worker that died leaves no usable shard, but the checkpoints it finished
(``checkpoints/shard_<rank>/batch_NNNNN.pt``) hold the rows it computed, each beside its
ID. :func:`salvage_rank` reads them (safely: :mod:`.checkpoints`) and writes their rows,
each ID once, into a shard file in a scratch folder (:class:`Scratch`); the plan takes that
file in place of the rank's shard, so the salvaged rows go through every check a shard's
do (duplicates, missing and extra IDs, NaN, checksums).

The rules:

- checkpoints are read in batch order; one without its ``.done`` marker is whole all the
  same (its CRCs say so) and used, and said; a save in progress (``.tmp``) is not read;
- a checkpoint that cannot be used (damaged, of another dimension) stops a strict merge and
  is skipped and listed by a partial one;
- an ID held again with a bit-identical row (a resume repeats earlier checkpoints) counts
  once; held with another row, nothing says which is right: a strict merge stops
  (:class:`~virnucpro_merge.errors.ConflictingCheckpointsError`), a partial one takes
  neither row and lists the ID for re-run;
- a **mislabelled shard** (its IDs do not match its rows, :mod:`.crosscheck`) gives, in a
  partial merge, the checkpoints' rows for the IDs they hold, and its own other rows only
  when they are shown right: when the rows the shard puts under the checkpointed IDs are,
  as a set of bit patterns, exactly the rows the checkpoints hold for those IDs. The
  pipeline's mislabelling shuffles the IDs of the rows it resumed from checkpoints; when
  those rows are all accounted for, the shuffle stayed among them, and the other rows are
  written in order, as a worker that never resumed writes them. Otherwise the shard's other
  rows are listed for re-run: never is a row written that a checkpoint contradicts.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .checkpoints import Checkpoint, rank_checkpoints, read_checkpoint
from .errors import CheckpointError, ConflictingCheckpointsError, shown_id
from .shards import EMBEDDINGS, SEQUENCE_IDS, embeddings_of, iter_id_chunks, open_shard, read_rows

__all__ = ["Salvage", "Scratch", "scratch_folder", "salvage_rank"]

logger = logging.getLogger("virnucpro_merge")

_ROWS_AT_A_TIME = 8192  # rows of a mislabelled shard read at a time


@dataclass(frozen=True)
class Salvage:
    """Where a rank's rows came from when its shard could not be used.

    Attributes
    ----------
    rank : int
        The rank.
    shard : Path
        Its shard, which could not be used, and ``problem``, why.
    folder : Path
        Its checkpoint folder.
    file : Path
        The shard written from them (in a scratch folder: gone after the merge).
    rows : int
        The rows in ``file``: from checkpoints, and ``kept`` from the shard.
    checkpoints : list of str
        The checkpoint files used.
    repeats : int
        IDs held again, with the same row, by a later checkpoint (counted once).
    kept, dropped : int
        The shard's own rows of IDs that no checkpoint holds: kept (a shard cut short, or
        a mislabelled one's shown right), or not.
    skipped : list of str
        A line for each checkpoint not used, and why.
    conflicting : list of str
        IDs that checkpoints hold with different rows (left out, for re-run).
    unmarked : int
        Checkpoints used without their ``.done`` marker (whole, as their CRCs show).
    in_progress : int
        Saves in progress (``.tmp``), not read.
    """

    rank: int
    shard: Path
    problem: str
    folder: Path
    file: Path
    rows: int
    checkpoints: list[str] = field(default_factory=list)
    repeats: int = 0
    kept: int = 0
    dropped: int = 0
    skipped: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    unmarked: int = 0
    in_progress: int = 0

    def summary(self) -> dict[str, Any]:
        """What the merge report records of it (JSON)."""
        return {"checkpoints_folder": str(self.folder), "shard_problem": self.problem,
                "from_checkpoints": self.rows - self.kept, "checkpoints_used": len(self.checkpoints),
                "repeats": self.repeats, "kept_from_shard": self.kept, "dropped_from_shard": self.dropped,
                "skipped_checkpoints": self.skipped, "conflicting_ids": len(self.conflicting),
                "unmarked_checkpoints": self.unmarked, "saves_in_progress": self.in_progress}

    def __str__(self) -> str:
        notes = [f"without a .done marker, whole, used: {self.unmarked}" if self.unmarked else "",
                 f"saves in progress, not read: {self.in_progress}" if self.in_progress else "",
                 f"repeated rows, counted once: {self.repeats:,}" if self.repeats else "",
                 f"rows of its own shard kept: {self.kept:,}" if self.kept else "",
                 f"rows of its shard not kept: {self.dropped:,}" if self.dropped else "",
                 f"checkpoints not usable: {len(self.skipped)}" if self.skipped else ""]
        said = "; ".join(n for n in notes if n)
        return (f"rank {self.rank}: {self.rows:,} rows from {len(self.checkpoints)} checkpoints in "
                f"{self.folder}{f' ({said})' if said else ''}; its shard {self.shard}: {self.problem}")


class Scratch:
    """A scratch folder made on first use (the files of salvaged ranks), removed by
    :func:`scratch_folder` when the merge is over."""

    def __init__(self, beside: Path | None) -> None:
        self._beside = beside
        self._path: Path | None = None

    def file(self, name: str) -> Path:
        """A path for ``name`` in the folder (made now if it is not there yet)."""
        if self._path is None:
            where = None if self._beside is None else self._beside.parent
            prefix = "virnucpro-salvage-" if self._beside is None else f".{self._beside.name}.salvage-"
            self._path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        return self._path / name

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


@contextmanager
def scratch_folder(beside: Path | None = None) -> Iterator[Scratch]:
    """``with scratch_folder(output) as scratch:`` a folder beside ``output`` (a hidden
    ``.<name>.salvage-*``; None: the system's temporary folder), made only when a file is
    put in it, and removed with everything in it at the end of the block.

    >>> from pathlib import Path
    >>> with scratch_folder(Path("out.h5")) as scratch:
    ...     made = scratch.file("rank_3.h5")
    ...     made.parent.name.startswith(".out.h5.salvage-"), made.parent.is_dir()
    (True, True)
    >>> made.parent.exists()
    False
    """
    scratch = Scratch(beside)
    try:
        yield scratch
    finally:
        scratch.remove()


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


def _narrowed(row: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # (a float32 row narrowed to float16)
        return row.astype(dtype)


class _Writer:
    """The salvaged shard, written as it grows: rows (float32) and IDs appended."""

    def __init__(self, path: Path, dim: int, *, rows: bool) -> None:
        self.path, self.dim, self.with_rows, self.count = path, dim, rows, 0
        self._file = h5py.File(path, "w")
        chunk = max(1, min(4096, 2**20 // (4 * max(dim, 1))))
        self._emb = self._file.create_dataset(EMBEDDINGS, shape=(0, dim), maxshape=(None, dim), dtype="<f4",
                                              chunks=(chunk, max(dim, 1)))
        self._ids = self._file.create_dataset(SEQUENCE_IDS, shape=(0,), maxshape=(None,),
                                              dtype=h5py.string_dtype(), chunks=(65536,))

    def append(self, ids: list[str], rows: np.ndarray | None) -> None:
        if not ids:
            return
        end = self.count + len(ids)
        self._emb.resize(end, axis=0)
        if self.with_rows:  # (without: a check of IDs only; the rows stay unwritten, no space taken)
            self._emb[self.count : end] = rows
        self._ids.resize(end, axis=0)
        self._ids[self.count : end] = np.array(ids, dtype=object)
        self.count = end

    def close(self) -> None:
        self._file.close()


@dataclass
class _Taken:
    """The IDs taken so far from a rank's checkpoints: each with the digest of its row and
    the file it came from (and of the row narrowed to a mislabelled shard's dtype)."""

    digests: dict[str, bytes] = field(default_factory=dict)
    narrow: dict[str, tuple[bytes, np.dtype]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    conflicting: dict[str, None] = field(default_factory=dict)
    repeats: int = 0


def salvage_rank(rank: int, shard: Path, problem: str, folder: Path, scratch: Scratch, *, dim: int | None,
                 partial: bool, rows: bool = True, keep: str = "none") -> Salvage | None:
    """Write the rows that rank ``rank``'s checkpoints (in ``folder``) hold into a shard in
    ``scratch``; None when they hold none that can be used.

    Parameters
    ----------
    rank : int
        The rank.
    shard : Path
        Its shard, which cannot be used, and ``problem``, why.
    folder : Path
        Its checkpoint folder, ``checkpoints/shard_<rank>``.
    scratch : Scratch
        Where to write the salvaged shard.
    dim : int, optional
        The run's embedding dimension (checkpoints of another are not used); None: the
        first usable checkpoint's.
    partial : bool
        Skip (and list) an unusable checkpoint, and leave out an ID held with different
        rows; otherwise both are errors.
    rows : bool
        Write the rows (a merge); without, only the IDs (a check: the rows take no space).
    keep : {"none", "shown", "all"}
        The shard's own rows of IDs no checkpoint holds that go in too: none (it cannot be
        read), those shown right (it is mislabelled: see the module's notes) or all (it
        agrees with its checkpoints but lacks some of their IDs: cut short, or empty).

    Raises
    ------
    CheckpointError
        Without ``partial``: a checkpoint that cannot be used.
    ConflictingCheckpointsError
        Without ``partial``: an ID that two checkpoints hold with different rows.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(2,), empty=(),
    ...                     short={}, checkpoint_every=25)
    >>> with scratch_folder() as scratch:
    ...     found = salvage_rank(2, run.shard_files[2], "file does not exist", run.directory / "checkpoints/shard_2",
    ...                          scratch, dim=4, partial=False)
    ...     found.rows, len(found.checkpoints)
    (50, 2)
    """
    found = rank_checkpoints(folder)
    if found.problem is not None:
        logger.warning("Rank %d: nothing salvaged: %s", rank, found.problem)
        return None
    for temp in found.temps:
        logger.debug("%s: a save in progress when the worker stopped: not read", temp)
    narrow = _shard_dtype(shard) if keep == "shown" else None
    taken, used, skipped = _Taken(), list[str](), list[str]()
    writer: _Writer | None = None
    try:
        for entry in found.files:
            checkpoint = _usable(entry.path, dim if writer is None else writer.dim, partial=partial, skipped=skipped)
            if checkpoint is None:
                continue
            if not entry.done:
                logger.debug("%s: no .done marker (the worker stopped right after saving it); whole, so used",
                             entry.path)
            if writer is None:
                writer = _Writer(scratch.file(f"checkpoints-of-rank-{rank}.h5"), checkpoint.embeddings.shape[1],
                                 rows=rows)
            used.append(str(entry.path))
            _take(checkpoint, taken, writer, narrow, partial=partial)
        if writer is None or not writer.count:
            return None
        kept = dropped = 0
        if keep != "none":
            kept, dropped = _keep_shard_rows(shard, taken, writer, shown=keep == "shown")
    finally:
        if writer is not None:
            writer.close()
    file = writer.path
    if taken.conflicting:
        file = _without(writer.path, set(taken.conflicting), scratch.file(f"checkpoints-of-rank-{rank}-kept.h5"),
                        rows=rows)
    count = writer.count - len(taken.conflicting)
    if count == 0:
        return None
    unmarked = sum(not entry.done for entry in found.files if str(entry.path) in used)
    return Salvage(rank, shard, problem, found.folder, file, count, used, taken.repeats, kept, dropped, skipped,
                   list(taken.conflicting), unmarked, len(found.temps))


def _shard_dtype(shard: Path) -> np.dtype:
    with open_shard(shard) as handle:
        return embeddings_of(handle, shard).dtype


def _usable(path: Path, dim: int | None, *, partial: bool, skipped: list[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None (said, and listed in ``skipped``) when it cannot be
    used; without ``partial``, an error instead."""
    try:
        checkpoint = read_checkpoint(path)
        if dim is not None and checkpoint.embeddings.shape[1] != dim and checkpoint.sequence_ids:
            raise CheckpointError(path, f"rows of dimension {checkpoint.embeddings.shape[1]}, the run's {dim}")
    except CheckpointError as err:
        if not partial:
            raise
        logger.warning("Not salvaged: %s", err)
        skipped.append(str(err))
        return None
    return checkpoint


def _take(checkpoint: Checkpoint, taken: _Taken, writer: _Writer, narrow: np.dtype | None, *, partial: bool) -> None:
    """Append the rows of IDs not yet taken; count a repeat; a conflict raises (or with
    ``partial``, is remembered: the ID is taken out at the end)."""
    rows = checkpoint.embeddings.astype("<f4")  # (float16 and bfloat16 widen exactly)
    if narrow is not None:  # (a mislabelled shard's rows are compared in the narrower dtype)
        narrow = narrow if narrow.itemsize <= checkpoint.embeddings.dtype.itemsize else checkpoint.embeddings.dtype
    new_ids, new_at = [], []
    here = str(checkpoint.path)
    for at, sequence_id in enumerate(checkpoint.sequence_ids):
        digest = _digest(rows[at])
        before = taken.digests.get(sequence_id)
        if before is None:
            taken.digests[sequence_id], taken.source[sequence_id] = digest, here
            if narrow is not None:
                taken.narrow[sequence_id] = (_digest(_narrowed(rows[at], narrow)), narrow)
            new_ids.append(sequence_id)
            new_at.append(at)
        elif before == digest:
            taken.repeats += 1
        elif sequence_id not in taken.conflicting:
            if not partial:
                raise ConflictingCheckpointsError(sequence_id, taken.source[sequence_id], here)
            logger.warning("Not salvaged: %s", ConflictingCheckpointsError(sequence_id, taken.source[sequence_id],
                                                                           here))
            taken.conflicting[sequence_id] = None
    writer.append(new_ids, rows[new_at])


def _keep_shard_rows(shard: Path, taken: _Taken, writer: _Writer, *, shown: bool) -> tuple[int, int]:
    """Append ``shard``'s rows of IDs no checkpoint holds -- for a mislabelled shard
    (``shown``), only if its rows under the checkpointed IDs are exactly the checkpointed rows
    (as a multiset); return how many were kept and how many not."""
    with open_shard(shard) as handle:
        emb = embeddings_of(handle, shard)
        ids = [i for chunk in iter_id_chunks(handle, shard) for i in chunk]
        held = np.array([i in taken.digests for i in ids], dtype=bool)
        others = np.flatnonzero(~held)
        if not len(others):
            return 0, 0
        touched = [i for i in ids if i in taken.conflicting] if shown else []
        if shown and (touched or not _same_rows(emb, np.flatnonzero(held), ids, taken)):
            why = f"{len(touched)} of its IDs have conflicting checkpoints" if touched else \
                "the rows under its checkpointed IDs are not the checkpointed rows"
            logger.warning("%s: its %d rows that no checkpoint holds are not kept (%s): listed for re-run",
                           shard, len(others), why)
            return 0, len(others)
        for start in range(0, len(others), _ROWS_AT_A_TIME):
            at = others[start : start + _ROWS_AT_A_TIME]
            writer.append([ids[i] for i in at], read_rows(emb, at).astype("<f4") if writer.with_rows else None)
    if shown:
        logger.info("%s: %d rows that no checkpoint holds kept (the rows under its checkpointed IDs are the "
                    "checkpointed rows, shuffled: the other rows are as written)", shard, len(others))
    return len(others), 0


def _same_rows(emb: h5py.Dataset, held: np.ndarray, ids: list[str], taken: _Taken) -> bool:
    """Whether the rows at ``held`` are, as a multiset of bit patterns, the checkpointed rows
    of the IDs there (compared in the shard's dtype)."""
    mine: Counter[bytes] = Counter()
    for start in range(0, len(held), _ROWS_AT_A_TIME):
        at = held[start : start + _ROWS_AT_A_TIME]
        mine.update(_digest(_narrowed(row, taken.narrow[ids[i]][1])) for i, row in zip(at, read_rows(emb, at),
                                                                                         strict=True))
    theirs = Counter(taken.narrow[ids[i]][0] for i in held)
    return mine == theirs


def _without(path: Path, drop: set[str], into: Path, *, rows: bool) -> Path:
    """A copy of the salvaged shard at ``path`` without the IDs in ``drop`` (rare: IDs that
    checkpoints hold with different rows)."""
    with h5py.File(path, "r") as source:
        ids = source[SEQUENCE_IDS].asstr()[:]
        keep = np.flatnonzero([i not in drop for i in ids])
        emb = source[EMBEDDINGS]
        writer = _Writer(into, emb.shape[1], rows=rows)
        try:
            for start in range(0, len(keep), _ROWS_AT_A_TIME):
                at = keep[start : start + _ROWS_AT_A_TIME]
                writer.append(ids[at].tolist(), read_rows(emb, at))
        finally:
            writer.close()
    path.unlink()
    logger.warning("Left out of the salvaged rows: %d IDs held with different rows by different checkpoints "
                   "(first: %s)", len(drop), shown_id(min(drop)))
    return into
