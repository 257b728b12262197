"""Inspect a run as it is: what each worker wrote, and where the holes are.

A run of ``N`` workers gives worker ``r`` the sequence-index positions
``r, r + N, r + 2N, ...`` (the stride distribution). From the shard files and the
run's IDs in index order (its ``sequence_index.json``, any expected-ID file, or a
list), :func:`inspect_run` works out, reading sequence IDs only and never embeddings:

- a :class:`ShardSummary` per rank: rows expected from the stride assignment, rows
  present in the file, and a status;
- the missing-ID matrix: ranks x positions within each rank's assignment, True where
  that sequence is in no shard at all.

The matrix is rectangular, ``(N, ceil(n / N))``; when ``n`` is not a multiple of
``N`` the last ranks have one sequence fewer, and their last cell is padding:
``False`` in ``missing`` and ``False`` in the ``assigned`` mask that comes with it.
Cell ``(r, j)`` stands for index position ``r + j * N``.

The world size ``N`` is the one given, else the one the IDs' index positions show
(so that a dead *last* rank is found), else the number of ranks seen. The IDs are
held as the merge holds them, not as Python strings: a 64-bit hash and the UTF-8
bytes of each expected ID (about 34 bytes an ID in all); every hash that matches is
checked against those bytes, so every answer is exact. A large expected-ID file (a
run's index of millions of sequences) is read by as many processes as this one may
use, in byte ranges, with the rules and errors of a read from start to end
(``virnucpro_merge.expected.iter_encoded_id_blocks``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from tqdm import tqdm

from .._processes import pool, pool_size
from ..checkpoints import model_dtype_of, rank_checkpoints, read_checkpoint
from ..checks import expected_in_memory
from ..errors import CheckpointError, MergeError, ShardError
from ..expected import read_expected_lookup
from ..health import HealthFlag, RankHealth, judge, read_health, report_healths
from ..ids import IdLookup, as_bytes, repeated_hashes
from ..manifest import MANIFEST_NAME, Manifest, Progress, log_path, read_log_tail, read_manifest, stop_line
from ..plan import shard_paths
from ..ranks import (
    checkpoints_of,
    folder_shards,
    in_rank_order,
    index_beside,
    listed,
    rank_of,
    run_folder,
    shard_path,
    stride_positions,
    world_size_of,
)
from ..report import read_merge_report
from ..shards import ABSENT as ABSENT_FILE
from ..shards import iter_id_byte_chunks, open_shard, read_id_rows, read_shard_meta
from ..statuses import ABSENT, DUPLICATED, EMPTY, FAILED, INCOMPLETE, OFF_STRIDE, OK, STATUSES
from ..timeline import Timeline, read_timeline

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["ShardSummary", "RunInspection", "inspect_run"]

logger = logging.getLogger("virnucpro_merge")

@dataclass(frozen=True)
class ShardSummary:
    """What one worker's shard holds compared with what it was assigned.

    Attributes
    ----------
    rank : int
        The worker's rank (its position in the list of shard files).
    path : Path
        The shard file, as given.
    expected : int
        Sequences the stride distribution assigned to this rank.
    present : int
        Rows in the file (0 when it is absent or unreadable).
    missing : int
        Sequences of this rank's assignment found in no shard.
    status : str
        ``absent`` (no file), ``failed`` (unreadable), ``duplicated`` (an ID it
        holds is repeated in it or was already in a lower rank's shard: a merge
        refuses this), ``off-stride`` (it holds IDs at index positions that are not
        ``rank + j * N``), ``empty`` (no rows although sequences were assigned),
        ``incomplete`` (part of the assignment is in no shard) or ``ok``, the
        first that applies.
    error : str or None
        Why the file could not be read (``failed`` and ``absent`` only).
    health : RankHealth or None
        Its embeddings summed up (``virnucpro_merge.health``): from the merge report of
        :meth:`RunInspection.from_merged`, or read with ``inspect_run(health=True)``; None
        when not read, or when its file cannot be.
    checkpointed : int
        The run's sequences that only this rank's checkpoints hold (its shard is absent,
        unreadable or lacks them): a merge salvages them, so they count as present, not
        missing (``status`` still says what the shard itself holds).
    """

    rank: int
    path: Path
    expected: int
    present: int
    missing: int
    status: str
    error: str | None = None
    checkpointed: int = 0
    health: RankHealth | None = None


class _EncodedIds(Sequence[str]):
    """The run's IDs in index order, held as one fixed-width bytes array (UTF-8)."""

    def __init__(self, encoded: np.ndarray) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return int(self.encoded.size)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [value.decode() for value in self.encoded[index].tolist()]
        return self.encoded[index].decode()

    def __repr__(self) -> str:
        return f"<{len(self)} sequence IDs>"


