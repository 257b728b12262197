"""The merge report: the run's provenance, stored inside the merged file.

Layout inside the output (beside ``embeddings`` and ``sequence_ids``)::

    merge_report/            group, attributes ``format_version`` and ``summary_crc32``
        summary              scalar UTF-8 string: JSON of everything but the tables below
        missing_ids          (m,) variable-length UTF-8 strings, sorted
        missing_positions    (m,) int64: index positions of the missing IDs
                             (only for ``order="index"``)
        embedding_checksums  the checksums of the rows and of the IDs
        id_checksums         (:mod:`virnucpro_merge.checksums`)

The summary is a dataset rather than an attribute so that a run of thousands of
shards never meets HDF5's 64 KiB attribute limit.

Every stored part is covered (format 2): the summary lists each table with its CRC-32
(``checksums.tables``), and the group's ``summary_crc32`` is the CRC-32 of the summary's
own bytes. What is derivable is cross-checked as well (:func:`report_problems`): a
removed table, a flipped bit in a count, an edited status, all show.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._version import __version__
from .checksums import ALGORITHM, ID_TABLE, ROW_TABLE, ids_crc, table_crc
from .errors import MergeError
from .health import RankHealth
from .plan import MergePlan
from .shards import REPORT_GROUP, open_shard, read_report_summary
from .sources import source_problems
from .statuses import ShardStatus, unfinished

__all__ = ["FORMAT_VERSION", "SUMMARY_CRC", "MergeReport", "build_report", "record_nonfinite", "record_health",
           "write_report",
           "seal", "report_problems", "read_merge_report"]

logger = logging.getLogger("virnucpro_merge")

#: The report's format: 2 covers every stored part with a checksum (1: the rows and IDs only).
FORMAT_VERSION = 2
#: The report group's attribute holding the CRC-32 of the summary's bytes.
SUMMARY_CRC = "summary_crc32"
#: Report fields kept as datasets (they grow with the run), with their HDF5 types.
_ARRAYS = {"missing_ids": h5py.string_dtype(), "missing_positions": np.dtype("int64")}


class MergeReport(dict[str, Any]):
    """The report of a merge: a plain ``dict`` (see :func:`~virnucpro_merge.read_merge_report`) that, in a
    notebook, shows itself as its findings and a table of the input shards."""

    def _repr_html_(self) -> str:
        from .inspection.tables import report_html  # the viewing wing draws; it needs no extra

        return report_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .inspection.tables import format_report

        printer.text(format_report(self))


def _lineage(plan: MergePlan) -> list[dict[str, Any]]:
    """The earlier merges this one takes as input (a re-run loop), in input order."""
    keep = ("created_at", "total_sequences", "partial", "num_missing", "failed_shards")
    return [
        {"path": str(s.path), **{k: s.merged_from.get(k) for k in keep}}
        for s in plan.shards
        if s.merged_from is not None
    ]


def build_report(plan: MergePlan, chunk_size: int, *, layout: str = "contiguous", order: str = "shards"
                 ) -> dict[str, Any]:
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
                **({} if s.salvage is None else {"salvage": s.salvage.summary()}),
            }
            for s in plan.shards
        ],
        "failed_shards": [str(s.path) for s in plan.unfinished_shards],
        "lineage": _lineage(plan),
        "num_expected": plan.num_expected,
        "num_missing": len(plan.missing_ids),
        "num_extra": plan.num_extra,
        "nonfinite_rows": 0,
        "missing_ids": list(plan.missing_ids),
    }


def record_nonfinite(report: dict[str, Any], counts: dict[str, int] | None) -> None:
    """Put the rows holding NaN or Inf, per shard path, into ``report`` (None: not counted)."""
    for shard in report["shards"]:
        shard["nonfinite_rows"] = None if counts is None else counts.get(shard["path"], 0)
    report["nonfinite_rows"] = None if counts is None else sum(counts.values())


def record_health(report: dict[str, Any], health: Mapping[str, RankHealth | None]) -> None:
    """Put each shard's embedding health (:mod:`.health`), by path, into its record of ``report``."""
    for shard in report["shards"]:
        found = health.get(shard["path"])
        if found is not None:
            shard["health"] = found.to_record()


