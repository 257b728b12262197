"""Work shared out to several processes of this machine, where that is safe and helps.

A pool's processes are forked (Linux): they start at once, and they inherit what
this process holds (a lookup table built here is theirs without a copy). Elsewhere
(macOS, Windows) the work is done in this process, as it is with one usable core.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["usable_cpus", "pool"]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a batch job's share of a node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` forked processes; None where there is no point (one worker)
    or no fork to be had (then do the work here)."""
    if workers < 2 or not sys.platform.startswith("linux"):
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
