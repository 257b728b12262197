"""Pictures of a run: rows per shard, the missing-ID heatmap, memory over time.

Every function draws on a new figure (or on ``ax`` when given) and returns the
:class:`~matplotlib.figure.Figure`; none calls ``plt.show()``, so they work headless
with the Agg backend and in notebooks alike. The data comes from
:mod:`virnucpro_merge.inspection.run` and :mod:`virnucpro_merge.inspection.memory`.

matplotlib comes with the ``notebooks`` extra; ``import virnucpro_merge`` does not
import this module.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import LineCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter

from ..health import HealthFlag
from ..ranks import rank_ranges
from ..statuses import (
    ABSENT,
    EMPTY,
    FAILED,
    INCOMPLETE,
    OK,
    RUN_STATE_COLORS,
    STATUS_COLORS,
    STATUSES,
    STOPPED_STATES,
)
from ..timeline import STRAGGLER_RATIO, RankTimeline, Timeline
from .memory import MIB, MemoryProfile
from .views import (
    FEW_RANKS,
    FLAGGED_COLOR,
    HEALTHY_COLOR,
    InspectionView,
    ProgressView,
    RankProgressView,
    RankView,
    bar_of,
    counts_title,
    health_title,
    missing_title,
    norms_on_a_log_scale,
    nothing_held,
    ranks_in_focus,
)

__all__ = [
    "MAX_FIGSIZE",
    "plot_shard_counts",
    "plot_missing_heatmap",
    "plot_timeline",
    "plot_progress",
    "plot_health",
    "plot_memory_profile",
    "describe",
    "plot_peak_scaling",
]

#: No figure drawn here is larger than this (inches), however many ranks or sequences.
MAX_FIGSIZE = (20.0, 14.0)
_EXPECTED_COLOR = "#D9D9D9"
_FEW_RANKS = 16  # up to this many ranks, two bars a rank; past it, one (the fraction present)
# Heatmap cells: present; part of a bin missing (up to 25, 50, 75, under 100 %); missing; padding.
_HEATMAP_COLORS = ("#EDEDED", "#F6B26B", "#EE9040", "#E4741F", "#DA650C", "#D55E00", "#FFFFFF")
_PALE = 0.35  # what only checkpoints hold, on bars too thin to hatch
_SPARSE_MARKS = 400  # at most this many blocks with a few missing get a marker (a one-pixel speck is easy to miss)
_HEATMAP_BOUNDS = (-0.5, 1e-12, 0.25, 0.5, 0.75, 1 - 1e-12, 1.5, 2.5)
_PADDING = 2


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        width, height = (min(a, b) for a, b in zip(figsize, MAX_FIGSIZE, strict=True))
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        return fig, ax
    root = ax.figure
    while not isinstance(root, Figure):  # a subfigure's figure (get_figure(root=True) needs matplotlib 3.10)
        root = root.figure
    return root, ax


def _axes_pixels(fig: Figure, ax: Axes) -> tuple[float, float]:
    """About how many pixels wide and high the axes are (their place is final only when drawn)."""
    box = ax.get_position()
    return box.width * fig.get_figwidth() * fig.dpi * 0.85, box.height * fig.get_figheight() * fig.dpi * 0.8


def _say(ax: Axes, words: str, title: str | None = None, *, wrap: bool = False) -> None:
    """In place of a plot, a sentence in the middle of the axes (and a title when given)."""
    ax.text(0.5, 0.5, words, ha="center", va="center", transform=ax.transAxes, wrap=wrap)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)


def _thin(axis: Axis, count: int, room_px: float, label_px: float, *, formatter: FuncFormatter | None = None
          ) -> None:
    """Ticks at ``0, s, 2s, ... < count``, ``s`` the least of 1, 2, 5, 10, 20, ... that leaves
    each label of ``label_px`` room to spare in ``room_px``."""
    fit = max(1, int(room_px / (label_px * 1.8)))
    step = next(s for s in (m * 10**k for k in range(12) for m in (1, 2, 5)) if -(-count // s) <= fit)
    axis.set_major_locator(FixedLocator(list(range(0, max(count, 1), step))))
    if formatter is not None:
        axis.set_major_formatter(formatter)


def _font_px(fig: Figure, size: str = "medium") -> float:
    """The height in pixels of text of a relative ``size`` (``small``: 0.833 of the font size)."""
    scale = {"x-small": 0.694, "small": 0.833, "medium": 1.0}[size]
    return float(plt.rcParams["font.size"]) * scale * fig.dpi / 72


def _compact(value: float, _position: object = None) -> str:
    """1,500 -> 1.5k; 35,000,000 -> 35M (tick labels of long axes)."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.4g}{unit}"
    return f"{value:.0f}"


def describe(fig: Figure) -> str:
    """A figure in words, for the ``alt`` text of its image in a page: its titles, what its
    axes show and its legend's entries.

    >>> fig, ax = plt.subplots()
    >>> _ = ax.set(title="Rows per rank", xlabel="rank", ylabel="rows")
    >>> describe(fig)
    'Rows per rank. rank against rows.'
    """
    parts = []
    for ax in fig.axes:
        title = ax.get_title()
        axes = f"{ax.get_xlabel()} against {ax.get_ylabel()}" if ax.get_xlabel() and ax.get_ylabel() else ""
        legend = ax.get_legend()
        entries = "; ".join(t.get_text().replace("\n", " ") for t in legend.get_texts()) if legend else ""
        parts += [f"{part}." for part in (title, axes.replace("\n", " "), f"Legend: {entries}" if entries else "")
                  if part]
    return " ".join(parts) or "A figure"


def _summaries(shards: Sequence[RankView] | InspectionView) -> list[RankView]:
    return list(shards) if isinstance(shards, Sequence) else list(shards.shards)


