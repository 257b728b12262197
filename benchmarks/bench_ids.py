"""What the commands cost on a run of many IDs: validate, aggregate and report against reading the IDs.

Builds a run of N IDs (default 10^7, ``contig_000000000``, ...) over 256 ranks in
IDs-only shards (stride distribution, random float32 embeddings of dimension 4:
this is about IDs; :func:`virnucpro_merge.synthetic.write_stride_run`), with an
expected list (a text file, one ID a line, every index position) of which 1% are
left out of the shards. Then times every method, each in a fresh process, methods
alternating round by round (who goes first rotating)::

    read-ids   every shard's sequence_ids read once with h5py, nothing else: the baseline
    validate   python -m virnucpro_merge validate RUN --expected LIST   (exit 1: IDs missing)
    aggregate  python -m virnucpro_merge aggregate RUN -o OUT.h5 --expected LIST --partial
               (durable, the default; the output deleted after each round)
    report     python -m virnucpro_merge -q report RUN --expected LIST -o REPORT.html: its
               cheapest form (no --merged, no --health) that still reads every ID; it runs
               a Jupyter kernel (the page, REPORT.json, the TSV and the re-run list deleted
               after each round)

Each method is a whole command in its own interpreter, started by a small launcher
process of its own (this script with ``--_child``, which imports nothing heavy). The
launcher times the command (wall, from start to exit: interpreter start-up and
imports included, read-ids's too), and reads from ``getrusage(RUSAGE_CHILDREN)``
the CPU-seconds (user + sys) of the command and every process under it that was
waited for (the report's kernel and workers included), and the peak RSS of the
largest of them (``ru_maxrss``: Linux passes the largest up the tree as each process
is reaped; the launcher is small, so its own size at fork time does not show). It
also samples the tree with psutil every 50 ms, as a check: the largest process seen
and the sum over the tree (RSS: pages shared after a fork are counted in every
process, so the sum is an upper bound). Bytes per ID = peak RSS (largest process) / N,
interpreter and imports included.

Every answer is checked where that is cheap: read-ids counts N - missing IDs;
validate exits 1 and says ``missing: <the number left out>``; aggregate's output has
N - missing rows and its report lists exactly the missing IDs; the report's JSON
says the right numbers present and missing and its re-run list has one line per
missing ID. A wrong answer is a loud error and a non-zero exit status. It measures
only: no target is asserted. The ratios are each method's wall (and CPU) divided by
read-ids's of the same round, median and minimum over the rounds; each round's log
line gives the 1-minute load average at its start (the machine may be shared).

Usage::

    python benchmarks/bench_ids.py                     # 10^7 IDs, 3 rounds
    python benchmarks/bench_ids.py --ids 1e7 --rounds 2
    python benchmarks/bench_ids.py --methods read-ids,validate --ids 2e6
    python benchmarks/bench_ids.py --smoke             # 20,000 IDs, 1 round, a few seconds

Results also go to ``benchmarks/results/bench_ids-<time>.json`` (``--no-json`` to skip).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import (  # beside this script
    BenchError,
    ChildMemory,
    Column,
    PackageSource,
    VerificationError,
    locate_package,
    log,
    machine_facts,
    median_and_min,
    print_facts,
    reply,
    rotated,
    run_fresh,
    same_round_ratios,
    table,
    work_folder,
    write_results,
)

SCRIPT = Path(__file__).resolve()
RANKS = 256
DIM = 4
SMOKE_IDS = 20_000
METHODS = ["read-ids", "validate", "aggregate", "report"]
BASELINE = "read-ids"
ID_PREFIX = "contig_"
MERGED = "merged.h5"
PAGE = "report.html"
SAMPLE_SECONDS = 0.05


# --------------------------------------------------------------------------- the children


def read_ids(folder: Path) -> None:
    """The baseline: every shard's sequence_ids read once with h5py (and counted)."""
    import h5py

    start = time.perf_counter()
    count = 0
    for path in sorted(folder.glob("shard_*.h5")):
        with h5py.File(path, "r") as f:
            count += len(f["sequence_ids"][:])
    print(f"read-ids: {count} IDs in {time.perf_counter() - start:.3f} s")