def write_report(handle: h5py.File, report: dict[str, Any], tables: Mapping[str, np.ndarray] | None = None) -> None:
    """Store ``report`` in an open output file, with ``tables`` (the checksums of its rows and
    IDs), every part covered by a checksum (:func:`seal`)."""
    group = handle.create_group(REPORT_GROUP)
    arrays = {name: np.array(report[name], dtype=object if dtype.kind == "O" else dtype).reshape(-1)
              for name, dtype in _ARRAYS.items() if name in report}
    arrays.update(tables or {})
    for name, data in arrays.items():
        group.create_dataset(name, data=data, dtype=_ARRAYS.get(name, data.dtype))
    seal(group, {k: v for k, v in report.items() if k not in _ARRAYS}, arrays)


def seal(group: h5py.Group, summary: dict[str, Any], tables: Mapping[str, np.ndarray]) -> None:
    """Write ``summary`` into a report's group, with the CRC-32 of each of ``tables`` (the
    group's datasets, as stored) in it and the CRC-32 of its own bytes beside it."""
    checksums = {**summary.get("checksums", {}), "tables": {name: table_crc(data) for name, data in tables.items()}}
    text = json.dumps({**summary, "format_version": FORMAT_VERSION, "checksums": checksums})
    if "summary" in group:
        del group["summary"]
    group.create_dataset("summary", data=text, dtype=h5py.string_dtype())
    group.attrs["format_version"] = FORMAT_VERSION
    group.attrs[SUMMARY_CRC] = zlib.crc32(text.encode())


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def report_problems(group: h5py.Group, summary: Mapping[str, Any], missing: list[str]) -> list[str]:
    """What is wrong with a stored report by itself, without reading the rows: each part
    against its checksum (format 2), and what is derivable against what it derives from.

    Parameters
    ----------
    group : h5py.Group
        The file's ``merge_report`` group.
    summary : mapping
        Its summary, as read (:func:`~virnucpro_merge.shards.read_report_summary`).
    missing : list of str
        Its missing IDs, as read.

    Returns
    -------
    list of str
        One line per problem (empty: none found).
    """
    return [*_stored_problems(group, summary, missing), *_status_problems(summary, missing),
            *_offset_problems(summary), *_count_problems(summary, missing)]


def _status_problems(summary: Mapping[str, Any], missing: list[str]) -> list[str]:
    """The failed shards, the shards' statuses and ``partial``, against each other."""
    problems = []
    failed = Counter(summary["failed_shards"])
    paths = {s["path"] for s in summary["shards"]}
    known = summary.get("num_expected") is not None
    wrong = {s["path"] for s in summary["shards"] if unfinished(s["status"], known) != (s["path"] in failed)}
    wrong |= {path for path, times in failed.items() if times > 1}  # listed twice
    if "materialized_from" not in summary:  # (a materialized output lists its virtual input's failed shards,
        wrong |= set(failed) - paths        # and its shards are the sources it was copied from)
    if wrong:
        problems.append("the report's failed_shards and its shards' statuses disagree on "
                        f"{', '.join(sorted(wrong)[:5])}")
    if summary["partial"] != (bool(failed) or bool(missing)):
        problems.append(f"the report says partial={summary['partial']}, but {_count(len(failed), 'shard')} "
                        f"failed and {_count(len(missing), 'ID')} are missing")
    return problems


def _offset_problems(summary: Mapping[str, Any]) -> list[str]:
    """The first shard not placed right after the one before it (a merge in shard order)."""
    if summary.get("order", "shards") != "shards":
        return []
    offset = 0
    for shard in (s for s in summary["shards"] if s["status"] != ShardStatus.FAILED):
        if shard["offset"] != offset:
            return [f"the report puts {shard['path']} at row {shard['offset']}, not {offset}"]
        offset += shard["num_sequences"]
    return []


