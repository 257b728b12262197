"""What the tables and the figures read of an inspection: the shape of one, not the class.

:class:`~virnucpro_merge.inspection.RunInspection` and
:class:`~virnucpro_merge.inspection.ShardSummary` have these shapes; the tables and the
figures are written against the shapes, so that they need not import the inspection
whose display methods call them (and the package's import graph stays free of cycles).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..health import HealthFlag, RankHealth
from ..statuses import FAILED, OK, PREEMPTED, STALLED

__all__ = ["RankView", "InspectionView", "RankProgressView", "ProgressView", "FEW_RANKS", "ranks_in_focus", "bar_of",
           "nothing_held", "HEALTHY_COLOR", "FLAGGED_COLOR", "counts_title", "missing_title", "health_title",
           "duration_words", "progress_in_focus", "ALL_RANKS_UP_TO", "norms_on_a_log_scale"]

#: The colours of a rank's row norms: as most ranks', and standing out.
HEALTHY_COLOR, FLAGGED_COLOR = "#6A8CAF", "#D55E00"

#: Up to this many ranks, a picture draws every rank one by one; past it, only those worth a look.
FEW_RANKS = 64


class RankView(Protocol):
    """One rank of an inspection, as the tables and figures read it."""

    @property
    def rank(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def expected(self) -> int: ...
    @property
    def present(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def checkpointed(self) -> int: ...
    @property
    def health(self) -> RankHealth | None: ...


class InspectionView(Protocol):
    """An inspection of a run, as the tables and figures read it."""

    @property
    def shards(self) -> Sequence[RankView]: ...
    @property
    def missing(self) -> np.ndarray: ...
    @property
    def sequence_ids(self) -> Sequence[str]: ...
    @property
    def num_extra(self) -> int: ...
    @property
    def expected_from(self) -> str | None: ...
    @property
    def world_size_from(self) -> str: ...
    @property
    def world_size(self) -> int: ...
    @property
    def num_missing(self) -> int: ...
    @property
    def num_present(self) -> int: ...
    @property
    def assigned(self) -> np.ndarray: ...
    @property
    def missing_ids(self) -> list[str]: ...
    @property
    def stops(self) -> dict[int, str]: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def by_status(self) -> dict[str, list[int]]: ...
    @property
    def health_flags(self) -> list[HealthFlag]: ...


def ranks_in_focus(worth_a_look: Sequence[bool] | np.ndarray, *, few: int = FEW_RANKS) -> list[int] | None:
    """The ranks a picture of many ranks draws one by one, the others summed up; None: every rank.

    Up to ``few`` ranks, every rank is drawn. Past it, the ranks worth a look are drawn in
    full (each can be named by its number) and the others summed up, as long as there
    are between one and ``few`` of them; otherwise every rank is drawn, in blocks if need be.

    Parameters
    ----------
    worth_a_look : sequence of bool or numpy.ndarray
        For each rank in order, whether it has something to show.
    few : int, optional
        The most ranks drawn one by one.

    Returns
    -------
    list of int or None
        The positions of the ranks to draw, or None for every rank.

    Examples
    --------
    >>> ranks_in_focus([False] * 8 + [True])
    >>> ranks_in_focus([False] * 100 + [True, False, True])
    [100, 102]
    >>> ranks_in_focus([False] * 100)
    """
    if len(worth_a_look) <= few:
        return None
    chosen = [position for position, flag in enumerate(np.asarray(worth_a_look, dtype=bool).tolist()) if flag]
    return chosen if 0 < len(chosen) <= few else None


def bar_of(shard: RankView, known: bool) -> tuple[float, float]:
    """A rank's bar in a picture of many: what its file holds and, on top, what only its
    checkpoints hold, as shares of its assignment (as rows where nothing is ``known`` of
    assignments).

    The file's share is the part of the assignment found in some shard, not rows over
    assigned: a rank that wrote its last batch twice would reach 1 with sequences missing.

    >>> from pathlib import Path
    >>> from virnucpro_merge.inspection import ShardSummary
    >>> bar_of(ShardSummary(rank=3, path=Path("shard_3.h5"), expected=10, present=0, missing=4,
    ...                     status="failed", checkpointed=6), True)
    (0.0, 0.6)
    """
    if not known:
        return float(shard.present), float(shard.checkpointed)
    if not shard.expected:
        return float(shard.present > 0), 0.0
    held = max(0, shard.expected - shard.missing - shard.checkpointed)
    return held / shard.expected, shard.checkpointed / shard.expected


def nothing_held(shard: RankView) -> bool:
    """Whether a rank's file holds nothing of what it should (its place gets a cross: it has no bar).

    >>> from pathlib import Path
    >>> from virnucpro_merge.inspection import ShardSummary
    >>> nothing_held(ShardSummary(rank=7, path=Path("shard_7.h5"), expected=0, present=0, missing=0, status="ok"))
    False
    """
    return shard.present == 0 and (shard.expected > 0 or shard.status != OK)


def counts_title(ranks: int, focus: Sequence[int] | None) -> str:
    """The title of the rows-per-rank picture (matplotlib and Bokeh alike).

    >>> counts_title(1024, [3, 17])
    'Rows per rank against its assignment: the 2 of 1,024 ranks with a problem'
    """
    if focus is None:
        return f"Rows per rank against its assignment, {ranks:,} ranks"
    return f"Rows per rank against its assignment: the {len(focus)} of {ranks:,} ranks with a problem"


def missing_title(missing: int, expected: int, ranks: int, focus: Sequence[int] | None) -> str:
    """The title of the picture of the holes (matplotlib and Bokeh alike).

    >>> missing_title(6936, 10**6, 1024, [3, 17])
    'Missing sequences: 6,936 of 1,000,000, in the 2 of 1,024 ranks that miss any (the other 1,022 miss none)'
    """
    title = f"Missing sequences: {missing:,} of {expected:,}"
    if focus is not None:
        title += f", in the {len(focus)} of {ranks:,} ranks that miss any (the other {ranks - len(focus):,} miss none)"
    return title


def health_title(flagged: int, ranks: int) -> str:
    """The title of the row-norms picture (matplotlib and Bokeh alike).

    >>> health_title(4, 8), health_title(0, 8)
    ('Row norms per rank: 4 of 8 ranks stand out', 'Row norms per rank: none of 8 stands out')
    """
    if flagged:
        return f"Row norms per rank: {flagged:,} of {ranks:,} ranks stand out"
    return f"Row norms per rank: none of {ranks:,} stands out"


def norms_on_a_log_scale(medians: Sequence[float] | np.ndarray) -> bool:
    """Whether the row-norms picture (matplotlib and Bokeh alike) has a log scale: the ranks'
    positive median norms more than ten times apart.

    >>> norms_on_a_log_scale([1.0, 3.0, 0.0]), norms_on_a_log_scale([1.0, 30.0])
    (False, True)
    """
    positive = np.asarray(medians, dtype=float)
    positive = positive[positive > 0]
    return bool(positive.size) and float(positive.max()) > 10 * float(positive.min())


class RankProgressView(Protocol):
    """One rank of a run in progress, as the tables and figures read it (a ``RankProgress``)."""

    @property
    def rank(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def assigned(self) -> int | None: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def eta(self) -> np.datetime64 | None: ...
    @property
    def last_checkpoint(self) -> np.datetime64 | None: ...
    @property
    def checkpoints(self) -> int: ...
    @property
    def in_progress(self) -> int: ...
    @property
    def cause(self) -> str | None: ...
    @property
    def fraction(self) -> float | None: ...


class ProgressView(Protocol):
    """A run in progress, as the tables and figures read it (a ``RunProgress``)."""

    @property
    def run(self) -> Path: ...
    @property
    def now(self) -> np.datetime64: ...
    @property
    def ranks(self) -> Sequence[RankProgressView]: ...
    @property
    def total(self) -> int | None: ...
    @property
    def notes(self) -> Sequence[str]: ...
    @property
    def world_size(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def eta(self) -> np.datetime64 | None: ...
    @property
    def complete(self) -> bool: ...
    @property
    def stopped(self) -> list[int]: ...
    @property
    def stragglers(self) -> list[int]: ...
    def counts(self) -> dict[str, int]: ...
    def slowest(self, most: int = 5) -> Sequence[RankProgressView]: ...


#: Up to this many ranks, the views of a run in progress list every rank; past it, those worth a look.
ALL_RANKS_UP_TO = 32


def duration_words(seconds: float) -> str:
    """A duration as a person reads it at a glance.

    >>> duration_words(45), duration_words(720), duration_words(11_100), duration_words(190_000)
    ('45 s', '12 min', '3 h 05 min', '2 d 4 h')
    """
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def progress_in_focus(found: ProgressView, most: int) -> list[int]:
    """The ranks of a run in progress worth a look, at most ``most``: the stopped ones (failed,
    stalled, preempted), then the stragglers, then those that will finish last; every rank
    where there are no more than :data:`ALL_RANKS_UP_TO`."""
    if found.world_size <= ALL_RANKS_UP_TO:
        return [r.rank for r in found.ranks]
    order = {state: at for at, state in enumerate((FAILED, STALLED, PREEMPTED))}
    stopped = sorted((r for r in found.ranks if r.state in order), key=lambda r: (order[r.state], r.rank))
    chosen = [r.rank for r in stopped] + found.stragglers + [r.rank for r in found.slowest(most)]
    return sorted(list(dict.fromkeys(chosen))[:most])
