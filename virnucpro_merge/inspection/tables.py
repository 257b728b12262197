"""Every table of the viewing wing: a run's per-rank summary and a merge's report, as text,
as HTML (how they show in a notebook) and as a pandas DataFrame.

Text is fixed-width, so that it reads the same in a terminal, a notebook's output and
an nbval comparison. Paths are shown by file name only, so a table reads the same
wherever the run lives. Nothing here needs matplotlib; pandas is imported by
:func:`rank_frame` alone.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import shown_id
from ..health import report_flags
from ..ranks import INDEX_NAME, rank_ranges
from ..statuses import (
    DUPLICATED,
    EMPTY,
    INCOMPLETE,
    OFF_STRIDE,
    OK,
    RUN_STATE_COLORS,
    RUN_STATES,
    RUNNING,
    SHARD_COLORS,
    STATUS_COLORS,
    WAITING,
    ShardStatus,
)
from .views import (
    InspectionView,
    ProgressView,
    RankProgressView,
    RankView,
    duration_words,
    progress_in_focus,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Markup",
    "escape",
    "rank_ranges",
    "format_shard_table",
    "format_summary",
    "format_report",
    "rank_frame",
    "rank_problem",
    "health_words",
    "inspection_html",
    "report_html",
    "verification_html",
    "format_progress",
    "progress_html",
    "progress_page",
    "progress_frame",
]


def format_shard_table(shards: Sequence[RankView]) -> str:
    """The per-shard summary as a fixed-width text table (one line per rank).

    Paths are shown by file name only, so the table reads the same wherever the
    run lives.

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> print(format_shard_table(inspect_run("run").shards))
    rank  shard       expected  present  missing  status
       0  shard_0.h5         4        4        0  ok
       1  shard_1.h5         4        4        0  ok
       2  shard_2.h5         4        0        4  absent
          total             12        8        4
    """
    width = max([len(s.path.name) for s in shards] + [5])
    lines = [f"{'rank':>4}  {'shard':<{width}}  {'expected':>8} {'present':>8} {'missing':>8}  status"]
    for s in shards:
        lines.append(
            f"{s.rank:>4}  {s.path.name:<{width}}  {s.expected:>8} {s.present:>8} {s.missing:>8}  {s.status}"
        )
    total = [sum(getattr(s, field) for s in shards) for field in ("expected", "present", "missing")]
    lines.append(f"{'':>4}  {'total':<{width}}  {total[0]:>8} {total[1]:>8} {total[2]:>8}")
    return "\n".join(lines)


def _summary_lines(found: InspectionView) -> list[str]:
    expected = len(found.sequence_ids)
    lines = [f"world size: {found.world_size} (from {found.world_size_from})"]
    if found.expected_from is None:
        lines.append(f"completeness NOT checked: no expected IDs (none given, and no {INDEX_NAME} beside the "
                     f"shards); {found.num_present:,} rows present")
    else:
        lines.append(f"sequences expected: {expected:,} (from {found.expected_from})")
        lines.append(f"sequences present: {found.num_present:,} rows; missing: {found.num_missing:,}; "
                     f"not expected: {found.num_extra:,}")
    saved = [s for s in found.shards if s.checkpointed]
    if saved:
        lines.append(f"held only by checkpoints (a merge salvages them, not counted missing): "
                     f"{sum(s.checkpointed for s in saved):,}, of ranks {rank_ranges([s.rank for s in saved])}")
    lines.append("ranks by status: " + "; ".join(f"{status} {len(ranks)} ({rank_ranges(ranks)})"
                                                 for status, ranks in found.by_status.items()))
    lines.extend(found.stops[rank] for rank in sorted(found.stops))
    lines.extend(found.notes)
    return lines


def format_summary(found: InspectionView) -> str:
    """A run's summary in a few lines: world size, sequences expected, present and missing,
    and the ranks of each status.

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> print(format_summary(inspect_run("run")))
    world size: 3 (from the IDs' index positions)
    sequences expected: 12 (from sequence_index.json, the run folder's index)
    sequences present: 8 rows; missing: 4; not expected: 0
    ranks by status: ok 2 (0-1); absent 1 (2)
    """
    return "\n".join(_summary_lines(found))


def rank_problem(found: InspectionView, shard: RankView) -> str:
    """What is wrong with a rank, in words (empty when nothing is): why its worker stopped,
    where its files say, else its shard's error, else what its status means for it.

    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4, truncated=(), absent=(2,), empty=(),
    ...                     short={1: 0.5})
    >>> found = inspect_run("run")
    >>> [rank_problem(found, s) for s in found.shards]
    ['', 'holds 2 of its 4 sequences: 2 missing (its worker died part-way?)', 'file does not exist']
    """
    if shard.rank in found.stops:
        return found.stops[shard.rank]
    if shard.error:
        return shard.error
    return {
        INCOMPLETE: f"holds {shard.present:,} of its {shard.expected:,} sequences: {shard.missing:,} missing "
                    "(its worker died part-way?)",
        EMPTY: f"holds no row of its {shard.expected:,} sequences",
        DUPLICATED: "an ID it holds is in it twice, or in a lower rank's shard: a merge refuses it",
        OFF_STRIDE: "holds IDs of other ranks' index positions (a run resumed with another world size?)",
    }.get(shard.status, "")


def rank_frame(found: InspectionView) -> pd.DataFrame:
    """The per-rank summary as a pandas DataFrame, one row per rank (indexed by rank): ``shard``,
    ``expected``, ``present``, ``missing``, ``checkpointed``, ``status`` and ``problem``
    (:func:`rank_problem`; an empty string for none); where the embeddings' health is known,
    also ``median_norm``, ``zero_rows``, ``saturated_rows``, ``identical_rows`` and ``health``
    (what stands out, in words; an empty string for nothing)."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "shard": [s.path.name for s in found.shards],
            "expected": [s.expected for s in found.shards],
            "present": [s.present for s in found.shards],
            "missing": [s.missing for s in found.shards],
            "checkpointed": [s.checkpointed for s in found.shards],
            "status": pd.Categorical([s.status for s in found.shards], categories=list(STATUS_COLORS)),
            "problem": [rank_problem(found, s) for s in found.shards],
        },
        index=pd.RangeIndex(found.world_size, name="rank"),
    )
    said = health_words(found)
    if said is not None:
        for column, values in _health_columns(found, said).items():
            frame[column] = values
    return frame


