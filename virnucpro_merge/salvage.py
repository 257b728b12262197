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

from .checkpoints import Checkpoint, RankCheckpoints, rank_checkpoints, read_checkpoint
from .errors import CheckpointError, ConflictingCheckpointsError, DuplicateIdError, OutputError, shown_id
from .outputs import check_output_folder, check_room
from .ranks import rank_of
from .shards import EMBEDDINGS, SEQUENCE_IDS, embeddings_of, first_line, iter_id_chunks, open_shard, read_rows

__all__ = ["Salvage", "Scratch", "scratch_folder", "salvage_rank", "usual_dimension", "has_checkpoints"]

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
    file : Path or None
        The shard written from them (in a scratch folder: gone after the merge); None
        when they gave no row (``skipped`` says why).
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
    file: Path | None
    rows: int
    checkpoints: list[str] = field(default_factory=list)
    repeats: int = 0
    kept: int = 0
    dropped: int = 0
    skipped: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    unmarked: int = 0
    in_progress: int = 0
    #: whether the shard itself could be read (cut short, empty or mislabelled), or not (absent, damaged)
    readable: bool = False

    def summary(self) -> dict[str, Any]:
        """What the merge report records of it (JSON)."""
        return {"checkpoints_folder": str(self.folder), "shard_problem": self.problem,
                "from_checkpoints": self.rows - self.kept, "checkpoints_used": len(self.checkpoints),
                "repeats": self.repeats, "kept_from_shard": self.kept, "dropped_from_shard": self.dropped,
                "skipped_checkpoints": self.skipped, "conflicting_ids": len(self.conflicting),
                "unmarked_checkpoints": self.unmarked, "saves_in_progress": self.in_progress,
                "shard_readable": self.readable}

    def __str__(self) -> str:
        notes = [f"without a .done marker, whole, used: {self.unmarked}" if self.unmarked else "",
                 f"saves in progress, not read: {self.in_progress}" if self.in_progress else "",
                 f"repeated rows, counted once: {self.repeats:,}" if self.repeats else "",
                 f"rows of its own shard kept: {self.kept:,}" if self.kept else "",
                 f"rows of its shard not kept: {self.dropped:,}" if self.dropped else "",
                 f"checkpoints not usable: {len(self.skipped)}" if self.skipped else ""]
        said = "; ".join(n for n in notes if n)
        return (f"rank {self.rank}: {self.rows - self.kept:,} rows from {len(self.checkpoints)} checkpoints in "
                f"{self.folder}{f' ({said})' if said else ''}; its shard {self.shard}: {self.problem}")


class Scratch:
    """A scratch folder made on first use (the files of salvaged ranks), removed by
    :func:`scratch_folder` when the merge is over."""

    def __init__(self, beside: Path | None) -> None:
        self._beside = beside
        self._path: Path | None = None

    def file(self, name: str, size: int = 0) -> Path:
        """A path for ``name`` in the folder (made now if it is not there yet), with room
        for ``size`` bytes.

        Raises
        ------
        OutputError
            The output's folder is not there or cannot be written, or lacks the room.
        """
        if self._beside is not None:
            check_output_folder(self._beside)
            check_room(self._beside, size)
        if self._path is None:
            where = None if self._beside is None else self._beside.parent
            prefix = "virnucpro-salvage-" if self._beside is None else f".{self._beside.name}.salvage-"
            try:
                self._path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
            except OSError as err:
                shown = self._beside or where
                msg = f"{shown}: cannot write the rows salvaged from checkpoints ({err.strerror or err})"
                raise OutputError(msg) from err
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
        try:
            self._emb.resize(end, axis=0)
            if self.with_rows:  # (without: a check of IDs only; the rows stay unwritten, no space taken)
                self._emb[self.count : end] = rows
            self._ids.resize(end, axis=0)
            self._ids[self.count : end] = np.array(ids, dtype=object)
        except (OSError, RuntimeError, ValueError) as err:  # (a full disk, mostly)
            msg = f"{self.path.parent}: cannot write the rows salvaged from checkpoints ({first_line(err)})"
            raise OutputError(msg) from err
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


