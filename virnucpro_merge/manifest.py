"""What a run's workers claim of themselves: the pipeline's manifest, and their logs.

The pipeline keeps ``checkpoints/manifest.json`` (each rank's status, error, retries,
checkpoint times) and ``logs/worker_<rank>.log`` (appended to across retries). Both are
hints: the manifest is updated under a lock that can lose updates, and a worker killed
outright writes nothing more; the checkpoint and shard files are the truth. So nothing
here fails a merge: a damaged manifest is read as no manifest (its problem said), a log
that is not UTF-8 is read with its bad bytes replaced (and said so), and a huge log is
read from its tail only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._files import open_input

__all__ = ["MANIFEST_NAME", "RankClaim", "Manifest", "read_manifest", "LogTail", "read_log_tail", "log_path",
           "Progress", "stop_line", "status_words"]

#: Where the pipeline keeps its manifest, in its checkpoints folder.
MANIFEST_NAME = "manifest.json"
_STATUS_WORDS = re.compile(rb'"(?:status|error)"\s*:\s*"((?:[^"\\]|\\.)*)"')  # (a string's escapes kept)
_MAX_MANIFEST = 64 * 2**20  # bytes: a manifest of 1,024 ranks and thousands of checkpoints is a few MB
_TAIL = 2**20  # bytes of a log read from its end
_COUNT_LINES_UP_TO = 64 * 2**20  # a log up to this size has its lines counted (for "line N")
#: A log line of the pipeline: "2026-01-05 10:20:30,123 - Worker 6 - name - ERROR - message".
_LEVEL = re.compile(r" - (ERROR|CRITICAL) - ")
#: The last line of a Python traceback: "RuntimeError: CUDA error: an illegal memory access ...".
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)(?:: \S.*)?$")


@dataclass(frozen=True)
class RankClaim:
    """What the manifest says of one rank (each field None where it says nothing usable)."""

    rank: int
    status: str | None = None  # in_progress, complete or failed
    error: str | None = None
    retry_count: int | None = None
    assigned_rank: int | None = None
    last_checkpoint_batch: int | None = None
    last_checkpoint_time: str | None = None
    failed_at: str | None = None
    completed_at: str | None = None
    total_sequences: int | None = None


@dataclass(frozen=True)
class Manifest:
    """The manifest of a run, as far as it can be read."""

    path: Path | None
    world_size: int | None = None
    ranks: dict[int, RankClaim] = field(default_factory=dict)
    #: why it could not be read (the files are read instead), or None
    problem: str | None = None


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _claim(rank: int, entry: dict[str, Any]) -> RankClaim:
    return RankClaim(
        rank=rank, status=_text_or_none(entry.get("status")), error=_text_or_none(entry.get("error")),
        retry_count=_int_or_none(entry.get("retry_count")), assigned_rank=_int_or_none(entry.get("assigned_rank")),
        last_checkpoint_batch=_int_or_none(entry.get("last_checkpoint_batch")),
        last_checkpoint_time=_text_or_none(entry.get("last_checkpoint_time")),
        failed_at=_text_or_none(entry.get("failed_at")), completed_at=_text_or_none(entry.get("completed_at")),
        total_sequences=_int_or_none(entry.get("total_sequences")))


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The pipeline's manifest: each rank's claims. Never raises for what is in the file: a
    damaged one comes back with its ``problem`` and no claims.

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("manifest.json").write_text('{"world_size": 2, "shards": {"1": {"status": "failed", "error": "OOM"}}}')
    >>> found = read_manifest("manifest.json")
    >>> found.world_size, found.ranks[1].status, found.ranks[1].error
    (2, 'failed', 'OOM')
    >>> _ = Path("manifest.json").write_text('{"world_size": 2, "shards"')
    >>> read_manifest("manifest.json").problem
    "manifest.json: damaged manifest (Expecting ':' delimiter: line 1 column 27 (char 26)): the files are read instead"
    """
    path = Path(path)
    try:
        with open_input(path, "manifest", ValueError, regular=True) as handle:
            data = handle.read(_MAX_MANIFEST + 1)
        if len(data) > _MAX_MANIFEST:
            why = f"{path}: a manifest of more than {_MAX_MANIFEST:,} bytes is not read: the files are read instead"
            return Manifest(path, problem=why)
        content = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        why = str(err).removeprefix(f"{path}: ").splitlines()[0] if str(err) else type(err).__name__
        return Manifest(path, problem=f"{path}: damaged manifest ({why}): the files are read instead")
    shards = content.get("shards") if isinstance(content, dict) else None
    if not isinstance(shards, dict):
        return Manifest(path, problem=f"{path}: damaged manifest (no 'shards' object): the files are read instead")
    ranks = {int(key): _claim(int(key), entry) for key, entry in shards.items()
             if isinstance(key, str) and re.fullmatch(r"0|[1-9][0-9]{0,8}", key) and isinstance(entry, dict)}
    return Manifest(path, world_size=_int_or_none(content.get("world_size")), ranks=ranks)


@dataclass(frozen=True)
class LogTail:
    """The end of a worker's log: its last error, and where it is."""

    path: Path
    last_error: str | None = None
    line: int | None = None  # the error's line number (None where the log is too large to count its lines)
    not_utf8: bool = False


def log_path(logs: Path, rank: int) -> Path:
    """``<logs>/worker_<rank>.log``, where the pipeline logs worker ``rank``."""
    return logs / f"worker_{rank}.log"


