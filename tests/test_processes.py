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