@dataclass(frozen=True, repr=False)
class RunInspection:
    """The per-rank summary and the missing-ID matrix of one run.

    In a notebook it shows itself as a summary and a per-rank table (statuses
    coloured as in the plots); :meth:`~RunInspection.to_frame` gives a pandas DataFrame,
    one row per rank; :meth:`~RunInspection.plot_counts` and :meth:`~RunInspection.plot_missing`
    draw the two pictures.

    Attributes
    ----------
    shards : list of ShardSummary
        One per rank, in rank order.
    missing : numpy.ndarray
        bool ``(world_size, ceil(n / world_size))``: True where the sequence at
        index position ``rank + j * world_size`` is in no shard.
    sequence_ids : sequence of str
        The run's sequence IDs in index order (empty when none were given).
    num_extra : int
        IDs in the shards that are not among ``sequence_ids``.
    expected_from : str or None
        Where ``sequence_ids`` came from (a file name, or "a list").
    world_size_from : str
        How the world size was found: "given", "the IDs' index positions" or
        "the shard files".
    """

    shards: list[ShardSummary]
    missing: np.ndarray
    sequence_ids: Sequence[str]
    num_extra: int = 0
    expected_from: str | None = None
    world_size_from: str = "the shard files"
    #: rank -> one line on why its worker did not finish (from its checkpoints, log and the manifest)
    stops: dict[int, str] = field(default_factory=dict)
    #: what could not be read of the run folder's other files (a damaged manifest)
    notes: list[str] = field(default_factory=list)
    #: The run's checkpoints folder where one was found, else None.
    checkpoints: Path | None = None
    _missing_ids: list[str] | None = field(default=None, repr=False, compare=False)
    _timeline: list[Timeline] = field(default_factory=list, repr=False, compare=False)

    @property
    def world_size(self) -> int:
        """Number of workers (ranks)."""
        return len(self.shards)

    @property
    def assigned(self) -> np.ndarray:
        """bool, the shape of ``missing``: True where a cell stands for a real index
        position, False for the padding at the end of shorter assignments."""
        ranks, width = self.missing.shape
        return np.arange(width)[None, :] * ranks + np.arange(ranks)[:, None] < len(self.sequence_ids)

    @property
    def num_missing(self) -> int:
        """Number of expected sequences found in no shard."""
        return int(self.missing.sum())

    @property
    def num_present(self) -> int:
        """Rows in all the shards together."""
        return sum(s.present for s in self.shards)

    @property
    def missing_ids(self) -> list[str]:
        """The IDs of the missing sequences, sorted."""
        if self._missing_ids is not None:
            return list(self._missing_ids)
        ranks, columns = np.nonzero(self.missing)
        positions = ranks + columns * self.world_size
        return sorted(self.sequence_ids[p] for p in positions.tolist())

    @property
    def by_status(self) -> dict[str, list[int]]:
        """The ranks of each status that occurs, best status first."""
        found: dict[str, list[int]] = {}
        for status in STATUSES:
            ranks = [s.rank for s in self.shards if s.status == status]
            if ranks:
                found[status] = ranks
        return found

    def with_merged_health(self, merged: str | os.PathLike[str]) -> RunInspection:
        """This inspection, each rank given the health that the merge into ``merged`` kept of its
        rows (a merge read every embedding already: no need to read them again). Ranks the merge
        kept none of (a failed shard, a merge older than health) keep theirs.

        Examples
        --------
        >>> from virnucpro_merge import aggregate_shards
        >>> from virnucpro_merge.synthetic import make_unhealthy_run
        >>> run = make_unhealthy_run("sick", n_sequences=400, world_size=8, dim=8)
        >>> merged = aggregate_shards(run.shard_files, "sick.h5", run.index)
        >>> [flag.rank for flag in inspect_run("sick").with_merged_health(merged).health_flags]
        [2, 4, 4, 5, 6]
        """
        kept = report_healths(read_merge_report(merged))
        shards = [s if s.rank not in kept else replace(s, health=kept[s.rank][0]) for s in self.shards]
        return replace(self, shards=shards)

    @property
    def health_flags(self) -> list[HealthFlag]:
        """The ranks whose embeddings stand out, each with why (``virnucpro_merge.health.judge``),
        among those whose health is known (``inspect_run(health=True)`` or a merged file's report)."""
        return judge([(s.rank, s.health) for s in self.shards if s.health is not None])

    def counts(self) -> dict[str, list[Any]]:
        """The summary as columns (``rank``, ``expected``, ``present``, ``missing``, ``status``)."""
        return {
            "rank": [s.rank for s in self.shards],
            "expected": [s.expected for s in self.shards],
            "present": [s.present for s in self.shards],
            "missing": [s.missing for s in self.shards],
            "status": [s.status for s in self.shards],
        }

    def to_frame(self) -> pd.DataFrame:
        """The per-rank summary as a pandas DataFrame (pandas comes with the notebooks extra).

        One row per rank, indexed by rank: ``shard`` (file name), ``expected``,
        ``present``, ``missing``, ``checkpointed``, ``status`` and ``problem`` (what is
        wrong with it, in words; an empty string for none).
        """
        from .tables import rank_frame

        return rank_frame(self)

    def __repr__(self) -> str:
        return (f"<RunInspection: {self.world_size} ranks, {len(self.sequence_ids):,} sequences expected, "
                f"{self.num_present:,} rows present, {self.num_missing:,} missing>")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .tables import format_shard_table, format_summary

        printer.text(f"{format_summary(self)}\n\n{format_shard_table(self.shards)}")

    def _repr_html_(self) -> str:
        from .tables import inspection_html

        return inspection_html(self)

    def plot_counts(self, **options: Any) -> Figure:
        """:func:`~virnucpro_merge.inspection.plot_shard_counts` of this run."""
        from .plots import plot_shard_counts

        return plot_shard_counts(self, **options)

    def plot_health(self, **options: Any) -> Figure:
        """:func:`~virnucpro_merge.inspection.plot_health` of this run: each rank's row norms, the
        ranks that stand out named."""
        from .plots import plot_health

        return plot_health(self, **options)

    def plot_missing(self, **options: Any) -> Figure:
        """:func:`~virnucpro_merge.inspection.plot_missing_heatmap` of this run."""
        from .plots import plot_missing_heatmap

        return plot_missing_heatmap(self, **options)

    @classmethod
    def from_merged(cls, path: str | os.PathLike[str], expected: object = None, *,
                    world_size: int | None = None) -> RunInspection:
        """A run as a merged output holds it: which of its sequences the merge has, rank by
        rank -- for the heatmap of a merge, or of the merge that completed a re-run loop.

        Parameters
        ----------
        path : path-like
            A merged output.
        expected : path-like or list of str, optional
            The run's IDs in index order (by default the sequence index beside the shards
            the merge recorded).
        world_size : int, optional
            The number of workers (by default the highest rank among the ``shard_<rank>.h5``
            the merge recorded, plus one; give it for a merge of merges).

        Returns
        -------
        RunInspection
            Each rank: its assigned sequences, those the merged file lacks (read off its
            IDs, whatever its report checked), and a status of what the file holds for it
            (``ok``, ``incomplete``, ``empty``; a rank whose shard the merge
            recorded as absent or failed, and that the file holds nothing of, keeps that).

        Examples
        --------
        >>> from virnucpro_merge import aggregate_shards
        >>> from virnucpro_merge.synthetic import make_demo_run
        >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4, truncated=(), absent=(2,), empty=(),
        ...                     short={})
        >>> merged = aggregate_shards(run.shard_files, "m.h5", run.index, partial=True)
        >>> found = RunInspection.from_merged(merged)
        >>> [(s.rank, s.present, s.missing, s.status) for s in found.shards]
        [(0, 4, 0, 'ok'), (1, 4, 0, 'ok'), (2, 0, 4, 'absent')]
        """
        report = read_merge_report(path)
        recorded = {rank: s for s in report["shards"] if (rank := rank_of(s["path"])) is not None}
        healths = report_healths(report)
        size = _merged_world_size(path, recorded, world_size)
        ids, expected_from = _expected_ids(expected, [Path(s["path"]) for s in report["shards"]])
        lookup = _lookup_of(ids)
        missing = _missing_matrix(_held_by(path, lookup), size)
        shards = [_merged_shard(rank, recorded.get(rank), int(stride_positions(lookup.n, size, rank).size),
                                int(missing[rank].sum()), healths[rank][0] if rank in healths else None)
                  for rank in range(size)]
        return cls(shards=shards, missing=missing, sequence_ids=_EncodedIds(lookup.encoded),
                   expected_from=expected_from,
                   world_size_from="given" if world_size else "the ranks the merge recorded")

    @property
    def timeline(self) -> Timeline:
        """Every rank's checkpoints over time (:func:`~virnucpro_merge.timeline.read_timeline`:
        read once, IDs and metadata only).

        Raises
        ------
        MergeError
            No checkpoints folder was found (give ``inspect_run(..., checkpoints=DIR)``).
        """
        if self.checkpoints is None:
            msg = "this inspection found no checkpoints folder: inspect_run(run, checkpoints=FOLDER) names one"
            raise MergeError(msg)
        if not self._timeline:
            self._timeline.append(read_timeline(self.checkpoints, self.world_size))
        return self._timeline[0]

    def plot_timeline(self, **options: Any) -> Figure:
        """:func:`~virnucpro_merge.inspection.plot_timeline` of this run: sequences checkpointed
        over time per rank, its stragglers, and when the ranks that did not finish stopped."""
        from .plots import plot_timeline

        return plot_timeline(self.timeline, sorted(self.stops), **options)


