"""The merge report: the run's provenance, stored inside the merged file.

Layout inside the output (beside ``embeddings`` and ``sequence_ids``)::

    merge_report/            group, attribute ``format_version``
        summary              scalar UTF-8 string: JSON of everything but the lists below
        missing_ids          (m,) variable-length UTF-8 strings, sorted
        missing_positions    (m,) int64: index positions of the missing IDs
                             (only for ``order="index"``)

The summary is a dataset rather than an attribute so that a run of thousands of
shards never meets HDF5's 64 KiB attribute limit.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._version import __version__
from .errors import MergeError
from .plan import MergePlan
from .shards import REPORT_GROUP, open_shard, read_report_summary
from .sources import source_problems

__all__ = ["FORMAT_VERSION", "MergeReport", "build_report", "record_nonfinite", "write_report", "read_merge_report"]

logger = logging.getLogger("virnucpro_merge")

FORMAT_VERSION = 1
#: Report fields kept as datasets (they grow with the run), with their HDF5 types.
_ARRAYS = {"missing_ids": h5py.string_dtype(), "missing_positions": np.dtype("int64")}


class MergeReport(dict):
    """The report of a merge: a plain ``dict`` (see :func:`~virnucpro_merge.read_merge_report`) that, in a
    notebook, shows itself as its findings and a table of the input shards."""

    def _repr_html_(self) -> str:
        from .inspection.tables import report_html  # the viewing wing draws; it needs no extra

        return report_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .inspection.tables import format_report

        printer.text(format_report(self))


def _lineage(plan: MergePlan) -> list[dict]:
    """The earlier merges this one takes as input (a re-run loop), in input order."""
    keep = ("created_at", "total_sequences", "partial", "num_missing", "failed_shards")
    return [
        {"path": str(s.path), **{k: s.merged_from.get(k) for k in keep}}
        for s in plan.shards
        if s.merged_from is not None
    ]


def build_report(plan: MergePlan, chunk_size: int, *, layout: str = "contiguous", order: str = "shards") -> dict:
    """The report of a planned merge, as the dict :func:`read_merge_report` returns."""
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"virnucpro_merge {__version__}",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "total_sequences": plan.total_sequences,
        "embedding_dim": plan.embedding_dim,
        "chunk_size": chunk_size,
        "layout": layout,
        "order": order,
        "partial": plan.partial,
        "shards": [
            {
                "path": str(s.path),
                "num_sequences": s.num_sequences,
                "offset": s.offset if order == "shards" else None,
                "status": s.status,
                "dtype": None if s.dtype is None else str(s.dtype),
                "error": s.error,
                "merged": s.merged_from is not None,
                "nonfinite_rows": 0,
            }
            for s in plan.shards
        ],
        "failed_shards": [str(s.path) for s in plan.failed_shards],
        "lineage": _lineage(plan),
        "num_expected": plan.num_expected,
        "num_missing": len(plan.missing_ids),
        "num_extra": plan.num_extra,
        "nonfinite_rows": 0,
        "missing_ids": list(plan.missing_ids),
    }


def record_nonfinite(report: dict, counts: dict[str, int] | None) -> None:
    """Put the rows holding NaN or Inf, per shard path, into ``report`` (None: not counted)."""
    for shard in report["shards"]:
        shard["nonfinite_rows"] = None if counts is None else counts.get(shard["path"], 0)
    report["nonfinite_rows"] = None if counts is None else sum(counts.values())


def write_report(handle: h5py.File, report: dict) -> None:
    """Store ``report`` in an open output file."""
    group = handle.create_group(REPORT_GROUP)
    group.attrs["format_version"] = FORMAT_VERSION
    summary = {k: v for k, v in report.items() if k not in _ARRAYS}
    group.create_dataset("summary", data=json.dumps(summary), dtype=h5py.string_dtype())
    for name, dtype in _ARRAYS.items():
        if name in report:
            values = report[name]
            data = np.array(values, dtype=object if dtype.kind == "O" else dtype)
            group.create_dataset(name, data=data, shape=(len(values),), dtype=dtype)


def read_merge_report(merged_path: str | os.PathLike[str]) -> MergeReport:
    """Read the provenance a merge stored in its output.

    For a virtual output, every source shard is checked too: any that is missing or
    changed since the merge is listed in ``source_problems`` and logged as a warning
    (reads of its rows would silently give NaN).

    Parameters
    ----------
    merged_path : path-like
        A file written by :func:`aggregate_shards`.

    Returns
    -------
    MergeReport
        A ``dict``: ``total_sequences``, ``embedding_dim``, ``partial``, ``shards`` (each with
        ``path``, ``num_sequences``, ``offset``, ``status``: ``ok``, ``empty``
        or ``failed``, ``error``, ``nonfinite_rows``), ``failed_shards``,
        ``missing_ids``, ``num_missing``, ``num_extra``, ``num_expected``,
        ``nonfinite_rows``, ``layout`` (``contiguous`` or ``virtual``), ``order``
        (``shards`` or ``index``), ``lineage`` (earlier merges taken as input),
        ``chunk_size``, ``created_by`` and ``created_at``; for a virtual output
        ``sources`` and ``source_problems``; for ``order="index"``,
        ``missing_positions``.

    Raises
    ------
    MergeError
        The file is unreadable or carries no merge report (a plain shard).

    Examples
    --------
    >>> from virnucpro_merge import aggregate_shards
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(1,), empty=(), short={})
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5", run.index, partial=True)
    >>> report = read_merge_report(merged)
    >>> report["partial"], report["num_missing"], report["failed_shards"]
    (True, 4, ['run/shard_1.h5'])
    >>> [(s["path"], s["status"]) for s in report["shards"]]
    [('run/shard_0.h5', 'ok'), ('run/shard_1.h5', 'failed'), ('run/shard_2.h5', 'ok')]
    """
    path = Path(merged_path)
    with open_shard(path) as handle:
        report = read_report_summary(handle, path)
        if report is None:
            msg = f"{path}: not a merged output (no '{REPORT_GROUP}' in it)"
            raise MergeError(msg)
        group = handle[REPORT_GROUP]
        try:
            for name, dtype in _ARRAYS.items():
                if name in group:
                    values = group[name].asstr()[:] if dtype.kind == "O" else group[name][:]
                    report[name] = values.tolist()
        except (OSError, ValueError) as err:
            msg = f"{path}: damaged merge report ({err})"
            raise MergeError(msg) from err
    if report.get("layout") == "virtual":
        report["source_problems"] = source_problems(path, report.get("sources", []))
        for problem in report["source_problems"]:
            logger.warning("%s: its rows read as NaN (or from a same-named file in the current folder)", problem)
    return MergeReport(report)