def launch(argv: list[str]) -> None:
    """Run one command; reply its wall, its tree's CPU-seconds and peak RSS, its exit status and output."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ChildMemory(SAMPLE_SECONDS) as tree:
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    reply({"wall": wall, "cpu": user + system, "cpu_user": user, "cpu_sys": system,
           "peak": after.ru_maxrss * 1024, "sampled_largest": tree.largest, "sampled_tree": tree.total,
           "samples": tree.samples, "returncode": proc.returncode, "stdout": proc.stdout[-20000:],
           "stderr": proc.stderr[-5000:]})


def child_main(spec: dict) -> None:
    if spec["method"] == "launch":
        launch(spec["argv"])
    elif spec["method"] == "read-ids":
        read_ids(Path(spec["run"]))


# --------------------------------------------------------------------------- the methods and their checks


def command(method: str, run: dict, out: Path) -> list[str]:
    """The command line of ``method`` on ``run``, its outputs in ``out``."""
    cli = [sys.executable, "-m", "virnucpro_merge"]
    if method == "read-ids":
        return [sys.executable, str(SCRIPT), "--_child", json.dumps({"method": "read-ids", "run": run["folder"]})]
    if method == "validate":
        return [*cli, "validate", run["folder"], "--expected", run["expected"]]
    if method == "aggregate":
        return [*cli, "aggregate", run["folder"], "-o", str(out / MERGED), "--expected", run["expected"], "--partial"]
    if method == "report":
        return [*cli, "-q", "report", run["folder"], "--expected", run["expected"], "-o", str(out / PAGE)]
    msg = f"unknown method {method}"
    raise ValueError(msg)


def _wrong(method: str, what: str) -> VerificationError:
    return VerificationError(f"VERIFICATION FAILED: {method}: {what}")


def check(method: str, run: dict, out: Path, result: dict) -> None:
    """Check ``method``'s answer (raises :class:`VerificationError`)."""
    present, missing = run["ids"] - run["missing"], run["missing"]
    status, stdout = result["returncode"], result["stdout"]
    if status != (1 if method == "validate" and missing else 0):
        msg = f"{method} exited {status}:\n{result['stderr'].strip()[-2000:]}"
        raise BenchError(msg)
    if method == "read-ids":
        found = re.search(r"^read-ids: (\d+) IDs", stdout, re.MULTILINE)
        if not found or int(found[1]) != present:
            raise _wrong(method, f"read {found[1] if found else 'no'} IDs, the shards hold {present:,}")
    elif method == "validate":  # "missing: 200 (first 10: ['contig_000000054', ...])"
        found = re.search(r"^missing: (\d+)(?: \(first \d+: (\[.*\])\))?$", stdout, re.MULTILINE)
        first = ast.literal_eval(found[2]) if found and found[2] else []
        if not found or int(found[1]) != missing or first != run["missing_ids"][: len(first)]:
            raise _wrong(method, f"says {found[0] if found else 'nothing'}; the run lacks {missing:,}, first "
                                 f"{run['missing_ids'][:3]}")
    elif method == "aggregate":
        from virnucpro_merge import read_merge_report

        if not (out / MERGED).is_file():
            raise _wrong(method, f"wrote no {MERGED}")
        report = read_merge_report(out / MERGED)
        if (report["total_sequences"] != present or sorted(report["missing_ids"]) != run["missing_ids"]
                or report["partial"] != bool(missing)):
            raise _wrong(method, f"{report['total_sequences']:,} rows and {len(report['missing_ids']):,} missing IDs "
                                 f"(partial {report['partial']}); the run has {present:,} and lacks {missing:,} "
                                 "(or other IDs)")
    elif method == "report":
        facts = json.loads((out / PAGE).with_suffix(".json").read_text())
        rerun = sorted(Path(facts["rerun_list"]).read_text().split()) if facts.get("rerun_list") else []
        if facts["present"] != present or facts["missing"] != missing or rerun != run["missing_ids"]:
            raise _wrong(method, f"says {facts['present']:,} present, {facts['missing']:,} missing, "
                                 f"{len(rerun):,} to re-run; the run has {present:,} and lacks {missing:,} "
                                 "(or other IDs)")


# --------------------------------------------------------------------------- rounds and the table


