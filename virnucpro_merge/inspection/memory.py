"""How much memory a piece of work needs: sample the process RSS while it runs.

The resident set size (RSS) of the whole process is what the operating system (and
a batch scheduler's memory limit) sees, so that is what :func:`profile_memory`
records: a background thread reads it with :mod:`psutil` every ``interval`` seconds
while the callable runs. Allocations by C libraries (HDF5, numpy) count as well as
Python's own. Optionally :mod:`tracemalloc` also reports the peak of memory allocated
through Python's allocators (numpy arrays included, HDF5's internal buffers not).

Memory a program frees is often kept by the C allocator for reuse rather than handed
back to the operating system, so one call's leftovers can hide the next call's needs
(the RSS does not rise while the freed memory is reused). :func:`profile_memory`
therefore first collects garbage and, with glibc, calls ``malloc_trim(0)`` to return
free heap memory to the system before it takes the baseline.

Sampling can miss a spike shorter than ``interval``; the peak is the largest sample,
so it is a lower bound of the true peak. The numbers are not deterministic: show them,
but test conclusions drawn from them (one peak well below another), not the values.

``psutil`` comes with the ``notebooks`` extra; it is imported when a profile is taken.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MemoryProfile", "profile_memory", "release_free_memory", "MIB"]

#: Bytes in a mebibyte, for printing RSS values.
MIB = 1024**2


@dataclass(frozen=True)
class MemoryProfile:
    """The RSS time series of one call, and what the call returned.

    Attributes
    ----------
    times : numpy.ndarray
        Seconds since the call started, one per sample (float64, increasing).
    rss : numpy.ndarray
        Resident set size of the process in bytes at each time (int64).
    baseline : int
        RSS in bytes just before the call.
    peak : int
        Largest RSS sampled, in bytes (before, during or right after the call).
    elapsed : float
        Wall-clock seconds the call took.
    result : object
        What the callable returned.
    tracemalloc_peak : int or None
        With ``trace_python=True``: the peak, during the call, of bytes allocated
        through Python's allocators, above what was allocated when it started.
    """

    times: np.ndarray
    rss: np.ndarray
    baseline: int
    peak: int
    elapsed: float
    result: Any = None
    tracemalloc_peak: int | None = None

    @property
    def peak_increase(self) -> int:
        """How many bytes the peak RSS rose above the baseline (the memory the call needed)."""
        return max(self.peak - self.baseline, 0)


def release_free_memory() -> bool:
    """Collect garbage and hand free C-heap memory back to the OS (glibc only).

    Returns True when ``malloc_trim`` was available and called.

    Examples
    --------
    >>> release_free_memory()  # on glibc Linux; False where there is no malloc_trim
    True
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class _Sampler(threading.Thread):
    """Read the RSS every ``interval`` seconds until stopped."""

    def __init__(self, process: Any, interval: float, start: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._process = process
        self._interval = interval
        self._start = start
        self._stop_event = threading.Event()
        self.times: list[float] = []
        self.rss: list[int] = []

    def sample(self) -> None:
        self.rss.append(self._process.memory_info().rss)
        self.times.append(time.perf_counter() - self._start)

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def profile_memory(
    func: Callable[[], Any], *, interval: float = 0.005, trace_python: bool = False, release: bool = True
) -> MemoryProfile:
    """Run ``func()`` while sampling the process's resident memory.

    Parameters
    ----------
    func : callable
        Called with no arguments; wrap arguments with :func:`functools.partial`
        or a ``lambda``.
    interval : float
        Seconds between two RSS samples (default 5 ms).
    trace_python : bool
        Also measure the peak of Python-level allocations with :mod:`tracemalloc`
        (slows allocation-heavy code down; off by default).
    release : bool
        Before the baseline, collect garbage and return free heap memory to the
        OS (:func:`release_free_memory`), so earlier work's freed memory is not
        silently reused by ``func``.

    Returns
    -------
    MemoryProfile
        The time series (one sample at the start, one every ``interval``, one at
        the end), the baseline, the peak and ``func``'s return value.

    Raises
    ------
    ValueError
        ``interval`` is not a positive number.
    Exception
        Whatever ``func`` raises, after the sampling thread has been stopped.

    Examples
    --------
    >>> import numpy as np
    >>> prof = profile_memory(lambda: np.ones(10_000_000))  # 80 MB, returned
    >>> prof.result.nbytes
    80000000
    >>> prof.peak_increase > 60 * MIB
    True
    """
    if not interval > 0:
        msg = f"interval must be a positive number of seconds, got {interval!r}"
        raise ValueError(msg)
    import psutil

    process = psutil.Process()
    if release:
        release_free_memory()
    start = time.perf_counter()
    sampler = _Sampler(process, interval, start)
    sampler.sample()
    baseline = sampler.rss[0]
    started_tracing = trace_python and not tracemalloc.is_tracing()
    traced_before = 0
    if trace_python:
        if started_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        traced_before = tracemalloc.get_traced_memory()[0]
    sampler.start()
    try:
        result = func()
    finally:
        elapsed = time.perf_counter() - start
        sampler.stop()
        sampler.sample()
        traced_peak = None
        if trace_python:
            traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
            if started_tracing:
                tracemalloc.stop()
    rss = np.asarray(sampler.rss, dtype=np.int64)
    return MemoryProfile(
        times=np.asarray(sampler.times, dtype=np.float64),
        rss=rss,
        baseline=int(baseline),
        peak=int(rss.max()),
        elapsed=elapsed,
        result=result,
        tracemalloc_peak=traced_peak,
    )
