"""A run while it runs: each rank's progress, pace, ETA and state, read from its files without disturbing it.

What a rank has done is what its files show: its shard's rows once the shard can be read
(then it is **finished**), else the distinct sequences of its checkpoints
(``checkpoints/shard_<rank>/batch_*.pt``; IDs and metadata only, never the rows). Its pace is
its recent rate (:attr:`~virnucpro_merge.timeline.RankTimeline.recent_rate`), its ETA when
that pace takes it from its last checkpoint to its assignment (the run's sequence index,
shared out by stride). Its state (:data:`~virnucpro_merge.statuses.RUN_STATES`) is, the first
that applies: finished; **preempted** (its last checkpoint an ``emergency_sigterm`` one);
**failed** (the manifest says so, no checkpoint since; or overdue with an error at the end of
its log: the cause is that error); **stalled** (no checkpoint for :data:`STALL_FACTOR` times
its usual interval, nothing saying why; where no rank has two checkpoints yet, an interval of
:data:`FALLBACK_INTERVAL`); **waiting** (no checkpoint yet, none overdue); **running**.

Nothing in the run folder is written, locked or opened for writing: files are opened
read-only, HDF5 without its file lock. A file being written (a ``.tmp``, a ``.pt`` without
its ``.done`` marker that cannot be read yet, a shard that cannot be opened yet) is work
in progress, never damage. A :class:`ProgressReader` keeps what it read of each file under
the file's size and modification time, so a refresh re-reads only what changed: one
``stat`` of each unfinished rank's checkpoint folder, a listing of those that changed, and a
``stat`` of each checkpoint not marked ``.done`` yet; the manifest (a few MB at 1,024 ranks,
rewritten at every checkpoint) is parsed again only when the statuses and errors it holds change.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..checkpoints import CHECKPOINT_NAME, DONE_SUFFIX
from ..errors import CheckpointError, MergeError
from ..expected import iter_index_records
from ..manifest import LogTail, Manifest, log_path, read_log_tail, read_manifest, status_words
from ..ranks import run_folder, shard_name
from ..shards import open_shard, read_shard_meta
from ..statuses import FAILED, FINISHED, PREEMPTED, RUN_STATES, RUNNING, STALLED, STOPPED_STATES, WAITING
from ..timeline import CheckpointFacts, RankTimeline, Timeline, checkpoint_facts, rank_timeline
from .views import duration_words

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["STALL_FACTOR", "RankProgress", "RunProgress", "ProgressReader", "read_progress"]

#: A rank without a checkpoint for this many times its usual interval has stalled.
STALL_FACTOR = 3.0
#: A rank's checkpoint interval taken where no rank has saved two checkpoints yet (seconds).
FALLBACK_INTERVAL = 1200.0
#: The most ranks (and sequences) a run is believed to have: a manifest or an index saying more is damaged.
MAX_WORLD_SIZE = 2**17
MAX_SEQUENCES = 10**12
#: A folder unchanged for this many seconds is not listed again until its modification time changes.
_SETTLED = 2.0
_SHARD = re.compile(r"shard_(0|[1-9][0-9]{0,8})(?:\.h5)?")
_MAX_INDEX = 2**31  # bytes: a sequence index bigger than this is not read (the assignment is then unknown)

Key = tuple[int, ...]  # a file's size and modification time (ns), and for a checkpoint its inode
T = TypeVar("T")


@dataclass(frozen=True)
class RankProgress:
    """One rank of a run in progress.

    Attributes
    ----------
    rank : int
    state : str
        One of ``RUN_STATES`` (:mod:`virnucpro_merge.statuses`).
    done : int
        Its sequences done: its shard's rows once finished, else the distinct sequences of its checkpoints.
    assigned : int or None
        Its share of the run's sequence index (None without an index).
    rate : float or None
        Sequences an hour over its last checkpoints.
    eta : numpy.datetime64 or None
        When it will finish at that pace (running ranks only; UTC).
    last_checkpoint : numpy.datetime64 or None
        Its last checkpoint's time (UTC).
    checkpoints : int
        Its readable checkpoints.
    in_progress : int
        Saves under way: ``.tmp`` files, and ``.pt`` files neither marked ``.done`` nor readable yet.
    cause : str or None
        Why it stopped, for a stalled, failed or preempted rank (from its files: untrusted text).
    timeline : virnucpro_merge.timeline.RankTimeline
        Its checkpoints over time.
    """

    rank: int
    state: str
    done: int
    assigned: int | None
    rate: float | None
    eta: np.datetime64 | None
    last_checkpoint: np.datetime64 | None
    checkpoints: int
    in_progress: int
    cause: str | None
    timeline: RankTimeline = field(repr=False)

    @property
    def fraction(self) -> float | None:
        """Its share of its assignment done (0 to 1), or None without an assignment."""
        if not self.assigned:
            return None if self.assigned is None else 1.0
        return min(1.0, self.done / self.assigned)


def _iso(moment: np.datetime64 | None) -> str | None:
    return None if moment is None else str(moment.astype("datetime64[s]")) + "Z"


@dataclass(frozen=True)
class RunProgress:
    """A run in progress, at one moment (:func:`read_progress`, :meth:`ProgressReader.read`).

    In a notebook it shows as a table (``_repr_html_``); :meth:`to_frame` gives its ranks as
    a DataFrame, :meth:`plot_progress` draws them, :meth:`to_dict` is what
    ``virnucpro-merge watch --json`` prints, :meth:`describe` what it shows in a terminal.
    """

    run: Path
    now: np.datetime64
    ranks: list[RankProgress]
    total: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        """The number of ranks."""
        return len(self.ranks)

    @property
    def done(self) -> int:
        """Sequences done, over every rank."""
        return sum(r.done for r in self.ranks)

    @property
    def rate(self) -> float:
        """Sequences an hour, over the ranks running now."""
        return sum(r.rate or 0.0 for r in self.ranks if r.state == RUNNING)

    @property
    def eta(self) -> np.datetime64 | None:
        """When the last running rank will finish at its pace (None when none runs, or one has no pace)."""
        running = [r for r in self.ranks if r.state in (RUNNING, WAITING)]
        if not running or any(r.eta is None for r in running):
            return None
        return max(r.eta for r in running if r.eta is not None)

    @property
    def complete(self) -> bool:
        """Whether every rank has finished, holding every sequence of the index (where known)."""
        return all(r.state == FINISHED for r in self.ranks) and bool(self.ranks) and \
            (self.total is None or self.done >= self.total)

    def counts(self) -> dict[str, int]:
        """How many ranks are in each state (every state named, in the order of ``RUN_STATES``)."""
        return {state: sum(r.state == state for r in self.ranks) for state in RUN_STATES}

    @property
    def stopped(self) -> list[int]:
        """The ranks that will not finish by themselves (stalled, failed or preempted)."""
        return [r.rank for r in self.ranks if r.state in STOPPED_STATES]

    @property
    def stragglers(self) -> list[int]:
        """The running ranks below half the median pace (:attr:`~virnucpro_merge.timeline.Timeline.stragglers`)."""
        running = {r.rank for r in self.ranks if r.state == RUNNING}
        return [rank for rank in self.timeline.stragglers if rank in running]

    @property
    def timeline(self) -> Timeline:
        """Every rank's checkpoints over time (for :func:`~virnucpro_merge.inspection.plot_timeline`)."""
        return Timeline([r.timeline for r in self.ranks])

    def slowest(self, most: int = 5) -> list[RankProgress]:
        """The ``most`` running ranks that will finish last (the latest ETA first; no pace: first of all)."""
        running = [r for r in self.ranks if r.state == RUNNING]
        far = np.datetime64("9999-01-01T00:00:00", "ms")
        return sorted(running, key=lambda r: (-(r.eta if r.eta is not None else far).astype(np.int64), r.rank))[:most]

    @property
    def exit_status(self) -> int:
        """What ``watch --once`` exits with: 1 when a rank stalled, failed or was preempted, else 0."""
        return 1 if self.stopped else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``virnucpro-merge watch --json`` prints it (the CLI reference lists its fields)."""
        eta = self.eta
        return {
            "run": str(self.run), "now": _iso(self.now), "world_size": self.world_size,
            "complete": self.complete, "exit_status": self.exit_status, "done": self.done, "total": self.total,
            "rate_per_hour": round(self.rate, 1), "eta": _iso(eta), "eta_seconds": self._seconds(eta),
            "counts": self.counts(), "stopped": self.stopped, "stragglers": self.stragglers,
            "slowest": [r.rank for r in self.slowest()], "notes": list(self.notes),
            "ranks": [{"rank": r.rank, "state": r.state, "done": r.done, "assigned": r.assigned,
                       "rate_per_hour": None if r.rate is None else round(r.rate, 1), "eta": _iso(r.eta),
                       "eta_seconds": self._seconds(r.eta), "last_checkpoint": _iso(r.last_checkpoint),
                       "checkpoints": r.checkpoints, "in_progress": r.in_progress, "cause": r.cause}
                      for r in self.ranks],
        }

    def _seconds(self, moment: np.datetime64 | None) -> float | None:
        if moment is None:
            return None
        return max(0.0, round(float((moment - self.now) / np.timedelta64(1, "s")), 1))

    def describe(self, most: int = 12, width: int | None = None) -> str:
        """The terminal's view: the run's summary, then its ranks (past 32, those worth a look:
        stopped, slowest, stragglers, at most ``most``, and the others counted); a cause cut to
        fit ``width`` characters a line."""
        from .tables import format_progress

        return format_progress(self, most=most, width=width)

    def __repr__(self) -> str:
        return (f"<RunProgress: {self.world_size} ranks, {self.done:,} of "
                f"{'?' if self.total is None else f'{self.total:,}'} sequences done, {len(self.stopped)} stopped>")

    def _repr_html_(self) -> str:
        from .tables import progress_html

        return progress_html(self)

    def to_frame(self) -> pd.DataFrame:
        """The ranks as a pandas DataFrame (the notebooks extra), indexed by rank: ``state``,
        ``done``, ``assigned``, ``rate`` (an hour), ``eta`` and ``last_checkpoint`` (UTC),
        ``checkpoints``, ``in_progress``, ``cause`` (an empty string for none)."""
        from .tables import progress_frame

        return progress_frame(self)

    def plot_progress(self, **options: Any) -> Figure:
        """:func:`~virnucpro_merge.inspection.plot_progress` of this run: each rank's share done, by state."""
        from .plots import plot_progress

        return plot_progress(self, **options)