def _take_all(rank: int, found: RankCheckpoints, scratch: Scratch, taken: _Taken, used: list[str],
              skipped: list[str], *, dim: int | None, partial: bool, rows: bool, narrow: np.dtype | None
              ) -> _Writer | None:
    """Take the rows of each usable checkpoint of ``found`` in turn into a shard written in
    ``scratch`` (made at the first: None if there is none), noting those ``used`` and those
    ``skipped``."""
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
                room = found.size * 2 + 2**20 if rows else 2**20  # (float16 rows widen to float32)
                writer = _Writer(scratch.file(f"checkpoints-of-rank-{rank}.h5", room), checkpoint.embeddings.shape[1],
                                 rows=rows)
            used.append(str(entry.path))
            _take(checkpoint, taken, writer, narrow, partial=partial)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return writer


def salvage_rank(rank: int, shard: Path, problem: str, folder: Path, scratch: Scratch, *, dim: int | None,
                 partial: bool, rows: bool = True, keep: str = "none") -> Salvage | None:
    """Write the rows that rank ``rank``'s checkpoints (in ``folder``) hold into a shard in
    ``scratch``; None when they hold none (a :class:`Salvage` of no rows when they hold some
    that cannot be used: ``skipped`` says why).

    Parameters
    ----------
    rank : int
        The rank.
    shard : Path
        Its shard, which cannot be used, and ``problem``, why.
    folder : Path
        Its checkpoint folder, ``checkpoints/shard_<rank>``.
    scratch : virnucpro_merge.salvage.Scratch
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
    taken, used, skipped = _Taken(), list[str](), list[str]()
    writer = _take_all(rank, found, scratch, taken, used, skipped, dim=dim, partial=partial, rows=rows,
                       narrow=_shard_dtype(shard) if keep == "shown" else None)
    try:
        if writer is None or not writer.count:
            return Salvage(rank, shard, problem, found.folder, None, 0, used, skipped=skipped) if skipped else None
        kept = dropped = 0
        if keep != "none":
            counts = _keep_shard_rows(shard, taken, writer, shown=keep == "shown")
            if counts is None:
                return None
            kept, dropped = counts
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
                   list(taken.conflicting), unmarked, len(found.temps), readable=keep != "none")


def _shard_dtype(shard: Path) -> np.dtype:
    with open_shard(shard) as handle:
        return embeddings_of(handle, shard).dtype


def has_checkpoints(shard: Path, checkpoints: Path | None) -> bool:
    """Whether the rank of ``shard`` (``shard_<rank>.h5``) has checkpoint files in ``checkpoints``.

    >>> has_checkpoints(Path("run/shard_3.h5"), None)
    False
    """
    rank = rank_of(shard)
    return checkpoints is not None and rank is not None and bool(rank_checkpoints(checkpoints / f"shard_{rank}").files)


def usual_dimension(folders: list[Path]) -> int | None:
    """The embedding dimension most of these ranks' checkpoints have (each rank's first
    readable one with rows: IDs and shapes only), or None (ties: the smaller); for a run none
    of whose shards can say it.

    >>> usual_dimension([])
    """
    found: Counter[int] = Counter()
    for folder in folders:
        for entry in rank_checkpoints(folder).files:
            try:
                checkpoint = read_checkpoint(entry.path, rows=False)
            except CheckpointError:
                continue
            if checkpoint.sequence_ids:
                found[checkpoint.embeddings.shape[1]] += 1
                break
    if not found:
        return None
    most = max(found.values())
    return min(dim for dim, n in found.items() if n == most)


def _usable(path: Path, dim: int | None, *, partial: bool, skipped: list[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when it holds no row, or (said, and listed in
    ``skipped``) when it cannot be used; without ``partial``, an error instead."""
    try:
        checkpoint = read_checkpoint(path)
        if not checkpoint.sequence_ids:
            return None
        if dim is not None and checkpoint.embeddings.shape[1] != dim:
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
            logger.warning("Not salvaged: sequence ID %s, which %s and %s hold with different rows: neither is "
                           "taken (listed for re-run)", shown_id(sequence_id), taken.source[sequence_id], here)
            taken.conflicting[sequence_id] = None
    writer.append(new_ids, rows[new_at])


