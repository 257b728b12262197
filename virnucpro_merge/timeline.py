"""A run over time, from its checkpoints: per rank, the sequences done after each checkpoint.

Each checkpoint of the pipeline carries the time it was saved (``metadata["timestamp"]``, UTC
without a zone; where it has none, the file's modification time stands in) and its IDs; a
rank's sequences done after a checkpoint are the distinct IDs of it and the ones before (a
resume repeats earlier checkpoints: counted once). Only IDs and metadata are read, never
rows (:func:`~virnucpro_merge.checkpoints.read_checkpoint` with ``rows=False``).

A rank's **rate** is its sequences done between its first and its last checkpoint over the
time between them (its **recent rate**: the same over its last ``RECENT`` checkpoints); a
**straggler** is a rank whose rate is below half the median rate of the ranks (with at least
two checkpoints each). What the timeline takes from one checkpoint file is
:class:`CheckpointFacts` (:func:`checkpoint_facts`): a reader that keeps those per file
(``watch``) builds a rank's timeline with :func:`rank_timeline` without reading a file twice.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoints import rank_checkpoints, read_checkpoint
from .errors import CheckpointError
from .ids import id_hashes

__all__ = ["RankTimeline", "Timeline", "read_timeline", "STRAGGLER_RATIO", "RECENT", "CheckpointFacts",
           "checkpoint_facts", "rank_timeline"]

logger = logging.getLogger("virnucpro_merge")

#: A rank slower than this fraction of the median rate is a straggler.
STRAGGLER_RATIO = 0.5
#: The checkpoints a rank's recent rate and usual interval are taken over (its last ones).
RECENT = 5


def _pace(times: np.ndarray, done: np.ndarray) -> float | None:
    """Sequences an hour from the first to the last of these points, or None."""
    if times.size < 2:
        return None
    hours = float((times[-1] - times[0]) / np.timedelta64(1, "h"))
    return float(done[-1] - done[0]) / hours if hours > 0 else None


@dataclass(frozen=True)
class RankTimeline:
    """One rank's checkpoints over time.

    Attributes
    ----------
    rank : int
        The rank.
    times : numpy.ndarray
        ``datetime64[ms]``, one per readable checkpoint, in batch order.
    done : numpy.ndarray
        The rank's distinct sequences done after each of them.
    last_trigger : str or None
        Why its last checkpoint was saved (``emergency_sigterm``: the worker was preempted).
    damaged : int
        Its checkpoint files that could not be read (not in ``times``).
    """

    rank: int
    times: np.ndarray
    done: np.ndarray
    last_trigger: str | None = None
    damaged: int = 0

    @property
    def rate(self) -> float | None:
        """Sequences an hour between its first and last checkpoint, or None with fewer than two."""
        return _pace(self.times, self.done)

    @property
    def recent_rate(self) -> float | None:
        """Sequences an hour over its last ``RECENT`` checkpoints, or None with fewer than two."""
        return _pace(self.times[-RECENT - 1 :], self.done[-RECENT - 1 :])

    @property
    def interval(self) -> float | None:
        """The usual seconds between two of its checkpoints (the median over its last ``RECENT``
        ones), or None with fewer than two checkpoints."""
        gaps = np.diff(self.times[-RECENT - 1 :]) / np.timedelta64(1, "s")
        return float(np.median(gaps)) if gaps.size else None


@dataclass(frozen=True)
class Timeline:
    """Every rank's checkpoints over time (:func:`read_timeline`)."""

    ranks: list[RankTimeline] = field(default_factory=list)

    @property
    def median_rate(self) -> float | None:
        """The median of the ranks' rates (sequences an hour), or None when none has one."""
        rates = [r.rate for r in self.ranks if r.rate is not None]
        return float(np.median(rates)) if rates else None

    @property
    def stragglers(self) -> list[int]:
        """The ranks whose rate is below ``STRAGGLER_RATIO`` (a half) of the median rate."""
        median = self.median_rate
        if median is None:
            return []
        return [r.rank for r in self.ranks if r.rate is not None and r.rate < STRAGGLER_RATIO * median]

    def describe(self, most: int = 10) -> str:
        """A few lines: what the checkpoints cover, the median pace, the stragglers (the
        slowest ``most``, with their rates).

        >>> print(Timeline().describe())
        no checkpoint: nothing over time
        """
        drawn = [r for r in self.ranks if r.times.size]
        if not drawn:
            return "no checkpoint: nothing over time"
        end = max(r.times[-1] for r in drawn)
        lines = [f"{len(drawn):,} of {len(self.ranks):,} ranks checkpointed {sum(int(r.done[-1]) for r in drawn):,} "
                 f"sequences, from {_shown_time(self.start)} to {_shown_time(end)} UTC"]
        median = self.median_rate
        if median is not None:
            lines.append(f"median pace: {median:,.0f} sequences an hour")
        slow = sorted((r for r in self.ranks if r.rank in set(self.stragglers)), key=lambda r: r.rate or 0.0)
        if slow:
            shown = ", ".join(f"{r.rank} ({r.rate:,.0f} an hour)" for r in slow[:most])
            more = f" and {len(slow) - most:,} more" if len(slow) > most else ""
            lines.append(f"stragglers (under {STRAGGLER_RATIO:.0%} of the median pace): "
                         f"{'rank' if len(slow) == 1 else 'ranks'} {shown}{more}")
        else:
            lines.append("stragglers: none")
        return "\n".join(lines)

    @property
    def start(self) -> np.datetime64 | None:
        """The earliest checkpoint's time."""
        firsts = [r.times[0] for r in self.ranks if r.times.size]
        return min(firsts) if firsts else None


