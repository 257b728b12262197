"""ID validation of a very large run: one process against a Dask LocalCluster.

Builds runs of N IDs in 64 shards (embeddings of dimension 1: this is about IDs)
with :func:`virnucpro_merge.synthetic.write_stride_run`, the expected IDs in a text
file, then plans the merge (every ID read, checked for duplicates, compared with
the expected IDs) in a fresh process:

- ``single``: ``plan_merge(shards, read_expected_ids(file))`` in one process;
- ``cluster``: the same with a ``LocalCluster`` of 2 worker processes, the workers
  reading the expected file themselves, in byte ranges.

It prints wall time and the peak RSS of the largest process (client, scheduler or
worker), for each size, so the growth from 5 M to 20 M IDs can be read off::

    python benchmarks/bench_cluster.py                 # 5 M and 20 M IDs
    python benchmarks/bench_cluster.py --ids 200000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from harness import (  # beside this script
    Column,
    locate_package,
    log,
    machine_facts,
    print_facts,
    reply,
    run_fresh,
    table,
    work_folder,
)

SCRIPT = Path(__file__).resolve()
SHARDS = 64


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(spec: dict) -> None:
    """Plan the merge one way, in this fresh process; reply time and peak memory."""
    from virnucpro_merge import read_expected_ids
    from virnucpro_merge.checks import plan_merge

    shards, expected_file = [Path(p) for p in spec["shards"]], Path(spec["expected"])
    if spec["method"] == "single":
        started = time.perf_counter()
        plan = plan_merge(shards, read_expected_ids(expected_file))
        reply({"seconds": time.perf_counter() - started, "peak_mb": {"main": _peak_mb()},
               "total": plan.total_sequences})
        return
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=spec["workers"], threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        started = time.perf_counter()
        plan = plan_merge(shards, expected_file, client=client)
        seconds = time.perf_counter() - started
        peaks = {"client": _peak_mb(), "scheduler": client.run_on_scheduler(_peak_mb)}
        peaks.update({f"worker {i}": mb for i, mb in enumerate(client.run(_peak_mb).values())})
    reply({"seconds": seconds, "peak_mb": peaks, "total": plan.total_sequences})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=float, nargs="+", default=[5e6, 20e6])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where temporary runs go (default: system temp)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child_main(json.loads(args._child))
        return 0
    from virnucpro_merge.synthetic import write_stride_run

    columns = [Column("IDs", 12, ","), Column("method", 8, left=True), Column("seconds", 8, ".1f"),
               Column("largest process", 16), Column("MB", 8, ".0f"), Column("all processes (MB)", 1, left=True)]
    rows = []
    with work_folder("bench_cluster_", args.workdir) as workdir:
        package = locate_package(workdir)
        facts = machine_facts(workdir, package)
        facts["cluster"] = f"LocalCluster of {args.workers} worker processes, 1 thread each; {SHARDS} shards"
        print_facts("virnucpro_merge ID validation, one process against a cluster", facts)
        for n in map(int, args.ids):
            started = time.perf_counter()
            run = write_stride_run(workdir / f"run_{n}", n, SHARDS, dim=1, zeros=True, id_format="contig_{:09d}")
            log(f"built {n:,} IDs in {time.perf_counter() - started:.0f} s")
            for _ in range(args.rounds):
                for method in ("single", "cluster"):
                    spec = {"method": method, "shards": [str(p) for p in run.shard_files],
                            "expected": str(run.expected_file), "workers": args.workers}
                    result = run_fresh(SCRIPT, spec, package, what=f"{method} on {n:,} IDs")
                    assert result["total"] == n, result
                    name, peak = max(result["peak_mb"].items(), key=lambda kv: kv[1])
                    others = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_mb"].items())
                    rows.append([n, method, result["seconds"], name, peak, others])
                    log(f"{n:,} IDs {method}: {result['seconds']:.1f} s")
    print(table(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
