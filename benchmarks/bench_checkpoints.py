"""How fast the pipeline's checkpoints are read, safely, against the same rows read from HDF5.

Writes one rank's worth of checkpoints as the pipeline saves them (``--files`` files of
``--rows`` rows of dimension ``--dim``, float32, 5-digit batch names, numpy payloads:
:func:`virnucpro_merge.synthetic.write_checkpoint`), and the same rows and IDs as HDF5
shards of the same sizes (:func:`virnucpro_merge.synthetic.write_shard`), then times,
each in a fresh process, methods alternating round by round, the page cache warm for all::

    h5py           every file's embeddings and IDs read with h5py: the baseline
    checkpoints    every checkpoint read with virnucpro_merge.checkpoints.read_checkpoint
                   (the unpickler that runs nothing, every member's CRC-32 checked)

and prints each as a ratio to ``h5py`` of the same round (target: at most 1.5). Then what
checking a merge's shards against their checkpoints costs, on a run folder of 4 ranks
holding the same number of rows (each rank checkpointed ``--rows`` at a time, so nearly
every row is in a checkpoint too), each merge without fsync (``durable=False``)::

    merge          aggregate_shards(..., checkpoints=False): the baseline
    cross-checked  aggregate_shards(...): every shard's rows compared with its checkpoints'

Usage::

    python benchmarks/bench_checkpoints.py                  # 20 files x 2,000 rows x 1280, 5 rounds
    python benchmarks/bench_checkpoints.py --smoke          # small, 1 round
"""

from __future__ import annotations

import argparse
import json
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
    reply,
    rotated,
    run_fresh,
    same_round_ratios,
    table,
    work_folder,
)

SCRIPT = Path(__file__).resolve()
METHODS = ["h5py", "checkpoints"]
MERGES = ["merge", "cross-checked"]


def child_main(spec: dict) -> None:
    folder = Path(spec["folder"])
    if spec["method"] in MERGES:
        from virnucpro_merge import aggregate_shards, read_merge_report

        shards = sorted(folder.glob("shard_*.h5"))
        output = folder.parent / "merged.h5"
        start = time.perf_counter()
        aggregate_shards(shards, output, folder / "sequence_index.json", durable=False,
                         checkpoints=None if spec["method"] == "cross-checked" else False)
        wall = time.perf_counter() - start
        rows = read_merge_report(output)["total_sequences"]
        output.unlink()
        reply({"wall": wall, "rows": rows, "ids": rows})
        return
    if spec["method"] == "h5py":
        import h5py

        start = time.perf_counter()
        rows = ids = 0
        for path in sorted(folder.glob("*.h5")):
            with h5py.File(path, "r") as f:
                rows += len(f["embeddings"][:])
                ids += len(f["sequence_ids"][:])
    else:
        from virnucpro_merge.checkpoints import read_checkpoint

        start = time.perf_counter()
        rows = ids = 0
        for path in sorted(folder.glob("batch_*.pt")):
            found = read_checkpoint(path)
            rows += len(found.embeddings)
            ids += len(found.sequence_ids)
    reply({"wall": time.perf_counter() - start, "rows": rows, "ids": ids})


def build(folder: Path, files: int, rows: int, dim: int) -> int:
    """The checkpoints and the HDF5 files of the same rows; return their bytes."""
    from virnucpro_merge.synthetic import synthetic_embeddings, write_checkpoint, write_shard

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for number in range(files):
        positions = list(range(number * rows, (number + 1) * rows))
        embeddings = synthetic_embeddings(positions, dim, 0)
        ids = [f"contig_{p:09d}" for p in positions]
        metadata = {"batch_idx": number, "num_sequences": rows, "trigger_reason": "sequence_threshold"}
        total += write_checkpoint(folder / f"batch_{number:05d}.pt", ids, embeddings, metadata).stat().st_size
        write_shard(folder / f"part_{number:05d}.h5", ids, embeddings)
    for path in folder.iterdir():  # a warm page cache for both methods alike
        path.read_bytes()
    return total


def build_run(folder: Path, files: int, rows: int, dim: int) -> int:
    """A run folder of 4 ranks with checkpoints of ``rows`` sequences; return its row count."""
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(folder, n_sequences=files * rows, world_size=4, dim=dim, truncated=(), absent=(), empty=(),
                        short={}, checkpoint_every=rows)
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()
    return len(run.sequence_ids)


def compare(methods: list[str], folder: Path, expected_rows: int, args: argparse.Namespace, package: object
            ) -> list[list[object]] | None:
    """Each method timed in a fresh process, ``args.rounds`` rounds; the table's rows (None: a wrong count)."""
    rounds: dict[str, list[dict]] = {m: [] for m in methods}
    for number in range(args.rounds):
        for method in rotated(methods, number):
            measured = run_fresh(SCRIPT, {"method": method, "folder": str(folder)}, package, what=method)
            if measured["rows"] != expected_rows or measured["ids"] != measured["rows"]:
                log(f"error: {method} read {measured['rows']} rows and {measured['ids']} IDs")
                return None
            rounds[method].append(measured)
        log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall']:.3f}s" for m, r in rounds.items()))
    rows = []
    for method in methods:
        walls = [r["wall"] for r in rounds[method]]
        ratio, lowest = median_and_min(same_round_ratios(rounds[method], rounds[methods[0]]))
        rows.append([method, statistics.median(walls), min(walls), ratio, lowest])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="4 files of 200 rows, 1 round")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child_main(json.loads(args._child))
        return 0
    if args.smoke:
        args.files, args.rows, args.rounds = 4, 200, 1
    with work_folder("bench_checkpoints_", args.workdir) as workdir:
        package = locate_package(workdir)
        facts = machine_facts(workdir, package)
        folder = workdir / "rank"
        size = build(folder, args.files, args.rows, args.dim)
        facts["files"] = f"{args.files} checkpoints of {args.rows:,} x {args.dim} float32 ({size / 1e6:.0f} MB), " \
                         "and the same rows as HDF5 files"
        print_facts("virnucpro_merge checkpoint reader benchmark", facts)
        columns = [Column("method", 14, left=True), Column("wall med", 9, ".3f"), Column("wall min", 9, ".3f"),
                   Column("x base", 7, ".2f"), Column("x min", 6, ".2f")]
        rows = compare(METHODS, folder, args.files * args.rows, args, package)
        if rows is None:
            return 1
        print()
        print(table(columns, rows))
        ratio = rows[1][3]
        print(f"checkpoints / h5py: x{ratio:.2f} (median of same-round ratios) -- target <= 1.50: "
              f"{'met' if ratio is not None and ratio <= 1.5 else 'NOT MET'}")
        run = workdir / "run"
        merged = compare(MERGES, run, build_run(run, args.files, args.rows, args.dim), args, package)
        if merged is None:
            return 1
        print()
        print(table(columns, merged))
        print(f"cross-checked merge / merge: x{merged[1][3]:.2f} (median of same-round ratios; no fsync)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
