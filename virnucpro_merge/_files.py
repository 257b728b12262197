"""Files as the package tells them apart, and keeps them open.

- :func:`file_key`: what tells two names of one file apart from two files;
- :func:`fingerprint`: a file's size and modification time, changed by any rewrite;
- :func:`open_input`: a user's input file opened to read, its failures one line each;
- :class:`OpenFiles`: a cache of open files, the most recently used kept open, a few at
  a time (a merge in index order reads rows from every shard in turn, a re-run reads
  records from every FASTA file its index names: reopening a file for each read would
  cost more than the read).
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, BinaryIO, Generic, Protocol, Self, TypeVar

__all__ = ["file_key", "fingerprint", "open_input", "OpenFiles"]


def file_key(path: str | os.PathLike[str], cwd: str | None = None) -> tuple[Any, ...]:
    """What tells two names of one file apart from two files: its device and inode where it
    exists (links and hard links included), its absolute path with every link on the way
    resolved where it does not (against ``cwd``, the current directory unless given: pass
    it for many paths at once).

    >>> file_key("new/a.txt") == file_key("new/../new/./a.txt")
    True
    """
    try:
        info = os.stat(path)
    except OSError:
        return ("absent", os.path.realpath(os.path.join(cwd or os.getcwd(), path)))
    return (info.st_dev, info.st_ino)


def open_input(path: str | os.PathLike[str], kind: str, error: Callable[[str], Exception], *, shown: object = None,
               note: str = "", regular: bool = False) -> BinaryIO:
    """Open an input file to read (binary); why it cannot be is ``error("<shown>: <kind> does
    not exist<note>")``, ``"... is a directory, not a <kind><note>"`` or ``"... cannot read
    <kind> (<why>)"``, naming the file as ``shown`` (the path as the user gave it) when given.
    With ``regular``, anything but a regular file (a FIFO that would block, a device that
    never ends) is refused too, without waiting on it.
    """
    name = path if shown is None else shown
    try:
        if not regular:
            return open(path, "rb")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO opens at once, to be refused)
    except FileNotFoundError as err:
        msg = f"{name}: {kind} does not exist{note}"
        raise error(msg) from err
    except IsADirectoryError as err:
        msg = f"{name}: is a directory, not {'an' if kind[0] in 'aeiou' else 'a'} {kind}{note}"
        raise error(msg) from err
    except OSError as err:
        msg = f"{name}: cannot read {kind} ({err.strerror or err})"
        raise error(msg) from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        article = "an" if kind[0] in "aeiou" else "a"
        what = "is a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device?)"
        msg = f"{name}: {what}, not {article} {kind}{note if stat.S_ISDIR(mode) else ''}"
        raise error(msg)
    return os.fdopen(fd, "rb")


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and modification time of a file: cheap, and changed by any rewrite."""
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


class _Closable(Protocol):
    def close(self) -> object: ...


Key = TypeVar("Key", bound=Hashable)
Handle = TypeVar("Handle", bound=_Closable)


class OpenFiles(Generic[Key, Handle]):
    """``files.get(key)``: the open file of ``key``, opened with ``opener(key)`` on first use.

    At most ``limit`` files are open at once; the least recently used is closed to
    make room. ``close()`` (or leaving a ``with`` block) closes them all.
    """

    def __init__(self, opener: Callable[[Key], Handle], limit: int = 32) -> None:
        self._opener, self._limit = opener, limit
        self._open: OrderedDict[Key, Handle] = OrderedDict()

    def get(self, key: Key) -> Handle:
        handle = self._open.pop(key, None)
        if handle is None:
            handle = self._opener(key)
            if len(self._open) >= self._limit:
                self._open.popitem(last=False)[1].close()
        self._open[key] = handle
        return handle

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