# --------------------------------------------------------------------------- a merged output


def _merged_world_size(path: str | os.PathLike[str], recorded: dict[int, Any], given: int | None) -> int:
    """The world size of a merge: the one given, else the highest rank among the shards it
    recorded, plus one (refused, in one line, where it recorded none named by rank)."""
    _refuse_world_size(given)
    size = given or (max(recorded) + 1 if recorded else None)
    if size is None:
        msg = f"{path}: its shards are not named shard_<rank>.h5 (a merge of merges?): give world_size"
        raise MergeError(msg)
    if recorded and max(recorded) >= size:
        msg = f"{path}: it recorded rank {max(recorded)}, which is not below the world size {size}"
        raise MergeError(msg)
    return size


def _held_by(path: str | os.PathLike[str], lookup: IdLookup) -> np.ndarray:
    """bool, a value per expected ID: True where the merged file holds it (read off its IDs:
    its report may not have checked these)."""
    present = np.zeros(lookup.n, dtype=bool)
    with open_shard(path) as handle:
        for raw in iter_id_byte_chunks(handle, path):
            positions, _, _ = lookup.positions(raw)
            present[positions] = True
    return present


def _merged_shard(rank: int, record: dict[str, Any] | None, assigned: int, lacking: int,
                  health: RankHealth | None) -> ShardSummary:
    """What a merged file holds of rank ``rank``, whose shard the merge recorded as ``record``
    (None: it recorded none), ``lacking`` of its ``assigned`` sequences."""
    error = record.get("error") if record is not None and record["status"] == "failed" else None
    if error is not None and lacking == assigned:  # (the file holds nothing of a shard the merge could not read)
        status = ABSENT if error == ABSENT_FILE else FAILED
    else:
        status = OK if not lacking else EMPTY if lacking == assigned else INCOMPLETE
    return ShardSummary(rank, Path(record["path"]) if record else shard_path(".", rank), assigned,
                        assigned - lacking, lacking, status, error, health=health)


