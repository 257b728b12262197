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

__all__ = ["usable_cpus", "pool_size", "MAX_PROCESSES", "pool", "hand_back_large_frees", "keep_large_frees",
           "hand_back_environment", "LARGE"]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a batch job's share of a node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: Processes a pool shares work out to at most: each sends its answers to this one, which
#: takes them in one at a time (and each holds a few pieces of work in memory).
MAX_PROCESSES = 8


def pool_size(tasks: int | None = None) -> int:
    """The processes to share ``tasks`` pieces of work out to (None: as many as come): one
    a usable core, at most :data:`MAX_PROCESSES`, and no more than there are pieces (at
    least one).

    >>> 1 <= pool_size(3) <= 3, pool_size(0), pool_size() == min(usable_cpus(), MAX_PROCESSES)
    (True, 1, True)
    """
    return max(1, min(usable_cpus(), MAX_PROCESSES, MAX_PROCESSES if tasks is None else tasks))


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
    (not through the handlers it was forked with); its freed blocks kept for reuse
    (:func:`keep_large_frees`); then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    keep_large_frees()
    if initializer is not None:
        initializer(*initargs)


#: Bytes from which a block of memory is had from the system, and handed back when freed.
LARGE = 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # (glibc's mallopt parameters)
#: glibc's own bound (64-bit) past which a block is always had from the system, and twice it:
#: how much free memory at the top of the heap it keeps at most, once its bounds have grown.
_KEPT_BELOW, _KEPT_AT_TOP = 32 * 2**20, 64 * 2**20


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Set glibc's allocator's ``(parameter, value)`` pairs; whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all([libc.mallopt(parameter, value) for parameter, value in settings])
    except (OSError, AttributeError):  # (another C library: musl has no mallopt)
        return False


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
    return _mallopt((_M_MMAP_THRESHOLD, LARGE))


def keep_large_frees() -> bool:
    """Have the C allocator (glibc's) keep freed blocks below 32 MiB for reuse, as it does
    by default once a few have been freed; whether it could. What a pool's worker does
    as it starts (:func:`pool`), whatever this process does.

    A worker reads one piece at a time (a shard's IDs, a range of an expected-ID file)
    and lets it go: its memory is a few pieces, given back when it ends. Handing back
    every freed block of :data:`LARGE` bytes instead (:func:`hand_back_large_frees`,
    which a worker forked from the command line would keep) has it fault every page of
    each piece in anew: at 10^7 IDs, ``validate``'s processes took 1.27 M page faults
    and 4.1 s of system time with it, 0.63 M and 2.8 s without, at the same peak.
    """
    return _mallopt((_M_MMAP_THRESHOLD, _KEPT_BELOW), (_M_TRIM_THRESHOLD, _KEPT_AT_TOP))


def hand_back_environment() -> dict[str, str]:
    """What to add to the environment of a new process (the report's kernel) for its C
    allocator to do as :func:`hand_back_large_frees` does (glibc reads it as it starts;
    another C library does not look).

    >>> hand_back_environment()
    {'MALLOC_MMAP_THRESHOLD_': '1048576'}
    """
    return {"MALLOC_MMAP_THRESHOLD_": str(LARGE)}