def _key(path: str) -> Key | None:
    """A file's size and modification time, or None when it is not there (or not a regular file)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_size, found.st_mtime_ns) if stat.S_ISREG(found.st_mode) else None


class _Cache:
    """What was read of each file, under its key: read again only when the key changes."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Key, Any]] = {}
        self.reads = 0

    def get(self, path: str, key: Key, read: Callable[[str], T]) -> T:
        found = self.entries.get(path)
        if found is not None and found[0] == key:
            return found[1]
        self.reads += 1
        value = read(path)
        self.entries[path] = (key, value)
        return value


@dataclass
class _Listing:
    """One rank's checkpoint folder as listed: its ``.pt`` files (batch, path, key, marked), its ``.tmp`` files."""

    files: list[tuple[int, str, Key, bool]]
    temps: int


def _list_rank(folder: str) -> _Listing:
    """List a rank's checkpoint folder in one ``scandir``. A checkpoint marked ``.done`` is keyed
    by its inode alone (the pipeline renames a whole file into place and never writes it
    again: a new file is a new inode, and the listing gives inodes without a ``stat``); one
    not marked yet by its inode, size and modification time (one ``stat``)."""
    pts, marks, temps = [], set(), 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(DONE_SUFFIX):
                    marks.add(name[: -len(DONE_SUFFIX)])
                elif name.endswith(".tmp") and name.startswith("batch_"):
                    temps += 1
                elif (match := CHECKPOINT_NAME.fullmatch(name)) is not None:
                    pts.append((int(match.group(1)), entry, name))
    except OSError:  # (not there yet: a worker that has not started)
        return _Listing([], 0)
    files: list[tuple[int, str, Key, bool]] = []
    for batch, entry, name in sorted(pts, key=lambda found: found[0]):
        marked = name in marks
        if marked:
            files.append((batch, entry.path, (entry.inode(),), True))
            continue
        try:
            found = entry.stat()
        except OSError:  # (gone since the listing: renamed by a resume, or cleaned up)
            continue
        files.append((batch, entry.path, (entry.inode(), found.st_size, found.st_mtime_ns), False))
    return _Listing(files, temps)