# --------------------------------------------------------------------------- the expected IDs

_SHARED_FROM = 200_000  # expected IDs from which the shards are scanned by several processes


# --------------------------------------------------------------------------- the shards


@dataclass
class _Scan:
    """What reading one rank's shard found: facts, of which :func:`_status` makes its status."""

    present: int = 0
    absent: bool = False  # no file
    error: str | None = None  # why the file cannot be read (or "file does not exist")
    repeats: bool = False  # an ID it holds is in it twice, or in a lower rank's shard
    step: int = 0  # stride_step of the positions it holds
    extra: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (hashes, rows) of unexpected IDs
    held: np.ndarray | None = None  # the index positions of the expected IDs it holds, in file order


def _scan(rank: int, path: Path, lookup: IdLookup) -> _Scan:
    scan = _Scan()
    if not path.exists():
        return _Scan(absent=True, error=ABSENT_FILE)
    held = []
    try:
        with open_shard(path) as handle:
            scan.present = read_shard_meta(handle, path, storage=False).num_sequences
            row = 0
            for raw in iter_id_byte_chunks(handle, path):
                positions, unexpected, hashes = lookup.positions(raw)
                if positions.size:
                    held.append(positions.astype(lookup.position_type, copy=False))
                    scan.step = int(np.gcd.reduce(np.append(np.abs(positions - rank), scan.step)))
                if unexpected.any():
                    rows = np.flatnonzero(unexpected)
                    scan.extra.append((hashes[rows], rows + row))
                row += len(raw)
    except ShardError as err:
        return _Scan(error=err.problem)
    scan.held = np.concatenate(held) if held else np.empty(0, lookup.position_type)
    scan.repeats = not (np.diff(scan.held) > 0).all() and np.unique(scan.held).size != scan.held.size
    return scan


def _settled(scan: _Scan, present: np.ndarray) -> _Scan:
    """A rank's scan, its IDs marked present (in rank order: a lower rank's ID held again is a
    repeat), and let go of."""
    if scan.held is not None and scan.held.size:
        scan.repeats = scan.repeats or bool(present[scan.held].any())
        present[scan.held] = True
    scan.held = None
    return scan


