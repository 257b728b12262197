"""How fast the pipeline's checkpoints are read, safely, against the same rows read from HDF5.

Writes one rank's worth of checkpoints as the pipeline saves them (``--files`` files of
``--rows`` rows of dimension ``--dim``, float32, 5-digit batch names, numpy payloads:
:func:`virnucpro_merge.synthetic.write_checkpoint`), and the same rows and IDs as HDF5
shards of the same sizes (:func:`virnucpro_merge.synthetic.write_shard`), then times,
each in a fresh process, methods alternating round by round, the page cache warm for all::

    h5py           every file's embeddings and IDs read with h5py: the baseline
    checkpoints    every checkpoint read with virnucpro_merge.checkpoints.read_checkpoint
                   (the unpickler that runs nothing, every member's CRC-32 checked)

and prints each as a ratio to ``h5py`` of the same round (target: at most 1.5).

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


def child_main(spec: dict) -> None:
    folder = Path(spec["folder"])
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
        rounds: dict[str, list[dict]] = {m: [] for m in METHODS}
        for number in range(args.rounds):
            for method in rotated(METHODS, number):
                measured = run_fresh(SCRIPT, {"method": method, "folder": str(folder)}, package, what=method)
                if measured["rows"] != args.files * args.rows or measured["ids"] != measured["rows"]:
                    log(f"error: {method} read {measured['rows']} rows and {measured['ids']} IDs")
                    return 1
                rounds[method].append(measured)
            log(f"round {number + 1}: " + ", ".join(f"{m} {r[-1]['wall']:.3f}s" for m, r in rounds.items()))
        rows = []
        for method in METHODS:
            walls = [r["wall"] for r in rounds[method]]
            ratio, lowest = median_and_min(same_round_ratios(rounds[method], rounds["h5py"]))
            rows.append([method, statistics.median(walls), min(walls), size / 1e9 / statistics.median(walls), ratio,
                         lowest])
        print()
        print(table([Column("method", 12, left=True), Column("wall med", 9, ".3f"), Column("wall min", 9, ".3f"),
                     Column("GB/s", 6, ".2f"), Column("x h5py", 7, ".2f"), Column("x min", 6, ".2f")], rows))
        ratio = rows[1][4]
        print(f"checkpoints / h5py: x{ratio:.2f} (median of same-round ratios) -- target <= 1.50: "
              f"{'met' if ratio is not None and ratio <= 1.5 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