def build(folder: Path, n: int, seed: int, missing: float) -> dict:
    """The run: IDs-only shards over RANKS ranks, its expected list, the page cache warm; and
    which IDs are missing, read off the shards (every ID is ``ID_PREFIX`` + its index position)."""
    import h5py
    import numpy as np

    from virnucpro_merge.synthetic import write_stride_run

    built = write_stride_run(folder, n, RANKS, dim=DIM, seed=seed, id_format=ID_PREFIX + "{:09d}",
                             missing_fraction=missing)
    present = np.zeros(n, dtype=bool)
    for path in built.shard_files:
        with h5py.File(path, "r") as f:
            ids = f["sequence_ids"][:]
        present[np.fromiter((int(i[len(ID_PREFIX):]) for i in ids), dtype=np.int64, count=len(ids))] = True
    missing_ids = [f"{ID_PREFIX}{p:09d}" for p in np.flatnonzero(~present)]
    if len(missing_ids) != built.num_missing:
        msg = f"the run lacks {len(missing_ids):,} IDs, write_stride_run says {built.num_missing:,}"
        raise BenchError(msg)
    for path in folder.iterdir():  # every method starts from a warm page cache
        path.read_bytes()
    return {"folder": str(folder), "expected": str(built.expected_file), "ids": n, "missing": built.num_missing,
            "missing_ids": missing_ids, "bytes": sum(p.stat().st_size for p in built.shard_files)}


def bench(run: dict, methods: list[str], rounds: int, package: PackageSource, workdir: Path,
          corrupt: str | None) -> tuple[dict[str, list[dict]], dict[str, str], list[float]]:
    measured: dict[str, list[dict]] = {m: [] for m in methods}
    failed: dict[str, str] = {}
    loads = []
    for number in range(rounds):
        load1 = os.getloadavg()[0]
        loads.append(load1)
        done = {}
        for method in rotated(methods, number):
            if method in failed:
                continue
            out = workdir / f"out_{method}"
            out.mkdir()
            spec = {"method": "launch", "argv": command(method, run, out)}
            try:
                result = run_fresh(SCRIPT, spec, package, what=f"the launcher of {method}")
                if corrupt == method:  # a wrong answer, to prove the checks bite
                    result["stdout"] = result["stdout"].replace("missing: ", "missing: 1")
                    result["stdout"] = result["stdout"].replace("read-ids: ", "read-ids: 1")
                    (out / MERGED).unlink(missing_ok=True)
                    (out / PAGE).with_suffix(".json").write_text('{"present": 0, "missing": 0}')
                check(method, run, out, result)
            except (BenchError, OSError, KeyError, ValueError) as err:
                failed[method] = str(err)
                log(f"!!! {method}: {err}")
                continue
            finally:
                shutil.rmtree(out, ignore_errors=True)
            for key in ("stdout", "stderr"):
                result.pop(key)
            result["load1"] = load1
            measured[method].append(result)
            done[method] = result
        log(f"round {number + 1}/{rounds} (load {load1:.2f} at start): "
            + ", ".join(f"{m} {r['wall']:.2f}s ({r['cpu']:.2f} CPU-s, {r['peak'] / 1e6:.0f} MB)"
                        for m, r in done.items()))
    return measured, failed, loads


def summary(run: dict, measured: dict[str, list[dict]]) -> dict[str, dict]:
    base = measured.get(BASELINE, [])
    rows = {}
    for method, rounds in measured.items():
        if not rounds:
            continue
        walls = [r["wall"] for r in rounds]
        ratio_med, ratio_min = median_and_min(same_round_ratios(rounds, base)) if len(rounds) == len(base) else (
            None, None)
        cpu_ratio = median_and_min(same_round_ratios(rounds, base, "cpu"))[0] if len(rounds) == len(base) else None
        peak = max(r["peak"] for r in rounds)
        rows[method] = {
            "wall_median": statistics.median(walls), "wall_min": min(walls),
            "cpu_median": statistics.median(r["cpu"] for r in rounds),
            "ratio_median": ratio_med, "ratio_min": ratio_min, "cpu_ratio_median": cpu_ratio,
            "peak_mb": peak / 1e6, "bytes_per_id": peak / run["ids"],
            "sampled_largest_mb": max(r["sampled_largest"] for r in rounds) / 1e6,
            "sampled_tree_mb": max(r["sampled_tree"] for r in rounds) / 1e6,
        }
    return rows