_INHERITED: tuple[IdLookup, Sequence[Path]] | None = None  # a scanning process's lookup and shards


def _inherit(lookup: IdLookup, paths: Sequence[Path]) -> None:
    """Scanning process start: keep what the process that forked it handed over."""
    global _INHERITED
    _INHERITED = (lookup, paths)


def _scan_inherited(rank: int) -> _Scan:
    """Scanning process task: rank ``rank`` of the run being inspected."""
    assert _INHERITED is not None
    lookup, paths = _INHERITED
    return _scan(rank, paths[rank], lookup)


def _scans(paths: Sequence[Path], lookup: IdLookup, present: np.ndarray, *, progress: bool = False) -> list[_Scan]:
    """Every rank's scan: shared out to forked processes that are handed the lookup, where
    there are enough IDs to gain by it, else here, rank by rank (with ``progress``, a bar)."""
    size = pool_size(len(paths)) if lookup.n >= _SHARED_FROM else 1
    with pool(size, initializer=_inherit, initargs=(lookup, paths)) as workers, \
            tqdm(total=len(paths), unit="rank", desc="Reading the shards' IDs", disable=not progress) as bar:
        found = (_scan(rank, path, lookup) for rank, path in enumerate(paths)) if workers is None \
            else workers.map(_scan_inherited, range(len(paths)))
        scans = []
        for scan in found:
            scans.append(_settled(scan, present))
            bar.update()
        return scans


def _repeated_extras(paths: Sequence[Path], scans: Sequence[_Scan]) -> set[int]:
    """Ranks holding an unexpected ID that a lower rank (or the same file, earlier) holds too.

    The unexpected IDs were kept as hashes; a repeated hash is read again from the
    shards and compared as bytes, so a collision is never taken for a repeat.
    """
    hashes = [h for scan in scans for h, _ in scan.extra]
    if not hashes:
        return set()
    repeated = set(repeated_hashes(np.sort(np.concatenate(hashes))).tolist())
    if not repeated:
        return set()
    first: dict[bytes, int] = {}
    ranks = set()
    for rank, (path, scan) in enumerate(zip(paths, scans, strict=True)):
        for block_hashes, rows in scan.extra:
            wanted = rows[np.isin(block_hashes, list(repeated))]
            if not wanted.size:
                continue
            with open_shard(path) as handle:
                values = read_id_rows(handle, path, np.sort(wanted)).tolist()
            for value in values:
                if value in first:
                    ranks.add(rank)
                first.setdefault(value, rank)
    return ranks


# --------------------------------------------------------------------------- inspect_run


def _shard_list(run: object, world_size: int | None) -> list[Path]:
    """The per-rank shard paths of ``run`` (a folder, or a list)."""
    if isinstance(run, str | os.PathLike):
        folder = Path(run)
        if folder.is_dir():
            return folder_shards(folder, world_size=world_size)
        problem = "is a file" if folder.exists() else "does not exist"
        msg = f"{folder}: {problem}; inspect_run takes a run folder, or a list of shard files in rank order"
        raise MergeError(msg)
    if isinstance(run, bytes) or not isinstance(run, Sequence | np.ndarray) or isinstance(run, str):
        msg = f"inspect_run takes a run folder or a list of shard files in rank order, not {type(run).__name__}"
        raise MergeError(msg)
    paths = in_rank_order(shard_paths(run))
    if world_size is not None and world_size < len(paths):
        msg = f"{len(paths)} shard files for a world size of {world_size}"
        raise MergeError(msg)
    return paths


def _expected_ids(expected: object, paths: Sequence[Path]) -> tuple[IdLookup | _Given | None, str | None]:
    """The expected IDs in index order (a file's read into a lookup, a list as given), and
    where they come from (for the summary)."""
    if expected is None:
        index = index_beside(paths)
        if index is None:
            return None, None
        logger.info("Expected IDs from %s, the run folder's sequence index", index)
        return read_expected_lookup(index), f"{index.name}, the run folder's index"
    if isinstance(expected, str | os.PathLike):
        return read_expected_lookup(expected), Path(expected).name
    if isinstance(expected, set | frozenset):
        msg = "inspect_run needs the expected IDs in index order (a list or a file), not a set"
        raise MergeError(msg)
    if not isinstance(expected, Iterable):
        msg = f"expected must be an expected-ID file or a list of IDs in index order, not {type(expected).__name__}"
        raise MergeError(msg)
    listed = expected_in_memory(expected)  # (IDs of str, or one line saying what is not)
    assert not isinstance(listed, IdLookup)  # (only a file is read into one)
    return _Given(listed if isinstance(listed, Sequence) else list(listed)), "a list"


