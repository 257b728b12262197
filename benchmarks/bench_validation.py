"""Benchmark ID validation: throughput and memory, against the original plan's way.

Builds runs of N IDs (``contig_000000000``, ...) in 64 shards (stride distribution,
embeddings of dimension 1: this is about IDs) with
:func:`virnucpro_merge.synthetic.write_stride_run`. By default 1% of the expected IDs
are left out of the shards and 0.1% unexpected IDs added, so that both "missing" and
"extra" have answers (``--missing 0 --extra 0``: a complete run). Then every method
checks the IDs in its own fresh process, methods alternating round by round::

    seed-plan                    the original plan's way: 10,000-row slices, decode,
                                 a per-ID Python loop into a ``seen`` set, then
                                 ``expected - seen`` and ``seen - expected``
    plan_merge                   virnucpro_merge.checks.plan_merge(shards, expected, partial=True)
    validate_shard_completeness  virnucpro_merge.validate_shard_completeness(shards, expected)

Each process loads the expected IDs into a ``set[str]`` before its baseline RSS is
taken and its timer started. Every answer (numbers of missing and extra IDs) is
checked against the run as built; a wrong one is a loud error and a non-zero exit
status. It measures only: no target is asserted.

Usage::

    python benchmarks/bench_validation.py                    # 1 M and 5 M IDs, 5 rounds
    python benchmarks/bench_validation.py --ids 200000 --rounds 3
    python benchmarks/bench_validation.py --smoke            # 20,000 IDs, 1 round
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py

from harness import (  # beside this script
    BenchError,
    Column,
    PackageSource,
    VerificationError,
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
    table,
    work_folder,
    write_results,
)

SCRIPT = Path(__file__).resolve()
SHARDS = 64
SEED_CHUNK_SIZE = 10_000  # the seed plan's CHUNK_SIZE
SMOKE_IDS = 20_000


def seed_plan(shards: Sequence[Path], expected: set[str]) -> tuple[int, int]:
    """The original plan's ID checks, as written (without its embedding copy)."""
    seen: set[str] = set()
    for shard in shards:
        with h5py.File(shard, "r") as f:
            sequence_ids = f["sequence_ids"]
            for start in range(0, sequence_ids.shape[0], SEED_CHUNK_SIZE):
                chunk = [s.decode("utf-8") if isinstance(s, bytes) else s
                         for s in sequence_ids[start : start + SEED_CHUNK_SIZE]]
                for seq_id in chunk:
                    if seq_id in seen:
                        msg = f"Duplicate sequence ID found: {seq_id} (in {shard.name})"
                        raise ValueError(msg)
                    seen.add(seq_id)
    return len(expected - seen), len(seen - expected)


def package_plan_merge(shards: Sequence[Path], expected: set[str]) -> tuple[int, int]:
    from virnucpro_merge.checks import plan_merge

    plan = plan_merge(shards, expected, partial=True)
    return len(plan.missing_ids), plan.num_extra


def package_validate(shards: Sequence[Path], expected: set[str]) -> tuple[int, int]:
    from virnucpro_merge import validate_shard_completeness

    missing, extra = validate_shard_completeness(shards, expected)
    return len(missing), len(extra)


METHODS: dict[str, Callable[[Sequence[Path], set[str]], tuple[int, int]]] = {
    "seed-plan": seed_plan,
    "plan_merge": package_plan_merge,
    "validate_shard_completeness": package_validate,
}
BASELINE = "seed-plan"  # the denominator of the ratios


def child_main(spec: dict) -> None:
    """Run one method once; reply its measurements and its answer."""
    import virnucpro_merge.checks  # noqa: F401 - every child imports the same modules: comparable baselines

    with open(spec["expected"]) as fh:
        expected = set(fh.read().splitlines())
    gc.collect()
    peak_reset = reset_peak()  # so the peak below is the validation's, not the setup's
    rss_base = rss_now()
    start = time.perf_counter()
    missing, extra = METHODS[spec["method"]]([Path(p) for p in spec["shards"]], expected)
    wall = time.perf_counter() - start
    reply({"wall": wall, "rss_base": rss_base, "peak": rss_peak(), "peak_reset": peak_reset,
           "missing": missing, "extra": extra})


def bench_size(run: dict, rounds: int, package: PackageSource, corrupt: str | None) -> dict[str, dict]:
    rows: dict[str, dict] = {name: {"rounds": [], "failed": None} for name in METHODS}
    for number in range(rounds):
        walls = {}
        for name in rotated(list(METHODS), number):
            if rows[name]["failed"]:
                continue
            spec = {"method": name, "shards": run["shards"], "expected": run["expected"]}
            try:
                result = run_fresh(SCRIPT, spec, package, what=f"METHOD FAILED: {name}")
                if corrupt == name:
                    result["missing"] += 1  # a wrong answer, to prove the check bites
                for key in ("missing", "extra"):
                    if result[key] != run[key]:
                        msg = f"VERIFICATION FAILED: {name} found {result[key]:,} {key} IDs, the run has {run[key]:,}"
                        raise VerificationError(msg)
            except BenchError as err:
                rows[name]["failed"] = str(err)
                log(f"!!! {run['ids']:,} IDs, {name}: {err}")
                continue
            rows[name]["rounds"].append(result)
            walls[name] = result["wall"]
        for name, wall in walls.items():
            rows[name]["rounds"][-1]["ratio"] = wall / walls[BASELINE] if BASELINE in walls else None
        log(f"{run['ids']:,} IDs round {number + 1}/{rounds}: " + ", ".join(f"{k} {v:.2f}s" for k, v in walls.items()))
    for row in rows.values():
        if row["rounds"]:
            walls_ = [r["wall"] for r in row["rounds"]]
            growth = max(r["peak"] - r["rss_base"] for r in row["rounds"])
            row["summary"] = {
                "wall_median": statistics.median(walls_), "wall_min": min(walls_),
                "m_ids_per_s": run["ids"] / statistics.median(walls_) / 1e6,
                "peak_mb": max(r["peak"] for r in row["rounds"]) / 1e6, "growth_mb": growth / 1e6,
                "bytes_per_id": growth / run["ids"],
                "ratio_median": median_and_min([r["ratio"] for r in row["rounds"] if r.get("ratio")])[0],
                "peak_reset": all(r["peak_reset"] for r in row["rounds"]),
            }
    return rows


