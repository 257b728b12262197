"""ID validation of a very large run: one process against a Dask LocalCluster.

Builds runs of N IDs in 64 shards (embeddings of dimension 1: this is about IDs),
writes the expected IDs to a text file, then plans the merge (every ID read,
checked for duplicates, compared with the expected IDs) in a fresh process:

- ``single``: ``plan_merge(shards, read_expected_ids(file))`` in one process;
- ``cluster``: the same with a ``LocalCluster`` of 2 worker processes, the workers
  streaming the expected file themselves.

It prints wall time and the peak RSS of the largest process (client, scheduler or
worker), for each size, so the growth from 5 M to 20 M IDs can be read off.

    python benchmarks/bench_cluster.py                 # 5 M and 20 M IDs
    python benchmarks/bench_cluster.py --ids 200000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARDS = 64


def build(folder: Path, n_ids: int) -> tuple[list[Path], Path]:
    import h5py

    per = -(-n_ids // SHARDS)
    shards = []
    with open(folder / "expected.txt", "w") as expected:
        for rank in range(SHARDS):
            ids = [f"contig_{i:09d}" for i in range(rank, n_ids, SHARDS)]  # stride, as real runs
            expected.write("\n".join(ids) + "\n")
            path = folder / f"shard_{rank}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("embeddings", data=np.zeros((len(ids), 1), np.float32))
                f.create_dataset("sequence_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            shards.append(path)
    assert per > 0
    return shards, folder / "expected.txt"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, folder: Path, workers: int) -> dict:
    """Runs in a fresh process: plan the merge, report time and peak memory."""
    from virnucpro_merge import read_expected_ids
    from virnucpro_merge.checks import plan_merge

    shards = sorted(folder.glob("shard_*.h5"), key=lambda p: int(p.stem.split("_")[1]))
    expected_file = folder / "expected.txt"
    if method == "single":
        started = time.perf_counter()
        plan = plan_merge(shards, read_expected_ids(expected_file))
        elapsed = time.perf_counter() - started
        return {"seconds": elapsed, "peak_mb": {"main": _peak_mb()}, "total": plan.total_sequences}

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        started = time.perf_counter()
        plan = plan_merge(shards, expected_file, client=client)
        elapsed = time.perf_counter() - started
        peaks = {"client": _peak_mb(), "scheduler": client.run_on_scheduler(_peak_mb)}
        peaks.update({f"worker {i}": mb for i, mb in enumerate(client.run(_peak_mb).values())})
    return {"seconds": elapsed, "peak_mb": peaks, "total": plan.total_sequences}


def run_fresh(method: str, folder: Path, workers: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", method, "--folder", str(folder), "--workers", str(workers)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=float, nargs="+", default=[5e6, 20e6])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--measure", choices=("single", "cluster"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.folder, args.workers)))
        return 0

    print(f"ID validation, {SHARDS} shards; {os.cpu_count()} cores; LocalCluster of {args.workers} workers")
    print(f"{'IDs':>12} {'method':<8} {'seconds':>8} {'largest process':>16} {'MB':>8}  all processes (MB)")
    for n in map(int, args.ids):
        with tempfile.TemporaryDirectory(prefix="virnucpro-bench-cluster-") as tmp:
            folder = Path(tmp)
            started = time.perf_counter()
            build(folder, n)
            print(f"  (built {n:,} IDs in {time.perf_counter() - started:.0f} s)", flush=True)
            for _ in range(args.rounds):
                for method in ("single", "cluster"):
                    result = run_fresh(method, folder, args.workers)
                    assert result["total"] == n, result
                    name, peak = max(result["peak_mb"].items(), key=lambda kv: kv[1])
                    others = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_mb"].items())
                    print(f"{n:>12,} {method:<8} {result['seconds']:>8.1f} {name:>16} {peak:>8.0f}  {others}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