@dataclass
class _Given:
    """The caller's list of expected IDs (kept: they are the inspection's ``sequence_ids``)."""

    ids: Sequence[str]


def _lookup_of(ids: IdLookup | _Given | None) -> IdLookup:
    """The lookup of the expected IDs :func:`_expected_ids` gave (an empty one for none)."""
    if isinstance(ids, IdLookup):
        return ids
    return IdLookup.from_ids(ids.ids if ids is not None else ())


def inspect_run(
    run: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    expected: str | os.PathLike[str] | Sequence[str] | None = None,
    *,
    world_size: int | None = None,
    checkpoints: str | os.PathLike[str] | bool | None = None,
    progress: bool = False,
    health: bool = False,
) -> RunInspection:
    """Compare each rank's shard with its stride assignment; locate every missing ID.

    Reads the shards' sequence IDs only, never their embeddings (the checkpoints of a
    worker that did not finish are read, to say what they hold). Unlike a merge, this
    never raises for a bad shard: an absent or unreadable file is reported in its summary.

    Parameters
    ----------
    run : path-like or sequence of path-like
        A run folder (its ``shard_<rank>.h5`` files, in rank order), or its shard
        files: ``shard_<rank>.h5`` files of one folder are placed at their ranks, in any
        order, the ranks between them absent (:func:`virnucpro_merge.ranks.in_rank_order`);
        files of other names are one per rank, in rank order.
    expected : path-like or sequence of str, optional
        The run's sequence IDs in index (run) order: the sequence-index JSON or any
        expected-ID file, or a list. By default, the ``sequence_index.json`` of the
        run folder (or of the one folder that holds the shard files given), when it has one.
    world_size : int, optional
        The number of workers. By default it is read off the IDs' index positions
        (worker ``r`` holds positions ``r, r + N, ...``), so that dead last ranks
        are found too, or else it is the number of shard files.
    checkpoints : path-like, optional
        The pipeline's checkpoints folder (its ``manifest.json`` in it), to say why each
        worker that did not finish stopped (``stops``), to count the sequences that the
        checkpoints of a rank without a readable shard hold as present (a merge salvages
        them: ``ShardSummary.checkpointed``), and for :meth:`RunInspection.plot_timeline`:
        by default where the pipeline puts it beside the run
        (:func:`virnucpro_merge.ranks.run_folder`); False: none.
    progress : bool
        Show a progress bar of the ranks read (tqdm, on stderr).
    health : bool
        Also read each readable shard's embeddings and sum them up as a merge does
        (``ShardSummary.health``, :attr:`RunInspection.health_flags`), and the model dtype
        the smallest of each rank's checkpoints names; off by default, as it reads every
        embedding.

    Returns
    -------
    RunInspection
        The per-rank summaries and the missing-ID matrix.

    Raises
    ------
    MergeError
        (a ``ValueError``) No shard files, or arguments of the wrong kind.
    ExpectedIdsError
        The expected-ID file cannot be read.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=10, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> found = inspect_run(run.shard_files, run.sequence_ids)
    >>> [(s.rank, s.expected, s.present, s.status) for s in found.shards]
    [(0, 4, 4, 'ok'), (1, 3, 3, 'ok'), (2, 3, 0, 'absent')]
    >>> found.missing_ids
    ['seq000002', 'seq000005', 'seq000008']
    >>> found.missing.astype(int)
    array([[0, 0, 0, 0],
           [0, 0, 0, 0],
           [1, 1, 1, 0]])
    >>> inspect_run("run").world_size  # the folder: its index gives the IDs, they give N
    3
    """
    _refuse_world_size(world_size)
    paths = _shard_list(run, world_size)
    ids, expected_from = _expected_ids(expected, paths)
    lookup = _lookup_of(ids)
    present = np.zeros(lookup.n, dtype=bool)
    scans = _scans(paths, lookup, present, progress=progress)
    for rank in _repeated_extras(paths, scans):
        scans[rank].repeats = True
    size, size_from = _world_size(paths, scans, world_size)
    _add_absent_ranks(paths, scans, size)
    saved = checkpoints_of(paths, checkpoints) if checkpoints is not False and _one_folder(paths) else None
    holes = _missing_matrix(present, size).sum(axis=1)  # (what the shards alone lack: their statuses)
    worked, gained = _checkpointed(saved, _lacking(holes, scans), lookup, present)
    missing = _missing_matrix(present, size)
    healths = _healths(paths, scans, saved, progress=progress) if health else [None] * size
    shards = [ShardSummary(rank=rank, path=path, expected=int(stride_positions(lookup.n, size, rank).size),
                           present=scan.present, missing=int(missing[rank].sum()),
                           status=_status(scan, int(holes[rank]), size), error=scan.error,
                           checkpointed=gained.get(rank, 0), health=healths[rank])
              for rank, (path, scan) in enumerate(zip(paths, scans, strict=True))]
    stops, notes = _stops(paths, shards, checkpoints, worked)
    sequence_ids, missing_ids = _named(ids, lookup, present)
    return RunInspection(shards=shards, missing=missing, sequence_ids=sequence_ids, num_extra=_num_extra(scans),
                         expected_from=expected_from, world_size_from=size_from, stops=stops, notes=notes,
                         checkpoints=saved, _missing_ids=missing_ids)


