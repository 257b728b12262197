"""Work shared out to forked processes (virnucpro_merge._processes)."""

from __future__ import annotations

import sys
import time

import pytest

from virnucpro_merge._processes import pool, usable_cpus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pools are forked on Linux only")


def _note(path, k):
    with open(path, "a") as fh:
        fh.write(f"{k}\n")
    time.sleep(0.3)
    return k


def test_one_worker_means_here():
    with pool(1) as workers:
        assert workers is None
    assert usable_cpus() >= 1


def test_an_exception_cancels_the_tasks_not_started(tmp_path):
    """Ctrl-C (or any error) while the pool works: what has not started never runs."""
    log = tmp_path / "ran.txt"
    futures = []

    def interrupted() -> None:
        with pool(2) as workers:
            futures.extend(workers.submit(_note, log, k) for k in range(12))
            futures[0].result()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert len(log.read_text().split()) < 12
    assert sum(f.cancelled() for f in futures) > 0


_CTRL_C_AT_A_TERMINAL = """
import os, signal, time
from virnucpro_merge._processes import pool

try:
    with pool(2) as workers:
        assert all(f.result() == 1 for f in [workers.submit(abs, -1) for _ in range(4)])  # (both started)
        os.killpg(0, signal.SIGINT)  # what a terminal sends the whole group
        time.sleep(30)
except KeyboardInterrupt:
    print("interrupted")
"""


_BUSY = """
import multiprocessing, os, signal, sys, time
from virnucpro_merge._processes import pool

how = getattr(signal, sys.argv[1])
try:
    with pool(2) as workers:
        assert all(f.result() == 1 for f in [workers.submit(abs, -1) for _ in range(4)])  # (both started)
        busy = [workers.submit(time.sleep, 30) for _ in range(4)]
        time.sleep(0.5)  # (two of them running)
        os.killpg(0, how)  # what a terminal (SIGINT) or a batch system (SIGTERM) sends the whole group
        busy[0].result()
except KeyboardInterrupt:
    print("interrupted")
print("workers left:", len(multiprocessing.active_children()))
"""


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_busy_workers_end_at_once_on_a_signal_to_the_group(how):
    """Workers running long tasks end at once, quietly, and none is left running on its own
    (ignoring Ctrl-C, they ran their task to its end, and a second Ctrl-C left them orphans)."""
    import subprocess

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _BUSY, how], capture_output=True, text=True, timeout=60,
                          start_new_session=True)
    assert time.monotonic() - started < 20, "(the tasks sleep 30 s)"
    assert "Traceback" not in done.stderr, done.stderr
    if how == "SIGINT":
        assert done.stdout.splitlines() == ["interrupted", "workers left: 0"]
    else:
        assert done.returncode == -15  # (the process that made the pool: the default of SIGTERM)


def test_ctrl_c_at_a_terminal_is_left_to_the_process_that_made_the_pool():
    """The workers, idle or busy, do not each print a traceback of their own KeyboardInterrupt:
    the process that made the pool stops them (what the CLI's own handler did for the CLI)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _CTRL_C_AT_A_TERMINAL], capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert done.stdout.split() == ["interrupted"]
    assert "Traceback" not in done.stderr, done.stderr
    assert "KeyboardInterrupt" not in done.stderr, done.stderr


_BLOCKS_FROM_THE_SYSTEM = """
import ctypes, sys
import numpy as np
from virnucpro_merge._processes import hand_back_large_frees, pool

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def blocks_from_the_system(_=None):
    first = np.ones(2**20)  # 8 MiB, freed: by default glibc keeps blocks up to 8 MiB from here on
    del first
    before = libc.mallinfo2().hblks
    block = np.ones(2**19)  # 4 MiB: from the system (handed back when freed), or from what glibc keeps
    return libc.mallinfo2().hblks - before

asked = sys.argv[1] != "keep" and hand_back_large_frees()
if sys.argv[1] == "in workers":
    with pool(2) as workers:
        print(int(asked), blocks_from_the_system(), *workers.map(blocks_from_the_system, range(2)))
else:
    print(int(asked), blocks_from_the_system())
"""


def _glibc_has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_has_mallinfo2(), reason="glibc's allocator")
def test_large_frees_are_handed_back_to_the_system():
    """The arrays of millions of IDs a check builds and lets go of one after another: with large
    frees handed back, a block of 4 MiB after a freed one of 8 MiB is had from the system
    (and handed back when freed), not from what glibc would keep (and keep counted in the
    process: at 10^7 IDs, a lookup built at a peak of 714 MB kept 571 MB, and 474 and 338
    with this)."""
    import os
    import subprocess

    # (glibc's defaults: Dask's nanny, started by other tests, sets MALLOC_TRIM_THRESHOLD_ in this environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    kept, handed = ([int(v) for v in subprocess.run([sys.executable, "-c", _BLOCKS_FROM_THE_SYSTEM, how],
                                                    capture_output=True, text=True, check=True, env=env).stdout.split()]
                    for how in ("keep", "hand back"))
    assert handed == [1, 1], "asked, and the block had from the system"
    assert kept == [0, 0], "(by default, from what glibc kept)"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_has_mallinfo2(), reason="glibc's allocator")
def test_pool_workers_keep_large_frees_for_reuse():
    """A worker reads a piece at a time and lets it go: it keeps its freed blocks for the next
    piece rather than fault every page of each in anew (at 10^7 IDs, validate's processes took
    half the page faults and 1.3 s less system time), though the command line that forked it
    hands large frees back."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    found = subprocess.run([sys.executable, "-c", _BLOCKS_FROM_THE_SYSTEM, "in workers"], capture_output=True,
                           text=True, check=True, env=env).stdout.split()
    assert [int(v) for v in found] == [1, 1, 0, 0], "handed back here; kept in each worker"