def plot_shard_counts(
    shards: Sequence[RankView] | InspectionView,
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Rows per rank against its stride assignment, coloured by status.

    Up to 16 ranks, each rank gets two bars: a grey one for the rows its stride
    assignment expected, and one for the rows its file holds, in its status's
    colour, topped by a hatched one for what only its checkpoints hold (a merge
    salvages them); a shard without rows gets a cross on the axis, and up to 12 ranks the x
    labels repeat the status. Past 16 ranks, each rank gets one bar, the fraction
    of its assignment its file holds, and the legend names the ranks of every status
    but ``ok`` (failed and absent ones are also crossed on the axis). Past 64 ranks, when
    at most 64 are not ``ok``, only those get a bar each, labelled with their rank (and
    topped, hatched, by what only their checkpoints hold); the ``ok`` ones are summed up
    in the first bar.

    Parameters
    ----------
    shards : RunInspection or sequence of ShardSummary
        From :func:`virnucpro_merge.inspection.inspect_run`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float, optional
        Size in inches of a new figure (by default, from the number of ranks).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> fig = plot_shard_counts(inspect_run("run"))
    >>> fig.axes[0].get_title()
    'Rows per shard: expected vs present'
    >>> fig.savefig("counts.png")
    """
    summaries = _summaries(shards)
    if len(summaries) <= _FEW_RANKS:
        return _two_bars(summaries, ax, figsize or (8.0, 3.2))
    known = any(s.expected for s in summaries)
    focus = ranks_in_focus([s.status != OK for s in summaries]) if known else None
    if focus is not None:
        return _focused_bars(summaries, focus, ax, figsize or (min(20.0, max(11.0, 3.0 + 0.18 * len(focus))), 4.2))
    return _fraction_present(summaries, ax, figsize or (min(20.0, 6.0 + len(summaries) / 64), 4.2))


def _two_bars(shards: list[RankView], ax: Axes | None, figsize: tuple[float, float]) -> Figure:
    """Up to 16 ranks: each rank's rows expected beside the rows its file holds (:func:`plot_shard_counts`)."""
    fig, ax = _axes(ax, figsize)
    ranks = np.arange(len(shards))
    colors = _status_colors(shards)
    saved = _draw_pairs(ax, shards, ranks, colors)
    nothing = _cross_nothing_held(ax, shards, ranks, colors)
    _rank_and_status_ticks(ax, shards, ranks)
    ax.set_ylabel("rows")
    ax.set_title("Rows per shard: expected vs present")
    _two_bars_legend(ax, shards, saved=bool(saved.any()), nothing=nothing)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


_PAIR_WIDTH = 0.4  # each of a rank's two bars, side by side


def _status_colors(shards: Sequence[RankView]) -> list[str]:
    """Each rank's status colour (grey for a status without one)."""
    return [STATUS_COLORS.get(s.status, "#999999") for s in shards]


def _draw_pairs(ax: Axes, shards: list[RankView], ranks: np.ndarray, colors: list[str]) -> np.ndarray:
    """A grey bar of the rows each rank was assigned beside one of the rows its file holds, what only its
    checkpoints hold hatched on top; returns what only its checkpoints hold."""
    width = _PAIR_WIDTH
    ax.bar(ranks - width / 2, [s.expected for s in shards], width, color=_EXPECTED_COLOR,
           edgecolor="#8C8C8C", label="expected (assigned)")
    ax.bar(ranks + width / 2, [s.present for s in shards], width, color=colors)
    saved = np.array([s.checkpointed for s in shards])  # (what only its checkpoints hold: hatched, on top)
    if saved.any():
        ax.bar(ranks + width / 2, saved, width, bottom=[s.present for s in shards], color="white", edgecolor=colors,
               hatch="////", linewidth=0.8)
    return saved


def _cross_nothing_held(ax: Axes, shards: list[RankView], ranks: np.ndarray, colors: list[str]) -> bool:
    """Cross on the axis, in its colour, the place of each shard without rows (it has no bar); whether any."""
    nothing = [i for i, s in enumerate(shards) if nothing_held(s)]
    ax.scatter(ranks[nothing] + _PAIR_WIDTH / 2, np.zeros(len(nothing)), marker="x", s=30,
               c=[colors[i] for i in nothing], zorder=3, clip_on=False)
    return bool(nothing)


def _rank_and_status_ticks(ax: Axes, shards: list[RankView], ranks: np.ndarray) -> None:
    """Each rank's number under its bars, and up to 12 ranks its status below it."""
    if len(shards) <= 12:
        ax.set_xticks(ranks, [f"{s.rank}\n{s.status}" for s in shards],
                      fontsize="small" if len(shards) <= 8 else "x-small")
        ax.set_xlabel("rank and status")
    else:
        ax.set_xticks(ranks, [str(s.rank) for s in shards], fontsize="x-small")
        ax.set_xlabel("rank")


def _two_bars_legend(ax: Axes, shards: list[RankView], *, saved: bool, nothing: bool) -> None:
    """The legend of the two bars: expected, present in each status that occurs, and what else is drawn."""
    seen = [status for status in STATUSES if any(s.status == status for s in shards)]
    handles = [Patch(facecolor=_EXPECTED_COLOR, edgecolor="#8C8C8C", label="expected")]
    handles += [Patch(facecolor=STATUS_COLORS[status], label=f"present: {status}") for status in seen]
    if saved:
        handles.append(_SALVAGED_PATCH)
    ax.legend(handles=[*handles, *_no_rows(nothing)], fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)


#: What only a rank's checkpoints hold, hatched on top of its bar.
_SALVAGED_PATCH = Patch(facecolor="white", edgecolor="#555555", hatch="////",
                        label="only in its checkpoints\n(a merge salvages them)")


def _bars(shards: list[RankView], known: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each rank's bar: what its file holds, and what only its checkpoints hold (:func:`bar_of`)."""
    pairs = np.array([bar_of(s, known) for s in shards], dtype=float).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _no_rows(any_marked: bool, *, above: bool = False) -> list[Artist]:
    """The legend entry of the cross that marks the place of a rank without rows (when there is one)."""
    said = "no rows: its place marked" + (" (x below, ▼ above)" if above else "")
    return [Line2D([], [], marker="x", linestyle="none", color="#555555", label=said)] if any_marked else []


def _status_legend(ax: Axes, shards: list[RankView], *, more: Sequence[Artist] = ()) -> None:
    """A legend entry for each status that occurs, naming the ranks of every status but ok (and ``more``)."""
    handles: list[Patch] = []
    for status in STATUSES:
        of_status = [s.rank for s in shards if s.status == status]
        if of_status:
            named = "" if status == OK else f": {rank_ranges(of_status, most=6)}"
            handles.append(Patch(facecolor=STATUS_COLORS[status], label=f"{status} ({len(of_status):,}){named}"))
    ax.legend(handles=[*handles, *more], fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _fraction_present(shards: list[RankView], ax: Axes | None, figsize: tuple[float, float]) -> Figure:
    fig, ax = _axes(ax, figsize)
    ranks = np.arange(len(shards))
    known = any(s.expected for s in shards)
    heights, saved = _bars(shards, known)
    colors = _status_colors(shards)
    ax.bar(ranks, heights, width=1.0, color=colors, linewidth=0)
    if saved.any():  # (hatching does not show on a bar a pixel wide: a pale bar instead)
        ax.bar(ranks, saved, width=1.0, bottom=heights, color=colors, alpha=_PALE, linewidth=0)
    if known:
        ax.axhline(1.0, color="#8C8C8C", linewidth=0.8, linestyle="--", zorder=0)
        ax.set_ylim(0, max(1.05, min(float((heights + saved).max(initial=0)) * 1.05, 2.0)))
    lost = [i for i, s in enumerate(shards) if s.status in (FAILED, ABSENT, EMPTY) or nothing_held(s)]
    top = ax.get_ylim()[1]
    for y, marker in ((0.0, "x"), (top, "v")):  # a lost rank's bar is a gap: mark it below and above
        ax.scatter(ranks[lost], np.full(len(lost), y), marker=marker, s=22, c=[colors[i] for i in lost],
                   zorder=3, clip_on=False, linewidths=1)
    ax.set_xlim(-0.5, len(shards) - 0.5)
    width_px, _ = _axes_pixels(fig, ax)
    _thin_ranks(fig, ax, len(shards), width_px)
    ax.set_xlabel("rank")
    ax.set_ylabel("share of its assignment present" if known else "rows")
    ax.set_title(counts_title(len(shards), None), pad=14)
    pale = [Patch(facecolor="#555555", alpha=_PALE, label="only in its checkpoints\n(pale; a merge salvages them)")]
    _status_legend(ax, shards, more=[*(pale if saved.any() else []), *_no_rows(bool(lost), above=True)])
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _focused_bars(shards: list[RankView], focus: list[int], ax: Axes | None, figsize: tuple[float, float]
                  ) -> Figure:
    """The ranks in ``focus`` one bar each, labelled with their numbers; the others (all ok) one bar."""
    fig, ax = _axes(ax, figsize)
    chosen = [shards[i] for i in focus]
    others = [s for i, s in enumerate(shards) if i not in set(focus)]
    x = np.arange(len(chosen)) + 2.0  # (0: the others' bar; 1: a gap)
    heights, saved = _bars(chosen, True)
    colors = _status_colors(chosen)
    ax.bar(0, float(_bars(others, True)[0].min(initial=1.0)), width=0.8, color=STATUS_COLORS[OK])
    ax.bar(x, heights, width=0.8, color=colors)
    if saved.any():
        ax.bar(x, saved, 0.8, bottom=heights, color="white", edgecolor=colors, hatch="////", linewidth=0.8)
    lost = np.array([nothing_held(s) for s in chosen], dtype=bool)
    ax.scatter(x[lost], np.zeros(int(lost.sum())), marker="x", s=30, zorder=3, clip_on=False,
               c=[c for c, z in zip(colors, lost, strict=True) if z])
    ax.axhline(1.0, color="#8C8C8C", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_ylim(0, max(1.05, min(float((heights + saved).max(initial=0)) * 1.05, 2.0)))
    ax.set_xlim(-0.7, len(chosen) + 2.5)
    labels = [str(s.rank) for s in chosen]
    width_px, _ = _axes_pixels(fig, ax)
    crowded = max(map(len, labels)) * 0.62 * _font_px(fig, "small") * 1.3 > width_px / (len(chosen) + 3)
    ax.set_xticks([0.0, *x], [f"{len(others):,}\nrank{'' if len(others) == 1 else 's'} ok", *labels],
                  fontsize="small")
    for label in ax.get_xticklabels() if crowded else []:
        label.set_rotation(90)
    ax.set_xlabel("rank: those with a problem, one bar each (the ok ones summed up in the first bar)")
    ax.set_ylabel("share of its assignment present")
    ax.set_title(counts_title(len(shards), focus), pad=14)
    _status_legend(ax, shards, more=[*([_SALVAGED_PATCH] if saved.any() else []), *_no_rows(bool(lost.any()))])
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _binned(missing: np.ndarray, lengths: np.ndarray, row_bin: int, col_bin: int) -> np.ndarray:
    """Fraction missing of each block of ``row_bin`` rows x ``col_bin`` positions (2: all padding);
    row ``i`` is assigned its first ``lengths[i]`` positions."""
    rows, width = missing.shape
    col_starts, row_starts = np.arange(0, width, col_bin), np.arange(0, rows, row_bin)
    missed = np.add.reduceat(missing, col_starts, axis=1, dtype=np.int64)
    missed = np.add.reduceat(missed, row_starts, axis=0)
    col_ends = np.minimum(col_starts + col_bin, width)
    assigned = np.clip(lengths[:, None] - col_starts[None, :], 0, (col_ends - col_starts)[None, :])
    assigned = np.add.reduceat(assigned, row_starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(assigned > 0, missed / np.maximum(assigned, 1), float(_PADDING))


def _mark_sparse(ax: Axes, cells: np.ndarray, row_bin: int, col_bin: int) -> bool:
    """Ring the blocks of which under a quarter is missing, when there are few (single holes);
    whether any was ringed."""
    rows, columns = np.nonzero((cells > 0) & (cells <= 0.25))
    if not 0 < rows.size <= _SPARSE_MARKS:
        return False
    ax.scatter((columns + 0.5) * col_bin - 0.5, (rows + 0.5) * row_bin - 0.5, s=40, marker="o",
               facecolors="none", edgecolors=_HEATMAP_COLORS[5], linewidths=1.2, zorder=3)
    return True


def plot_missing_heatmap(
    inspection: InspectionView, *, ax: Axes | None = None, figsize: tuple[float, float] | None = None
) -> Figure:
    """Heatmap of missing sequences: one row per rank, one column per assigned position.

    Cell ``(r, j)`` is index position ``r + j * N``. A row that is missing all the
    way is a worker whose shard is lost; a row missing from some column on is a
    worker that died part-way through its assignment. Where there are more
    positions (or ranks) than pixels, each cell stands for a block of them and shows
    the share missing, in shades: a block with a single missing sequence is never
    drawn as present (and, when such blocks are few, it is ringed). Past 64 ranks, when
    at most 64 of them miss any sequence, only those get a row, each named; when none
    misses any, one line says so.

    Parameters
    ----------
    inspection : RunInspection
        From :func:`virnucpro_merge.inspection.inspect_run`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float, optional
        Size in inches of a new figure (by default, from the number of ranks).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> fig = plot_missing_heatmap(inspect_run("run"))
    >>> fig.savefig("missing.png")
    """
    ranks, width = inspection.missing.shape
    focus = ranks_in_focus(np.asarray(inspection.missing.any(axis=1)))
    rows = np.arange(ranks) if focus is None else np.array(focus)
    fig, ax = _axes(ax, figsize or (11.0, _heatmap_height(inspection, len(rows), named=focus is not None)))
    if width == 0:  # no expected IDs (or none assigned): nothing to place
        _say(ax, "No expected IDs: completeness was not checked, so no sequence can be placed or missed.",
             "Missing sequences: not checked", wrap=True)
        return fig
    if _nothing_missing_of_many(inspection):  # (many rows of nothing: one line says it)
        _say(ax, f"Nothing is missing: each of the {ranks:,} ranks holds its whole assignment.",
             f"Missing sequences: 0 of {len(inspection.sequence_ids):,}")
        return fig
    room = _axes_pixels(fig, ax)
    cells, row_bin, col_bin = _cells(inspection.missing[rows], inspection.assigned[rows], room)
    ax.imshow(cells, cmap=ListedColormap(_HEATMAP_COLORS), norm=BoundaryNorm(_HEATMAP_BOUNDS, len(_HEATMAP_COLORS)),
              aspect="auto", interpolation="nearest", extent=(-0.5, width - 0.5, len(rows) - 0.5, -0.5))
    _heatmap_ticks(fig, ax, rows, width, room, named=focus is not None)
    binned = col_bin > 1 or row_bin > 1
    ringed = binned and _mark_sparse(ax, cells, row_bin, col_bin)
    ax.set_xlabel(f"position j in the rank's assignment (index position = rank + j × {ranks:,})"
                  f"{_cell_size(row_bin, col_bin)}")
    ax.set_title(missing_title(inspection.num_missing, len(inspection.sequence_ids), ranks, focus))
    _heatmap_legend(ax, binned=binned, ringed=ringed)
    return fig


def _nothing_missing_of_many(inspection: InspectionView) -> bool:
    """Whether the run has more than ``FEW_RANKS`` ranks and none misses any sequence (then one line says so)."""
    return inspection.missing.shape[0] > FEW_RANKS and not inspection.missing.any()


def _heatmap_height(inspection: InspectionView, rows: int, *, named: bool) -> float:
    """The height in inches of a new heatmap of ``rows`` rows (taller when each row is named)."""
    if _nothing_missing_of_many(inspection):
        return 2.0
    per_row = 0.19 if named else 0.12  # (a rank in focus is named on its row)
    return min(MAX_FIGSIZE[1], max(2.8, 1.8 + per_row * rows))


def _cells(missing: np.ndarray, assigned: np.ndarray, room: tuple[float, float]) -> tuple[np.ndarray, int, int]:
    """The cells to draw (:func:`_binned` when a cell is a block), with the ranks and the positions a cell
    stands for: as many as leave each cell a pixel of ``room``."""
    width_px, height_px = room
    col_bin = max(1, math.ceil(missing.shape[1] / max(width_px, 50)))
    row_bin = max(1, math.ceil(len(missing) / max(height_px, 20)))
    if col_bin == 1 and row_bin == 1:
        return np.where(assigned, missing.astype(np.int8), _PADDING), row_bin, col_bin
    return _binned(missing, assigned.sum(axis=1), row_bin, col_bin), row_bin, col_bin


def _heatmap_ticks(fig: Figure, ax: Axes, rows: np.ndarray, width: int, room: tuple[float, float], *,
                   named: bool) -> None:
    """Ranks down and positions across, the ticks thinned so that their labels never meet (``named``: every row)."""
    width_px, height_px = room
    ax.tick_params(labelsize="small")
    font_px = _font_px(fig, "small")
    _thin(ax.yaxis, len(rows), height_px, font_px * (0.6 if named else 0.9),  # (in focus: every row named)
          formatter=FuncFormatter(lambda v, _: f"rank {rows[int(v)]}" if 0 <= v < len(rows) else ""))
    _thin(ax.xaxis, width, width_px, font_px * 3.8, formatter=FuncFormatter(_compact))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-0.5, width - 0.5)


def _cell_size(row_bin: int, col_bin: int) -> str:
    """What a cell stands for, on a line of its own, when it is a block (nothing when it is one position)."""
    if col_bin == row_bin == 1:
        return ""
    sizes = [f"{col_bin:,} positions"] * (col_bin > 1) + [f"{row_bin} ranks"] * (row_bin > 1)
    return "\neach cell: " + " of ".join(sizes)


def _heatmap_legend(ax: Axes, *, binned: bool, ringed: bool) -> None:
    """Present and missing, the shades of a block part missing when binned, and the ring when drawn."""
    handles: list[Artist] = [Patch(facecolor=_HEATMAP_COLORS[0], edgecolor="#8C8C8C", label="present"),
                             Patch(facecolor=_HEATMAP_COLORS[5], label="missing")]
    if binned:
        handles[1:1] = [Patch(facecolor=_HEATMAP_COLORS[1], label="some of a cell missing"),
                        Patch(facecolor=_HEATMAP_COLORS[3], label="most of a cell missing")]
    if ringed:
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                              markeredgecolor=_HEATMAP_COLORS[5], label="ringed: a few missing\nin the cell"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


_NAMED = 40  # at most this many flagged ranks are named above the plot (all are in the legend)


def plot_health(
    inspection: InspectionView, *, ax: Axes | None = None, figsize: tuple[float, float] | None = None
) -> Figure:
    """Each rank's row norms: the 5-95 % range as a thin line, the 25-75 % as a thick one, the
    median as a dot; the ranks whose embeddings stand out in orange, named in the legend with
    why (:attr:`RunInspection.health_flags`), the median of the ranks' medians dashed.

    Readable from 2 to 1,024 ranks: past 64 a rank is a line a few pixels wide, the rank
    labels thin out and the flagged ones stay named in the legend. A log scale when the
    ranks' medians differ by more than ten times.

    Parameters
    ----------
    inspection : RunInspection
        From ``inspect_run(..., health=True)`` or ``RunInspection.from_merged``.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float, optional
        Size in inches of a new figure (by default, from the number of ranks).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_unhealthy_run
    >>> run = make_unhealthy_run("sick", n_sequences=400, world_size=8, dim=8)
    >>> fig = plot_health(inspect_run("sick", health=True))
    >>> fig.axes[0].get_title()
    'Row norms per rank: 4 of 8 ranks stand out'
    """
    shards = list(inspection.shards)
    fig, ax = _axes(ax, figsize or _health_size(len(shards)))
    known = [(s.rank, s.health) for s in shards if s.health is not None and s.health.norm_quantiles]
    if not known:
        _say(ax, "Not checked: the embeddings were not read (inspect_run(..., health=True), or a merged "
             "file's report).", "Row norms per rank: not checked", wrap=True)
        return fig
    flags = inspection.health_flags
    flagged = sorted({flag.rank for flag in flags})
    q = np.array([h.norm_quantiles for _, h in known])
    _draw_norms(ax, np.array([rank for rank, _ in known]), q, flagged, many=len(shards) > 64)
    _median_and_scale(ax, q[:, 2])
    ax.set_xlim(-0.7, len(shards) - 0.3)
    width_px, _ = _axes_pixels(fig, ax)
    _thin_ranks(fig, ax, len(shards), width_px)
    if len(shards) > 16 and flagged:  # each flagged rank marked above the plot and named (labels kept apart)
        _name_flagged(fig, ax, flagged, len(shards), width_px)
    ax.set_xlabel("rank")
    ax.set_ylabel("row norm")
    ax.set_title(health_title(len(flagged), len(shards)), pad=24 if len(shards) > 16 else 6)
    _health_legend(ax, flags)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _health_size(ranks: int) -> tuple[float, float]:
    """The size in inches of a new picture of the row norms of ``ranks`` ranks."""
    if ranks <= 16:
        return (7.0, 3.0)
    return (min(20.0, max(8.0, 6.0 + ranks / 64)), 3.6)


def _draw_norms(ax: Axes, ranks: np.ndarray, q: np.ndarray, flagged: list[int], *, many: bool) -> None:
    """Each rank's norm quantiles ``q``: 5-95 % a thin line, 25-75 % a thick one, the median a dot; the
    ``flagged`` ranks orange and on top (narrower past 64 ranks)."""
    out = np.isin(ranks, flagged)
    colors = np.where(out, FLAGGED_COLOR, HEALTHY_COLOR)
    thin = [((r, lo), (r, hi)) for r, lo, hi in zip(ranks, q[:, 0], q[:, -1], strict=True)]
    thick = [((r, lo), (r, hi)) for r, lo, hi in zip(ranks, q[:, 1], q[:, 3], strict=True)]
    wide = 2.0 if many else 4.0
    for chosen, width, z in ((~out, wide, 2), (out, max(wide, 3.0), 4)):  # (the flagged ones on top, never hidden)
        ax.add_collection(LineCollection([t for t, c in zip(thin, chosen, strict=True) if c], colors=colors[chosen],
                                         linewidths=width / 3, zorder=z))
        ax.add_collection(LineCollection([t for t, c in zip(thick, chosen, strict=True) if c], colors=colors[chosen],
                                         linewidths=width, zorder=z))
        ax.scatter(ranks[chosen], q[chosen, 2], s=4 if many else 12, c=colors[chosen], zorder=z + 1)


def _median_and_scale(ax: Axes, medians: np.ndarray) -> None:
    """The median of the ranks' ``medians`` dashed; a log scale when they differ by more than ten times."""
    ax.axhline(float(np.median(medians)), color="#8C8C8C", linewidth=0.8, linestyle="--", zorder=0)
    if norms_on_a_log_scale(medians):
        ax.set_yscale("log")


def _thin_ranks(fig: Figure, ax: Axes, ranks: int, width_px: float) -> None:
    """Rank numbers along the x axis, as many as fit ``width_px`` without meeting."""
    _thin(ax.xaxis, ranks, width_px, (len(str(ranks - 1)) * 0.62 + 0.8) * _font_px(fig))


def _name_flagged(fig: Figure, ax: Axes, flagged: list[int], ranks: int, width_px: float) -> None:
    """Mark each flagged rank above the plot and name the first ``_NAMED``, their names spread apart."""
    ax.scatter(flagged, np.ones(len(flagged)), marker="v", s=30, c=FLAGGED_COLOR, zorder=5, clip_on=False,
               transform=ax.get_xaxis_transform())
    gap = (len(str(ranks)) * 0.62 + 1.0) * _font_px(fig, "small") * ranks / max(width_px, 1)
    named = flagged[:_NAMED]
    for rank, x in zip(named, _spread([float(r) for r in named], gap, 0, ranks - 1), strict=True):
        ax.annotate(str(rank), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 9),
                    textcoords="offset points", ha="center", va="bottom", fontsize="small", color=FLAGGED_COLOR)


#: What each kind of health flag means, in the legend.
_FLAG_WORDS = {"scale": "another scale", "saturated": "at the float16 limit", "zero": "all-zero rows",
               "identical": "identical rows", "dtype": "another dtype"}


def _health_legend(ax: Axes, flags: Sequence[HealthFlag]) -> None:
    """The quantiles drawn, each kind of flag with the ranks it names, and the dashed median."""
    kinds: dict[str, list[int]] = {}
    for flag in flags:
        kinds.setdefault(flag.kind, []).append(flag.rank)
    handles: list[Artist] = [Line2D([], [], color=HEALTHY_COLOR, marker="o", linewidth=2, label="5-25-50-75-95 %")]
    handles += [Line2D([], [], color=FLAGGED_COLOR, linewidth=2, label=f"{_FLAG_WORDS.get(kind, kind)}: "
                       f"{rank_ranges(sorted(set(found)), most=6)}") for kind, found in kinds.items()]
    handles.append(Line2D([], [], color="#8C8C8C", linestyle="--", label="median of the ranks' medians"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_memory_profile(
    profiles: Mapping[str, MemoryProfile], *, ax: Axes | None = None, figsize: tuple[float, float] = (7.0, 3.2)
) -> Figure:
    """Resident memory above the baseline over time, one line per profiled call.

    Parameters
    ----------
    profiles : mapping of str to MemoryProfile
        Label -> profile, from :func:`~virnucpro_merge.inspection.profile_memory`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from virnucpro_merge.inspection import profile_memory
    >>> profile = profile_memory(lambda: np.ones(2**24).sum())  # 128 MiB of ones, summed
    >>> fig = plot_memory_profile({"sum of ones": profile})
    >>> [text.get_text().split(" (peak")[0] for text in fig.axes[0].get_legend().get_texts()]
    ['sum of ones']
    """
    fig, ax = _axes(ax, figsize)
    for label, prof in profiles.items():
        ax.plot(prof.times, (prof.rss - prof.baseline) / MIB, drawstyle="steps-post",
                label=f"{label} (peak +{prof.peak_increase / MIB:.0f} MiB)")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("RSS above baseline (MiB)")
    ax.set_title("Memory while merging")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_peak_scaling(
    sizes: Sequence[float],
    peaks: Mapping[str, Sequence[int]],
    *,
    xlabel: str = "embeddings in the run (MiB)",
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.5, 3.2),
) -> Figure:
    """Peak memory increase against run size, one line per method.

    Parameters
    ----------
    sizes : sequence of float
        The run sizes (x values), in the unit ``xlabel`` names.
    peaks : mapping of str to sequence of int
        Label -> peak RSS increase in bytes at each size.
    xlabel : str
        Label of the x axis.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import MIB
    >>> fig = plot_peak_scaling([100, 200, 400], {"merge": [30 * MIB, 31 * MIB, 31 * MIB],
    ...                                           "load everything": [110 * MIB, 210 * MIB, 410 * MIB]})
    >>> fig.axes[0].get_xlabel()
    'embeddings in the run (MiB)'
    """
    fig, ax = _axes(ax, figsize)
    for label, values in peaks.items():
        ax.plot(sizes, np.asarray(values) / MIB, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("peak RSS above baseline (MiB)")
    ax.set_title("Peak memory vs run size")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


_TIMELINE_LABELS = 10  # ranks named beside their line, at most (the legend names the rest)
_PREEMPTED = "emergency_sigterm"


def _hours(timeline: RankTimeline, start: np.datetime64) -> np.ndarray:
    return (timeline.times - start) / np.timedelta64(1, "h")


def _spread(wanted: list[float], gap: float, low: float, high: float) -> list[float]:
    """Label heights as near ``wanted`` (sorted) as they can be, each ``gap`` from the next,
    inside ``low`` .. ``high``."""
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, placed[-1] + gap) if placed else max(y, low))
    overshoot = (placed[-1] - high) if placed else 0.0
    if overshoot > 0:  # pushed past the top: slide them all down, keeping the gaps
        placed = [y - overshoot for y in placed]
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    return placed


def plot_timeline(
    timeline: Timeline,
    stopped: Sequence[int] = (),
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Sequences each rank checkpointed over time: the run's pace, its stragglers, and when
    the ranks that did not finish stopped.

    Every rank is a line (its sequences done after each checkpoint against the hours since
    the run's first checkpoint): thin and grey for the ranks that kept pace, coloured for
    the stragglers (below half the median rate) and for the ranks in ``stopped``, whose line
    ends in a cross (a SIGTERM checkpoint last: a square, preempted). At most 10 ranks are
    named beside their line's end, the slowest and the stopped first; the legend names the
    others. A dashed line is the median pace. It reads alike for 8 ranks and for 1,024.

    Parameters
    ----------
    timeline : virnucpro_merge.timeline.Timeline
        From :func:`virnucpro_merge.timeline.read_timeline` (or ``RunInspection.timeline``).
    stopped : sequence of int
        The ranks that did not finish (``RunInspection.stops``).
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float, optional
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> from virnucpro_merge.timeline import read_timeline
    >>> run = make_demo_run("run", n_sequences=800, world_size=8, dim=4, truncated=(), absent=(5,), empty=(),
    ...                     short={}, checkpoint_every=20, stragglers=(2,))
    >>> fig = plot_timeline(read_timeline(run.checkpoints, 8), stopped=[5])
    >>> sorted(t.get_text() for t in fig.axes[0].texts)
    ['rank 2', 'rank 5']
    """
    fig, ax = _axes(ax, figsize or (9.0, 4.6))
    start = timeline.start
    drawn = [r for r in timeline.ranks if r.times.size]
    if start is None or not drawn:
        _say(ax, "no checkpoint to draw")
        return fig
    slow, gone = set(timeline.stragglers), set(stopped)
    many = len(drawn) > 64
    _draw_kept_pace(ax, _kept_pace(drawn, slow, gone), start, many=many)
    loud = _standing_out(drawn, slow, gone)
    _draw_standing_out(ax, loud, start, gone, many=many)
    median = timeline.median_rate
    span = max(float(_hours(r, start)[-1]) for r in drawn) or 1.0
    if median is not None:
        _median_pace(ax, drawn, start, median, span)
    _timeline_frame(ax, timeline, drawn, start, span)
    _timeline_legend(ax, timeline, drawn, slow, gone, median)
    ax.spines[["top", "right"]].set_visible(False)
    _label_ends(fig, ax, _named_at_ends(loud, gone), start)  # (last: the layout is then settled)
    return fig


def _kept_pace(drawn: list[RankTimeline], slow: set[int], gone: set[int]) -> list[RankTimeline]:
    """The ranks neither ``slow`` nor ``gone``."""
    return [r for r in drawn if r.rank not in slow and r.rank not in gone]


def _standing_out(drawn: list[RankTimeline], slow: set[int], gone: set[int]) -> list[RankTimeline]:
    """The ranks ``slow`` or ``gone``: the stragglers, slowest first, then the stopped, slowest first."""
    return sorted((r for r in drawn if r.rank in slow or r.rank in gone),
                  key=lambda r: (r.rank in gone, r.rate if r.rate is not None else 0.0))


def _draw_kept_pace(ax: Axes, quiet: list[RankTimeline], start: np.datetime64, *, many: bool) -> None:
    """The ranks that kept pace, thin grey lines (fainter past 64 ranks)."""
    ax.add_collection(LineCollection([np.column_stack([_hours(r, start), r.done]) for r in quiet],
                                     colors="#8C8C8C", linewidths=0.6 if many else 1.0,
                                     alpha=0.25 if many else 0.7, zorder=1))


def _draw_standing_out(ax: Axes, loud: list[RankTimeline], start: np.datetime64, gone: set[int], *,
                       many: bool) -> None:
    """The stragglers' lines and the stopped ones', each of these ending in a cross (a square: preempted)."""
    for r in loud:
        color = STATUS_COLORS[FAILED] if r.rank in gone else STATUS_COLORS[INCOMPLETE]
        x = _hours(r, start)
        ax.plot(x, r.done, color=color, linewidth=1.4, zorder=2, marker=None if many else ".", markersize=4)
        if r.rank in gone:
            ax.scatter(x[-1:], r.done[-1:], marker="s" if r.last_trigger == _PREEMPTED else "x", s=36,
                       color=color, zorder=3, linewidths=1.6)


def _median_pace(ax: Axes, drawn: list[RankTimeline], start: np.datetime64, median: float, span: float) -> None:
    """The median pace dashed, through the middle of the ranks' first checkpoints to the end of ``span``."""
    x0 = float(np.median([_hours(r, start)[0] for r in drawn]))
    y0 = float(np.median([r.done[0] for r in drawn]))
    ax.plot([x0, span], [y0, y0 + median * (span - x0)], color="black", linestyle="--", linewidth=1, zorder=0)


def _minute(moment: np.datetime64) -> str:
    """A moment to the minute, as ``2026-01-05 12:00``."""
    return str(moment)[:16].replace("T", " ")


def _timeline_frame(ax: Axes, timeline: Timeline, drawn: list[RankTimeline], start: np.datetime64, span: float
                    ) -> None:
    """The limits (room at the right for the names at the lines' ends), the axes' labels and the title."""
    top = max(int(r.done[-1]) for r in drawn)
    ax.set_xlim(0, span * 1.22)
    ax.set_ylim(0, top * 1.08)
    ax.set_xlabel(f"hours since {_minute(start)} UTC")
    ax.set_ylabel("sequences checkpointed")
    ax.yaxis.set_major_formatter(FuncFormatter(_compact))
    ax.set_title(f"Sequences checkpointed over time, {len(timeline.ranks):,} ranks", pad=10, loc="left")


def _named_at_ends(loud: list[RankTimeline], gone: set[int]) -> list[RankTimeline]:
    """The ranks named at their line's end: the slowest stragglers (at most half), then the stopped."""
    named = [r for r in loud if r.rank not in gone][: _TIMELINE_LABELS // 2]
    named += [r for r in loud if r.rank in gone][: _TIMELINE_LABELS - len(named)]
    return named


def _label_ends(fig: Figure, ax: Axes, ranks: list[RankTimeline], start: np.datetime64) -> None:
    """Name each rank at its line's end, the names spread apart so that none overlaps another."""
    if not ranks:
        return
    fig.draw_without_rendering()  # (the layout settled: the axes' height in pixels is final)
    height_px = ax.get_window_extent().height
    low, high = ax.get_ylim()
    gap = (_font_px(fig, "small") * 1.3) / max(height_px, 1.0) * (high - low)
    ends = sorted(ranks, key=lambda r: int(r.done[-1]))
    heights = _spread([float(r.done[-1]) for r in ends], gap, low + gap / 2, high - gap / 2)
    for r, y in zip(ends, heights, strict=True):
        x = float(_hours(r, start)[-1])
        label = ax.annotate(f"rank {r.rank}", xy=(x, float(r.done[-1])), xytext=(x + ax.get_xlim()[1] * 0.015, y),
                            fontsize="small", va="center", ha="left", annotation_clip=False,
                            arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.7, "shrinkA": 0,
                                        "shrinkB": 2})
        label.set_in_layout(False)  # (placed for this layout: it must not move the axes)


def _ranks_named(ranks: list[int]) -> str:
    return f"{'rank' if len(ranks) == 1 else 'ranks'} {rank_ranges(ranks, most=6)}"


def _timeline_legend(ax: Axes, timeline: Timeline, drawn: list[RankTimeline], slow: set[int], gone: set[int],
                     median: float | None) -> None:
    quiet = len(_kept_pace(drawn, slow, gone))
    handles = [Line2D([], [], color="#8C8C8C", label=f"kept pace ({quiet:,})")]
    if slow - gone:
        handles.append(Line2D([], [], color=STATUS_COLORS[INCOMPLETE], linewidth=1.4,
                              label=f"straggler (under {STRAGGLER_RATIO:.0%} of the median rate): "
                                    f"{_ranks_named(sorted(slow - gone))}"))
    if gone:
        handles.append(Line2D([], [], color=STATUS_COLORS[FAILED], marker="x", linewidth=1.4,
                              label=f"did not finish (x: died, square: preempted): {_ranks_named(sorted(gone))}"))
    if median is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1,
                              label=f"median pace: {median:,.0f} sequences an hour"))
    empty = [r.rank for r in timeline.ranks if not r.times.size]
    if empty:
        handles.append(Line2D([], [], linestyle="none", label=f"no checkpoint: {_ranks_named(empty)}"))
    for handle in handles:  # (narrow: the plot keeps its width)
        handle.set_label(textwrap.fill(str(handle.get_label()), 34))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_progress(
    progress: ProgressView,
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A run in progress: each rank's share of its assignment done, coloured by its state.

    One bar a rank (at 1,024 ranks, a band of thin bars: the ticks are thinned so that their
    labels never meet); the legend counts the ranks in each state; a dashed line is the run's
    share done, and the title says what is done and when the run should end.

    Parameters
    ----------
    progress : RunProgress
        From :func:`~virnucpro_merge.inspection.read_progress`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : tuple of float, optional
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from virnucpro_merge.inspection.progress import read_progress
    >>> from virnucpro_merge.synthetic import make_live_run
    >>> live = make_live_run("live", n_sequences=800, world_size=8, checkpoint_every=20)
    >>> _ = live.advance_to(2700)
    >>> fig = plot_progress(read_progress("live", now=live.moment()))
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['finished (4)', 'running (1)', 'preempted (1)', 'stalled (1)', 'failed (1)', 'the run (71%)']
    """
    fig, ax = _axes(ax, figsize or (9.0, 3.8))
    ranks = progress.ranks
    _draw_shares(ax, ranks, many=len(ranks) > FEW_RANKS)
    whole = _run_share(ax, progress)
    ax.set_xlim(-0.6, len(ranks) - 0.4)
    ax.set_ylim(0, 105)
    ax.set_xlabel("rank")
    ax.set_ylabel("% of its sequences done")
    width, _ = _axes_pixels(fig, ax)
    _thin(ax.xaxis, len(ranks), width, 7.0 * len(str(max(len(ranks) - 1, 0))))
    handles: list[Artist] = [Patch(color=RUN_STATE_COLORS[state], label=f"{state} ({n:,})")
                             for state, n in progress.counts().items() if n] + whole
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    total = "?" if progress.total is None else f"{progress.total:,}"
    ax.set_title(f"{progress.done:,} of {total} sequences done; {_when_done(progress)}", fontsize="medium")
    return fig


def _percent_done(rank: RankProgressView) -> float:
    """A rank's share of its assignment done, in percent (0 when not known)."""
    return 100 * (rank.fraction or 0.0)


def _draw_shares(ax: Axes, ranks: Sequence[RankProgressView], *, many: bool) -> None:
    """Each rank's share done, a bar in its state's colour; when ``many``, a mark on each that will not finish
    by itself (a bar a pixel wide is not seen)."""
    shares = np.array([_percent_done(r) for r in ranks])
    colors = [RUN_STATE_COLORS.get(r.state, "#999999") for r in ranks]
    ax.bar(np.arange(len(ranks)), shares, width=1.0 if many else 0.8, color=colors, linewidth=0)
    stopped = [r for r in ranks if r.state in STOPPED_STATES]
    if many and stopped:
        ax.scatter([r.rank for r in stopped], [_percent_done(r) + 3 for r in stopped], marker="v", s=36,
                   c=[RUN_STATE_COLORS[r.state] for r in stopped], edgecolors="#222222", linewidths=0.6, zorder=3)


def _run_share(ax: Axes, progress: ProgressView) -> list[Artist]:
    """The run's share done, dashed across the ranks (nothing when its total is not known); its line."""
    if not progress.total:
        return []
    share = 100 * progress.done / progress.total
    return list(ax.plot([-0.6, len(progress.ranks) - 0.4], [share, share], color="#333333", linestyle="--",
                        linewidth=1, label=f"the run ({share:.0f}%)"))


def _when_done(progress: ProgressView) -> str:
    """Whether the run is complete, else when it should end (its ETA, to the minute)."""
    if progress.complete:
        return "complete"
    eta = progress.eta
    return "no ETA" if eta is None else f"ETA {_minute(eta)} UTC"
