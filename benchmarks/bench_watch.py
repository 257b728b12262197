"""What one refresh of ``virnucpro-merge watch`` costs at 1,024 ranks, against listing the run folder once.

Writes a synthetic live run (:func:`virnucpro_merge.synthetic.make_live_run`, ``--ranks``
ranks of ``--per-rank`` sequences, a checkpoint every ``--every``), advances it to the middle
of its course, and lets a :class:`~virnucpro_merge.inspection.ProgressReader` take its first
look (every checkpoint's IDs read once: not timed). Then, round by round, the run goes on
by ``--step`` seconds (the files a minute of a real run writes), and these are timed, who
goes first rotating, the page cache warm for all::

    walk       os.scandir over the whole run folder, every entry's name: the baseline
    refresh    reader.read(): the look after the run went on (it re-reads what changed)
    idle       reader.read() again at once: nothing changed since

and each is printed as a ratio to ``walk`` of the same round (target for ``refresh``: at
most 3). A refresh must say what the run's files say: its sequences done are checked
against the live run's own count, round by round.

One process: a watcher is one long-lived process whose cache is warm, so this measures
what its next look costs (the harness's fresh processes would measure its first).

Usage::

    python benchmarks/bench_watch.py                  # 1,024 ranks, 7 rounds
    python benchmarks/bench_watch.py --smoke          # 64 ranks, 2 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (  # beside this script
    Column,
    locate_package,
    log,
    machine_facts,
    median_and_min,
    print_facts,
    rotated,
    same_round_ratios,
    table,
    work_folder,
)

METHODS = ["walk", "refresh", "idle"]
TARGET = 3.0


def walk(folder: str) -> int:
    """List a folder and everything under it (names only, as ``os.scandir`` gives them); return the entries."""
    count, stack = 0, [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def timed(call):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--per-rank", type=int, default=400, help="sequences a rank (default 400)")
    parser.add_argument("--every", type=int, default=20, help="sequences a checkpoint (default 20)")
    parser.add_argument("--step", type=float, default=60.0, help="seconds the run goes on between looks")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="64 ranks, 2 rounds")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-json", action="store_true", help="(accepted for the smoke tests; nothing is saved)")
    args = parser.parse_args()
    if args.smoke:
        args.ranks, args.per_rank, args.rounds = 64, 100, 2
    with work_folder("bench_watch_", args.workdir) as workdir:
        package = locate_package(workdir, live=True)
        sys.path.insert(0, str(package.directory.parent)) if package.directory is not None else None
        from virnucpro_merge.inspection import ProgressReader
        from virnucpro_merge.synthetic import make_live_run

        facts = machine_facts(workdir, package)
        started = time.perf_counter()
        live = make_live_run(workdir / "run", n_sequences=args.ranks * args.per_rank, world_size=args.ranks,
                             checkpoint_every=args.every, stragglers=(2,), stalls=(5,), dies=(6,), preempted=(7,))
        middle = live.end / 2
        live.advance_to(middle)
        entries = walk(str(live.directory))
        facts["run"] = (f"{args.ranks:,} ranks of {args.per_rank:,} sequences, a checkpoint every {args.every}; "
                        f"at {middle:,.0f} s of {live.end:,.0f}: {entries:,} files and folders "
                        f"(written in {time.perf_counter() - started:.0f} s)")
        reader = ProgressReader(live.directory)
        first, found = timed(lambda: reader.read(now=live.moment()))
        facts["first look"] = f"{first * 1000:.0f} ms ({reader.files_read:,} files read: every checkpoint once)"
        print_facts("virnucpro_merge watch refresh benchmark", facts)
        rounds: dict[str, list[dict]] = {m: [] for m in METHODS}
        for number in range(args.rounds):
            written = len(live.advance_to(live.clock + args.step))
            truth = sum(live.done_at(rank, live.clock) for rank in range(args.ranks))
            order = rotated(["walk", "refresh"], number)
            for method in order:
                if method == "walk":
                    wall, _ = timed(lambda: walk(str(live.directory)))
                    rounds["walk"].append({"wall": wall})
                else:
                    wall, found = timed(lambda: reader.read(now=live.moment()))
                    if found.done != truth:
                        log(f"VERIFICATION FAILED: the refresh says {found.done:,} sequences done, the run {truth:,}")
                        return 1
                    rounds["refresh"].append({"wall": wall, "read": reader.files_read, "written": written})
            wall, found = timed(lambda: reader.read(now=live.moment()))
            rounds["idle"].append({"wall": wall, "read": reader.files_read})
            log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall'] * 1000:.1f} ms" for m, r in rounds.items())
                + f"; {written} files written, {rounds['refresh'][-1]['read']} read again")
        rows = []
        for method in METHODS:
            walls = [r["wall"] * 1000 for r in rounds[method]]
            ratio, lowest = median_and_min(same_round_ratios(rounds[method], rounds["walk"]))
            read = statistics.median(r.get("read", 0) for r in rounds[method])
            rows.append([method, statistics.median(walls), min(walls), ratio, lowest, read])
        print()
        print(table([Column("method", 8, left=True), Column("ms med", 8, ".1f"), Column("ms min", 8, ".1f"),
                     Column("x walk", 7, ".2f"), Column("x min", 6, ".2f"), Column("files read", 10, ".0f")], rows))
        ratio = rows[1][3]
        print(f"refresh / walk at {args.ranks:,} ranks: x{ratio:.2f} (median of same-round ratios); "
              f"idle / walk: x{rows[2][3]:.2f} -- target <= {TARGET:.2f}: "
              f"{'met' if ratio is not None and ratio <= TARGET else 'NOT MET'}")
        print("verification: OK (every refresh counted what the run's files hold)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
