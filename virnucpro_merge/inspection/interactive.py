"""The report's pictures for pointing at: hover a rank for its number, status, counts and problem.

The same two pictures as :func:`~virnucpro_merge.inspection.plot_shard_counts` and
:func:`~virnucpro_merge.inspection.plot_missing_heatmap`, drawn with Bokeh for the HTML
report (``virnucpro-merge report``), which embeds Bokeh's JavaScript once so that the page
stays one offline file. They pick the same ranks as the static ones
(:func:`~virnucpro_merge.inspection.views.ranks_in_focus`): past 64 ranks, those with a
problem one by one and the others summed up. Every value shown on hover is data, and Bokeh
shows it as text (never as HTML).

Bokeh comes with the ``notebooks`` extra; nothing else in the package imports this module.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape as html_escape
from typing import Any

import numpy as np

from ..health import RankHealth
from ..ranks import rank_ranges
from ..statuses import OK, STATUS_COLORS, STATUSES
from .tables import rank_problem
from .views import (
    FEW_RANKS,
    FLAGGED_COLOR,
    HEALTHY_COLOR,
    InspectionView,
    RankView,
    bar_of,
    counts_title,
    health_title,
    missing_title,
    norms_on_a_log_scale,
    nothing_held,
    ranks_in_focus,
)

__all__ = ["interactive_counts", "interactive_missing", "interactive_health", "PAGE_FIGURE_MIME", "PageFigure",
           "for_page", "bokeh_available", "embed_page_figures"]

logger = logging.getLogger("virnucpro_merge")

#: The MIME type of a figure meant for the report's page (Bokeh's JSON of it): the report
#: turns it into HTML, and a notebook shows its plain text.
PAGE_FIGURE_MIME = "application/vnd.virnucpro-merge.bokeh+json"

_PRESENT = "#DDDDDD"
_MISSING = "#D55E00"
_MAX_STRETCHES = 10_000  # more missing stretches than this: each is made of blocks of positions
_FONT = "12px"


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def _rank_row(found: InspectionView, shard: RankView, known: bool) -> dict[str, Any]:
    held, saved = bar_of(shard, known)
    return {"label": str(shard.rank), "status": shard.status, "color": STATUS_COLORS.get(shard.status, "#999999"),
            "expected": shard.expected, "present": shard.present, "missing": shard.missing,
            "checkpointed": shard.checkpointed, "problem": rank_problem(found, shard) or "none",
            "held": held, "saved": held + saved, "lost": nothing_held(shard)}


def _summed_up(shards: Sequence[RankView]) -> dict[str, Any]:
    return {"label": f"{len(shards):,} rank{'' if len(shards) == 1 else 's'} ok", "status": OK,
            "color": STATUS_COLORS[OK], "expected": sum(s.expected for s in shards),
            "present": sum(s.present for s in shards), "missing": 0, "checkpointed": 0, "problem": "none",
            "held": 1.0, "saved": 1.0, "lost": False}


def _tooltip(lines: Sequence[str]) -> str:
    """A tooltip of our own words and fields, at most 26em wide, its lines wrapped (Bokeh shows each
    field's value as text: escaped, never as HTML)."""
    body = "".join(f"<div>{line}</div>" for line in lines)
    return f'<div style="max-width: 26em; white-space: normal; overflow-wrap: anywhere; font-size: 12px">{body}</div>'


_RANK_TIP = ["<b>rank @label</b>: @status", "rows: @present{0,0} of @expected{0,0} assigned; missing: @missing{0,0}",
             "only in its checkpoints: @checkpointed{0,0}", "problem: @problem"]
_RANK_TIP_UNCHECKED = ["<b>rank @label</b>: @status", "rows: @present{0,0} (no expected IDs: none known missing)",
                       "only in its checkpoints: @checkpointed{0,0}", "problem: @problem"]


def _legend_outside(fig: Any) -> None:
    """The figure's legend to the right of its plot, out of the bars' way."""
    from bokeh.models.annotations import Legend

    legend = fig.select_one(Legend)
    if legend is not None:
        fig.right = [r for r in fig.center if r is legend] + list(fig.right)
        fig.center = [r for r in fig.center if r is not legend]
        legend.label_text_font_size = _FONT
        legend.click_policy = "none"


def _picked(columns: Mapping[str, Sequence[Any]], picked: Sequence[int]) -> Any:
    """A data source of the ``picked`` rows of ``columns`` (the share of a figure's rows one renderer draws)."""
    from bokeh.models.sources import ColumnDataSource

    return ColumnDataSource({key: [values[i] for i in picked] for key, values in columns.items()})


def _hover(fig: Any, renderers: list[Any], lines: Sequence[str]) -> None:
    """A hover tool on ``renderers`` that shows ``lines`` (:func:`_tooltip`)."""
    from bokeh.models.tools import HoverTool

    fig.add_tools(HoverTool(renderers=renderers, tooltips=_tooltip(lines)))


def _hover_columns(fig: Any, source: Any, lines: Sequence[str], **extent: str) -> None:
    """Each rank's whole column (``extent``: its ``top`` and ``bottom`` fields) answers a hover with
    ``lines``, also where its bar is nothing: an invisible bar over it."""
    columns = fig.vbar(x="x", **extent, width=1.0, source=source, fill_alpha=0, line_alpha=0)
    _hover(fig, [columns], lines)


def _count_rows(found: InspectionView, shards: Sequence[RankView], known: bool, focus: list[int] | None
                ) -> list[dict[str, Any]]:
    """The bars of the rows-per-rank picture: one per rank, or (some ranks in ``focus``) the ``ok`` ones
    summed up first, then one per rank in focus."""
    if focus is None:
        return [_rank_row(found, s, known) for s in shards]
    return [_summed_up([s for s in shards if s.status == OK])] + [_rank_row(found, shards[i], known) for i in focus]


def _counts_top(rows: Sequence[dict[str, Any]], known: bool) -> float:
    """The top of the rows-per-rank picture, a little above its tallest bar (shares of assignments: 1.05 to 2)."""
    tallest = max((row["saved"] for row in rows), default=0.0)
    return max(1.05, min(tallest * 1.05, 2.0)) if known else max(tallest * 1.05, 1.0)


def _status_bars(fig: Any, rows: Sequence[dict[str, Any]], source: Any, shards: Sequence[RankView], width: float
                 ) -> None:
    """What each rank's file holds as a bar, one renderer a status: one legend entry each, in the statuses' order."""
    for status in STATUSES:
        picked = [i for i, row in enumerate(rows) if row["status"] == status]
        if picked:
            fig.vbar(x="x", top="held", width=width, color="color", source=_picked(source.data, picked),
                     legend_label=f"{status} ({sum(s.status == status for s in shards):,})")


def _checkpointed_bars(fig: Any, rows: Sequence[dict[str, Any]], source: Any, width: float) -> None:
    """On top of each rank's bar, hatched, what only its checkpoints hold (when any rank's do)."""
    if any(row["saved"] > row["held"] for row in rows):
        fig.vbar(x="x", bottom="held", top="saved", width=width, source=source, fill_color="white",
                 line_color="color", hatch_pattern="/", hatch_color="color", hatch_alpha=0.8,
                 legend_label="only in its checkpoints (a merge salvages them)")


def _mark_lost(fig: Any, rows: Sequence[dict[str, Any]], top: float, every_rank: bool) -> None:
    """The place of each rank whose file holds nothing (it has no bar): a cross on the axis and, when
    ``every_rank`` has its bar, a triangle at the top."""
    lost = [i for i, row in enumerate(rows) if row["lost"]]  # (their places: a bar's x is its row's number)
    for y, marker in ((0.0, "x"), (top, "inverted_triangle")):
        if lost and (marker == "x" or every_rank):
            fig.scatter(list(lost), [y] * len(lost), marker=marker, size=9, line_width=2,
                        color=[rows[i]["color"] for i in lost], legend_label="no rows: its place marked")


def _count_axes(fig: Any, rows: Sequence[dict[str, Any]], focus: list[int] | None, known: bool) -> None:
    """The rows-per-rank picture's axes named: ranks by number, or (some in ``focus``) each bar's label under it."""
    from bokeh.models.tickers import FixedTicker

    fig.yaxis.axis_label = "share of its assignment present" if known else "rows"
    if focus is None:
        fig.xaxis.axis_label = "rank"
        return
    fig.xaxis.ticker = FixedTicker(ticks=list(range(len(rows))))
    fig.xaxis.major_label_overrides = {i: row["label"] for i, row in enumerate(rows)}
    fig.xaxis.axis_label = "rank: those with a problem, one bar each (the ok ones summed up in the first bar)"
    if len(rows) > 24:
        fig.xaxis.major_label_orientation = math.pi / 2


def interactive_counts(found: InspectionView, *, height: int = 360) -> Any:
    """Rows per rank against its assignment, coloured by status, for hovering (a Bokeh figure).

    One bar per rank (its share of its assignment present), or, past 64 ranks with at
    most 64 not ``ok``, one bar per such rank and one for all the ``ok`` ones. Hovering a
    rank's column shows its number, status, rows, missing sequences, what only its
    checkpoints hold and its problem in words.

    Parameters
    ----------
    found : RunInspection
        From :func:`virnucpro_merge.inspection.inspect_run`.
    height : int, optional
        Height in pixels (the width follows the page's).

    Returns
    -------
    bokeh.plotting.figure
        Show it with ``bokeh.io.show`` (after ``bokeh.io.output_notebook()`` in Jupyter).

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> fig = interactive_counts(inspect_run("run"))
    >>> fig.title.text
    'Rows per rank against its assignment, 3 ranks'
    """
    from bokeh.models.annotations import Span
    from bokeh.models.ranges import Range1d
    from bokeh.models.sources import ColumnDataSource
    from bokeh.plotting import figure

    shards = list(found.shards)
    known = any(s.expected for s in shards)
    focus = ranks_in_focus([s.status != OK for s in shards]) if known else None
    rows = _count_rows(found, shards, known, focus)
    top = _counts_top(rows, known)
    source = ColumnDataSource({**_columns(rows), "x": list(range(len(rows))), "top": [top] * len(rows)})
    fig = figure(height=height, sizing_mode="stretch_width", title=counts_title(len(shards), focus),
                 tools="xpan,xwheel_zoom,reset", x_range=Range1d(start=-0.7, end=len(rows) - 0.3),
                 y_range=Range1d(start=-0.03 * top, end=top), toolbar_location="above")
    width = 0.8 if len(rows) <= 128 else 1.0
    _status_bars(fig, rows, source, shards, width)
    _checkpointed_bars(fig, rows, source, width)
    _mark_lost(fig, rows, top, every_rank=focus is None)
    _hover_columns(fig, source, _RANK_TIP if known else _RANK_TIP_UNCHECKED, top="top")
    if known:
        fig.add_layout(Span(location=1.0, dimension="width", line_color="#8C8C8C", line_dash="dashed"))
    _count_axes(fig, rows, focus, known)
    fig.xgrid.grid_line_color = None
    _legend_outside(fig)
    return fig


#: One rank's runs of positions: starts, ends, whether missing, how many missing (:func:`_runs`).
_Runs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _runs(missing: np.ndarray, block: int) -> _Runs:
    """The runs of one rank's assigned positions, missing or present alike (in blocks of
    ``block``: a block with any missing counts as missing): starts, ends, whether missing,
    and how many of each run are missing."""
    if missing.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(bool), empty
    marks = missing if block == 1 else np.add.reduceat(missing, np.arange(0, missing.size, block)) > 0
    changes = np.flatnonzero(np.diff(marks.astype(np.int8))) + 1
    starts = np.concatenate(([0], changes)) * block
    ends = np.minimum(np.concatenate((changes * block, [missing.size])), missing.size)
    cumulative = np.concatenate(([0], np.cumsum(missing, dtype=np.int64)))
    return starts, ends, marks[np.concatenate(([0], changes))].astype(bool), cumulative[ends] - cumulative[starts]


_STRETCH_TIP = ["<b>rank @label</b>: @status; @missing{0,0} of its @expected{0,0} missing",
                "positions @first{0,0} to @last{0,0}: @count{0,0} missing"]
_STRETCH_COLUMNS = ("label", "status", "expected", "missing", "y", "left", "right", "first", "last", "count", "hole")


def _nothing_to_place(found: InspectionView) -> str | None:
    """What the picture of the holes says in one line when it has nothing to show (None: it has)."""
    ranks, width = found.missing.shape
    if width == 0:
        return "No expected IDs: completeness was not checked, so no sequence can be placed or missed."
    if ranks > FEW_RANKS and not found.missing.any():
        return f"Nothing is missing: each of the {ranks:,} ranks holds its whole assignment."
    return None


def _one_line(fig: Any, said: str) -> Any:
    """``fig`` made a picture of nothing: one line that says ``said``, not a tall blank box."""
    from bokeh.models.annotations import Label
    from bokeh.models.ranges import Range1d

    fig.height, fig.axis.visible, fig.grid.visible, fig.toolbar_location = 140, False, False, None
    fig.x_range, fig.y_range = Range1d(start=-1, end=1), Range1d(start=-1, end=1)
    fig.add_layout(Label(x=0, y=0, text=said, text_align="center", text_baseline="middle", text_font_size="14px"))
    return fig


def _stretches(missing: np.ndarray, rows: Sequence[int], lengths: Sequence[int]) -> tuple[list[_Runs], int]:
    """The runs (:func:`_runs`) of each of ``rows`` over its first ``lengths`` positions, in the smallest
    blocks of positions (1, 4, 16, ...) that make at most ``_MAX_STRETCHES`` missing ones; and that block."""
    block = 1
    while True:
        runs = [_runs(missing[r, :n], block) for r, n in zip(rows, lengths, strict=True)]
        if sum(int(run[2].sum()) for run in runs) <= _MAX_STRETCHES:
            return runs, block
        block *= 4


def _stretch_columns(found: InspectionView, rows: Sequence[int], lengths: Sequence[int], runs: Sequence[_Runs]
                     ) -> dict[str, list[Any]]:
    """The data of every stretch, row after row: its rank's label, status and counts, its row, its
    extent and positions, how many of it are missing and whether it is drawn as missing."""
    shards = {s.rank: s for s in found.shards}
    # (the rank's problem in words is the counts figure's: repeated on every stretch, it would weigh the page)
    columns: dict[str, list[Any]] = {key: [] for key in _STRETCH_COLUMNS}
    for i, (r, (starts, ends, holes, counts)) in enumerate(zip(rows, runs, strict=True)):
        about = _rank_row(found, shards[r], True) if r in shards else {
            "label": str(r), "status": "", "expected": lengths[i], "missing": int(counts.sum())}
        for key in ("label", "status", "expected", "missing"):
            columns[key] += [about[key]] * starts.size
        columns["y"] += [i] * starts.size
        columns["left"] += (starts - 0.5).tolist()
        columns["right"] += (ends - 0.5).tolist()
        columns["first"] += starts.tolist()
        columns["last"] += (ends - 1).tolist()
        columns["count"] += counts.tolist()
        columns["hole"] += holes.tolist()
    return columns


def _draw_stretches(fig: Any, columns: Mapping[str, list[Any]]) -> list[Any]:
    """The stretches as bands across their rank's row, grey where present, orange where missing (a
    renderer each, when there are any): those renderers."""
    from bokeh.transform import dodge

    bottom, top = dodge("y", -0.4), dodge("y", 0.4)  # (each rank's row a band: y +- 0.4)
    drawn: list[Any] = []
    for hole, color, name in ((False, _PRESENT, "present"), (True, _MISSING, "missing")):
        picked = [j for j, flag in enumerate(columns["hole"]) if flag == hole]
        if picked:
            drawn.append(fig.quad(left="left", right="right", bottom=bottom, top=top, source=_picked(columns, picked),
                                  color=color, legend_label=name))
    return drawn


def _missing_axes(fig: Any, rows: Sequence[int], focus: list[int] | None, ranks: int, block: int) -> None:
    """The holes picture's axes named: the rank of each row (when a few, or in ``focus``), and the positions."""
    from bokeh.models.tickers import FixedTicker

    if focus is not None or len(rows) <= 64:
        fig.yaxis.ticker = FixedTicker(ticks=list(range(len(rows))))
        fig.yaxis.major_label_overrides = {i: f"rank {r}" for i, r in enumerate(rows)}
    else:
        fig.yaxis.axis_label = "rank"
    blocks = f"; each stretch: blocks of {block:,} positions" if block > 1 else ""
    fig.xaxis.axis_label = f"position j in the rank's assignment (index position = rank + j × {ranks:,}){blocks}"


def interactive_missing(found: InspectionView, *, height: int | None = None) -> Any:
    """Where the holes are, for hovering (a Bokeh figure): one row per rank, one column per position.

    Each rank's row is grey over the stretches of its assigned positions that are present,
    orange over those that are missing. Past 64 ranks, when at most 64 miss any sequence,
    only those get a row (when none misses any, one line says so). Hovering a stretch shows
    the rank, its status, its counts, the stretch's positions and how many of them are
    missing; the rank's problem in words is in :func:`interactive_counts`. On a long run
    with scattered holes, a stretch is made of blocks of positions, any missing one orange.

    Parameters
    ----------
    found : RunInspection
        From :func:`virnucpro_merge.inspection.inspect_run`.
    height : int, optional
        Height in pixels (by default, from the number of rows; the width follows the page's).

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> interactive_missing(inspect_run("run")).title.text
    'Missing sequences: 4 of 12'
    """
    from bokeh.models.ranges import Range1d
    from bokeh.plotting import figure

    ranks, width = found.missing.shape
    focus = ranks_in_focus(np.asarray(found.missing.any(axis=1)))
    rows = list(range(ranks)) if focus is None else focus
    title = missing_title(found.num_missing, len(found.sequence_ids), ranks, focus)
    fig = figure(height=height or min(720, 90 + 22 * len(rows)), sizing_mode="stretch_width",
                 title=title if width else "Missing sequences: not checked (no expected IDs)",
                 tools="xpan,xwheel_zoom,box_zoom,reset", toolbar_location="above",
                 x_range=Range1d(start=-0.5, end=max(width, 1) - 0.5), y_range=Range1d(start=len(rows) - 0.5, end=-0.5))
    said = _nothing_to_place(found)
    if said is not None:
        return _one_line(fig, said)
    lengths = found.assigned[rows].sum(axis=1).tolist()
    runs, block = _stretches(found.missing, rows, lengths)
    drawn = _draw_stretches(fig, _stretch_columns(found, rows, lengths, runs))
    _hover(fig, drawn, _STRETCH_TIP)
    _missing_axes(fig, rows, focus, ranks, block)
    fig.grid.grid_line_color = None
    _legend_outside(fig)
    return fig


_HEALTH_TIP = ["<b>rank @label</b>: median norm @q50{0.000}",
               "5-25-75-95 %: @q05{0.000}, @q25{0.000}, @q75{0.000}, @q95{0.000}",
               "zero rows: @zero{0,0}; at the float16 limit: @saturated{0,0}; identical: @identical{0,0}",
               "dtype: @dtype", "health: @health"]


def _known_norms(found: InspectionView) -> tuple[list[RankView], list[RankHealth]]:
    """The ranks whose row norms are known (their embeddings read, with finite rows), and their health."""
    known = [s for s in found.shards if s.health is not None and s.health.norm_quantiles]
    return known, [s.health for s in known if s.health is not None]


def _norm_axis(q: np.ndarray) -> tuple[bool, float, float]:
    """The row norms' axis from the ranks' quantiles ``q``: whether it is a log one (as the
    static picture's: ``norms_on_a_log_scale``), its floor (0 on a linear one; on a log one,
    below the least positive norm: where more than 5 % of a rank's rows are all zero, its 5 %
    norm is 0) and the top of the ranks' columns."""
    log = norms_on_a_log_scale(q[:, 2])
    low = float(q[q > 0].min()) * 0.8 if log else 0.0
    return log, low, float(q[:, 4].max()) * (1.5 if log else 1.05)


def _dtype_words(health: RankHealth) -> str:
    """A rank's dtype, and its model's when its checkpoints name it."""
    return (health.dtype or "") + (f" (model {', '.join(health.model_dtypes)})" if health.model_dtypes else "")


def _health_columns(known: Sequence[RankView], healths: Sequence[RankHealth], said: Mapping[int, str],
                    q: np.ndarray, low: float, top: float) -> dict[str, list[Any]]:
    """The data of each rank whose norms are ``known`` (its ``healths``, quantiles ``q``): its norms
    (none below the axis' floor ``low``), colour, counts, dtype, what stands out, and its column."""
    return {"x": [s.rank for s in known], "label": [str(s.rank) for s in known],
            **{name: np.maximum(q[:, k], low).tolist() for k, name in enumerate(("q05", "q25", "q50", "q75", "q95"))},
            "color": [FLAGGED_COLOR if s.rank in said else HEALTHY_COLOR for s in known],
            "zero": [h.zero_rows for h in healths], "saturated": [h.saturated_rows for h in healths],
            "identical": [h.identical_rows for h in healths], "dtype": [_dtype_words(h) for h in healths],
            "health": [said.get(s.rank, "nothing stands out") for s in known],
            "top": [top] * len(known), "bottom": [low] * len(known)}


def _draw_norms(fig: Any, data: Mapping[str, list[Any]], out: Sequence[bool], ranks: int) -> None:
    """Each rank's norms: the 5-95 % as a line, the 25-75 % as a bar, the median as a dot; the ranks
    that stand out (``out``) drawn last, on top, their line thicker."""
    for flagged_now in (False, True):
        part = _picked(data, [i for i, o in enumerate(out) if o == flagged_now])
        fig.segment(x0="x", x1="x", y0="q05", y1="q95", color="color", line_width=3 if flagged_now else 1.5,
                    source=part)
        fig.vbar(x="x", bottom="q25", top="q75", width=0.6 if ranks <= 128 else 1.0, color="color", source=part)
        fig.scatter(x="x", y="q50", size=6 if ranks <= 64 else 3, color="color", source=part)


def _mark_flagged(fig: Any, flagged: list[int], top: float) -> None:
    """Above the plot, a mark on each rank that stands out, named in the legend (put outside the plot)."""
    fig.scatter(flagged, [top] * len(flagged), marker="inverted_triangle", size=10, color=FLAGGED_COLOR,
                legend_label=f"stand out: {rank_ranges(flagged, most=8)}")
    _legend_outside(fig)


def interactive_health(found: InspectionView, *, height: int = 340) -> Any:
    """Each rank's row norms, for hovering (a Bokeh figure): the 5-95 % range as a thin line, the
    25-75 % as a bar, the median as a dot, the ranks whose embeddings stand out in orange.
    Hovering a rank shows its quantiles, its zero, saturated and identical rows, its dtype (and its model's) and
    what stands out in words. The same picture as :func:`~virnucpro_merge.inspection.plot_health`.

    Parameters
    ----------
    found : RunInspection
        From ``inspect_run(..., health=True)`` or ``RunInspection.from_merged``.
    height : int, optional
        Height in pixels (the width follows the page's).

    Returns
    -------
    bokeh.plotting.figure

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_unhealthy_run
    >>> run = make_unhealthy_run("sick", n_sequences=400, world_size=8, dim=8)
    >>> interactive_health(inspect_run("sick", health=True)).title.text
    'Row norms per rank: 4 of 8 ranks stand out'
    """
    from bokeh.models.ranges import Range1d
    from bokeh.models.sources import ColumnDataSource
    from bokeh.plotting import figure

    from .tables import health_words

    said = health_words(found) or {}
    known, healths = _known_norms(found)
    flagged = sorted(said)
    title = health_title(len(flagged), len(found.shards))
    if not known:
        return figure(height=120, sizing_mode="stretch_width", toolbar_location=None,
                      title="Row norms per rank: not checked (the embeddings were not read)")
    q = np.array([h.norm_quantiles for h in healths])
    log, low, top = _norm_axis(q)
    data = _health_columns(known, healths, said, q, low, top)
    source = ColumnDataSource(data)
    fig = figure(y_range=Range1d(start=low, end=top * (1.3 if log else 1.03)), height=height,
                 sizing_mode="stretch_width", title=title, y_axis_type="log" if log else "linear",
                 tools="xpan,xwheel_zoom,reset", toolbar_location="above")
    _draw_norms(fig, data, [s.rank in said for s in known], len(found.shards))
    if flagged:
        _mark_flagged(fig, flagged, top)
    _hover_columns(fig, source, _HEALTH_TIP, bottom="bottom", top="top")
    fig.xaxis.axis_label = "rank"
    fig.yaxis.axis_label = "row norm"
    fig.xgrid.grid_line_color = None
    return fig


def bokeh_available() -> bool:
    """Whether Bokeh is there and imports (the report's pictures are then interactive; a Bokeh
    that is there but broken, too old or built for another numpy, leaves them static).

    >>> isinstance(bokeh_available(), bool)
    True
    """
    if importlib.util.find_spec("bokeh") is None:
        return False
    try:
        from bokeh.embed import json_item  # noqa: F401  (what the page's figures need)
        from bokeh.plotting import figure  # noqa: F401
        from bokeh.resources import Resources  # noqa: F401
    except Exception as err:  # (an ImportError, or whatever a broken install raises)
        logger.warning("Bokeh is there but does not import (%s): the report's pictures stay static",
                       f"{type(err).__name__}: {err}".splitlines()[0])
        return False
    return True


@dataclass(frozen=True)
class PageFigure:
    """A Bokeh figure on its way to the report's page: displayed in a notebook, it is one
    line of text there and the figure itself in the page (:func:`embed_page_figures`)."""

    item: dict[str, Any]
    label: str = "An interactive figure"

    def _repr_mimebundle_(self, include: object = None, exclude: object = None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({PAGE_FIGURE_MIME: self.item, "text/plain": "(an interactive figure: see the HTML report)"},
                {PAGE_FIGURE_MIME: {"label": self.label}})


def for_page(fig: Any) -> PageFigure:
    """``fig`` (a Bokeh figure) ready to display in the report notebook for its page.

    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4, truncated=(), absent=(2,), empty=(),
    ...                     short={})
    >>> shown = for_page(interactive_counts(inspect_run("run")))
    >>> data, metadata = shown._repr_mimebundle_()
    >>> sorted(data)
    ['application/vnd.virnucpro-merge.bokeh+json', 'text/plain']
    >>> metadata[PAGE_FIGURE_MIME]["label"].startswith("Rows per rank against its assignment, 3 ranks (interactive")
    True
    """
    from bokeh.embed import json_item

    title = getattr(fig.title, "text", "") or "An interactive figure"
    return PageFigure(dict(json_item(fig)), f"{title} (interactive: hover for each rank's numbers)")


def _script_safe(item: object) -> str:
    """JSON that cannot end the ``<script>`` element it sits in, whatever strings it holds."""
    return json.dumps(item).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def embed_page_figures(nb: Any) -> str:
    """Turn each page figure among the outputs of notebook ``nb`` (in place) into HTML, and
    drop the static pictures of its cell (the figure shows the same); return the script
    tag of Bokeh's JavaScript that the page's head must carry (empty: no figure).

    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    >>> embed_page_figures(nb)
    ''
    """
    count = 0
    for cell in nb.cells:
        outputs = cell.get("outputs", [])
        if not any(PAGE_FIGURE_MIME in output.get("data", {}) for output in outputs):
            continue
        kept = []
        for output in outputs:
            data = output.get("data", {})
            if PAGE_FIGURE_MIME in data:
                count += 1
                name = f"virnucpro-figure-{count}"
                label = html_escape(str(output.get("metadata", {}).get(PAGE_FIGURE_MIME, {}).get("label", "")))
                html = (f'<div id="{name}" class="virnucpro-figure" role="img" aria-label="{label}" '
                        'style="width:100%"></div>\n'
                        f'<script type="application/json" id="{name}-item">{_script_safe(data[PAGE_FIGURE_MIME])}'
                        f'</script>\n<script>Bokeh.embed.embed_item(JSON.parse(document.getElementById('
                        f'"{name}-item").textContent), "{name}");</script>')
                kept.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": html}})
            elif "image/png" not in data:
                kept.append(output)
        cell["outputs"] = kept
    if not count:
        return ""
    from bokeh.resources import Resources

    return str(Resources(mode="inline", components=["bokeh"]).render_js())