COLUMNS = [Column("method", 10, left=True), Column("wall med", 8, ".2f"), Column("wall min", 8, ".2f"),
           Column("CPU s", 7, ".2f"), Column("x read med", 10, ".2f"), Column("x read min", 10, ".2f"),
           Column("CPU x read", 10, ".2f"), Column("peak MB", 8, ".0f"), Column("B/ID", 6, ".1f"),
           Column("sampled MB", 10, ".0f"), Column("tree MB", 8, ".0f")]
KEYS = ["wall_median", "wall_min", "cpu_median", "ratio_median", "ratio_min", "cpu_ratio_median", "peak_mb",
        "bytes_per_id", "sampled_largest_mb", "sampled_tree_mb"]


# --------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default="1e7", help="IDs in the run (default 1e7)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all methods, alternating (default 3)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--missing", type=float, default=0.01, help="fraction of expected IDs left out (default 1%%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_IDS:,} IDs, 1 round: checks the benchmark works")
    parser.add_argument("--workdir", type=Path, default=None, help="where the run goes (default: system temp)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-json", action="store_true", help="do not write a results file")
    parser.add_argument("--live", action="store_true", help="import the working tree, not a snapshot taken at start")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_corrupt", dest="corrupt", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.n = SMOKE_IDS if args.smoke else int(float(args.ids))
    except ValueError:
        parser.error(f"--ids: not a number: {args.ids!r}")
    args.rounds = 1 if args.smoke else args.rounds
    args.method_names = [m for m in METHODS if m in args.methods.split(",")]
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    if BASELINE not in args.method_names:
        args.method_names.insert(0, BASELINE)
    if args.rounds < 1 or args.n < RANKS:
        parser.error(f"need --rounds >= 1 and at least {RANKS} IDs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0
    try:
        with work_folder("bench_ids_", args.workdir) as workdir:
            package = locate_package(workdir, live=args.live)
            facts = machine_facts(workdir, package)
            started = time.perf_counter()
            run = build(workdir / "run", args.n, args.seed, args.missing)
            facts["run"] = (f"{args.n:,} IDs over {RANKS} ranks (IDs-only shards, dim {DIM}, "
                            f"{run['bytes'] / 1e6:.0f} MB),"
                            f" {run['missing']:,} of them missing; expected: a text list")
            facts["rounds"] = f"{args.rounds} (methods alternate; each a fresh process under a fresh launcher)"
            print_facts("virnucpro_merge commands on many IDs", facts)
            log(f"built the run in {time.perf_counter() - started:.1f} s")
            measured, failed, loads = bench(run, args.method_names, args.rounds, package, workdir, args.corrupt)
            changed = package.changed()
    except KeyboardInterrupt:
        log("interrupted: removing temporary files")
        return 130
    facts["loadavg_end"] = os.getloadavg()
    if changed:
        log("note: virnucpro_merge's sources changed during the run; every round measured "
            + ("the snapshot taken at the start" if package.snapshot_root else "the live tree, maybe changing"))
    rows = summary(run, {m: r for m, r in measured.items() if m not in failed})
    print()
    print("wall: seconds from start to exit of the command (median, min over rounds); CPU s: user + sys of it and")
    print("every process under it (median); x read: wall / read-ids wall of the same round (median, min); CPU x read:")
    print("the same for CPU-seconds (median); peak MB: peak RSS of the largest process of the tree (ru_maxrss, max")
    print("over rounds); B/ID: that / IDs; sampled MB, tree MB: psutil every 50 ms, the largest process and the")
    print("sum over the tree (an upper bound: shared pages counted in every process)\n")
    print(table(COLUMNS, [[m, *(rows[m][k] for k in KEYS)] for m in args.method_names if m in rows]))
    for method, why in failed.items():
        print(f"{method:<10} FAILED: {why.splitlines()[0]}")
    print(f"\nload average (1 min) at the start of each round: {', '.join(f'{x:.2f}' for x in loads)}; "
          f"at start {facts['loadavg_start']}, at end {facts['loadavg_end']}")
    if failed:
        print(f"!!! {len(failed)} method(s) FAILED")
    else:
        count = sum(len(r) for r in measured.values())
        print(f"verification: OK (every answer right in all {count} runs)")
    if not args.no_json:
        truth = {k: run[k] for k in ("ids", "missing", "bytes")}
        payload = {"machine": facts, "rounds": args.rounds, "run": truth, "summary": rows, "measured": measured,
                   "failed": failed, "loads": loads}
        print(f"results written to {write_results('bench_ids', payload, args.json)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