def _health_columns(found: InspectionView, said: dict[int, str]) -> dict[str, Any]:
    """The health columns of :func:`rank_frame`, in order: each rank's median norm, its counts of
    all-zero, saturated and identical rows, and what stands out (``said``, by rank)."""
    import pandas as pd

    known = [s.health for s in found.shards]
    columns: dict[str, Any] = {"median_norm": [h.median_norm if h is not None else None for h in known]}
    for column in ("zero_rows", "saturated_rows", "identical_rows"):
        columns[column] = pd.array([getattr(h, column) if h is not None else None for h in known], dtype="Int64")
    columns["health"] = [said.get(s.rank, "") for s in found.shards]
    return columns


def health_words(found: InspectionView) -> dict[int, str] | None:
    """What stands out in each rank's embeddings, in words (ranks with nothing left out), or None
    when no rank's health is known (the embeddings were not read).

    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_unhealthy_run
    >>> run = make_unhealthy_run("sick", n_sequences=400, world_size=8, dim=8)
    >>> health_words(inspect_run("sick", health=True))[6]
    '16 all-zero rows: a batch that never ran?'
    >>> health_words(inspect_run("sick")) is None
    True
    """
    if all(s.health is None for s in found.shards):
        return None
    said: dict[int, list[str]] = {}
    for flag in found.health_flags:
        said.setdefault(flag.rank, []).append(flag.words.split(": ", 1)[1])
    return {rank: "; ".join(words) for rank, words in said.items()}


