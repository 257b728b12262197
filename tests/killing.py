"""Kill merges with SIGKILL at chosen moments and check that nothing is ever lost.

Used by ``tests/test_faults.py`` (a few kills in ``make test``) and by ``make torture``
(``python -m tests.killing --trials 50``), which prints how many kills hit each phase.

Each trial starts ``virnucpro-merge -v aggregate`` in a subprocess over a fixed run,
with a previous, *different* good merge already at the output path, kills it after a
delay, then checks that the output path holds either the previous merge byte for byte
or a complete, correct new merge; that the inputs are unchanged; and that the next
merge removes the temp file the killed one left behind.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro_merge import aggregate_shards, read_merge_report, verify_merged
from virnucpro_merge.synthetic import synthetic_embeddings, write_shard

PHASE = re.compile(r"^phase: (\w+)", re.MULTILINE)


@dataclass
class KillRun:
    """A run folder to kill merges of, with what a complete merge must contain."""

    directory: Path
    shards: list[Path]
    output: Path
    ids: list[str]
    embeddings: np.ndarray
    previous: bytes

    @classmethod
    def build(cls, directory: Path, n_shards: int = 6, rows: int = 15000, dim: int = 64) -> KillRun:
        shards, all_ids, blocks = [], [], []
        for rank in range(n_shards):
            positions = np.arange(rank * rows, (rank + 1) * rows)
            ids = [f"seq{p:07d}" for p in positions]
            emb = synthetic_embeddings(positions, dim, seed=7)
            # half the shards float16 (h5py path), half float32 (raw-byte path)
            emb = emb.astype(np.float16) if rank % 2 else emb
            shards.append(write_shard(directory / f"shard_{rank}.h5", ids, emb))
            all_ids += ids
            blocks.append(emb.astype(np.float32))
        output = directory / "embeddings.h5"
        aggregate_shards(shards[:1], output)  # the previous good merge: a different one
        return cls(directory, shards, output, all_ids, np.concatenate(blocks), output.read_bytes())

    def checksums(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.shards}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "virnucpro_merge", "-v", "aggregate", *map(str, self.shards),
                "-o", str(self.output), "--chunk-size", "200", "--no-progress"]

    def output_state(self) -> str:
        """'previous' or 'complete'; raise AssertionError for anything else."""
        data = self.output.read_bytes()
        if data == self.previous:
            return "previous"
        with h5py.File(self.output, "r") as f:
            assert f["sequence_ids"].asstr()[:].tolist() == self.ids, "IDs differ"
            assert np.array_equal(f["embeddings"][:], self.embeddings), "embeddings differ"
        report = read_merge_report(self.output)
        assert report["total_sequences"] == len(self.ids)
        assert not report["partial"]
        found = verify_merged(self.output, self.shards)
        assert found.intact, found.summary()
        assert "of rows checksummed" in found.summary()
        return "complete"

    def temp_files(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.name.endswith(".partial"))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _start(run: KillRun) -> tuple[subprocess.Popen, list[str]]:
    """Start a merge and wait until it begins planning (past interpreter start-up)."""
    proc = subprocess.Popen(run.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("phase: plan"):
            break
    return proc, seen


def time_one_merge(run: KillRun) -> float:
    """Seconds from the start of planning to the end of a merge."""
    proc, _ = _start(run)
    started = time.perf_counter()
    proc.stderr.read()
    assert proc.wait() == 0
    elapsed = time.perf_counter() - started
    run.output.write_bytes(run.previous)
    return elapsed


def kill_once(run: KillRun, delay: float) -> str:
    """Start a merge, SIGKILL it ``delay`` seconds into planning; return its phase then."""
    proc, seen = _start(run)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    seen.append(proc.stderr.read())
    code = proc.wait()
    phases = PHASE.findall("".join(seen))
    if code == 0:
        return "finished"
    return phases[-1] if phases else "start"


def trial(run: KillRun, delay: float) -> tuple[str, str]:
    """One kill and every check after it; return (phase, state of the output)."""
    before = run.checksums()
    phase = kill_once(run, delay)
    state = run.output_state()
    assert run.checksums() == before, "an input shard changed"
    leftovers = run.temp_files()
    if phase in ("write", "sync", "replace"):
        assert len(leftovers) <= 1
    # the next merge cleans up after the killed one, and succeeds
    subprocess.run(run.command(), check=True, capture_output=True, env=child_env())
    assert run.temp_files() == [], f"stale temp files survived: {leftovers}"
    assert run.output_state() == "complete"
    run.output.write_bytes(run.previous)
    return phase, state


def torture(trials: int, directory: Path, seed: int = 0) -> collections.Counter:
    run = KillRun.build(directory)
    duration = min(time_one_merge(run) for _ in range(3))
    rng = np.random.default_rng(seed)
    counts: collections.Counter = collections.Counter()
    print(f"one merge takes {duration:.2f} s; killing {trials} merges at random moments in 0..{1.2 * duration:.2f} s")
    for i in range(trials):
        phase, state = trial(run, float(rng.uniform(0, 1.2 * duration)))
        counts[(phase, state)] += 1
        print(f"  trial {i + 1:3d}: killed in phase {phase:<8} -> output holds the {state} merge", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virnucpro-torture-") as tmp:
        counts = torture(args.trials, Path(tmp), args.seed)
    print("\nkills by phase (phase, what the output path held afterwards):")
    for (phase, state), n in sorted(counts.items()):
        print(f"  {phase:<9} {state:<9} {n}")
    print(f"{sum(counts.values())} passed, 0 failed: nothing lost, no input changed, no temp file left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
