"""The RSS sampler (virnucpro_merge.inspection.memory)."""

from __future__ import annotations

import doctest
import subprocess
import sys
import time

import numpy as np
import pytest

import virnucpro_merge.inspection.memory
from virnucpro_merge.inspection.memory import MIB, MemoryProfile, profile_memory, release_free_memory


def _hold(nbytes: int, seconds: float) -> int:
    """Allocate and touch ``nbytes``, keep them ``seconds``, free them; return the size."""
    block = np.ones(nbytes, dtype=np.uint8)
    time.sleep(seconds)
    size = block.nbytes
    del block
    return size


def test_sees_a_held_allocation_that_is_freed_before_the_end():
    prof = profile_memory(lambda: _hold(200 * MIB, 0.2), interval=0.005)
    assert isinstance(prof, MemoryProfile)
    assert prof.result == 200 * MIB
    assert prof.peak_increase > 150 * MIB  # seen while held...
    assert prof.rss[-1] - prof.baseline < 100 * MIB  # ...and gone at the end
    assert prof.peak == prof.rss.max()
    assert prof.elapsed >= 0.2


def test_time_series_shape_and_order():
    prof = profile_memory(lambda: time.sleep(0.2), interval=0.01)
    assert prof.times.dtype == np.float64
    assert prof.rss.dtype == np.int64
    assert prof.times.shape == prof.rss.shape
    assert 6 <= prof.times.size <= 25  # start, ~20 samples, end
    assert np.all(np.diff(prof.times) >= 0)
    assert prof.times[0] < 0.01
    assert prof.times[-1] >= 0.2
    assert prof.baseline == prof.rss[0]


def test_a_small_call_needs_little():
    prof = profile_memory(lambda: sum(range(1000)))
    assert prof.result == 499500
    assert prof.peak_increase < 20 * MIB
    assert prof.tracemalloc_peak is None


def test_tracemalloc_peak_counts_numpy_allocations():
    prof = profile_memory(lambda: _hold(50 * MIB, 0.0), trace_python=True)
    assert 50 * MIB <= prof.tracemalloc_peak < 60 * MIB


def test_exceptions_propagate_and_the_sampler_stops():
    import threading

    def boom():
        msg = "boom"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="boom"):
        profile_memory(boom)
    assert not any(t.name == "rss-sampler" for t in threading.enumerate())


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_interval_must_be_positive(interval):
    with pytest.raises(ValueError, match="interval"):
        profile_memory(lambda: None, interval=interval)


def test_release_free_memory_runs():
    assert release_free_memory() in (True, False)
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert release_free_memory() is True


def test_importing_the_package_imports_neither_psutil_nor_matplotlib():
    code = "import sys, virnucpro_merge; print('psutil' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_docstring_examples():
    assert doctest.testmod(virnucpro_merge.inspection.memory).failed == 0