def _one_folder(paths: Sequence[Path]) -> bool:
    """Whether the shard files are all in one folder (a run folder's, whose other files can be read)."""
    return len({p.parent for p in paths}) == 1


def _add_absent_ranks(paths: list[Path], scans: list[_Scan], size: int) -> None:
    """The ranks past the shard files (a world size above their count) added to ``paths`` and
    ``scans``, as absent files of the first file's folder."""
    if size > len(paths):
        paths += [shard_path(paths[0].parent, rank) for rank in range(len(paths), size)]
        scans += [_Scan(absent=True, error=ABSENT_FILE) for _ in range(len(scans), size)]


def _lacking(holes: np.ndarray, scans: list[_Scan]) -> list[int]:
    """The ranks whose shard lacks sequences (``holes``: how many, by rank) or cannot be read."""
    return [r for r in range(len(holes)) if holes[r] or scans[r].error is not None]


def _healths(paths: list[Path], scans: list[_Scan], saved: Path | None, *, progress: bool
             ) -> list[RankHealth | None]:
    """Each rank's health (:func:`_health_of`), with a progress bar of the shards read when asked."""
    return [_health_of(path, scan, None if saved is None else saved / f"shard_{rank}")
            for rank, (path, scan) in enumerate(tqdm(list(zip(paths, scans, strict=True)), desc="Embeddings",
                                                     unit="shard", disable=not progress))]


def _num_extra(scans: list[_Scan]) -> int:
    """The IDs the shards hold that are not expected."""
    return sum(rows.size for scan in scans for _, rows in scan.extra)


def _refuse_world_size(world_size: object) -> None:
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1):
        msg = f"world_size must be a positive integer, got {world_size!r}"
        raise MergeError(msg)


def _checkpointed(saved: Path | None, ranks: list[int], lookup: IdLookup, present: np.ndarray
                  ) -> tuple[dict[int, Progress], dict[int, int]]:
    """What the checkpoints (in ``saved``) of each of ``ranks`` show of its work, and how many
    expected IDs they hold that no shard does (marked in ``present``)."""
    worked: dict[int, Progress] = {}
    gained: dict[int, int] = {}
    if saved is None:
        return worked, gained
    for rank in ranks:
        before = int(present.sum())
        worked[rank] = _salvageable(saved / f"shard_{rank}", lookup, present)
        gained[rank] = int(present.sum()) - before
    return worked, gained


def _named(ids: Any, lookup: IdLookup, present: np.ndarray) -> tuple[Sequence[str], list[str] | None]:
    """The expected IDs as an inspection names them, and the missing ones (None: worked out when
    asked, from IDs given in Python)."""
    if isinstance(ids, _Given):
        return ids.ids, None
    return _EncodedIds(lookup.encoded), [as_bytes(v).decode() for v in np.sort(lookup.encoded[~present]).tolist()]


def _health_of(path: Path, scan: _Scan, saved: Path | None) -> RankHealth | None:
    """A readable shard's health, read from its embeddings, with the model dtype its rank's
    checkpoints in ``saved`` name (None: no file, or one that cannot be read)."""
    if scan.error is not None:
        return None
    model = model_dtype_of(rank_checkpoints(saved).files) if saved is not None else None
    try:
        return read_health(path, model_dtypes=(model,) if model else ())
    except (ShardError, OSError) as err:
        logger.warning("%s: its embeddings could not be read for their health: %s", path, err)
        return None


#: The statuses of a rank whose worker did not finish its assignment.
_UNFINISHED = (ABSENT, FAILED, EMPTY, INCOMPLETE)


