"""Fault injection: kills, signals, full disks, stale temps, concurrent merges.

Where a fault cannot be injected on this machine the test skips, saying why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.helpers import ids, read_datasets
from tests.killing import KillRun, child_env, time_one_merge, trial
from virnucpro_merge import MergeError, OutputError, aggregate_shards
from virnucpro_merge._write import sysio
from virnucpro_merge.outputs import atomic_output, remove_stale_temps, temp_path
from virnucpro_merge.synthetic import write_shard


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "virnucpro_merge", *args]


def temp_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


class TestKilled:
    @pytest.mark.slow
    def test_sigkill_at_many_moments(self, tmp_path):
        run = KillRun.build(tmp_path)
        duration = min(time_one_merge(run) for _ in range(2))
        outcomes = [trial(run, duration * f) for f in (0.05, 0.3, 0.5, 0.7, 0.85, 1.0, 1.3)]
        phases = {phase for phase, _ in outcomes}
        assert len(phases) >= 2, f"every kill landed in the same phase: {outcomes}"
        assert {state for _, state in outcomes} <= {"previous", "complete"}


class TestSignals:
    @pytest.fixture
    def big_run(self, tmp_path):
        """Float16 shards with tiny chunks: a write phase long enough to interrupt."""
        rng = np.random.default_rng(3)
        shards = [
            write_shard(tmp_path / f"shard_{r}.h5", ids(f"r{r}_", 20000), rng.standard_normal((20000, 32)).astype("f2"))
            for r in range(4)
        ]
        previous = aggregate_shards(shards[:1], tmp_path / "out.h5").read_bytes()
        return tmp_path, shards, previous

    @pytest.mark.parametrize(("signum", "code", "word"),
                             [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
    def test_signal_mid_write(self, big_run, signum, code, word):
        folder, shards, previous = big_run
        proc = subprocess.Popen(
            cli("-v", "aggregate", *map(str, shards), "-o", str(folder / "out.h5"), "--chunk-size", "50",
                "--no-progress"),
            stderr=subprocess.PIPE, text=True, env=child_env(),
        )
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("phase: write"):
                proc.send_signal(signum)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == code, "".join(lines) + rest
        errors = [line for line in rest.splitlines() if line.startswith("virnucpro-merge:")]
        assert errors == [f"virnucpro-merge: {word}; the output was left as it was"]
        assert "Traceback" not in rest
        assert temp_files(folder) == []
        assert (folder / "out.h5").read_bytes() == previous


def _limit_file_size(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


class TestFullDisk:
    @pytest.fixture
    def shards(self, make_shard):
        return [make_shard(f"shard_{r}", ids(f"r{r}_", 2000), dim=256) for r in range(4)]  # ~8 MB

    def test_file_size_limit(self, shards, tmp_path):
        out = tmp_path / "out.h5"
        done = subprocess.run(
            cli("-q", "aggregate", *map(str, shards), "-o", str(out)),
            capture_output=True, text=True, env=child_env(), preexec_fn=_limit_file_size(3_000_000), timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert re.search(rf"{out}: the merge needs about [0-9.]+ MiB, over this process's file size limit", done.stderr)
        assert not out.exists()
        assert temp_files(tmp_path) == []

    def test_no_space_left(self, shards, tmpfs):
        small = tmpfs("size=2m")
        out = small / "out.h5"
        out.write_bytes(b"previous good merge")
        done = subprocess.run(cli("-q", "aggregate", *map(str, shards), "-o", str(out)),
                              capture_output=True, text=True, env=child_env(), timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        free = rf"{out}: not enough free space in {small}: the merge needs about [0-9.]+ MiB, 2.0 MiB is free"
        assert re.search(free, done.stderr)
        assert out.read_bytes() == b"previous good merge"
        assert temp_files(small) == []

    @pytest.mark.parametrize(("dtype", "where"), [("float32", "raw"), ("float16", "h5py")])
    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EIO])
    def test_write_fails_mid_copy(self, make_shard, tmp_path, monkeypatch, dtype, where, code):
        """The disk fills (or fails) while the merge runs: faults injected into the copy."""
        shard = make_shard("shard_0", ids("s", 500), dtype=dtype)
        out = tmp_path / "out.h5"
        out.write_bytes(b"previous good merge")
        owner, name = (sysio, "copy_bytes") if where == "raw" else (sysio, "write_block")
        original, calls = getattr(owner, name), []

        def fail_on_third(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise OSError(code, os.strerror(code))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, fail_on_third)
        with pytest.raises(OutputError) as err:
            aggregate_shards([shard], out, chunk_size=50)
        assert str(err.value) == f"{out}: cannot write the merged file ([Errno {code}] {os.strerror(code)})"
        assert out.read_bytes() == b"previous good merge"
        assert temp_files(tmp_path) == []


class TestStaleTemps:
    def test_only_dead_local_temps_are_removed(self, make_shard, tmp_path):
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True)
        dead_pid = int(finished.stdout)
        out = tmp_path / "out.h5"
        names = {
            "dead": temp_path(out, pid=dead_pid).name,
            "alive": temp_path(out).name,
            "other host": temp_path(out, host="other-node-7", pid=dead_pid).name,
            "other output": temp_path(tmp_path / "other.h5", pid=dead_pid).name,
            "user file": "out.h5.partial",
        }
        assert names["dead"].startswith(".out.h5.")
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "out.h5")
        left = set(temp_files(tmp_path))
        assert names["dead"] not in left
        assert left == {names[k] for k in ("alive", "other host", "other output", "user file")}

    def test_remove_stale_temps_returns_what_it_removed(self, tmp_path):
        target = tmp_path / "x.h5"
        stale = temp_path(target, pid=999999999, token="deadbeef")
        stale.write_bytes(b"")
        assert remove_stale_temps(target) == [stale]
        assert remove_stale_temps(target) == []


    def test_a_long_output_name(self, make_shard, tmp_path):
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True)
        out = tmp_path / ("é" * 60 + "x" * 109 + ".h5")  # 232 bytes: a valid name, too long with the tail
        twin = tmp_path / ("é" * 60 + "x" * 109 + ".h6")
        stale, other = temp_path(out, pid=int(finished.stdout)), temp_path(twin, pid=int(finished.stdout))
        for temp in (stale, other):
            assert len(os.fsencode(temp.name)) <= 255
            temp.write_bytes(b"x")
        assert stale.name != other.name
        aggregate_shards([make_shard("shard_0", ["a"])], out)
        assert read_datasets(out)[1] == ["a"]
        assert temp_files(tmp_path) == [other.name]  # the stale temp of this output only


class TestFolderRemoved:
    @pytest.mark.parametrize("when", ["while writing", "before the rename"])
    def test_the_folder_is_named_not_the_temp_file(self, tmp_path, when):
        folder = tmp_path / "out"
        folder.mkdir()
        target = folder / "m.h5"
        def write(pending):
            if when == "while writing":
                shutil.rmtree(folder)
            pending.path.write_bytes(b"x")
            if when == "before the rename":
                shutil.rmtree(folder)

        with pytest.raises(OutputError) as err, atomic_output(target) as pending:
            write(pending)
        assert str(err.value) == f"{target}: output folder {folder} was removed during the merge"


class TestConcurrency:
    def test_two_merges_into_one_output(self, make_shard, tmp_path):
        a = [make_shard(f"a_{r}", ids(f"a{r}_", 3000), dim=128) for r in range(3)]
        b = [make_shard(f"b_{r}", ids(f"b{r}_", 2000), dim=128, dtype="float16") for r in range(3)]
        out = tmp_path / "out.h5"
        outcomes = {"a": [i for s in a for i in read_datasets(s)[1]], "b": [i for s in b for i in read_datasets(s)[1]]}
        aggregate_shards(a[:1], out)
        outcomes["previous"] = read_datasets(out)[1]

        seen, stop = [], threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    seen.append(read_datasets(out)[1])
                except FileNotFoundError:  # never expected: the path always exists
                    seen.append(None)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            procs = [subprocess.Popen(cli("-q", "aggregate", *map(str, s), "-o", str(out)), env=child_env())
                     for s in (a, b)]
            assert [p.wait(timeout=120) for p in procs] == [0, 0]
        finally:
            stop.set()
            thread.join()
        assert read_datasets(out)[1] in (outcomes["a"], outcomes["b"])
        assert seen
        assert all(ids_seen in outcomes.values() for ids_seen in seen)
        assert temp_files(tmp_path) == []


class TestInputsUntouched:
    def test_checksums_before_and_after(self, make_shard, tmp_path):
        good = [make_shard(f"shard_{r}", ids(f"r{r}_", 500)) for r in range(3)]
        half = make_shard("shard_3", ids("h", 300), dtype="float16")
        dup = make_shard("shard_4", ["r0_1"])
        shards = [*good, half, dup]

        def checksums():
            return [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]

        def mtimes():
            return [p.stat().st_mtime_ns for p in shards]

        before, before_m = checksums(), mtimes()
        aggregate_shards([*good, half], tmp_path / "ok.h5", partial=True)
        with pytest.raises(MergeError):
            aggregate_shards(shards, tmp_path / "dup.h5")
        with pytest.raises(MergeError):
            aggregate_shards([*good, half], tmp_path / "missing.h5", ["absent", *ids("h", 300)])
        assert checksums() == before
        assert mtimes() == before_m