_TABLE_STYLE = ("border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums;")
_CELL = "padding: 0.15em 0.6em; border-bottom: 1px solid #ddd; white-space: nowrap;"
_WORDS = {"problem", "health", "cause"}  # columns of sentences: they wrap, the others stay on one line
_WRAPPED = " white-space: normal; min-width: 22em;"


class Markup(str):
    """HTML built here, from parts that went through :func:`escape`: shown as it is."""


def escape(value: object) -> Markup:
    """The one way a value reaches HTML: as text, its markup characters escaped (``Markup``,
    built here, stays as it is). Every table and list of the viewing wing goes through it.

    >>> escape("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    >>> escape(None), escape(Markup("<b>built here</b>"))
    ('', '<b>built here</b>')
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value)))


def _badge(status: object, color: str | None = None) -> Markup:
    shown = str(status)
    color = color or STATUS_COLORS.get(shown, "#999999")  # (a colour of ours, never one read from a file)
    return Markup(f'<span style="display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; '
                  f'background: {color}; vertical-align: baseline;"></span>{escape(shown)}')


def _items(lines: Sequence[object]) -> Markup:
    """A bulleted list, each line escaped."""
    return Markup("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[bool], scroll: bool
           ) -> Markup:
    styles = [f'{_CELL} text-align: {"right" if r else "left"};{_WRAPPED if h in _WORDS else ""}'
              for h, r in zip(headers, right, strict=True)]
    head = "".join(f'<th style="{style}">{escape(h)}</th>' for h, style in zip(headers, styles, strict=True))
    body = "".join(
        "<tr>" + "".join(f'<td style="{style}">{escape(cell)}</td>' for cell, style in zip(row, styles, strict=True))
        + "</tr>" for row in rows
    )
    table = f'<table style="{_TABLE_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    height = " max-height: 28em; overflow-y: auto;" if scroll else ""
    return Markup(f'<div style="overflow-x: auto;{height}">{table}</div>')  # a narrow page scrolls it


_MANY = 20  # past this many rows, a table lists the rows that need a look first, and the rest folded


def _folded(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool],
            worth_a_look: Sequence[bool], what: str) -> Markup:
    """A table; a long one shows the rows worth a look, and every row in a folded ``<details>``."""
    if len(rows) <= _MANY:
        return _table(headers, rows, right=right, scroll=False)
    look = [row for row, flag in zip(rows, worth_a_look, strict=True) if flag]
    head = _table(headers, look, right=right, scroll=True) if look else f"<p>every {escape(what)} is ok</p>"
    every = _table(headers, rows, right=right, scroll=True)
    return Markup(f"{head}<details><summary>all {len(rows):,} {escape(what)}s</summary>{every}</details>")


def inspection_html(found: InspectionView) -> str:
    """How a :class:`RunInspection` shows in a notebook: its summary and per-rank table."""
    said = health_words(found)
    rows = [[s.rank, s.path.name, f"{s.expected:,}", f"{s.present:,}", f"{s.missing:,}", _badge(s.status),
             rank_problem(found, s)] + ([] if said is None else [
                 f"{s.health.median_norm:.3g}" if s.health is not None and s.health.median_norm is not None else "",
                 said.get(s.rank, "")])
            for s in found.shards]
    headers = ["rank", "shard", "expected", "present", "missing", "status", "problem"]
    right = [True, False, True, True, True, False, False]
    if said is not None:  # (the embeddings were read: what stands out in them too)
        headers, right = [*headers, "median norm", "health"], [*right, True, False]
    table = _folded(headers, rows, right, [s.status != OK or (said is not None and s.rank in said)
                                           for s in found.shards], "rank")
    return f'<div class="virnucpro-inspection">{_items(_summary_lines(found))}{table}</div>'


def _number(value: object) -> str:
    """A count as a table shows it (thousands separated); anything else as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


