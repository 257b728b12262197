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


_LOOKUP_OF_A_LIST = """
import sys
from virnucpro_merge._processes import hand_back_large_frees
asked = sys.argv[1] == "hand back" and hand_back_large_frees()
from virnucpro_merge.expected import read_expected_lookup
lookup = read_expected_lookup(sys.argv[2])
status = open("/proc/self/status").read()
print(int(asked), *(int(status.split(k + ":")[1].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_frees_are_handed_back_to_the_system(tmp_path):
    """The arrays of a million IDs built and let go of one after another while their lookup is
    made: with the large frees handed back, the process no longer counts them."""
    import subprocess

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"contig_{i:09d}\n" for i in range(10**6)))
    kept, handed = ([int(v) for v in subprocess.run([sys.executable, "-c", _LOOKUP_OF_A_LIST, how, str(ids)],
                                                    capture_output=True, text=True, check=True).stdout.split()]
                    for how in ("keep", "hand back"))
    assert handed[0] == 1
    assert handed[1] < kept[1] - 25, "resident after: the freed arrays handed back"
    assert handed[2] < kept[2] - 25, "at the peak"
