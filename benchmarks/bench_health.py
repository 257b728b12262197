"""What the embeddings' health costs a merge: this revision's merge against one without it, same rounds.

Builds a run of 1 GiB (8 shards of float32 rows, 1,024 wide; ``--gib`` to change) and times,
methods alternating round by round, each in a fresh process (``python -P``, the package
imported from where the method says)::

    merge          aggregate_shards of this revision: rows checksummed, NaN/Inf counted and each
                   rank's health summed up (norms, zero, saturated and identical rows) in the scan
    merge@REV      the same call with the package of revision REV (``git archive``; default
                   cbb6f02, the last without health): the same scan, without the health

both durable (the final fsync) and not (``durable=False``), and prints each method's median
wall and CPU seconds, and ``merge`` / ``merge@REV`` of the same round (the target: at most 1.05).
Then, in this process, the CPU seconds of the health alone: each shard's blocks summed up
(``RankTally.add``, then ``finish``) as the scan does, against the scan without it
(``scan_rows``: checksums and NaN/Inf), and the health's share of the merge's CPU: a
number the machine's noise hardly moves.

Usage::

    python benchmarks/bench_health.py               # 1 GiB, 15 rounds
    python benchmarks/bench_health.py --smoke       # 16 MiB, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness import (  # beside this script
    BenchError,
    Column,
    fsync_cost,
    locate_package,
    log,
    machine_facts,
    median_and_min,
    package_at,
    print_facts,
    rotated,
    same_round_ratios,
    table,
    work_folder,
)

BASELINE = "cbb6f02"
_MERGE = """
import json, resource, sys, time
from virnucpro_merge import aggregate_shards
import virnucpro_merge
shards, out, durable = json.loads(sys.argv[1])
start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
aggregate_shards(shards, out, durable=durable)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - start, "package": virnucpro_merge.__file__,
                  "cpu": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime}))
"""


def merge(shards: list[Path], out: Path, durable: bool, package_root: Path | None) -> dict:
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-P", "-c", _MERGE, json.dumps([[str(s) for s in shards], str(out),
                                                                          durable])],
                          env=env, capture_output=True, text=True, cwd=out.parent)
    out.unlink(missing_ok=True)
    if done.returncode != 0:
        msg = f"the merge ({package_root or 'this revision'}) failed: {done.stderr.strip()[-400:]}"
        raise BenchError(msg)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if (package_root is not None) != measured["package"].startswith(str(package_root or "/nowhere")):
        msg = f"the merge imported {measured['package']}, not the package it was meant to"
        raise BenchError(msg)
    return measured


def build(folder: Path, gib: float, shards: int) -> list[Path]:
    from virnucpro_merge.synthetic import write_shard

    folder.mkdir()
    dim = 1024
    rows = max(1, int(gib * 2**30 / (dim * 4) / shards))
    rng = np.random.default_rng(0)
    paths = []
    for rank in range(shards):
        emb = rng.normal(size=(rows, dim)).astype(np.float32)
        paths.append(write_shard(folder / f"shard_{rank}.h5", [f"s{rank}_{i}" for i in range(rows)], emb))
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", default=BASELINE, help=f"the revision without health (default {BASELINE})")
    parser.add_argument("--smoke", action="store_true", help="16 MiB, 1 round")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.gib, args.rounds = 1 / 64, 1
    with work_folder("bench_health_", args.workdir) as workdir:
        package = locate_package(workdir, live=True)
        facts = machine_facts(workdir, package)
        facts["run"] = f"{args.gib:g} GiB in {args.shards} shards of float32 rows, 1,024 wide"
        facts["fsync_1GiB"] = f"{fsync_cost(workdir):.2f} s" if not args.smoke else "not measured (smoke)"
        print_facts("virnucpro_merge: what the embeddings' health costs a merge", facts)
        baseline = package_at(args.baseline, workdir)
        shards = build(workdir / "run", args.gib, args.shards)
        methods = [(f"merge{'' if now else '@' + args.baseline}{'' if durable else ' (no fsync)'}", now, durable)
                   for durable in (True, False) for now in (True, False)]
        rounds: dict[str, list[dict]] = {name: [] for name, _, _ in methods}
        for number in range(args.rounds):
            for name, now, durable in rotated(methods, number):
                rounds[name].append(merge(shards, workdir / "out.h5", durable, None if now else baseline))
            log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall']:.2f}s" for m, r in rounds.items()))
        rows = [[name, statistics.median(r["wall"] for r in rounds[name]),
                 statistics.median(r["cpu"] for r in rounds[name])] for name, _, _ in methods]
        print()
        print(table([Column("method", 28, left=True), Column("wall med", 9, ".2f"), Column("CPU med", 9, ".2f")], rows))
        for durable in ("", " (no fsync)"):
            now, then = rounds[f"merge{durable}"], rounds[f"merge@{args.baseline}{durable}"]
            ratio, low = median_and_min(same_round_ratios(now, then))
            cpu, _ = median_and_min(same_round_ratios(now, then, key="cpu"))
            print(f"merge{durable} / merge@{args.baseline}{durable}, same round: wall median {ratio:.3f} "
                  f"(min {low:.3f}; target <= 1.05), CPU median {cpu:.3f}")
        health_cpu, scan_cpu = health_alone(shards)
        merge_cpu = statistics.median(r["cpu"] for r in rounds["merge"])
        print(f"in this process, median of 5: the health's CPU {health_cpu:.3f} s, the scan's without it "
              f"{scan_cpu:.3f} s; the health is {health_cpu / merge_cpu:.1%} of the durable merge's CPU "
              f"({merge_cpu:.2f} s)")
    return 0


def health_alone(shards: list[Path], chunk: int = 4096) -> tuple[float, float]:
    """The CPU seconds of summing the shards' health (their rows read beforehand, untimed), and of
    the scan without it, each the median of 5."""
    import time

    import h5py

    from virnucpro_merge._write.copy import scan_rows
    from virnucpro_merge.checksums import Checksums, extremes_of, row_sums
    from virnucpro_merge.health import RankTally

    blocks = []
    for path in shards:
        with h5py.File(path, "r") as handle:
            emb = handle["embeddings"]
            blocks.append([emb[start : start + chunk] for start in range(0, emb.shape[0], chunk)])
    health, scan = [], []
    for _ in range(5):
        checksums = Checksums()
        started = time.process_time()
        for rank in blocks:
            for start, block in zip(range(0, 2**62, chunk), rank, strict=False):
                scan_rows(block, start, checksums)
        scan.append(time.process_time() - started)
        sums = [[row_sums(block) for block in rank] for rank in blocks]  # (the scan's: untimed)
        extremes = [[extremes_of(block) for block in rank] for rank in blocks]
        started = time.process_time()
        for rank, rank_sums, rank_extremes in zip(blocks, sums, extremes, strict=True):
            tally = RankTally()
            for block, block_sums, block_extremes in zip(rank, rank_sums, rank_extremes, strict=True):
                tally.add(block, block_sums, 0, extremes=block_extremes)
            tally.finish(lambda rows, rank=rank: np.concatenate(rank)[rows], "float32")
        health.append(time.process_time() - started)
    return statistics.median(health), statistics.median(scan)


if __name__ == "__main__":
    sys.exit(main())