#: The columns of a merge report's shard table (text and HTML alike), and which are numbers.
_REPORT_COLUMNS = ("shard", "status", "rows", "offset", "NaN/Inf rows", "problem")
_REPORT_RIGHT = (False, False, True, True, True, False)


def _report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The rows of a merge report's shard table, as text: the one owner of what each cell
    shows (an offset of None, in a merge in index order, shows as nothing)."""
    return [[Path(s["path"]).name, str(s["status"]), _number(s["num_sequences"]), _number(s.get("offset")),
             _number(s.get("nonfinite_rows")), _problem(s)]
            for s in report["shards"]]


def _problem(shard: Mapping[str, Any]) -> str:
    """What the problem column says of a shard: its error, and for a salvaged rank, where its rows came from."""
    said = str(shard.get("error") or "")
    saved = shard.get("salvage")
    if not saved:
        return said
    parts = [f"{_number(saved['from_checkpoints'])} rows from {_number(saved['checkpoints_used'])} checkpoints"]
    if saved["kept_from_shard"]:
        parts.append(f"{_number(saved['kept_from_shard'])} of its own shown right")
    if saved["dropped_from_shard"]:
        parts.append(f"{_number(saved['dropped_from_shard'])} of its own not kept")
    if saved["skipped_checkpoints"]:
        parts.append(f"{_number(len(saved['skipped_checkpoints']))} checkpoints not usable")
    if saved["conflicting_ids"]:
        parts.append(f"{_number(saved['conflicting_ids'])} IDs with conflicting checkpoints left out")
    return f"{said}; salvaged: {', '.join(parts)}"


def format_report(report: Mapping[str, Any], *, most: int | None = None) -> str:
    """A merge report as a short text table, for terminals and notebooks: every shard, or
    with ``most``, when there are more shards than that, only the (first ``most``) shards
    worth a look (not ok, or holding NaN or Inf) and a line counting the others.

    Examples
    --------
    >>> from virnucpro_merge.inspection import inspect_run
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> from virnucpro_merge import aggregate_shards, read_merge_report
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5", run.index, partial=True)
    >>> print(format_report(read_merge_report(merged)))
    shard       status  rows  offset  NaN/Inf rows  problem
    shard_0.h5  ok         4       0             0
    shard_1.h5  ok         4       4             0
    shard_2.h5  failed     0       8             0  file does not exist
    <BLANKLINE>
    8 sequences of dimension 4 from 2 of 3 shards
    failed shards: 1 (shard_2.h5)
    missing sequences: 4 of 12 expected
    first missing IDs: seq000002, seq000005, seq000008, seq000011
    partial: True
    """
    rows = _report_rows(report)
    hidden = hidden_looks = 0
    if most is not None and len(rows) > most:
        look = [row for row, shard in zip(rows, report["shards"], strict=True) if _worth_a_look(shard)]
        hidden, hidden_looks, rows = len(rows) - len(look[:most]), len(look[most:]), look[:most]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(_REPORT_COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:>{w}}" if r else f"{c:<{w}}"
                         for c, w, r in zip(cells, widths, _REPORT_RIGHT, strict=True)).rstrip()

    lines = [line(_REPORT_COLUMNS), *map(line, rows)] if rows else []
    if hidden:
        worth = f" ({hidden_looks:,} of them worth a look too)" if hidden_looks else ""
        lines.append(f"... and {hidden:,} more shards{worth}, ok otherwise (--all lists every one)" if rows
                     else f"every one of the {hidden:,} shards is ok (--all lists them)")
    lines.append("")
    lines.extend(_report_lines(report))
    flags = report_flags(report)  # (a merge before health was summed up, or a healthy one: none)
    lines.extend([f"embedding health: {len(flags):,} flag{'' if len(flags) == 1 else 's'}",
                  *(f"  {flag}" for flag in flags)] if flags else [])
    return "\n".join(lines)


def _worth_a_look(shard: Mapping[str, Any]) -> bool:
    """A shard a merge did not simply copy, or whose rows hold NaN or Inf (the one rule of
    both the folded HTML table and the short text one)."""
    return shard["status"] not in (ShardStatus.OK, ShardStatus.EMPTY) or bool(shard.get("nonfinite_rows"))


def _report_lines(report: Mapping[str, Any]) -> list[str]:
    merged = sum(s["status"] != ShardStatus.FAILED for s in report["shards"])
    salvaged = sum(s["status"] == ShardStatus.SALVAGED for s in report["shards"])
    lines = [f"{report['total_sequences']} sequences of dimension {report['embedding_dim']} "
             f"from {merged} of {len(report['shards'])} shards"
             + (f" ({salvaged} of them salvaged from their rank's checkpoints)" if salvaged else "")]
    if report["failed_shards"]:
        names = ", ".join(Path(p).name for p in report["failed_shards"])
        lines.append(f"failed shards: {len(report['failed_shards'])} ({names})")
    if report.get("num_expected") is not None:
        lines.append(f"missing sequences: {len(report['missing_ids'])} of {report['num_expected']} expected")
        if report["missing_ids"]:
            lines.append(f"first missing IDs: {', '.join(report['missing_ids'][:10])}")
        if report.get("num_extra"):
            lines.append(f"extra sequences (not expected): {report['num_extra']}")
    if report.get("layout") == "virtual":
        lines.append(f"virtual: embeddings stay in {len(report.get('sources', []))} source shards")
        for problem in report.get("source_problems", []):
            lines.append(f"PROBLEM: {problem}")
    if report.get("nonfinite_rows"):
        lines.append(f"rows holding NaN or Inf: {report['nonfinite_rows']}")
    for merge in report.get("lineage") or []:
        lines.append(f"merged from an earlier merge: {Path(merge['path']).name} "
                     f"({_number(merge.get('total_sequences'))} sequences, partial: {merge.get('partial')})")
    lines.append(f"partial: {report['partial']}")
    return lines


def report_html(report: Mapping[str, Any]) -> str:
    """How a merge report shows in a notebook: its findings, then a row per input shard."""
    rows: list[list[object]] = [[row[0], _badge(row[1], SHARD_COLORS.get(row[1])), *row[2:]]
                                for row in _report_rows(report)]
    look = [_worth_a_look(s) for s in report["shards"]]
    table = _folded(list(_REPORT_COLUMNS), rows, _REPORT_RIGHT, look, "shard")
    return f'<div class="virnucpro-report">{_items(_report_lines(report))}{table}</div>'


_VERDICT_COLORS = {True: ("#e6f4ee", STATUS_COLORS[OK]), False: ("#fbece4", "#D55E00")}


def verification_html(found: Any) -> Markup:
    """How a :class:`~virnucpro_merge.Verification` shows in a notebook: its verdict in one
    green or red line, then its problems (the first ten), what was checked and the notes.

    >>> from pathlib import Path
    >>> from virnucpro_merge import Verification
    >>> page = verification_html(Verification(Path("m.h5"), problems=["m.h5: rows 0-9 do not <match>"]))
    >>> "DAMAGED" in page, "&lt;match&gt;" in page
    (True, True)
    """
    background, edge = _VERDICT_COLORS[found.intact]
    verdict = f"INTACT: {found.path.name}" if found.intact else f"DAMAGED: {found.summary()}"
    head = (f'<div style="background: {background}; border-left: 6px solid {edge}; padding: 0.5em 0.8em; '
            f'font-weight: 600;">{escape(verdict)}</div>')
    parts = [head]
    if found.problems:
        parts.append(_items([f"problem: {p}" for p in found.problems[:10]]
                            + ([f"... and {len(found.problems) - 10:,} more"] if len(found.problems) > 10 else [])))
    parts.append(_items([f"checked: {', '.join(found.checked)}" if found.checked else "nothing could be checked",
                         *(f"note: {n}" for n in found.notes)]))
    return Markup('<div class="virnucpro-verification">' + "".join(parts) + "</div>")


# --------------------------------------------------------------------------- a run in progress (watch)


def _clock(moment: object) -> str:
    """A UTC time to the second, as the views of a run in progress show it (``-`` for none)."""
    return "-" if moment is None else str(moment)[:19].replace("T", " ")


def _near(found: ProgressView, moment: object) -> str:
    """A time in a rank's row: the time of day on the day of the look, else the date too (UTC)."""
    shown = _clock(moment)
    return shown[11:] if shown[:10] == _clock(found.now)[:10] else shown


