"""A cache of open files: the most recently used stay open, at most a few at a time.

A merge in index order reads rows from every shard in turn, and a re-run reads
records from every FASTA file its index names; reopening a file for each read would
cost more than the read. One cache serves both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

__all__ = ["OpenFiles"]


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
