"""Every output the package writes: whole or not at all, and never onto one of its inputs.

The data goes to a hidden temporary file beside the target
(``.<name>.<host>.<pid>.<random>.partial``, :func:`temp_path`; a name too long for
that is cut and ends in a hash of the whole), which is flushed to disk and then
renamed onto the target with :func:`os.replace`. On any failure, ``KeyboardInterrupt``
included, the temporary file is removed and an existing target is left untouched.

A merge killed outright (SIGKILL, power loss) cannot clean up; the next merge into
the same target removes such stale temporary files: those of this host whose process
is gone. Temporary files of live processes and of other hosts are left alone.

This module also owns the checks made before the first byte: enough free space
(:func:`room_problem`), and an output that is none of the inputs
(:func:`refuse_overwriting`). Every writer uses both: the merge, ``materialize``, the
re-run FASTA and ID lists, the HTML report.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import resource
import secrets
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ._files import file_key
from .errors import OutputError

__all__ = [
    "TEMP_SUFFIX",
    "HOST",
    "temp_path",
    "Pending",
    "atomic_output",
    "room_problem",
    "check_output_folder",
    "check_room",
    "refuse_overwriting",
    "remove_stale_temps",
]

logger = logging.getLogger("virnucpro_merge")

TEMP_SUFFIX = ".partial"
#: This machine's name as temp names carry it (so that another node's merges are left alone).
HOST = (re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host")[:63]
_TEMP_TAIL = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
_NAME_MAX = 255  # bytes in a file name, on every filesystem a merge is likely to write to
_TAIL_MAX = len(f".{'x' * 63}.{2**22}.{'0' * 8}{TEMP_SUFFIX}")  # the longest tail: host, pid, token


def _temp_stem(target: Path) -> str:
    """``.<name>``, the start of every temp name of ``target`` -- cut to leave room for the
    tail, and then ending in ``~`` and a hash of the whole name (so no two targets share it)."""
    name = target.name
    room = _NAME_MAX - _TAIL_MAX - 1
    if len(os.fsencode(name)) <= room:
        return f".{name}"
    mark = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    cut = name
    while len(os.fsencode(cut)) > room - len(mark):
        cut = cut[:-1]
    return f".{cut}{mark}"


def temp_path(target: Path, *, host: str = HOST, pid: int | None = None, token: str | None = None) -> Path:
    """The temp file beside ``target`` of a merge by process ``pid`` (this one) on ``host``."""
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(4) if token is None else token
    return target.with_name(f"{_temp_stem(target)}.{host}.{pid}.{token}{TEMP_SUFFIX}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temp files of ``target`` left by killed merges on this host; return them."""
    prefix = _temp_stem(target)
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        match = _TEMP_TAIL.search(name) if name.startswith(prefix) else None
        if match is None or match.start() != len(prefix):
            continue
        if match["host"] != HOST or _process_alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        logger.info("Removed %s, left by a merge that was killed", entry)
        removed.append(entry)
    return removed


def _create_temp(target: Path) -> Path:
    """Create an empty, uniquely named temp file beside ``target`` (mode as umask allows)."""
    while True:
        temp = temp_path(target)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            msg = f"{target}: cannot write in folder {target.parent} ({os.strerror(err.errno or errno.EIO)})"
            raise OutputError(msg) from err
        os.close(fd)
        return temp


def _size(nbytes: float) -> str:
    unit = "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            break
        nbytes /= 1024
    return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"


def room_problem(target: Path, nbytes: int) -> str | None:
    """Why a write of ``nbytes`` to ``target`` cannot be started (the disk or ``ulimit -f``
    cannot hold it, or the folder cannot be asked), or None."""
    try:
        stats = os.statvfs(target.parent)
    except OSError as err:
        return f"{target}: cannot check the free space in {target.parent} ({err.strerror or err})"
    free = stats.f_bavail * stats.f_frsize
    if nbytes > free:
        return (f"{target}: not enough free space in {target.parent}: "
                f"the merge needs about {_size(nbytes)}, {_size(free)} is free")
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and nbytes > limit:
        return (f"{target}: the merge needs about {_size(nbytes)}, over this process's "
                f"file size limit (ulimit -f) of {_size(limit)}")
    return None


def check_room(target: Path, nbytes: int) -> None:
    """Refuse to start a write of ``nbytes`` that the disk or ``ulimit -f`` cannot hold."""
    problem = room_problem(target, nbytes)
    if problem is not None:
        raise OutputError(problem)


def check_output_folder(target: Path) -> None:
    """Refuse an output whose folder is not there, or that is a folder itself."""
    if not target.parent.is_dir():
        msg = f"{target}: output folder {target.parent} does not exist"
        raise OutputError(msg)
    if target.is_dir():
        msg = f"{target}: is a directory"
        raise OutputError(msg)


def refuse_overwriting(output: Path, inputs: Iterable[Path], problem: str) -> None:
    """Refuse an output that is one of ``inputs`` (the same path, or the same file under
    another name): ``OutputError("<output>: <problem>")``."""
    target, cwd = file_key(output), os.getcwd()
    if any(file_key(path, cwd) == target for path in inputs):
        msg = f"{output}: {problem}"
        raise OutputError(msg)


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Pending:
    """The temporary file of an :func:`atomic_output` (``path``), to write into."""

    path: Path
    discarded: bool = False

    def discard(self) -> None:
        """Throw the temporary file away at the end of the block, instead of moving it into place."""
        self.discarded = True


@contextmanager
def atomic_output(target: Path, size_hint: int = 0, *, durable: bool = True) -> Iterator[Pending]:
    """Yield the temp file to write; on success move it onto ``target`` (``durable``:
    after it reached the disk, and the rename too).

    ``size_hint`` (bytes) is checked against the free space and the file size
    limit before anything is written. On any failure, or after
    :meth:`Pending.discard`, the temp file is removed and ``target`` left as it was.
    Without ``durable`` the rename is just as atomic, but a power loss soon after
    can leave ``target`` damaged (or the old file back).
    """
    check_output_folder(target)
    if target.is_symlink():  # write where the link points (keeping the link), not over the link
        target = target.resolve()
        if not target.parent.is_dir():
            msg = f"{target}: the output's link points into a folder that does not exist"
            raise OutputError(msg)
    remove_stale_temps(target)
    check_room(target, size_hint)
    pending = Pending(_create_temp(target))
    try:
        logger.debug("phase: write %s", pending.path)
        yield pending
        if pending.discarded:
            os.unlink(pending.path)
            return
        if durable:
            logger.debug("phase: sync")
            _fsync(pending.path)
        logger.debug("phase: replace")
        os.replace(pending.path, target)
    except BaseException as err:
        with suppress(FileNotFoundError):
            os.unlink(pending.path)
        if isinstance(err, Exception) and not target.parent.is_dir():  # not the temp file's fault
            msg = f"{target}: output folder {target.parent} was removed during the merge"
            raise OutputError(msg) from err
        raise
    if durable:
        with suppress(OSError):  # not every filesystem lets a folder be fsync'ed
            _fsync(target.parent, directory=True)
