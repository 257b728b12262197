"""Work shared out to several processes of this machine, where that is safe and helps, and
the memory those processes hold.

A pool's processes are forked (Linux): they start at once, and what they are handed
at the start (a lookup table built here) is theirs without a copy. Elsewhere (macOS,
Windows) the work is done in this process, as it is with one usable core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

__all__ = ["usable_cpus", "pool", "hand_back_large_frees", "hand_back_environment", "LARGE"]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a batch job's share of a node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def pool(workers: int, *, initializer: Callable[..., object] | None = None,
         initargs: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``workers`` forked processes, each started with ``initializer(*initargs)``
    (handed over in memory, not pickled); None where there is no point (one worker) or
    no fork to be had: then do the work here.

    On the way out by an exception (Ctrl-C too), the tasks not yet started are cancelled.
    A Ctrl-C at a terminal (or a SIGTERM to the job) reaches the workers too: each ends
    at once, quietly, as the signal's default does (not a traceback each, and not left
    running its task, or past this process's end).
    """
    if workers < 2 or not sys.platform.startswith("linux"):
        yield None
        return
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_start_worker, initargs=(initializer, initargs))
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    """A pool worker's start: Ctrl-C and SIGTERM end it as they end a process by default
    (not through the handlers it was forked with), then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


#: Bytes from which a block of memory is had from the system, and handed back when freed.
LARGE = 2**20
_M_MMAP_THRESHOLD = -3  # (glibc's mallopt parameter)


def hand_back_large_frees() -> bool:
    """Have the C allocator (glibc's) give every block of :data:`LARGE` bytes or more back to
    the system as soon as it is freed; whether it could.

    By default glibc raises that bound to the largest block freed so far, and keeps the
    blocks below it for reuse: the arrays of millions of IDs a check builds and lets go of
    one after another then stay counted in the process (at 10^7 IDs, a lookup built at a
    peak of 714 MB kept 571 MB; with this, 474 MB and 338 MB). A process forked later
    keeps the setting; one started anew is given it by :func:`hand_back_environment`. The
    command line calls this before its work; a program that imports the package keeps its
    allocator as it was.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE))
    except (OSError, AttributeError):  # (another C library: musl has no mallopt)
        return False


def hand_back_environment() -> dict[str, str]:
    """What to add to the environment of a new process (the report's kernel) for its C
    allocator to do as :func:`hand_back_large_frees` does (glibc reads it as it starts;
    another C library does not look).

    >>> hand_back_environment()
    {'MALLOC_MMAP_THRESHOLD_': '1048576'}
    """
    return {"MALLOC_MMAP_THRESHOLD_": str(LARGE)}
