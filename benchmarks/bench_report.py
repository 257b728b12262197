"""How long the report of a run takes, and how much memory inspecting a run needs.

Builds a run folder as the pipeline leaves it (64 shards of 10^6 sequences in all,
its ``sequence_index.json``; :func:`virnucpro_merge.synthetic.write_stride_run`),
with a few workers lost, then times, each in a fresh process, methods alternating
round by round::

    read-ids       every shard's IDs read once with h5py: the baseline
    json-load      the run's index read with the standard library (json.load) and its IDs
                   picked out: what reading the index costs any reader, on one core
    kernel         a kernel of this Python started, one empty cell run, stopped
    start-up       the report of a tiny run (8 ranks, 800 IDs): the report's fixed cost
                   (its kernel, the imports of matplotlib and nbconvert, the command)
    report         virnucpro-merge report RUN -o report.html (the run's index read for the IDs)
    report[text]   the same with --expected IDS.txt (a plain list of the same IDs)
    inspect        inspect_run(RUN) in a fresh process: the report's reading, without its kernel
    inspect[1-line] the same with the run's index written on one line (json.dump's default): where
                   the lines break must change neither the time nor the memory

and prints each as a ratio to ``read-ids`` of the same round; for the reports
also what they take beyond the kernel, and beyond the whole fixed start-up. Then,
in a fresh process, the memory ``inspect_run`` needs on a run of ``--memory-ids``
IDs (default 10^7): its peak RSS growth, in bytes per ID, with the expected IDs read
from a plain list, from the index and from the index on one line; and the private memory
of the processes that read a large file in byte ranges (all of them at once, at their
peak); and the peak RSS of a single-process ``validate_shard_completeness`` against the
index, as written and on one line.

Usage::

    python benchmarks/bench_report.py                 # 10^6 IDs, 3 rounds; memory at 10^7
    python benchmarks/bench_report.py --smoke         # small, 1 round
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (  # beside this script
    ChildMemory,
    Column,
    PackageSource,
    locate_package,
    log,
    machine_facts,
    median_and_min,
    print_facts,
    reply,
    reset_peak,
    rotated,
    rss_now,
    rss_peak,
    run_fresh,
    same_round_ratios,
    table,
    work_folder,
)

SCRIPT = Path(__file__).resolve()
RANKS = 64
METHODS = ["read-ids", "json-load", "kernel", "start-up", "report", "report[text]", "inspect", "inspect[1-line]"]
ONE_LINE = "index_one_line.json"


def child_main(spec: dict) -> None:
    method, folder = spec["method"], Path(spec["run"])
    if method == "read-ids":
        import h5py

        start = time.perf_counter()
        count = 0
        for path in sorted(folder.glob("shard_*.h5")):
            with h5py.File(path, "r") as f:
                count += len(f["sequence_ids"][:])
        reply({"wall": time.perf_counter() - start, "count": count})
    elif method == "json-load":
        start = time.perf_counter()
        with open(folder / "sequence_index.json", encoding="utf-8") as fh:
            count = len([record["sequence_id"] for record in json.load(fh)["sequences"]])
        reply({"wall": time.perf_counter() - start, "count": count})
    elif method == "kernel":
        import tempfile

        import nbformat
        from nbclient import NotebookClient

        from virnucpro_merge.inspection import runreport

        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            NotebookClient(nb, km=runreport.kernel_manager(Path(scratch))).execute()
        reply({"wall": time.perf_counter() - start})
    elif method in ("inspect", "inspect[1-line]"):
        from virnucpro_merge.inspection import inspect_run

        expected = folder / (ONE_LINE if method == "inspect[1-line]" else "sequence_index.json")
        start = time.perf_counter()
        found = inspect_run(folder, expected)
        reply({"wall": time.perf_counter() - start, "count": len(found.sequence_ids)})
    elif method == "validate-memory":
        from virnucpro_merge import validate_shard_completeness
        from virnucpro_merge.ranks import folder_shards

        shards = [p for p in folder_shards(folder, world_size=RANKS) if p.exists()]
        gc.collect()
        reset_peak()
        base = rss_now()
        missing, _ = validate_shard_completeness(shards, folder / spec["expected"])
        reply({"growth": rss_peak() - base, "missing": len(missing)})
    elif method == "memory":
        from virnucpro_merge.inspection import inspect_run

        gc.collect()
        reset_peak()
        base = rss_now()
        with ChildMemory(0.02, _unique_memory) as readers:
            found = inspect_run(folder, folder / spec["expected"])
        reply({"growth": rss_peak() - base, "ids": len(found.sequence_ids), "missing": found.num_missing,
               "readers": readers.total})


def run_report(folder: Path, out: Path, *extra: str) -> dict:
    """The wall time of one report, and the CPU time of all its processes (its kernel and
    the kernel's workers included)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "virnucpro_merge", "-q", "report", str(folder), "-o", str(out), *extra],
                   check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def build(folder: Path, n: int) -> Path:
    from virnucpro_merge.synthetic import write_stride_run

    run = write_stride_run(folder, n, RANKS, dim=1, zeros=True, index=True, id_format="contig_{:09d}")
    for rank in (5, RANKS - 1):  # a lost worker, and a lost last one
        run.shard_files[rank].unlink()
    with open(folder / "sequence_index.json", encoding="utf-8") as fh:  # the same index, on one line
        index = json.load(fh)
    with open(folder / ONE_LINE, "w", encoding="utf-8") as fh:
        json.dump(index, fh)
    del index
    for path in folder.iterdir():  # a warm page cache for every method alike
        path.read_bytes()
    return folder


def time_reports(workdir: Path, package: PackageSource, args: argparse.Namespace) -> None:
    """The timed rounds: every method, alternating, each in a fresh process."""
    folder = build(workdir / "run", int(args.ids))
    from virnucpro_merge.synthetic import make_demo_run

    tiny = make_demo_run(workdir / "tiny", n_sequences=800, world_size=8, dim=4).directory
    rounds: dict[str, list[dict]] = {m: [] for m in METHODS}
    for number in range(args.rounds):
        for method in rotated(METHODS, number):
            if method == "report":
                measured = run_report(folder, workdir / "r.html")
            elif method == "start-up":
                measured = run_report(tiny, workdir / "tiny.html")
            elif method == "report[text]":
                measured = run_report(folder, workdir / "r.html", "--expected", str(folder / "expected_ids.txt"))
            else:
                measured = {"wall": run_fresh(SCRIPT, {"method": method, "run": str(folder)}, package,
                                              what=method)["wall"]}
            rounds[method].append(measured)
        log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall']:.2f}s" for m, r in rounds.items()))
    rows = []
    for method in METHODS:
        walls = [r["wall"] for r in rounds[method]]
        ratio = median_and_min(same_round_ratios(rounds[method], rounds["read-ids"]))[0]
        net = beyond = None
        if method.startswith("report"):
            net = statistics.median((a["wall"] - k["wall"]) / b["wall"] for a, k, b in
                                    zip(rounds[method], rounds["kernel"], rounds["read-ids"], strict=True))
            beyond = statistics.median((a["wall"] - k["wall"]) / b["wall"] for a, k, b in
                                       zip(rounds[method], rounds["start-up"], rounds["read-ids"], strict=True))
        rows.append([method, statistics.median(walls), min(walls), ratio, net, beyond])
    print()
    print(table([Column("method", 14, left=True), Column("wall med", 9, ".2f"), Column("wall min", 9, ".2f"),
                 Column("x read-ids", 10, ".2f"), Column("(- kernel)", 10, ".2f"),
                 Column("(- start-up)", 12, ".2f")], rows))
    print("x read-ids: wall / read-ids wall of the same round (median); (- kernel), (- start-up): the same for"
          " wall - kernel wall and wall - start-up wall (same round, median)")
    for method in ("report", "report[text]"):
        cpu = statistics.median(a["cpu"] - s["cpu"] for a, s in zip(rounds[method], rounds["start-up"], strict=True))
        print(f"{method}: {cpu:.2f} CPU-seconds beyond the start-up's (all its processes; median), "
              f"{cpu / statistics.median(r['wall'] for r in rounds['read-ids']):.2f} x read-ids")
    shutil.rmtree(folder)


def _unique_memory(process: object) -> int:
    """A process's USS: the pages no other process maps (not what a forked child still shares)."""
    return process.memory_full_info().uss  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=float, default=1e6)
    parser.add_argument("--memory-ids", type=float, default=1e7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="20,000 IDs, memory at 100,000, 1 round")
    parser.add_argument("--memory-only", action="store_true", help="only the memory runs")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child_main(json.loads(args._child))
        return 0
    if args.smoke:
        args.ids, args.memory_ids, args.rounds = 2e4, 1e5, 1
    with work_folder("bench_report_", args.workdir) as workdir:
        package = locate_package(workdir, live=True)  # the report's kernel imports the installed package
        facts = machine_facts(workdir, package)
        facts["run"] = f"{int(args.ids):,} IDs in {RANKS} shards (2 lost), sequence_index.json"
        print_facts("virnucpro_merge run report benchmark", facts)
        if not args.memory_only:
            time_reports(workdir, package, args)
        log(f"building {int(args.memory_ids):,} IDs for the memory run ...")
        big = build(workdir / "big", int(args.memory_ids))
        print()
        for expected in ("expected_ids.txt", "sequence_index.json", ONE_LINE):
            memory = run_fresh(SCRIPT, {"method": "memory", "run": str(big), "expected": expected}, package,
                               what="memory")
            print(f"inspect_run on {memory['ids']:,} IDs ({memory['missing']:,} missing), expected IDs from "
                  f"{expected}: peak RSS growth {memory['growth'] / 1e6:.0f} MB, "
                  f"{memory['growth'] / memory['ids']:.1f} bytes an ID; its worker processes: "
                  f"{memory['readers'] / 1e6:.0f} MB at most, together (USS), "
                  f"{memory['readers'] / memory['ids']:.1f} bytes an ID")
        for expected in ("sequence_index.json", ONE_LINE):
            memory = run_fresh(SCRIPT, {"method": "validate-memory", "run": str(big), "expected": expected}, package,
                               what="validate-memory")
            print(f"validate_shard_completeness (one process), expected IDs from {expected}: peak RSS growth "
                  f"{memory['growth'] / 1e6:.0f} MB, {memory['growth'] / int(args.memory_ids):.1f} bytes an ID")
    return 0


if __name__ == "__main__":
    sys.exit(main())
