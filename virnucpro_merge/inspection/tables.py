"""Every text table of the viewing wing: a run's per-rank summary and a merge's report.

Plain text (fixed-width), so that they read the same in a terminal, a notebook's
output and an nbval comparison. Paths are shown by file name only, so a table reads
the same wherever the run lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .run import ShardSummary

__all__ = ["format_shard_table", "format_report"]


def format_shard_table(shards: Sequence[ShardSummary]) -> str:
    """The per-shard summary as a fixed-width text table (one line per rank).

    Paths are shown by file name only, so the table reads the same wherever the
    run lives.
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



def format_report(report: dict) -> str:
    """A merge report as a short text table, for terminals and notebooks."""
    width = max([len(Path(s["path"]).name) for s in report["shards"]] + [5])
    lines = [f"{'shard':<{width}}  {'status':<7} {'rows':>9} {'offset':>9}  problem"]
    for shard in report["shards"]:
        lines.append(
            f"{Path(shard['path']).name:<{width}}  {shard['status']:<7} "
            f"{shard['num_sequences']:>9} {shard['offset']:>9}  {shard.get('error') or ''}".rstrip()
        )
    lines.append("")
    lines.append(
        f"{report['total_sequences']} sequences of dimension {report['embedding_dim']} "
        f"from {len(report['shards']) - len(report['failed_shards'])} of {len(report['shards'])} shards"
    )
    if report["failed_shards"]:
        names = ", ".join(Path(p).name for p in report["failed_shards"])
        lines.append(f"failed shards: {len(report['failed_shards'])} ({names})")
    if report.get("num_expected") is not None:
        lines.append(f"missing sequences: {report['num_missing']} of {report['num_expected']} expected")
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
    lines.append(f"partial: {report['partial']}")
    return "\n".join(lines)