def _facts(path: str) -> CheckpointFacts | None:
    try:
        return checkpoint_facts(path)
    except CheckpointError:
        return None


def _shard_rows(path: str) -> int | None:
    """A shard's rows, or None while it cannot be read (being written, or cut short)."""
    try:
        with open_shard(path, locking=False) as handle:
            return read_shard_meta(handle, path, check_sources=False, storage=False).num_sequences
    except (MergeError, OSError):
        return None


def _index_total(path: str) -> int | None:
    """The sequences of a run's sequence index (its ``total_sequences``, else its records counted)."""
    try:
        if os.stat(path).st_size > _MAX_INDEX:
            return None
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
        found = re.search(r'"total_sequences"\s*:\s*([0-9]+)\s*[,}]', head)
        if found is not None:
            total = int(found.group(1))
            return total if total <= MAX_SEQUENCES else None
        return sum(1 for _ in iter_index_records(path))
    except (OSError, ValueError):
        return None


def _when(text: str | None) -> np.datetime64 | None:
    """An ISO time of the manifest (with a zone or without: UTC) as ``datetime64[ms]``, or None."""
    if text is None:
        return None
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ms")


def _moment(now: object) -> np.datetime64:
    """``now`` (None: the clock; a datetime, aware or UTC; a datetime64; an ISO string) as UTC ``datetime64[ms]``."""
    if now is None:
        return np.datetime64(_dt.datetime.now(_dt.UTC).replace(tzinfo=None), "ms")
    if isinstance(now, np.datetime64):
        return now.astype("datetime64[ms]")
    if isinstance(now, str):
        found = _when(now.removesuffix("Z"))
        if found is None:
            msg = f"not a time: {now!r} (an ISO time, e.g. 2026-01-05T12:00:00, UTC)"
            raise MergeError(msg)
        return found
    if isinstance(now, _dt.datetime):
        moment = now.astimezone(_dt.UTC).replace(tzinfo=None) if now.tzinfo is not None else now
        return np.datetime64(moment, "ms")
    msg = f"not a time: {now!r}"
    raise TypeError(msg)


