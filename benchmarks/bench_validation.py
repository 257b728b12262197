"""Benchmark ID validation: throughput and memory, against the original plan's way.

Builds runs of N IDs (``contig_000000000``, ...) in 64 shards (stride distribution:
shard r holds positions r, r + 64, ...; embeddings of shape (rows, 1) float32, since
this is about IDs; ``sequence_ids`` vlen str). By default 1% of the expected IDs
are left out of the shards and 0.1% unexpected IDs added, so that both "missing"
and "extra" have answers (``--missing 0 --extra 0``: a complete run). Then every method checks the IDs (read every ID from the
shards, look for duplicates, compare with the N expected IDs) in its own fresh
Python process, methods alternating round by round::

    seed-plan                    the original plan's way: 10,000-row slices, decode,
                                 a per-ID Python loop into a ``seen`` set, then
                                 ``expected - seen`` and ``seen - expected``
    plan_merge                   virnucpro_merge.plan.plan_merge(shards, expected, partial=True)
    validate_shard_completeness  virnucpro_merge.validate_shard_completeness(shards, expected)

Each process loads the expected IDs into a ``set[str]`` before its baseline RSS is
taken and its timer started. Every method's numbers of missing and extra IDs are
checked against the built truth; a wrong answer is a loud error and a non-zero exit
status. The table gives wall time (median and min over rounds), M IDs/s (N / median
wall), peak RSS, its growth over the baseline (total and per ID) and the ratio of
wall to seed-plan's in the same round. It measures only: no target is asserted.

Usage::

    python benchmarks/bench_validation.py                    # 1 M and 5 M IDs, 5 rounds
    python benchmarks/bench_validation.py --ids 200000 --rounds 3
    python benchmarks/bench_validation.py --smoke            # 20,000 IDs, 1 round

Results also go to ``benchmarks/results/bench_validation-<time>.json`` (``--no-json``
to skip). The package is imported from this working tree.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from procmem import reset_peak, rss_now, rss_peak  # beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the working tree: virnucpro_merge is imported from here
sys.path.insert(0, str(ROOT))
RESULTS_DIR = HERE / "results"
RESULT_TAG = "BENCH-RESULT "  # prefix of the child's one-line JSON answer
SHARDS = 64
SEED_CHUNK_SIZE = 10_000  # the seed plan's CHUNK_SIZE
SMOKE_IDS = 20_000


# --------------------------------------------------------------------------- methods
# Each returns (number of missing IDs, number of extra IDs).


def seed_plan(shards: Sequence[Path], expected: set[str]) -> tuple[int, int]:
    """The original plan's ID checks, as written (without its embedding copy)."""
    seen: set[str] = set()
    for shard in shards:
        with h5py.File(shard, "r") as f:
            sequence_ids = f["sequence_ids"]
            n = sequence_ids.shape[0]
            for start in range(0, n, SEED_CHUNK_SIZE):
                chunk = [
                    s.decode("utf-8") if isinstance(s, bytes) else s
                    for s in sequence_ids[start : start + SEED_CHUNK_SIZE]
                ]
                for seq_id in chunk:
                    if seq_id in seen:
                        raise ValueError(f"Duplicate sequence ID found: {seq_id} (in {shard.name})")
                    seen.add(seq_id)
    missing = expected - seen
    extra = seen - expected
    return len(missing), len(extra)


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


# --------------------------------------------------------------------------- building runs


