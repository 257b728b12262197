"""The report of a large run, now against the report of an earlier revision, in the same rounds.

Builds a run folder of 1,000,000 sequences over 1,024 ranks (IDs-only shards of dimension 1,
its ``sequence_index.json``; :func:`virnucpro_merge.synthetic.write_stride_run`) with 13
workers lost, then times, methods alternating round by round, each a fresh process::

    read-ids        every shard's IDs read once with h5py: what any reader pays
    report          virnucpro-merge report RUN -o report.html, this revision (the page with its
                    interactive figures, the JSON, the TSV, the re-run list and FASTA)
    report@REV      the same command with the package of revision REV (``git archive``; default
                    36f309f, the revision before the report was made to answer first)

and prints each as a ratio to ``read-ids`` of the same round, and ``report`` as a ratio to
``report@REV`` of the same round (the target: at most 2x), with the pages' sizes.

Usage::

    python benchmarks/bench_report_scale.py                    # 10^6 IDs, 1,024 ranks, 3 rounds
    python benchmarks/bench_report_scale.py --smoke            # 4,000 IDs, 32 ranks, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (  # beside this script
    BenchError,
    Column,
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

SCRIPT = Path(__file__).resolve()
BASELINE = "36f309f"


def read_ids(folder: Path) -> float:
    """Seconds to read every shard's IDs once with h5py, in a fresh process."""
    code = ("import sys, time, h5py, pathlib\nstart = time.perf_counter()\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).glob('shard_*.h5')):\n"
            "    with h5py.File(p, 'r') as f: f['sequence_ids'][:]\n"
            "print(time.perf_counter() - start)")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def run_report(folder: Path, out: Path, package_root: Path | None) -> dict:
    """The wall time of one report (``package_root``: import the package from there)."""
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    # -P: not the current folder's package first (a checkout's own would shadow the baseline)
    done = subprocess.run([sys.executable, "-P", "-m", "virnucpro_merge", "-q", "report", str(folder), "-o", str(out)],
                          env=env, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        msg = f"the report ({package_root or 'this revision'}) failed: {done.stderr.strip()[-500:]}"
        raise BenchError(msg)
    return {"wall": wall, "bytes": out.stat().st_size, "figures": out.read_text(encoding="utf-8").count(
        "Bokeh.embed.embed_item(")}


def build(folder: Path, n: int, ranks: int, lost: int) -> Path:
    from virnucpro_merge.synthetic import write_stride_run

    run = write_stride_run(folder, n, ranks, dim=1, zeros=True, index=True, id_format="contig_{:09d}")
    for rank in sorted({ranks - 1, *range(3, ranks, max(1, ranks // lost))})[:lost]:
        run.shard_files[rank].unlink()
    for path in folder.iterdir():  # a warm page cache for every method alike
        path.read_bytes()
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=float, default=1e6)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--lost", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help=f"the revision to compare with (default {BASELINE})")
    parser.add_argument("--smoke", action="store_true", help="4,000 IDs over 32 ranks, 1 round")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.ids, args.ranks, args.lost, args.rounds = 4e3, 32, 3, 1
    methods = ["read-ids", "report", f"report@{args.baseline}"]
    with work_folder("bench_report_scale_", args.workdir) as workdir:
        package = locate_package(workdir, live=True)  # (the report's kernel imports the installed package)
        facts = machine_facts(workdir, package)
        facts["run"] = f"{int(args.ids):,} IDs over {args.ranks:,} ranks ({args.lost} lost), sequence_index.json"
        print_facts("virnucpro_merge report at scale, against an earlier revision", facts)
        baseline = package_at(args.baseline, workdir)
        folder = build(workdir / "run", int(args.ids), args.ranks, args.lost)
        rounds: dict[str, list[dict]] = {m: [] for m in methods}
        for number in range(args.rounds):
            for method in rotated(methods, number):
                if method == "read-ids":
                    rounds[method].append({"wall": read_ids(folder)})
                else:
                    root = None if method == "report" else baseline
                    rounds[method].append(run_report(folder, workdir / f"{method.replace('@', '-')}.html", root))
            log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall']:.2f}s" for m, r in rounds.items()))
        now, then = rounds["report"], rounds[f"report@{args.baseline}"]
        if not now[-1]["figures"] or then[-1]["figures"]:
            msg = "the two reports are not of two revisions (one with interactive figures, one without)"
            raise BenchError(msg)
        rows = [[m, statistics.median(r["wall"] for r in rounds[m]), min(r["wall"] for r in rounds[m]),
                 median_and_min(same_round_ratios(rounds[m], rounds["read-ids"]))[0],
                 statistics.median(r["bytes"] for r in rounds[m]) / 1e6 if "bytes" in rounds[m][0] else None]
                for m in methods]
        print()
        print(table([Column("method", 16, left=True), Column("wall med", 9, ".2f"), Column("wall min", 9, ".2f"),
                     Column("x read-ids", 10, ".2f"), Column("page MB", 8, ".2f")], rows))
        ratio, low = median_and_min(same_round_ratios(now, then))
        print(f"report / report@{args.baseline}, same round: median {ratio:.2f}, min {low:.2f} (target <= 2.0)")
        print(json.dumps({"report_vs_baseline": ratio, "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