def _eta_words(found: ProgressView, eta: object, *, near: bool = False) -> str:
    if eta is None:
        return "-"
    ahead = float((eta - found.now) / np.timedelta64(1, "s"))  # type: ignore[operator]
    return f"{_near(found, eta) if near else _clock(eta)} (in {duration_words(ahead)})"


def _rate_words(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _of(done: int, whole: int | None) -> str:
    if whole is None:
        return f"{done:,} of ?"
    share = f" ({done / whole:.1%})" if whole else ""
    return f"{done:,} of {whole:,}{share}"


def _ranks_words(ranks: Sequence[int]) -> str:
    return f"{'rank' if len(ranks) == 1 else 'ranks'} {rank_ranges(ranks)}"


def _no_eta(found: ProgressView) -> str:
    """Why a run that is not complete has no ETA."""
    slow = [r.rank for r in found.ranks if r.state in (RUNNING, WAITING) and r.eta is None]
    if slow:
        return f"{_ranks_words(slow)} without a pace yet: fewer than two checkpoints"
    return "no rank is running"


def _progress_lines(found: ProgressView) -> list[str]:
    """The summary of a run in progress, a line each (no untrusted text but the folder's name)."""
    counts = ", ".join(f"{n:,} {state}" for state, n in found.counts().items() if n)
    lines = [f"{shown_id(found.run.name)}: {found.world_size:,} ranks, at {_clock(found.now)} UTC",
             f"done: {_of(found.done, found.total)} sequences, {found.rate:,.0f} an hour"]
    if found.complete:
        lines.append("the run is complete: every rank wrote its shard")
    elif found.eta is not None:
        lines.append(f"ETA: {_eta_words(found, found.eta)} UTC, when the last running rank finishes at its pace")
    else:
        lines.append(f"ETA: - ({_no_eta(found)})")
    lines.append(f"ranks: {counts}")
    if found.stopped:
        lines.append(f"will not finish by themselves: {_ranks_words(found.stopped)} (stalled, failed or preempted)")
    slow = found.slowest(5)
    if slow and not found.complete:
        lines.append("finishing last: " + ", ".join(f"rank {r.rank} ({_clock(r.eta)[11:16]})" if r.eta is not None
                                                    else f"rank {r.rank} (no pace yet)" for r in slow))
    if found.stragglers:
        lines.append(f"stragglers (under half the median pace): {_ranks_words(found.stragglers)}")
    return lines + [f"note: {note}" for note in found.notes]


_PROGRESS_HEADERS = ["rank", "state", "done", "rate/h", "last checkpoint", "ETA (UTC)", "cause"]


def _progress_row(found: ProgressView, r: RankProgressView) -> list[str]:
    return [str(r.rank), r.state, _of(r.done, r.assigned), _rate_words(r.rate), _near(found, r.last_checkpoint),
            _eta_words(found, r.eta, near=True), "" if r.cause is None else r.cause]


_CAUSE_WIDTH = 90  # characters of a cause a line shows by default (all of it: --json, --html)


def _cause_line(cause: str, room: int) -> str:
    """A cause read from a run's files, on one terminal line: quoted where it holds a control
    character (an escape sequence must not reach the terminal), cut to ``room`` characters."""
    return _fit(cause if cause.isprintable() else repr(cause), room)


def _fit(text: str, room: int) -> str:
    """``text`` cut to ``room`` characters, its end shown as ``...`` where it was cut."""
    return text if len(text) <= room else text[: room - 3] + "..."


def _progress_table(found: ProgressView, shown: list[int], width: int | None) -> list[str]:
    """The table of the ranks ``shown``, a line each (its headers first), each cause cut to what a
    terminal ``width`` characters wide leaves of a line (by default, to 90 characters)."""
    rows = [_PROGRESS_HEADERS] + [_progress_row(found, found.ranks[rank]) for rank in shown]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_PROGRESS_HEADERS) - 1)]
    first = max(4, widths[0])
    before = first + sum(w + 2 for w in widths[1:]) + 2  # (the columns before the cause)
    room = _CAUSE_WIDTH if width is None else max(20, width - before)
    for row in rows[1:]:
        row[-1] = _cause_line(row[-1], room)
    return [f"{row[0]:>{first}}  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row[1:-1], widths[1:], strict=True))
            + f"  {row[-1]}".rstrip() for row in rows]