@dataclass
class _Seen:
    """What a rank's files showed at the last refresh (reused while none of them changed), and
    the numbers drawn from its timeline (worked out once, not at every refresh)."""

    signature: tuple[Any, ...]
    timeline: RankTimeline
    in_progress: int
    interval: float | None = None
    rate: float | None = None
    last: np.datetime64 | None = None
    first: np.datetime64 | None = None
    done: int = 0

    def __post_init__(self) -> None:
        timeline = self.timeline
        self.interval, self.rate = timeline.interval, timeline.recent_rate
        self.last = timeline.times[-1] if timeline.times.size else None
        self.first = timeline.times[0] if timeline.times.size else None
        self.done = int(timeline.done[-1]) if timeline.done.size else 0


class ProgressReader:
    """Reads a run's progress again and again, re-reading only the files that changed.

    Parameters
    ----------
    run : path-like
        The run folder (its ``shard_<r>.h5``, ``checkpoints/`` or ``<out>/.checkpoints``,
        ``logs/``, ``sequence_index.json``), as :func:`~virnucpro_merge.ranks.run_folder` finds them.
    world_size : int, optional
        The number of ranks (default: the manifest's, else the highest rank found + 1).

    Raises
    ------
    MergeError
        ``run`` is not a folder, or holds nothing of a run (no shard, no checkpoints, no
        manifest): one line naming it.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_live_run
    >>> live = make_live_run("live", n_sequences=400, world_size=4, checkpoint_every=20, stalls=(), dies=(3,),
    ...                      preempted=(), stragglers=())
    >>> reader = ProgressReader("live")
    >>> _ = live.advance_to(2000)
    >>> found = reader.read(now=live.moment())
    >>> [(r.rank, r.state, r.done) for r in found.ranks]
    [(0, 'finished', 100), (1, 'finished', 100), (2, 'running', 80), (3, 'failed', 60)]
    >>> found.ranks[3].cause
    'RuntimeError: CUDA error: an illegal memory access was encountered (logs/worker_3.log line 7)'
    >>> _ = reader.read(now=live.moment()); reader.files_read  # (nothing changed: nothing read again)
    0
    """

    def __init__(self, run: str | os.PathLike[str], *, world_size: int | None = None) -> None:
        self.run = Path(run) if Path(run).name not in ("", "..") else Path(run).resolve()  # ("." has no name)
        if not self.run.is_dir():
            what = "does not exist" if not self.run.exists() else "is not a folder"
            msg = f"{self.run}: {what}: watch takes a run folder"
            raise MergeError(msg)
        if world_size is not None and not 0 < world_size <= MAX_WORLD_SIZE:
            msg = f"a world size of {world_size:,} ranks: expected 1 to {MAX_WORLD_SIZE:,}"
            raise MergeError(msg)
        self.world_size = world_size
        self._cache = _Cache()
        self._seen: dict[int, _Seen] = {}
        self._listings: dict[str, tuple[int, _Listing]] = {}
        #: the files read (not found in the cache) by the last :meth:`read`
        self.files_read = 0

    def read(self, now: object = None) -> RunProgress:
        """The run's progress at ``now`` (default: the clock; a datetime, a ``datetime64`` or an
        ISO string, UTC when without a zone): what the files show, judged at that moment."""
        moment = _moment(now)
        before = self._cache.reads
        folder = run_folder(self.run)
        checkpoints = str(folder.checkpoints) if folder.checkpoints is not None else None
        manifest = self._manifest(folder.manifest)
        world_size = self._world_size(checkpoints, manifest)
        total = self._total(folder.index)
        shards = {name for name in _names(str(self.run)) if name.startswith("shard_")}  # (one listing, no stat)
        seen = [self._rank_files(rank, checkpoints, shards) for rank in range(world_size)]
        usual, start = _usual_interval(seen), _first_checkpoint(seen)
        ranks = [self._rank(rank, found, rows, moment, usual, start, total, world_size, manifest, folder.logs)
                 for rank, (found, rows) in enumerate(seen)]
        self.files_read = self._cache.reads - before
        return RunProgress(self.run, moment, ranks, total, self._notes(manifest, ranks, total, world_size))

    def _total(self, index: Path | None) -> int | None:
        """The sequences of the run's sequence index (None: none, or not readable), read again when it changed."""
        if index is None:
            return None
        return self._cache.get(str(index), _key(str(index)) or (0, 0), _index_total)

    def _notes(self, manifest: Manifest | None, ranks: list[RankProgress], total: int | None,
               world_size: int) -> list[str]:
        """What the progress cannot vouch for: a damaged manifest, no index, or finished shards short of the index."""
        notes = [manifest.problem] if manifest is not None and manifest.problem else []
        if total is None:
            notes.append(f"no readable sequence index in {self.run.name}: each rank's assignment is unknown")
        done = sum(r.done for r in ranks)
        if ranks and all(r.state == FINISHED for r in ranks) and total is not None and done < total:
            notes.append(f"every rank's shard is written, but they hold {done:,} of the index's {total:,} sequences: "
                         f"are ranks missing? (a world size of {world_size:,} ranks was found)")
        return notes

    def _manifest(self, path: Path | None) -> Manifest | None:
        """The manifest, read again only when it changed, and parsed again only when the statuses
        and errors it holds changed (all a watch takes from it is who failed and why, and the
        world size): at 1,024 ranks it is a few MB, rewritten at every checkpoint of any rank."""
        if path is None or (key := _key(str(path))) is None:
            return None
        before = self._cache.entries.get(str(path))

        def read(where: str) -> tuple[tuple[bytes, ...] | None, Manifest]:
            words = status_words(where)
            if before is not None and words is not None and before[1][0] == words and not before[1][1].problem:
                return words, before[1][1]
            return words, read_manifest(where)

        return self._cache.get(str(path), key, read)[1]

    def _world_size(self, checkpoints: str | None, manifest: Manifest | None) -> int:
        if self.world_size is not None:
            return self.world_size
        if manifest is not None and manifest.world_size and 0 < manifest.world_size <= MAX_WORLD_SIZE:
            return manifest.world_size
        ranks = [int(m.group(1)) for place in (str(self.run), checkpoints) if place is not None
                 for name in _names(place) if (m := _SHARD.fullmatch(name)) is not None]
        if not ranks and checkpoints is None:
            msg = (f"{self.run}: not a run folder (no shard_<rank>.h5, no checkpoints folder, no manifest): "
                   "nothing to watch")
            raise MergeError(msg)
        return max(ranks) + 1 if ranks else 0  # (a run just started: its checkpoints folder, still empty)

    def _rank_files(self, rank: int, checkpoints: str | None, shards: set[str]) -> tuple[_Seen, int | None]:
        """What rank ``rank``'s files show: its checkpoints' timeline (reused while its folder is
        unchanged), and its shard's rows (None: no shard, or not readable yet); ``shards`` are
        the names of the run folder's shard files."""
        name = shard_name(rank)
        shard = os.path.join(self.run, name)  # (a str: a Path a rank costs more than the listing)
        shard_key = _key(shard) if name in shards else None
        rows = self._cache.get(shard, shard_key, _shard_rows) if shard_key is not None else None
        old = self._seen.get(rank)
        if rows is not None and old is not None and old.signature[0] == shard_key:
            return old, rows  # (finished, its shard unchanged: its checkpoints are not listed again)
        listing = self._listing(os.path.join(checkpoints, f"shard_{rank}")) if checkpoints is not None \
            else _Listing([], 0)
        signature = (shard_key, tuple((path, key, marked) for _, path, key, marked in listing.files), listing.temps)
        if old is not None and old.signature[1:] == signature[1:]:
            old.signature = signature
            found = old
        else:
            found = self._timeline(rank, listing, signature)
        self._seen[rank] = found
        return found, rows

    def _listing(self, folder: str) -> _Listing:
        """A rank's checkpoint folder as listed: listed again only when the folder changed (its
        modification time: a file added, renamed or removed), or when it holds a checkpoint not
        marked yet (which may still change in place). A folder changed less than
        two seconds before it was listed is listed again all the same: a file system
        whose times are coarse could give the next change the same time."""
        try:
            found = os.stat(folder)
        except OSError:  # (not there yet: a worker that has not started)
            self._listings.pop(folder, None)
            return _Listing([], 0)
        old = self._listings.get(folder)
        if old is not None and old[0] == found.st_mtime_ns and all(marked for *_, marked in old[1].files):
            return old[1]
        listing = _list_rank(folder)
        if found.st_mtime_ns < time.time_ns() - int(_SETTLED * 1e9):
            self._listings[folder] = (found.st_mtime_ns, listing)
        else:
            self._listings.pop(folder, None)
        return listing

    def _timeline(self, rank: int, listing: _Listing, signature: tuple[Any, ...]) -> _Seen:
        facts, damaged, pending = [], 0, listing.temps
        for _, path, key, marked in listing.files:
            found = self._cache.get(path, key, _facts)
            if found is not None:
                facts.append(found)
            elif marked:
                damaged += 1
            else:  # (renamed, not marked, not readable: still being written, as far as a watcher knows)
                pending += 1
        return _Seen(signature, rank_timeline(rank, facts, damaged), pending)

    def _rank(self, rank: int, seen: _Seen, rows: int | None, now: np.datetime64, usual: float | None,
              start: np.datetime64 | None, total: int | None, world_size: int, manifest: Manifest | None,
              logs: Path | None) -> RankProgress:
        timeline = seen.timeline
        assigned = len(range(rank, total, world_size)) if total is not None else None
        done = rows if rows is not None else seen.done
        last, rate = seen.last, seen.rate
        state, cause = self._state(rank, rows, seen, now, usual, start, manifest, logs)
        eta = None
        if state == RUNNING and assigned is not None and last is not None and rate:
            eta = last + np.timedelta64(int(max(0, assigned - done) / rate * 3_600_000), "ms")
        return RankProgress(rank, state, done, assigned, rate if state == RUNNING else None, eta, last,
                            int(timeline.times.size), seen.in_progress, cause, timeline)

    def _state(self, rank: int, rows: int | None, seen: _Seen, now: np.datetime64, usual: float | None,
               start: np.datetime64 | None, manifest: Manifest | None, logs: Path | None) -> tuple[str, str | None]:
        """A rank's state, and why it stopped (the first that applies: see the module's words)."""
        if rows is not None:
            return FINISHED, None
        if seen.timeline.last_trigger == "emergency_sigterm":
            return PREEMPTED, f"stopped by SIGTERM (preempted) at {_shown(seen.last)} UTC"
        failed = self._failed_by_manifest(rank, seen.last, manifest, logs)
        if failed is not None:
            return FAILED, failed
        return self._state_by_pace(rank, seen, now, usual, start, logs)

    def _failed_by_manifest(self, rank: int, last: np.datetime64 | None, manifest: Manifest | None,
                            logs: Path | None) -> str | None:
        """Why rank ``rank`` failed, where the manifest says it did and it saved no checkpoint since
        (its log's last error, else the manifest's); None where the manifest does not say so."""
        claim = manifest.ranks.get(rank) if manifest is not None else None
        if claim is None or claim.status != "failed":
            return None
        failed_at = _when(claim.failed_at)
        if last is None or failed_at is None or failed_at >= last:
            log = self._log(logs, rank)
            return _log_cause(log) or f"{_cut(claim.error or 'no error given')} (the manifest says)"
        return None  # (a checkpoint since: it was retried)

    def _state_by_pace(self, rank: int, seen: _Seen, now: np.datetime64, usual: float | None,
                       start: np.datetime64 | None, logs: Path | None) -> tuple[str, str | None]:
        """A rank's state from how long it has been quiet against its usual interval: waiting,
        running, failed (overdue, an error at the end of its log) or stalled, and why it stopped."""
        last = seen.last
        interval = seen.interval or usual or (FALLBACK_INTERVAL if last is not None else None)
        since = last if last is not None else start
        if interval is None or since is None:
            return WAITING, None
        quiet = float((now - since) / np.timedelta64(1, "s"))
        if quiet <= STALL_FACTOR * interval:
            return (RUNNING if last is not None else WAITING), None
        log = self._log(logs, rank)
        if (cause := _log_cause(log)) is not None:
            return FAILED, cause
        what = f"no checkpoint {'for' if last is not None else 'in'} {duration_words(quiet)}"
        return STALLED, f"{what} (its usual interval: {duration_words(interval)}); nothing says why"

    def _log(self, logs: Path | None, rank: int) -> LogTail | None:
        if logs is None:
            return None
        path = str(log_path(logs, rank))
        key = _key(path)
        return self._cache.get(path, key, read_log_tail) if key is not None else None