def read_log_tail(path: str | os.PathLike[str]) -> LogTail | None:
    """The last error a worker logged (a line at ERROR or CRITICAL, or an exception's last
    line), read from the log's last MiB; None where there is no log.

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("worker_6.log").write_text("2026-01-05 10:20:30,123 - Worker 6 - x - INFO - started\\n"
    ...     "RuntimeError: CUDA error: an illegal memory access was encountered\\n")
    >>> tail = read_log_tail("worker_6.log")
    >>> tail.last_error, tail.line
    ('RuntimeError: CUDA error: an illegal memory access was encountered', 2)
    """
    path = Path(path)
    try:
        with open_input(path, "log", OSError, regular=True) as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL)
            handle.seek(max(0, start - 1))
            data = handle.read(_TAIL + (1 if start else 0))
            before = _lines_before(handle, start) if size <= _COUNT_LINES_UP_TO else None
    except OSError as err:
        if "does not exist" in str(err) or "is a directory" in str(err):
            return None
        return LogTail(path)
    if start:  # from the first whole line of the tail (its first byte is the one before the tail's start)
        cut = data.find(b"\n")
        data = data[cut + 1 :]
        before = None if before is None or cut < 0 else before + (cut > 0)
    try:
        text, not_utf8 = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, not_utf8 = data.decode("utf-8", "replace"), True
    lines = text.split("\n")  # (line breaks as the line count counts them)
    for number in range(len(lines) - 1, -1, -1):
        line = lines[number].strip()
        if _LEVEL.search(line) or _RAISED.match(line):
            message = _LEVEL.split(line, maxsplit=1)[-1] if _LEVEL.search(line) else line
            return LogTail(path, message[:300], None if before is None else before + number + 1, not_utf8)
    return LogTail(path, not_utf8=not_utf8)


def _lines_before(handle: Any, end: int) -> int:
    """How many line breaks the first ``end`` bytes of an open file hold."""
    handle.seek(0)
    count, left = 0, end
    while left > 0:
        block = handle.read(min(2**22, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


@dataclass(frozen=True)
class Progress:
    """What a rank's checkpoint files show of its work."""

    checkpoints: int = 0  # readable ones
    sequences: int = 0  # distinct IDs in them
    last_time: str | None = None  # the last one's timestamp (UTC)
    last_trigger: str | None = None  # why the last one was saved (``emergency_sigterm``: preempted)
    damaged: int = 0  # checkpoint files that cannot be read


def stop_line(rank: int, shard: str, progress: Progress, claim: RankClaim | None, log: LogTail | None) -> str:
    """One line on why rank ``rank`` did not finish: what its files show first (a SIGTERM
    checkpoint, its log's last error), then what the manifest claims; where the manifest
    says otherwise than the files (complete, without a shard), the files win and the line
    says so. ``shard`` is what its shard file is (``absent``, ``failed``, ...).

    Examples
    --------
    >>> stop_line(6, "absent", Progress(), RankClaim(6, "failed", "OOM"), None)
    'rank 6: failed: OOM (the manifest says); no checkpoint'
    >>> stop_line(7, "absent", Progress(3, 247, "2026-01-05T10:15:00", "emergency_sigterm"), None, None)
    'rank 7: stopped by SIGTERM (preempted) after 247 sequences in 3 checkpoints (the last at 2026-01-05T10:15:00)'
    """
    how, done = _how_it_stopped(shard, progress, claim, log), _work_done(progress)
    damaged = f"; {progress.damaged} damaged checkpoint{'s' if progress.damaged != 1 else ''}" if progress.damaged \
        else ""
    disagrees = (f"; the manifest says complete, but its shard is {shard}: the files win"
                 if claim is not None and claim.status == "complete" else "")
    return f"rank {rank}: {how}{done}{damaged}{disagrees}"


def _how_it_stopped(shard: str, progress: Progress, claim: RankClaim | None, log: LogTail | None) -> str:
    """How a rank stopped, as the first thing that says so tells: a SIGTERM checkpoint, its
    log's last error, the manifest, else what its shard is."""
    if progress.last_trigger == "emergency_sigterm":
        return "stopped by SIGTERM (preempted)"
    if log is not None and log.last_error:
        where = f"line {log.line}" if log.line is not None else "near its end"
        return f"failed: {log.last_error} ({log.path.parent.name}/{log.path.name} {where})"
    if claim is not None and claim.status == "failed":
        return f"failed: {claim.error or 'no error given'} (the manifest says)"
    if claim is not None and claim.status == "in_progress":
        return "stopped without an error (the manifest says it was still running)"
    return f"its shard is {shard}, and nothing says why"


def _work_done(progress: Progress) -> str:
    """What a rank's checkpoints show it did before it stopped, as :func:`stop_line` says it."""
    if not progress.checkpoints:
        return "; no checkpoint"
    last = f" (the last at {progress.last_time})" if progress.last_time else ""
    return (f" after {progress.sequences:,} sequences in {progress.checkpoints} checkpoint"
            f"{'s' if progress.checkpoints != 1 else ''}{last}")


def status_words(path: str | os.PathLike[str]) -> tuple[bytes, ...] | None:
    """Every ``status`` and ``error`` value the manifest's bytes hold, in order (quick: one
    regular expression, no JSON parsed: 1 ms for 1 MB). A watcher parses the manifest again
    only when these change: a rank that fails, one that is retried, a new error. None where
    the manifest cannot be read (or is too large to be), so that :func:`read_manifest` says why.

    >>> from pathlib import Path
    >>> _ = Path("manifest.json").write_text('{"shards": {"1": {"status": "failed", "error": "OOM"}, '
    ...                                      '"2": {"status": "in_progress"}}}')
    >>> status_words("manifest.json")
    (b'failed', b'OOM', b'in_progress')
    """
    try:
        with open_input(path, "manifest", OSError, regular=True) as handle:
            data = handle.read(_MAX_MANIFEST + 1)
    except OSError:
        return None
    return None if len(data) > _MAX_MANIFEST else tuple(_STATUS_WORDS.findall(data))