def _other_ranks(found: ProgressView, shown: list[int], width: int | None) -> str | None:
    """The ranks left out of the table, counted and named by state on one line (cut to ``width``),
    or None when every rank is shown."""
    seen = set(shown)
    left = [r for r in found.ranks if r.rank not in seen]
    if not left:
        return None
    by_state = {state: [r.rank for r in left if r.state == state] for state in RUN_STATES}
    rest = f"... and {len(left):,} more ranks: " + "; ".join(
        f"{state} {rank_ranges(ranks, most=6)}" for state, ranks in by_state.items() if ranks)
    return rest if width is None else _fit(rest, width)


def format_progress(found: ProgressView, *, most: int = 12, width: int | None = None) -> str:
    """A run in progress as the terminal shows it: its summary, then its ranks, one a line
    (past :data:`~virnucpro_merge.inspection.views.ALL_RANKS_UP_TO` ranks, the ``most``
    worth a look, and the others counted by state). What came from the run's files (a
    cause) is shown on one line, quoted where it holds a control character, and cut to fit
    a terminal ``width`` characters wide (by default, to 90 characters).

    Examples
    --------
    >>> from virnucpro_merge.inspection.progress import read_progress
    >>> from virnucpro_merge.synthetic import make_live_run
    >>> live = make_live_run("live", n_sequences=400, world_size=4, checkpoint_every=20, stalls=(), dies=(3,),
    ...                      preempted=(), stragglers=())
    >>> _ = live.advance_to(2000)
    >>> print(format_progress(read_progress("live", now=live.moment())))  # doctest: +ELLIPSIS
    live: 4 ranks, at 2026-01-05 10:33:20 UTC
    done: 340 of 400 (85.0%) sequences, 162 an hour
    ETA: 2026-01-05 10:36:50 (in 4 min) UTC, when the last running rank finishes at its pace
    ranks: 2 finished, 1 running, 1 failed
    will not finish by themselves: rank 3 (stalled, failed or preempted)
    finishing last: rank 2 (10:36)
    <BLANKLINE>
    rank  state     done                 rate/h  last checkpoint  ETA (UTC)            cause
       0  finished  100 of 100 (100.0%)  -       10:19:28         -
       1  finished  100 of 100 (100.0%)  -       10:25:45         -
       2  running   80 of 100 (80.0%)    162     10:29:25         10:36:50 (in 4 min)
       3  failed    60 of 100 (60.0%)    -       10:26:45         -                    RuntimeError: ...
    """
    lines = _progress_lines(found)
    shown = progress_in_focus(found, most)
    table = _progress_table(found, shown, width)
    rest = _other_ranks(found, shown, width)
    if rest is not None:
        table.append(rest)
    return "\n".join([*lines, "", *(line.rstrip() for line in table)])