COLUMNS = [Column("IDs", 11, ","), Column("method", 28, left=True), Column("wall med", 8, ".3f"),
           Column("wall min", 8, ".3f"), Column("M IDs/s", 7, ".2f"), Column("peak MB", 8, ".1f"),
           Column("growth MB", 9, ".1f"), Column("B/ID", 6, ".1f"), Column("x seed", 6, ".2f"),
           Column("check", 5)]
KEYS = ["wall_median", "wall_min", "m_ids_per_s", "peak_mb", "growth_mb", "bytes_per_id", "ratio_median"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default="1000000,5000000", help="comma-separated run sizes (default 1 M and 5 M)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all methods, alternating (default 5)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_IDS:,} IDs, 1 round: checks the benchmark works")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing", type=float, default=0.01, help="fraction of expected IDs left out")
    parser.add_argument("--extra", type=float, default=0.001, help="unexpected IDs added, as a fraction")
    parser.add_argument("--workdir", type=Path, default=None, help="where temporary runs go (default: system temp)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-json", action="store_true", help="do not write a results file")
    parser.add_argument("--live", action="store_true", help="import the working tree, not a snapshot taken at start")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_corrupt", dest="corrupt", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [SMOKE_IDS] if args.smoke else [int(float(x)) for x in args.ids.split(",")]
    except ValueError:
        parser.error(f"--ids: not a list of numbers: {args.ids!r}")
    args.rounds = 1 if args.smoke else args.rounds
    if args.rounds < 1 or min(args.sizes) < SHARDS:
        parser.error(f"need --rounds >= 1 and at least {SHARDS} IDs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0
    from virnucpro_merge.synthetic import write_stride_run

    results: dict[int, tuple[dict, dict[str, dict]]] = {}
    try:
        with work_folder("bench_validation_", args.workdir) as workdir:
            package = locate_package(workdir, live=args.live)
            facts = machine_facts(workdir, package)
            facts["runs"] = (f"{'; '.join(f'{n:,} IDs' for n in args.sizes)} in {SHARDS} shards, "
                             f"{args.missing:.1%} missing, {args.extra:.1%} extra")
            facts["rounds"] = f"{args.rounds} (methods alternate; each in a fresh process)"
            print_facts("virnucpro_merge ID validation benchmark", facts)
            for n in args.sizes:
                started = time.perf_counter()
                built = write_stride_run(workdir / f"run_{n}", n, SHARDS, dim=1, zeros=True, seed=args.seed,
                                         id_format="contig_{:09d}", missing_fraction=args.missing,
                                         extra_fraction=args.extra)
                for path in built.shard_files:  # warm the page cache, so that every method starts alike
                    path.read_bytes()
                run = {"ids": n, "missing": built.num_missing, "extra": built.num_extra,
                       "shards": [str(p) for p in built.shard_files], "expected": str(built.expected_file)}
                log(f"built {n:,} IDs ({run['missing']:,} missing, {run['extra']:,} extra) "
                    f"in {time.perf_counter() - started:.1f} s")
                results[n] = (run, bench_size(run, args.rounds, package, args.corrupt))
                shutil.rmtree(built.directory, ignore_errors=True)
    except KeyboardInterrupt:
        log("interrupted: removing temporary files")
        return 130
    facts["loadavg_end"] = os.getloadavg()
    print("\nwall: seconds (median, min over rounds); M IDs/s: N expected IDs / median wall; peak MB: peak RSS")
    print("(VmHWM, reset after setup; max over rounds); growth: peak - RSS after loading the expected set")
    print("(max over rounds), B/ID: growth / N; x seed: wall / seed-plan wall of the same round (median)\n")
    rows, failed = [], []
    for n, (_, by_method) in results.items():
        for name, row in by_method.items():
            if row["failed"] or "summary" not in row:
                failed.append(f"{n:>11,} {name:<28} FAILED: {(row['failed'] or 'no rounds').splitlines()[0]}")
            else:
                rows.append([n, name, *(row["summary"][k] for k in KEYS), "ok"])
    print(table(COLUMNS, rows))
    for line in failed:
        print(line)
    print(f"\nload average at start {facts['loadavg_start']}, at end {facts['loadavg_end']}")
    if failed:
        print(f"!!! {len(failed)} row(s) FAILED")
    else:
        count = sum(len(row["rounds"]) for _, by_method in results.values() for row in by_method.values())
        print(f"verification: OK (missing and extra counts right in all {count} runs)")
    if not args.no_json:
        payload = {"machine": facts, "rounds": args.rounds, "results": {
            str(n): {"truth": {k: run[k] for k in ("ids", "missing", "extra")}, "methods": by_method}
            for n, (run, by_method) in results.items()}}
        print(f"results written to {write_results('bench_validation', payload, args.json)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
