"""Pictures of a run: rows per shard, the missing-ID heatmap, memory over time.

Every function draws on a new figure (or on ``ax`` when given) and returns the
:class:`~matplotlib.figure.Figure`; none calls ``plt.show()``, so they work headless
with the Agg backend and in notebooks alike. The data comes from
:mod:`virnucpro_merge.inspection.run` and :mod:`virnucpro_merge.inspection.memory`.

matplotlib comes with the ``notebooks`` extra; ``import virnucpro_merge`` does not
import this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .memory import MIB, MemoryProfile
from .run import STATUSES, RunInspection, ShardSummary

__all__ = [
    "STATUS_COLORS",
    "plot_shard_counts",
    "plot_missing_heatmap",
    "plot_memory_profile",
    "plot_peak_scaling",
]

#: One colour per shard status (Okabe-Ito palette, safe for colour-blind readers).
STATUS_COLORS = {
    "ok": "#009E73",
    "incomplete": "#E69F00",
    "empty": "#CC79A7",
    "duplicated": "#56B4E9",
    "failed": "#D55E00",
    "absent": "#000000",
}
_EXPECTED_COLOR = "#D9D9D9"
# Heatmap cells: present, missing, padding (no sequence there).
_HEATMAP_COLORS = ("#EDEDED", "#D55E00", "#FFFFFF")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    root = ax.get_figure(root=True)
    assert isinstance(root, Figure)
    return root, ax


def plot_shard_counts(
    shards: Sequence[ShardSummary], *, ax: Axes | None = None, figsize: tuple[float, float] = (8.0, 3.2)
) -> Figure:
    """Bar chart of rows expected vs rows present per shard, coloured by status.

    Each rank gets two bars: a grey one for the rows its stride assignment
    expected, and one for the rows its file holds, in its status's colour. A
    shard without rows gets a cross on the axis instead; up to 12 ranks, the x
    labels repeat the status.

    Parameters
    ----------
    shards : sequence of ShardSummary
        From :func:`virnucpro_merge.inspection.inspect_run`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : (float, float)
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, figsize)
    ranks = np.arange(len(shards))
    width = 0.4
    ax.bar(ranks - width / 2, [s.expected for s in shards], width, color=_EXPECTED_COLOR,
           edgecolor="#8C8C8C", label="expected (assigned)")
    colors = [STATUS_COLORS.get(s.status, "#999999") for s in shards]
    ax.bar(ranks + width / 2, [s.present for s in shards], width, color=colors)
    # A shard with no rows has no bar: mark its place on the axis in its colour.
    nothing = [i for i, s in enumerate(shards) if s.present == 0]
    ax.scatter(ranks[nothing] + width / 2, np.zeros(len(nothing)), marker="x", s=30,
               c=[colors[i] for i in nothing], zorder=3, clip_on=False)
    if len(shards) <= 12:
        ax.set_xticks(ranks, [f"{s.rank}\n{s.status}" for s in shards],
                      fontsize="small" if len(shards) <= 8 else "x-small")
        ax.set_xlabel("rank and status")
    else:
        ax.set_xticks(ranks, [str(s.rank) for s in shards], fontsize="x-small", rotation=90)
        ax.set_xlabel("rank")
    ax.set_ylabel("rows")
    ax.set_title("Rows per shard: expected vs present")
    seen = [status for status in STATUSES if any(s.status == status for s in shards)]
    handles = [Patch(facecolor=_EXPECTED_COLOR, edgecolor="#8C8C8C", label="expected")]
    handles += [Patch(facecolor=STATUS_COLORS[status], label=f"present: {status}") for status in seen]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_missing_heatmap(
    inspection: RunInspection, *, ax: Axes | None = None, figsize: tuple[float, float] = (7.0, 3.2)
) -> Figure:
    """Heatmap of missing sequences: one row per rank, one column per assigned position.

    Cell ``(r, j)`` is index position ``r + j * N``. A row that is missing all the
    way is a worker whose shard is lost; a row missing from some column on is a
    worker that died part-way through its assignment.

    Parameters
    ----------
    inspection : RunInspection
        From :func:`virnucpro_merge.inspection.inspect_run`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : (float, float)
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, figsize)
    cells = np.where(inspection.assigned, inspection.missing.astype(np.int8), 2)
    ax.imshow(cells, cmap=ListedColormap(_HEATMAP_COLORS), vmin=0, vmax=2,
              aspect="auto", interpolation="nearest")
    ranks = np.arange(inspection.world_size)
    ax.set_yticks(ranks, [f"rank {r}" for r in ranks], fontsize="small")
    ax.set_xlabel(f"position j within the rank's assignment (index position = rank + j × {inspection.world_size})")
    n = len(inspection.sequence_ids)
    ax.set_title(f"Missing sequences: {inspection.num_missing} of {n}")
    handles = [Patch(facecolor=_HEATMAP_COLORS[0], edgecolor="#8C8C8C", label="present"),
               Patch(facecolor=_HEATMAP_COLORS[1], label="missing")]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_memory_profile(
    profiles: Mapping[str, MemoryProfile], *, ax: Axes | None = None, figsize: tuple[float, float] = (7.0, 3.2)
) -> Figure:
    """Resident memory above the baseline over time, one line per profiled call.

    Parameters
    ----------
    profiles : mapping of str to MemoryProfile
        Label -> profile, from :func:`virnucpro_merge.inspection.memory.profile_memory`.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    figsize : (float, float)
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
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
    figsize : (float, float)
        Size in inches of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
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
