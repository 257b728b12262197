"""Work shared out to several processes of this machine, where that is safe and helps.

A pool's processes are forked (Linux): they start at once, and what they are handed
at the start (a lookup table built here) is theirs without a copy. Elsewhere (macOS,
Windows) the work is done in this process, as it is with one usable core.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

__all__ = ["usable_cpus", "pool"]


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
    """
    if workers < 2 or not sys.platform.startswith("linux"):
        yield None
        return
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=initializer, initargs=initargs)
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