def _usual_interval(seen: list[tuple[_Seen, int | None]]) -> float | None:
    """The median of the ranks' checkpoint intervals (None: no rank has two checkpoints yet)."""
    intervals = [s.interval for s, _ in seen if s.interval is not None]
    return float(np.median(intervals)) if intervals else None


def _first_checkpoint(seen: list[tuple[_Seen, int | None]]) -> np.datetime64 | None:
    """When the run's first checkpoint was saved (None: none yet)."""
    starts = [s.first for s, _ in seen if s.first is not None]
    return min(starts) if starts else None


def _names(folder: str) -> Iterator[str]:
    try:
        with os.scandir(folder) as entries:
            yield from (entry.name for entry in entries)
    except OSError:
        return


def _log_cause(log: LogTail | None) -> str | None:
    """The last error of a worker's log, and where it is, or None."""
    if log is None or not log.last_error:
        return None
    where = f"line {log.line}" if log.line is not None else "near its end"
    return f"{log.last_error} ({log.path.parent.name}/{log.path.name} {where})"


def _shown(moment: np.datetime64 | None) -> str:
    return "?" if moment is None else str(moment.astype("datetime64[s]")).replace("T", " ")


def read_progress(run: str | os.PathLike[str], *, now: object = None, world_size: int | None = None) -> RunProgress:
    """A run's progress at one moment, from its files (read-only): :meth:`ProgressReader.read` once.

    Parameters
    ----------
    run : path-like
        The run folder.
    now : datetime, numpy.datetime64 or str, optional
        The moment to judge the run at (default: the clock; UTC when without a zone). Stalls
        are judged against it: a test or a replay passes the moment it means.
    world_size : int, optional
        The number of ranks (default: the manifest's, else the highest rank found + 1).

    Returns
    -------
    RunProgress

    Raises
    ------
    MergeError
        ``run`` is not a run folder (one line naming it).

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_live_run
    >>> live = make_live_run("live", n_sequences=800, world_size=8, checkpoint_every=20)
    >>> _ = live.advance_to(2700)
    >>> found = read_progress("live", now=live.moment())
    >>> found.done, found.total, found.stopped, found.exit_status
    (570, 800, [5, 6, 7], 1)
    >>> print(found.ranks[5].cause)
    no checkpoint for 37 min (its usual interval: 7 min); nothing says why
    """
    return ProgressReader(run, world_size=world_size).read(now)


def _cut(text: str, most: int = 300) -> str:
    """A cause of someone else's file, cut as a log's is (the terminal cuts it further)."""
    return text if len(text) <= most else text[: most - 1] + "…"