def _keep_shard_rows(shard: Path, taken: _Taken, writer: _Writer, *, shown: bool) -> tuple[int, int] | None:
    """Append ``shard``'s rows of IDs no checkpoint holds; return how many were kept and how
    many not. For a mislabelled shard (``shown``): None when the checkpointed rows are not
    among its rows at all (then nothing says whether the shard or the checkpoints are right),
    and its other rows only where its rows under the checkpointed IDs are exactly the
    checkpointed rows (as a multiset)."""
    with open_shard(shard) as handle:
        emb = embeddings_of(handle, shard)
        ids = _distinct_ids(handle, shard)
        held = np.array([i in taken.digests for i in ids], dtype=bool)
        others = np.flatnonzero(~held)
        verdict = _verdict(emb, held, ids, taken) if shown else "proven"
        if verdict == "foreign":
            logger.warning("%s: the rows its rank's checkpoints hold are not among its rows: which are right cannot "
                           "be told, so neither is taken (listed for re-run)", shard)
            return None
        if not len(others):
            return 0, 0
        if verdict != "proven":
            logger.warning("%s: its %d rows that no checkpoint holds are not kept (%s): listed for re-run", shard,
                           len(others), verdict)
            return 0, len(others)
        _append_rows(writer, emb, ids, others)
    if shown:
        logger.info("%s: %d rows that no checkpoint holds kept (the rows under its checkpointed IDs are the "
                    "checkpointed rows, shuffled: the other rows are as written)", shard, len(others))
    return len(others), 0


def _distinct_ids(handle: h5py.File, shard: Path) -> list[str]:
    """A shard's IDs, in row order; :class:`DuplicateIdError` naming the first one it holds twice."""
    ids = [i for chunk in iter_id_chunks(handle, shard) for i in chunk]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        again = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DuplicateIdError(again, shard, shard)
    return ids


def _append_rows(writer: _Writer, emb: h5py.Dataset, ids: list[str], rows: np.ndarray) -> None:
    """Append the shard's ``rows`` (row numbers, sorted) and their IDs, a block at a time (the
    rows as float32, where the writer takes rows)."""
    for start in range(0, len(rows), _ROWS_AT_A_TIME):
        at = rows[start : start + _ROWS_AT_A_TIME]
        writer.append([ids[i] for i in at], read_rows(emb, at).astype("<f4") if writer.with_rows else None)


def _verdict(emb: h5py.Dataset, held: np.ndarray, ids: list[str], taken: _Taken) -> str:
    """What a mislabelled shard's rows show: ``proven`` (the rows under its checkpointed IDs
    are, as a multiset of bit patterns, the checkpointed rows: its other rows are as written),
    ``foreign`` (some checkpointed row is nowhere among its rows: the checkpoints and the shard
    are not of one computation), else why its other rows cannot be kept."""
    if any(i in taken.conflicting for i in ids):
        return "some of its IDs have conflicting checkpoints"
    theirs: dict[np.dtype, Counter[bytes]] = {}
    for i in np.flatnonzero(held):
        digest, dtype = taken.narrow[ids[i]]
        theirs.setdefault(dtype, Counter())[digest] += 1
    under: Counter[bytes] = Counter()
    anywhere: dict[np.dtype, Counter[bytes]] = {dtype: Counter() for dtype in theirs}
    for start in range(0, len(ids), _ROWS_AT_A_TIME):
        block = emb[start : start + _ROWS_AT_A_TIME]
        for k, row in enumerate(block, start):
            for dtype, seen in anywhere.items():
                seen[_digest(_narrowed(row, dtype))] += 1
            if held[k]:
                under[_digest(_narrowed(row, taken.narrow[ids[k]][1]))] += 1
    if any(wanted - anywhere[dtype] for dtype, wanted in theirs.items()):
        return "foreign"
    if under != sum(theirs.values(), Counter()):
        return "the rows under its checkpointed IDs are not the checkpointed rows"
    return "proven"


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