def _shown_time(moment: np.datetime64 | None) -> str:
    return str(moment)[:19].replace("T", " ")


def _when(metadata: dict[str, object], path: Path) -> np.datetime64:
    """A checkpoint's time: its timestamp (taken as UTC), else its file's modification time."""
    stamp = metadata.get("timestamp")
    if isinstance(stamp, str):
        try:
            moment = _dt.datetime.fromisoformat(stamp)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                moment = moment.astimezone(_dt.UTC).replace(tzinfo=None)
            return np.datetime64(moment, "ms")
    return np.datetime64(int(os.stat(path).st_mtime * 1000), "ms")


@dataclass(frozen=True)
class CheckpointFacts:
    """What a timeline takes from one checkpoint file: when it was saved, the hashes of its IDs
    (:func:`~virnucpro_merge.ids.id_hashes`: 8 bytes an ID, not the IDs), why it was saved."""

    time: np.datetime64
    ids: np.ndarray
    trigger: str | None = None


def checkpoint_facts(path: str | os.PathLike[str]) -> CheckpointFacts:
    """Read the :class:`CheckpointFacts` of one checkpoint file (its IDs and metadata only).

    Raises
    ------
    CheckpointError
        The file cannot be read as a checkpoint (:func:`~virnucpro_merge.checkpoints.read_checkpoint`).

    Examples
    --------
    >>> from virnucpro_merge.synthetic import write_checkpoint
    >>> saved = write_checkpoint("batch_00000.pt", ["a", "b"], np.zeros((2, 2), np.float32),
    ...                          {"timestamp": "2026-01-05T10:05:00", "trigger_reason": "final"})
    >>> facts = checkpoint_facts(saved)
    >>> str(facts.time), facts.ids.size, facts.trigger
    ('2026-01-05T10:05:00.000', 2, 'final')
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, rows=False)
    found = checkpoint.metadata.get("trigger_reason")
    return CheckpointFacts(_when(checkpoint.metadata, path), id_hashes(checkpoint.sequence_ids),
                           found if isinstance(found, str) else None)


def rank_timeline(rank: int, facts: list[CheckpointFacts], damaged: int = 0) -> RankTimeline:
    """A rank's timeline from the facts of its readable checkpoints, in batch order: the
    distinct sequences done after each (an ID in an earlier checkpoint counted once).

    >>> one = CheckpointFacts(np.datetime64("2026-01-05T10:00"), np.array([1, 2]))
    >>> two = CheckpointFacts(np.datetime64("2026-01-05T11:00"), np.array([2, 3, 4]))
    >>> found = rank_timeline(0, [one, two])
    >>> found.done.tolist(), found.rate
    ([2, 4], 2.0)
    """
    if not facts:
        return RankTimeline(rank, np.array([], dtype="datetime64[ms]"), np.array([], dtype=np.int64), None, damaged)
    hashes = np.concatenate([f.ids for f in facts])
    owner = np.repeat(np.arange(len(facts)), [f.ids.size for f in facts])
    _, first = np.unique(hashes, return_index=True)
    done = np.cumsum(np.bincount(owner[first], minlength=len(facts))).astype(np.int64)
    times = np.array([f.time for f in facts], dtype="datetime64[ms]")
    return RankTimeline(rank, times, done, facts[-1].trigger, damaged)


def _rank_timeline(rank: int, folder: Path) -> RankTimeline:
    facts, damaged = [], 0
    for entry in rank_checkpoints(folder).files:
        try:
            facts.append(checkpoint_facts(entry.path))
        except CheckpointError:
            damaged += 1
    return rank_timeline(rank, facts, damaged)


def read_timeline(checkpoints: str | os.PathLike[str], world_size: int) -> Timeline:
    """Read the times and IDs of every rank's checkpoints (``checkpoints/shard_<rank>``).

    Parameters
    ----------
    checkpoints : path-like
        The run's checkpoints folder.
    world_size : int
        The number of ranks (a rank without checkpoints has an empty timeline).

    Returns
    -------
    Timeline
        One :class:`RankTimeline` per rank, in rank order.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(), empty=(),
    ...                     short={}, checkpoint_every=25, stragglers=(3,))
    >>> timeline = read_timeline(run.checkpoints, 4)
    >>> timeline.ranks[0].done.tolist(), timeline.stragglers
    ([25, 50, 75], [3])
    """
    folder = Path(checkpoints)
    return Timeline([_rank_timeline(rank, folder / f"shard_{rank}") for rank in range(world_size)])
