"""The viewing wing: inspect a run, print its tables, draw its pictures, profile memory.

- :mod:`.run`: :func:`inspect_run`, per-rank summaries and the missing-ID matrix
  (reads IDs only);
- :mod:`.progress`: :func:`read_progress`, a run while it runs (``watch``): each rank's
  progress, pace, ETA and state, read without disturbing the run;
- :mod:`.tables`: the text tables (:func:`format_shard_table`, :func:`format_report`);
- :mod:`.plots`: the figures (matplotlib, from the ``notebooks`` extra);
- :mod:`.interactive`: the report page's figures, for hovering (Bokeh, from the same extra);
- :mod:`.memory`: :func:`profile_memory`, RSS sampled while a call runs (psutil);
- :mod:`.runreport`: the report notebook run on a run, rendered as one HTML file;

Everything is importable from here. The figures and the memory profile load
matplotlib and psutil on first use, so that the text tables stay light enough for
the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..statuses import ABSENT, DUPLICATED, EMPTY, FAILED, INCOMPLETE, OFF_STRIDE, OK, STATUS_COLORS, STATUSES
from .progress import STALL_FACTOR, ProgressReader, RankProgress, RunProgress, read_progress
from .run import RunInspection, ShardSummary, inspect_run
from .tables import format_report, format_shard_table, format_summary, rank_ranges

if TYPE_CHECKING:
    from .interactive import interactive_counts, interactive_health, interactive_missing
    from .memory import MIB, MemoryProfile, profile_memory, release_free_memory
    from .plots import (
        plot_health,
        plot_memory_profile,
        plot_missing_heatmap,
        plot_peak_scaling,
        plot_progress,
        plot_shard_counts,
        plot_timeline,
    )

__all__ = [
    "OK",
    "INCOMPLETE",
    "EMPTY",
    "ABSENT",
    "FAILED",
    "DUPLICATED",
    "OFF_STRIDE",
    "STATUSES",
    "STATUS_COLORS",
    "ShardSummary",
    "RunInspection",
    "inspect_run",
    "RunProgress",
    "RankProgress",
    "ProgressReader",
    "read_progress",
    "STALL_FACTOR",
    "format_shard_table",
    "format_summary",
    "format_report",
    "rank_ranges",
    "plot_shard_counts",
    "plot_missing_heatmap",
    "plot_timeline",
    "plot_progress",
    "plot_health",
    "plot_memory_profile",
    "plot_peak_scaling",
    "interactive_counts",
    "interactive_missing",
    "interactive_health",
    "MIB",
    "MemoryProfile",
    "profile_memory",
    "release_free_memory",
]

#: Names loaded on first use, and the module of each.
_LAZY = {
    **dict.fromkeys(("plot_shard_counts", "plot_missing_heatmap", "plot_timeline", "plot_progress", "plot_health",
                     "plot_memory_profile", "plot_peak_scaling"), "plots"),
    **dict.fromkeys(("interactive_counts", "interactive_missing", "interactive_health"), "interactive"),
    **dict.fromkeys(("MIB", "MemoryProfile", "profile_memory", "release_free_memory"), "memory"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