def build(folder: Path, n: int, seed: int = 0, missing: float = 0.01, extra: float = 0.001) -> dict:
    """Write a run of ``n`` expected IDs, a fraction ``missing`` of them left out of the
    shards and ``extra`` * n unexpected ones added; return its truth (numbers of
    missing and extra)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    dropped = np.zeros(n, dtype=bool)
    dropped[rng.choice(n, round(n * missing), replace=False)] = True  # missing from the shards
    num_extra = round(n * extra)  # in the shards but not expected: IDs past N
    shards = []
    for rank in range(SHARDS):
        positions = np.arange(rank, n, SHARDS)
        ids = [f"contig_{p:09d}" for p in positions[~dropped[positions]]]
        ids += [f"contig_{n + j:09d}" for j in range(rank, num_extra, SHARDS)]
        path = folder / f"shard_{rank}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("embeddings", data=np.zeros((len(ids), 1), np.float32))
            f.create_dataset("sequence_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        shards.append(str(path))
    with open(folder / "expected.txt", "w") as fh:
        fh.writelines(f"contig_{i:09d}\n" for i in range(n))
    for path in shards:  # warm the page cache, so that every method starts alike
        Path(path).read_bytes()
    return {"ids": n, "missing": int(dropped.sum()), "extra": num_extra, "shards": shards,
            "expected": str(folder / "expected.txt")}


# --------------------------------------------------------------------------- the child


def child_main(spec: dict) -> None:
    """Run one method once; print its measurements and answer as one JSON line."""
    import virnucpro_merge  # every child imports the same modules: comparable baselines
    import virnucpro_merge.checks  # noqa: F401

    with open(spec["expected"]) as fh:
        expected = set(fh.read().splitlines())
    gc.collect()
    peak_reset = reset_peak()  # so the peak below is the validation's, not the setup's
    rss_base = rss_now()
    start = time.perf_counter()
    missing, extra = METHODS[spec["method"]]([Path(p) for p in spec["shards"]], expected)
    wall = time.perf_counter() - start
    result = {"wall": wall, "rss_base": rss_base, "peak": rss_peak(), "peak_reset": peak_reset,
              "missing": missing, "extra": extra, "package_file": virnucpro_merge.__file__}
    print(RESULT_TAG + json.dumps(result), flush=True)


class BenchError(RuntimeError):
    """A method failed or gave a wrong answer."""


def run_child(method: str, run: dict) -> dict:
    """Run ``method`` on ``run`` in a fresh interpreter; return its measurements."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    spec = {"method": method, "shards": run["shards"], "expected": run["expected"]}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"METHOD FAILED (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    if not str(result["package_file"]).startswith(str(ROOT)):
        raise BenchError(f"imported virnucpro_merge from {result['package_file']}, not from {ROOT}")
    return result


def verify(method: str, result: dict, run: dict) -> None:
    for key in ("missing", "extra"):
        if result[key] != run[key]:
            raise BenchError(
                f"VERIFICATION FAILED: {method} found {result[key]:,} {key} IDs, the run has {run[key]:,}"
            )


# --------------------------------------------------------------------------- driver and report


def bench_size(run: dict, rounds: int, corrupt: str | None, log: Callable[[str], None]) -> dict[str, dict]:
    names = list(METHODS)
    rows: dict[str, dict] = {name: {"rounds": [], "failed": None} for name in names}
    for rnd in range(rounds):
        walls = {}
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # rotate who goes first
            if rows[name]["failed"]:
                continue
            try:
                result = run_child(name, run)
                if corrupt == name:
                    result["missing"] += 1  # a wrong answer, to prove the check bites
                verify(name, result, run)
            except BenchError as err:
                rows[name]["failed"] = str(err)
                log(f"!!! {run['ids']:,} IDs, {name}: {err}")
                continue
            rows[name]["rounds"].append(result)
            walls[name] = result["wall"]
        for name, wall in walls.items():
            rows[name]["rounds"][-1]["ratio"] = wall / walls[BASELINE] if BASELINE in walls else None
        times = ", ".join(f"{k} {v:.2f}s" for k, v in walls.items())
        log(f"{run['ids']:,} IDs round {rnd + 1}/{rounds}: {times}")
    for row in rows.values():
        rounds_ = row["rounds"]
        if rounds_:
            walls_ = [r["wall"] for r in rounds_]
            ratios = [r["ratio"] for r in rounds_ if r.get("ratio") is not None]
            growth = max(r["peak"] - r["rss_base"] for r in rounds_)
            row["summary"] = {
                "wall_median": statistics.median(walls_), "wall_min": min(walls_),
                "m_ids_per_s": run["ids"] / statistics.median(walls_) / 1e6,
                "peak_mb": max(r["peak"] for r in rounds_) / 1e6, "growth_mb": growth / 1e6,
                "bytes_per_id": growth / run["ids"], "ratio_median": statistics.median(ratios) if ratios else None,
                "peak_reset": all(r["peak_reset"] for r in rounds_),
            }
    return rows


HEADER = (f"{'IDs':>11} {'method':<28} {'wall med':>8} {'wall min':>8} {'M IDs/s':>7} "
          f"{'peak MB':>8} {'growth MB':>9} {'B/ID':>6} {'x seed':>6}  check")


def format_row(n: int, name: str, row: dict) -> str:
    if row["failed"] or "summary" not in row:
        return f"{n:>11,} {name:<28} FAILED: {(row['failed'] or 'no rounds').splitlines()[0]}"
    s = row["summary"]
    ratio = "-" if s["ratio_median"] is None else f"{s['ratio_median']:.2f}"
    return (f"{n:>11,} {name:<28} {s['wall_median']:>8.3f} {s['wall_min']:>8.3f} {s['m_ids_per_s']:>7.2f} "
            f"{s['peak_mb']:>8.1f} {s['growth_mb']:>9.1f} {s['bytes_per_id']:>6.1f} {ratio:>6}  ok")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default="1000000,5000000", help="comma-separated run sizes (default 1 M and 5 M)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all methods, alternating (default 5)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_IDS:,} IDs, 1 round: checks the benchmark works")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing", type=float, default=0.01, help="fraction of expected IDs left out (default 0.01)")
    parser.add_argument("--extra", type=float, default=0.001, help="unexpected IDs added, as a fraction (default 0.001)")
    parser.add_argument("--workdir", type=Path, default=None, help="where temporary runs go (default: system temp)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-json", action="store_true", help="do not write a results file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_corrupt", dest="corrupt", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(float(x)) for x in args.ids.split(",")] if not args.smoke else [SMOKE_IDS]
    except ValueError:
        parser.error(f"--ids: not a list of numbers: {args.ids!r}")
    if args.smoke:
        args.rounds = 1
    if args.rounds < 1 or min(args.sizes) < SHARDS:
        parser.error(f"need --rounds >= 1 and at least {SHARDS} IDs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0
    import virnucpro_merge

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_validation_", dir=base))
    facts = {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg(),
             "python": sys.version.split()[0], "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
             "virnucpro_merge": f"{virnucpro_merge.__version__} ({Path(virnucpro_merge.__file__).parent})"}
    print("virnucpro_merge ID validation benchmark")
    for key, value in facts.items():
        print(f"  {key:<16} {value}")
    sizes = "; ".join(f"{n:,} IDs" for n in args.sizes)
    print(f"  {'runs':<16} {sizes} in {SHARDS} shards, {args.missing:.1%} missing, {args.extra:.1%} extra")
    print(f"  {'rounds':<16} {args.rounds} (methods alternate; each in a fresh process)", flush=True)
    results: dict[int, tuple[dict, dict[str, dict]]] = {}
    try:
        for n in args.sizes:
            started = time.perf_counter()
            run = build(workdir / f"run_{n}", n, seed=args.seed, missing=args.missing, extra=args.extra)
            took = time.perf_counter() - started
            log(f"built {n:,} IDs ({run['missing']:,} missing, {run['extra']:,} extra) in {took:.1f} s")
            results[n] = (run, bench_size(run, args.rounds, args.corrupt, log))
            shutil.rmtree(workdir / f"run_{n}", ignore_errors=True)
    except KeyboardInterrupt:
        log("interrupted: removing temporary files")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    facts["loadavg_end"] = os.getloadavg()

    print("\nwall: seconds (median, min over rounds); M IDs/s: N expected IDs / median wall; peak MB: peak RSS")
    print("(VmHWM, reset after setup; max over rounds); growth: peak - RSS after loading the expected set")
    print("(max over rounds), B/ID: growth / N; x seed: wall / seed-plan wall of the same round (median)\n")
    print(HEADER)
    for n, (_, rows) in results.items():
        for name, row in rows.items():
            print(format_row(n, name, row))
    all_rows = [row for _, rows in results.values() for row in rows.values()]
    if not all(row.get("summary", {}).get("peak_reset", True) for row in all_rows):
        print("note: could not reset VmHWM (/proc/self/clear_refs): peaks include the setup")
    print(f"\nload average at start {facts['loadavg_start']}, at end {facts['loadavg_end']}")
    failed = [f"{n:,}/{name}" for n, (_, rows) in results.items() for name, row in rows.items() if row["failed"]]
    if failed:
        print(f"!!! {len(failed)} row(s) FAILED: {', '.join(failed)}")
    else:
        count = sum(len(row["rounds"]) for row in all_rows)
        print(f"verification: OK (missing and extra counts right in all {count} runs)")
    if not args.no_json:
        path = args.json or RESULTS_DIR / f"bench_validation-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": facts, "rounds": args.rounds, "results": {
            str(n): {"truth": {k: run[k] for k in ("ids", "missing", "extra")}, "methods": rows}
            for n, (run, rows) in results.items()}}
        path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