def _count_problems(summary: Mapping[str, Any], missing: list[str]) -> list[str]:
    """The missing IDs (counted, sorted) and the counts, against what they derive from."""
    problems = []
    if len(missing) != summary.get("num_missing", len(missing)):
        problems.append(f"the report lists {len(missing)} missing IDs, its summary says {summary['num_missing']}")
    if any(a >= b for a, b in itertools.pairwise(missing)):
        problems.append("the report's missing IDs are not sorted and distinct")
    expected, extra, rows = summary.get("num_expected"), summary.get("num_extra", 0), summary["total_sequences"]
    if expected is not None and expected - len(missing) + extra != rows:
        problems.append(f"the report's counts disagree: {expected:,} expected - {len(missing):,} missing + "
                        f"{extra:,} not expected is not its {rows:,} rows")
    if expected is None and (missing or extra):
        problems.append("the report counts missing or unexpected IDs, but no expected ones")
    return problems


def _stored_problems(group: h5py.Group, summary: Mapping[str, Any], missing: list[str]) -> list[str]:
    """Each stored part of the report against its checksum (format 2; format 1 recorded
    the missing IDs' only), and the tables its summary says it has, there."""
    version = group.attrs.get("format_version")
    version = int(version) if isinstance(version, np.integer) else version
    if summary.get("format_version", version) != version:
        return [f"the report's format version is {version!r} in its group and "
                f"{summary.get('format_version')!r} in its summary"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        return [f"its report is of format {version!r}, which this version of virnucpro-merge does not know "
                f"(it reads 1 to {FORMAT_VERSION}): it cannot be verified"]
    checksums = summary.get("checksums")
    if version == 1:
        return _format_1_problems(group, checksums, missing)
    stored, raw = group.attrs.get(SUMMARY_CRC), group["summary"][()]
    if stored is None:
        return [f"the report's summary has no checksum ('{SUMMARY_CRC}' is gone: damaged report)"]
    if zlib.crc32(raw if isinstance(raw, bytes) else str(raw).encode()) != stored:
        return ["the report's summary does not match the checksum the merge recorded"]
    tables = checksums.get("tables") if isinstance(checksums, dict) else None
    if not isinstance(checksums, dict) or not isinstance(tables, dict):
        return ["the report's summary lists no checksums of its tables (damaged report)"]
    problems = []
    if checksums.get("algorithm") != ALGORITHM:
        problems.append(f"the report names checksums of a kind this version does not know "
                        f"({checksums.get('algorithm')!r}): its rows cannot be checked")
    return problems + _table_problems(group, summary, tables, missing)


def _format_1_problems(group: h5py.Group, checksums: object, missing: list[str]) -> list[str]:
    """A file of the previous version: its IDs' table there, its missing IDs' CRC."""
    if not isinstance(checksums, dict):
        return []  # merged before checksums existed (verify says so)
    if ID_TABLE not in group:
        return [f"the report says its IDs were checksummed, but '{ID_TABLE}' is gone (damaged report)"]
    recorded = checksums.get("missing_ids")
    if isinstance(recorded, int) and ids_crc(missing) != recorded:
        return ["the report's missing IDs do not match the checksum the merge recorded"]
    return []


def _table_problems(group: h5py.Group, summary: Mapping[str, Any], tables: dict[str, Any], missing: list[str]
                    ) -> list[str]:
    """Every table the report needs listed, every listed table there and as recorded, none other."""
    needed = {ID_TABLE, "missing_ids"} | ({ROW_TABLE} if summary.get("layout") != "virtual" else set()) | (
        {"missing_positions"} if summary.get("order") == "index" else set())
    problems = [f"the report's summary does not list its '{name}' table (damaged report)"
                for name in sorted(needed - set(tables))]
    for name, crc in tables.items():
        if name not in group:
            problems.append(f"the report's '{name}' table is gone (damaged report)")
            continue
        try:
            values = np.array(missing, dtype=object) if name == "missing_ids" else group[name][()]
        except (OSError, ValueError, TypeError) as err:
            problems.append(f"the report's '{name}' table cannot be read ({err})")
            continue
        if table_crc(np.asarray(values)) != crc:
            problems.append(f"the report's '{name}' table does not match the checksum the merge recorded")
    problems += [f"the report holds '{name}', which its summary does not list (damaged report)"
                 for name in sorted(set(group) - set(tables) - {"summary"})]
    return problems


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
        if "missing_ids" not in group:
            msg = f"{path}: damaged merge report (its 'missing_ids' table is gone)"
            raise MergeError(msg)
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