def _progress_bar(found: ProgressView) -> Markup:
    """One small square a rank, coloured by its state, its words on hover (every rank, even at 1,024)."""
    cells = "".join(f'<span title="{escape(f"rank {r.rank}: {r.state}")}" style="display: inline-block; width: 9px; '
                    f'height: 9px; margin: 0 1px 1px 0; background: {RUN_STATE_COLORS.get(r.state, "#999999")};">'
                    "</span>" for r in found.ranks)
    legend = " ".join(f"{_badge(state, RUN_STATE_COLORS[state])} {n:,}" for state, n in found.counts().items() if n)
    return Markup(f'<div style="line-height: 0; max-width: 66em;">{cells}</div><p>{legend}</p>')


def progress_html(found: ProgressView, *, most: int = 40) -> str:
    """How a run in progress shows in a notebook (and in ``watch --html``'s page): its summary,
    a square per rank coloured by state, and a table of its ranks (past
    :data:`~virnucpro_merge.inspection.views.ALL_RANKS_UP_TO`, those worth a look, every
    rank folded beneath). Everything read from the run's files goes through :func:`escape`."""
    rows = [[*_progress_row(found, r)[:1], _badge(r.state, RUN_STATE_COLORS.get(r.state)),
             *_progress_row(found, r)[2:]] for r in found.ranks]
    look = set(progress_in_focus(found, most))
    table = _folded(_PROGRESS_HEADERS, rows, [True, False, True, True, False, False, False],
                    [r.rank in look for r in found.ranks], "rank")
    return (f'<div class="virnucpro-progress">{_items(_progress_lines(found))}{_progress_bar(found)}'
            f"{table}</div>")


