"""A run over time, from its checkpoints: per rank, the sequences done after each checkpoint.

Each checkpoint of the pipeline carries the time it was saved (``metadata["timestamp"]``, UTC
without a zone; where it has none, the file's modification time stands in) and its IDs; a
rank's sequences done after a checkpoint are the distinct IDs of it and the ones before (a
resume repeats earlier checkpoints: counted once). Only IDs and metadata are read, never
rows (:func:`~virnucpro_merge.checkpoints.read_checkpoint` with ``rows=False``).

A rank's **rate** is its sequences done between its first and its last checkpoint over the
time between them; a **straggler** is a rank whose rate is below half the median rate of the
ranks (with at least two checkpoints each).
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

__all__ = ["RankTimeline", "Timeline", "read_timeline", "STRAGGLER_RATIO"]

logger = logging.getLogger("virnucpro_merge")

#: A rank slower than this fraction of the median rate is a straggler.
STRAGGLER_RATIO = 0.5


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
        if self.times.size < 2:
            return None
        hours = float((self.times[-1] - self.times[0]) / np.timedelta64(1, "h"))
        return float(self.done[-1] - self.done[0]) / hours if hours > 0 else None


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


def _rank_timeline(rank: int, folder: Path) -> RankTimeline:
    times, done, seen = [], [], set()
    damaged, trigger = 0, None
    for entry in rank_checkpoints(folder).files:
        try:
            checkpoint = read_checkpoint(entry.path, rows=False)
        except CheckpointError:
            damaged += 1
            continue
        seen.update(checkpoint.sequence_ids)
        times.append(_when(checkpoint.metadata, entry.path))
        done.append(len(seen))
        found = checkpoint.metadata.get("trigger_reason")
        trigger = found if isinstance(found, str) else None
    return RankTimeline(rank, np.array(times, dtype="datetime64[ms]"), np.array(done, dtype=np.int64), trigger,
                        damaged)


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