def _stops(paths: list[Path], shards: list[ShardSummary], checkpoints: object, known: dict[int, Progress]
           ) -> tuple[dict[int, str], list[str]]:
    """Why each worker that did not finish stopped, from its checkpoints (``known``: those
    read already), its log and the manifest (only for the ranks that need a word); and what
    of those files could not be read."""
    unfinished = [s for s in shards if s.status in _UNFINISHED]
    if checkpoints is False or not unfinished or not _one_folder(paths):
        return {}, []
    folder = run_folder(paths[0].parent)
    where = checkpoints_of(paths, checkpoints)
    if where is None and folder.logs is None:
        return {}, []
    manifest = _manifest_in(where)
    notes = [manifest.problem] if manifest is not None and manifest.problem else []
    stops = {shard.rank: _why_stopped(shard, known, where, folder.logs, manifest) for shard in unfinished}
    return stops, notes


def _manifest_in(where: Path | None) -> Manifest | None:
    """The manifest of the checkpoints folder ``where`` (None: no folder, or no manifest in it)."""
    return read_manifest(where / MANIFEST_NAME) if where is not None and (where / MANIFEST_NAME).exists() else None


def _why_stopped(shard: ShardSummary, known: dict[int, Progress], where: Path | None, logs: Path | None,
                 manifest: Manifest | None) -> str:
    """Why the worker of ``shard`` stopped, in one line: from its checkpoints (in ``known``, else
    read from ``where``), its log (in ``logs``) and what the manifest says of it."""
    progress = known.get(shard.rank) or (_progress(where / f"shard_{shard.rank}") if where is not None
                                         else Progress())
    log = read_log_tail(log_path(logs, shard.rank)) if logs is not None else None
    claim = manifest.ranks.get(shard.rank) if manifest is not None else None
    return stop_line(shard.rank, shard.status, progress, claim, log)


def _salvageable(folder: Path, lookup: IdLookup, present: np.ndarray) -> Progress:
    """What the checkpoints of a rank whose shard lacks sequences show (:func:`_progress`); the
    run's sequences they hold marked present, as a merge would salvage them."""
    ids: set[str] = set()
    progress = _progress(folder, ids)
    if ids:
        raw = [i.encode("utf-8") for i in ids]
        positions, _, _ = lookup.positions(raw)
        present[positions] = True
    return progress


def _progress(folder: Path, ids: set[str] | None = None) -> Progress:
    """What a rank's checkpoints show: how many, how many sequences, the last one's time and
    trigger (their IDs put into ``ids``)."""
    found = rank_checkpoints(folder)
    ids = set() if ids is None else ids
    read, damaged, last = 0, 0, None
    for entry in found.files:
        try:
            checkpoint = read_checkpoint(entry.path, rows=False)
        except CheckpointError:
            damaged += 1
            continue
        read += 1
        ids.update(checkpoint.sequence_ids)
        last = checkpoint.metadata
    if last is None:
        return Progress(damaged=damaged)
    when, trigger = last.get("timestamp"), last.get("trigger_reason")
    return Progress(read, len(ids), when if isinstance(when, str) else None,
                    trigger if isinstance(trigger, str) else None, damaged)


def _status(scan: _Scan, holes: int, world_size: int) -> str:
    """A rank's status: the first that applies, in the documented precedence (the one place
    it is decided)."""
    if scan.absent:
        return ABSENT
    if scan.error is not None:
        return FAILED
    if scan.repeats:
        return DUPLICATED
    if scan.step % world_size:
        return OFF_STRIDE
    if holes:
        return EMPTY if scan.present == 0 else INCOMPLETE
    return OK


def _world_size(paths: list[Path], scans: list[_Scan], given: int | None) -> tuple[int, str]:
    """The world size, and how it was found: given, else read off the IDs' index positions
    (more ranks than files only for a run folder's ``shard_<rank>.h5``), else the files'."""
    if given is not None:
        return given, "given"
    size = len(paths)
    inferred = world_size_of({rank: scan.step for rank, scan in enumerate(scans) if scan.error is None})
    named = all(rank_of(p) == r for r, p in enumerate(paths)) and _one_folder(paths)
    if inferred is not None and inferred > size and named:
        logger.info("World size %d, from the IDs' index positions: no %s", inferred,
                    listed([p.name for p in (shard_path(paths[0].parent, r) for r in range(size, inferred))]))
        return inferred, "the IDs' index positions"
    return size, "the IDs' index positions" if inferred == size else "the shard files"


def _missing_matrix(present: np.ndarray, world_size: int) -> np.ndarray:
    """bool ``(world_size, ceil(n / world_size))``: cell ``(r, j)`` True where index position
    ``r + j * world_size`` is in no shard (padding cells False)."""
    n = present.size
    width = -(-n // world_size)  # ceil
    cells = np.zeros(world_size * width, dtype=bool)
    cells[:n] = ~present
    return cells.reshape(width, world_size).T.copy()