def progress_page(found: ProgressView, *, refresh: float | None = None) -> str:
    """A self-contained HTML page of a run in progress (``watch --html``): :func:`progress_html`,
    reloading itself every ``refresh`` seconds (a ``<meta http-equiv="refresh">``; none without).

    >>> from virnucpro_merge.inspection.progress import read_progress
    >>> from virnucpro_merge.synthetic import make_live_run
    >>> live = make_live_run("live", n_sequences=80, world_size=2, checkpoint_every=10, stalls=(), dies=(),
    ...                      preempted=(), stragglers=())
    >>> page = progress_page(read_progress("live", now=live.moment()), refresh=30)
    >>> '<meta http-equiv="refresh" content="30">' in page, "<script" in page
    (True, False)
    """
    reload = f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">' if refresh else ""
    title = escape(f"{found.run.name}: {found.done:,} of {'?' if found.total is None else f'{found.total:,}'} done")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{reload}<title>{title}</title>'
            '<style>body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; } '
            "ul { padding-left: 1.2em; } li { margin: 0.15em 0; }</style></head>"
            f"<body><h1>Watching {escape(found.run.name)}</h1>{progress_html(found)}"
            f"<p style=\"color: #666;\">Read from the run's files at {escape(_clock(found.now))} UTC"
            f"{f'; this page reloads itself every {max(1, round(refresh))} s' if refresh else ''}.</p>"
            "</body></html>\n")


def progress_frame(found: ProgressView) -> pd.DataFrame:
    """The ranks of a run in progress as a pandas DataFrame, one row per rank (indexed by rank):
    ``state`` (a categorical of every state), ``done``, ``assigned``, ``rate`` (sequences an
    hour), ``eta`` and ``last_checkpoint`` (UTC), ``checkpoints``, ``in_progress`` and
    ``cause`` (an empty string for none)."""
    import pandas as pd

    ranks = found.ranks
    return pd.DataFrame(
        {
            "state": pd.Categorical([r.state for r in ranks], categories=list(RUN_STATES)),
            "done": [r.done for r in ranks],
            "assigned": pd.array([r.assigned for r in ranks], dtype="Int64"),
            "rate": [np.nan if r.rate is None else r.rate for r in ranks],
            "eta": pd.to_datetime([r.eta for r in ranks]),
            "last_checkpoint": pd.to_datetime([r.last_checkpoint for r in ranks]),
            "checkpoints": [r.checkpoints for r in ranks],
            "in_progress": [r.in_progress for r in ranks],
            "cause": [r.cause or "" for r in ranks],
        },
        index=pd.RangeIndex(found.world_size, name="rank"),
    )
