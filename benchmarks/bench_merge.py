"""Benchmark the shard merge against its floors, its physical limit and two baselines.

Builds synthetic multi-GPU runs (8 shards of contiguous float32 embeddings and
vlen-str IDs, :func:`virnucpro_merge.synthetic.write_stride_run`; the ``many`` size:
1,024 shards of 1,000 rows), then merges each run with every method, each in a fresh
process, methods alternating round by round::

    floor-durable     the least a durable merge can do: every shard's embedding bytes copied
                      with os.copy_file_range into ONE file at successive offsets, in the
                      merge's own pieces (CHUNK_SIZE rows), sync_file_range(WRITE) after each
                      piece (writeback overlapped with the copy), one fsync at the end
    floor-nondurable  the least a non-durable merge can do: os.copy_file_range of every shard's
                      embedding bytes into ONE file, no sync
    raw-copy          shutil.copyfile of every shard: the physical limit
    raw-copy+fsync    the same, then fsync of every copy (what an fsync'ed output costs)
    kernel-copy+fsync os.copy_file_range of every shard, then fsync of every copy (the
                      durable merge's limit: the same calls the merge makes)
    seed-plan         the original design plan's algorithm, as it was written
    naive             load everything into memory, then write
    virnucpro_merge   this package's aggregate_shards (expected IDs given)
    virnucpro_merge[...]  its other routes (layout="virtual", order="index") and modes
                      (durable=False; checksums replaced by a no-op, to price them), one line each

The floors copy only the embeddings' bytes (found with h5py before the timer starts,
like the merge's expected IDs: the time that takes is printed beside the floors, not
counted in them), with the output's blocks reserved first (``fallocate``, as the merge
does), and write no IDs and no HDF5 structure: a merge cannot do less. On ext4 (here)
``copy_file_range`` copies through the page cache; on a filesystem that shares blocks
(XFS, btrfs) it may clone them instead, and the floors would then be near zero.

Every output is checked against the shards (every byte of every row, every ID, in
order; for the floors every byte of every row) before its time is reported; a failed
check is a loud error and a non-zero exit status. The table gives wall time (median
and minimum over the rounds), the CPU-seconds of the method (user + sys of its
process and any children, from rusage, over the timed part only: the kernel's own
writeback threads are nobody's), throughput, peak RSS of the merging process (and
its growth over the baseline after imports and after loading the expected IDs), the
ratio to the raw copy of the same round, and the cost of reading one random row of
the output. The header says what an fsync of 1 GiB costs on the disk the runs are
on; every round's log line gives the 1-minute load average at its start (the machine
is shared). After the table, for every size: durable merge / floor-durable and
non-durable merge / floor-nondurable, the median and minimum of the same-round
ratios, each beside the merge's CPU-seconds per GiB of embeddings.

Usage::

    python benchmarks/bench_merge.py                 # small + medium, 5 rounds
    python benchmarks/bench_merge.py --large         # ... and large (8 x 100,000 x 1280)
    python benchmarks/bench_merge.py --sizes medium --rounds 9
    python benchmarks/bench_merge.py --sizes medium,many --rounds 3   # ... and 1,024 shards (3.1 GB)
    python benchmarks/bench_merge.py --sizes medium,many --rounds 3 --methods floor-durable,floor-nondurable,\
raw-copy,kernel-copy+fsync,virnucpro_merge,'virnucpro_merge[no fsync]'   # the floors' comparisons only
    python benchmarks/bench_merge.py --smoke         # tiny runs (8 and 64 shards), 1 round, a few seconds
    python benchmarks/bench_merge.py --profile virnucpro_merge --sizes medium

Results also go to ``benchmarks/results/bench_merge-<time>.json`` (``--no-json`` to skip).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import inspect
import itertools
import json
import os
import resource
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

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
    same_round_ratios,
    sync_disk,
    table,
    work_folder,
    write_results,
)

SCRIPT = Path(__file__).resolve()
WORLD_SIZE = 8
MERGED = "merged.h5"
SEED_CHUNK_SIZE = 10000  # the seed plan's CHUNK_SIZE
FLOOR_FILE = "floor.bin"  # a floor's output: the shards' embedding bytes, one after the other
SYNC_FILE_RANGE_WRITE = 2  # Linux: start writeback of the range, do not wait for it
GIB = 2**30


@dataclass(frozen=True)
class Size:
    """A synthetic run: ``shards`` workers, ``rows`` sequences each, dimension ``dim``."""

    name: str
    rows: int
    dim: int
    shards: int = WORLD_SIZE

    @property
    def total(self) -> int:
        return self.rows * self.shards

    @property
    def nbytes(self) -> int:
        """Bytes of float32 embeddings in the run (the numerator of GB/s)."""
        return self.total * self.dim * 4

    def describe(self) -> str:
        return f"{self.shards} x {self.rows:,} x {self.dim} ({self.nbytes / 1e9:.3g} GB)"


SIZES = {
    "tiny": Size("tiny", 1_500, 64),
    "small": Size("small", 6_250, 1280),
    "medium": Size("medium", 25_000, 1280),
    "large": Size("large", 100_000, 1280),
    "many": Size("many", 1_000, 768, shards=1024),  # many small shards: the per-shard costs
    "many-tiny": Size("many-tiny", 200, 64, shards=64),  # the same shape, for --smoke
}


# --------------------------------------------------------------------------- methods
# Each runs in a fresh child: ``run(shards, out, expected)``, ``out`` an empty folder.
# A merge writes ``out / MERGED``; a copy writes one file per shard.


def raw_copy(shards: Sequence[Path], out: Path, expected: object, *, fsync: bool = False) -> None:
    """The physical limit: copy the shards' bytes once (in-kernel copy)."""
    for shard in shards:
        target = out / shard.name
        shutil.copyfile(shard, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def kernel_copy_fsync(shards: Sequence[Path], out: Path, expected: object) -> None:
    """Copy every shard with ``os.copy_file_range`` (as the merge does), then fsync each copy."""
    for shard in shards:
        target = out / shard.name
        with open(shard, "rb") as src, open(target, "wb") as dst:
            remaining = os.fstat(src.fileno()).st_size
            while remaining:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
                if copied == 0:
                    break
                remaining -= copied
            dst.flush()
            os.fsync(dst.fileno())


Span = tuple[int, int, int]  # where a shard's embedding bytes are: (offset, length, bytes a row)


def embedding_spans(shards: Sequence[Path]) -> list[Span]:
    """Where every shard's embedding bytes are in its file (contiguous float32 shards only)."""
    spans = []
    for shard in shards:
        with h5py.File(shard, "r") as f:
            ds = f["embeddings"]
            offset = ds.id.get_offset()
            if offset is None or ds.chunks is not None or ds.dtype != np.float32:
                msg = f"{shard.name}: embeddings not contiguous float32, no floor to measure"
                raise BenchError(msg)
            spans.append((offset, ds.id.get_storage_size(), ds.shape[1] * 4))
    return spans


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    while length:
        copied = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        if copied == 0:
            msg = "copy_file_range copied nothing: the shard ends early"
            raise BenchError(msg)
        src_offset, dst_offset, length = src_offset + copied, dst_offset + copied, length - copied


def floor_copy(shards: Sequence[Path], out: Path, spans: Sequence[Span], *, durable: bool) -> None:
    """A floor: every shard's embedding bytes into ONE file at successive offsets, in pieces of
    the merge's CHUNK_SIZE rows; ``durable``: sync_file_range(WRITE) after each piece (the
    writeback overlapped with the copy) and one fsync at the end."""
    from virnucpro_merge import CHUNK_SIZE
    from virnucpro_merge._write import sysio

    target = out / FLOOR_FILE
    target.touch()
    sysio.reserve(target, 0, sum(length for _, length, _ in spans))  # as the merge does
    fd = os.open(target, os.O_WRONLY)
    try:
        dst_offset = 0
        for shard, (offset, length, row_bytes) in zip(shards, spans, strict=True):
            piece = CHUNK_SIZE * row_bytes if durable else length
            with open(shard, "rb") as src:
                for start in range(0, length, max(1, piece)):
                    n = min(piece, length - start)
                    _copy_range(src.fileno(), fd, offset + start, dst_offset + start, n)
                    if durable:
                        started = sysio.libc_call("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                                                      ctypes.c_uint),
                                                  fd, dst_offset + start, n, SYNC_FILE_RANGE_WRITE)
                        if started is None:
                            msg = "sync_file_range is not available here: no durable floor"
                            raise BenchError(msg)
            dst_offset += length
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def seed_plan(shards: Sequence[Path], out: Path, expected: set[str] | None) -> None:
    """The original design plan's ``aggregate_shards``, re-implemented as written.

    Count rows and take D from the first shard; pre-allocate a ``chunks=True``
    output; per shard, read ``embeddings[chunk_start:chunk_end]`` and the IDs,
    check each ID against a ``seen_ids`` set in a Python loop, write at
    ``write_offset``; then ``expected - seen`` (error) and ``seen - expected``
    (warning); delete the partial output on any error.
    """
    output_path = out / MERGED
    total_sequences, embedding_dim = 0, None
    for shard in shards:
        with h5py.File(shard, "r") as f:
            total_sequences += f["embeddings"].shape[0]
            embedding_dim = f["embeddings"].shape[1] if embedding_dim is None else embedding_dim
    seen_ids: set[str] = set()
    try:
        with h5py.File(output_path, "w") as out_f:
            out_emb = out_f.create_dataset("embeddings", shape=(total_sequences, embedding_dim), dtype=np.float32,
                                           chunks=True)
            out_ids = out_f.create_dataset("sequence_ids", shape=(total_sequences,), dtype=h5py.string_dtype())
            write_offset = 0
            for shard in shards:
                with h5py.File(shard, "r") as f:
                    embeddings, sequence_ids = f["embeddings"], f["sequence_ids"]
                    n = embeddings.shape[0]
                    for chunk_start in range(0, n, SEED_CHUNK_SIZE):
                        chunk_end = min(chunk_start + SEED_CHUNK_SIZE, n)
                        chunk_emb = embeddings[chunk_start:chunk_end]
                        chunk_ids = [s.decode("utf-8") if isinstance(s, bytes) else s
                                     for s in sequence_ids[chunk_start:chunk_end]]
                        for seq_id in chunk_ids:
                            if seq_id in seen_ids:
                                msg = f"Duplicate sequence ID found: {seq_id} (in {shard.name})"
                                raise ValueError(msg)
                            seen_ids.add(seq_id)
                        rows = chunk_end - chunk_start
                        out_emb[write_offset : write_offset + rows] = chunk_emb
                        out_ids[write_offset : write_offset + rows] = chunk_ids
                        write_offset += rows
        if expected is not None:
            missing = expected - seen_ids
            if missing:
                msg = f"Missing {len(missing)} expected sequences. First 10 missing IDs: {sorted(missing)[:10]}"
                raise ValueError(msg)
            extra = seen_ids - expected
            if extra:
                print(f"warning: {len(extra)} extra sequences", file=sys.stderr)
    except BaseException:
        output_path.unlink(missing_ok=True)
        raise


def naive(shards: Sequence[Path], out: Path, expected: set[str] | None) -> None:
    """Load every shard whole, concatenate, check the IDs with sets, write once."""
    embeddings, ids = [], []
    for shard in shards:
        with h5py.File(shard, "r") as f:
            embeddings.append(f["embeddings"][:].astype(np.float32, copy=False))
            ids.extend(f["sequence_ids"].asstr()[:].tolist())
    merged = np.concatenate(embeddings)
    del embeddings
    seen = set(ids)
    if len(seen) != len(ids):
        msg = "Duplicate sequence ID found"
        raise ValueError(msg)
    if expected is not None and expected - seen:
        msg = f"Missing {len(expected - seen)} expected sequences"
        raise ValueError(msg)
    with h5py.File(out / MERGED, "w") as f:
        f.create_dataset("embeddings", data=merged)
        f.create_dataset("sequence_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())


def package_merge(*, checksums: bool = True, **options: object) -> Callable[[Sequence[Path], Path, object], None]:
    """``virnucpro_merge.aggregate_shards`` with extra keyword ``options`` (``checksums=False``:
    its checksum step replaced by a no-op in this process, to measure what it costs)."""

    def run(shards: Sequence[Path], out: Path, expected: object) -> None:
        from virnucpro_merge import aggregate_shards

        if not checksums:
            from virnucpro_merge import checksums as module

            module.Checksums.add_rows = module.Checksums.add_ids = lambda self, start, block, sums=None: None  # type: ignore
        aggregate_shards(list(shards), out / MERGED, expected, **options)  # type: ignore[arg-type]

    run.options = options  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class Method:
    """One row of the table."""

    name: str
    run: Callable[..., None]
    kind: str = "merge"  # "copy": one output file per shard; "merge": one merged file; "floor": FLOOR_FILE
    order: str = "shards"  # row order of a merged output: "shards" or "index" (run order)
    expected: str = "set"  # how the expected IDs are passed: "set", or "list" (in index order)
    prepare: Callable[[Sequence[Path]], object] | None = None  # before the timer; its answer replaces the IDs

    def unavailable(self) -> str | None:
        """Why this row cannot run here (None when it can)."""
        options = getattr(self.run, "options", None)
        if options is None:
            return None
        from virnucpro_merge import aggregate_shards

        unknown = [k for k in options if k not in inspect.signature(aggregate_shards).parameters]
        return f"aggregate_shards has no keyword {', '.join(unknown)}" if unknown else None


METHODS: list[Method] = [
    Method("floor-durable", lambda s, o, spans: floor_copy(s, o, spans, durable=True), kind="floor",
           prepare=embedding_spans),
    Method("floor-nondurable", lambda s, o, spans: floor_copy(s, o, spans, durable=False), kind="floor",
           prepare=embedding_spans),
    Method("raw-copy", raw_copy, kind="copy"),
    Method("raw-copy+fsync", lambda s, o, e: raw_copy(s, o, e, fsync=True), kind="copy"),
    Method("kernel-copy+fsync", kernel_copy_fsync, kind="copy"),
    Method("seed-plan", seed_plan),
    Method("naive", naive),
    Method("virnucpro_merge", package_merge()),
    Method("virnucpro_merge[no fsync]", package_merge(durable=False)),
    Method("virnucpro_merge[no checksums]", package_merge(checksums=False)),
    Method("virnucpro_merge[no fsync+no checksums]", package_merge(checksums=False, durable=False)),
    Method("virnucpro_merge[virtual]", package_merge(layout="virtual")),
    Method("virnucpro_merge[index]", package_merge(order="index"), order="index", expected="list"),
]
LIMIT = "raw-copy"  # the denominator of the ratios
BY_NAME = {m.name: m for m in METHODS}
#: Each mode of the merge and its floor: (merge, floor).
FLOORS = [("virnucpro_merge", "floor-durable"), ("virnucpro_merge[no fsync]", "floor-nondurable")]


# --------------------------------------------------------------------------- the child


def hash_speeds(nbytes: int = 2**28) -> dict:
    """GB/s of the rows' checksum the merge records, and of ``zlib.crc32`` of the same bytes
    (in memory, 4 MiB blocks of 1280-wide float32 rows: what the merge's scan hands over)."""
    from virnucpro_merge.checksums import rows_checksum

    block = np.random.default_rng(0).standard_normal((819, 1280)).astype("<f4")
    count = max(1, nbytes // block.nbytes)
    speeds = {}
    for name, digest in (("rows_checksum", rows_checksum), ("zlib.crc32", lambda b: zlib.crc32(b.data.cast("B")))):
        digest(block)
        start = time.perf_counter()
        for _ in range(count):
            digest(block)
        speeds[name] = count * block.nbytes / 1e9 / (time.perf_counter() - start)
    return speeds


def child_main(spec: dict) -> None:
    """Run one method once and reply its measurements."""
    import virnucpro_merge  # noqa: F401 - every child imports the same modules: comparable baselines

    if spec["method"] == "hash-speeds":
        reply(hash_speeds())
        return

    rss_imports = rss_now()
    method = BY_NAME[spec["method"]]
    shards = [Path(p) for p in spec["shards"]]
    expected: object = None
    setup = time.perf_counter()
    if method.prepare is not None:
        expected = method.prepare(shards)
    elif spec["expected"]:
        with open(spec["expected"]) as fh:
            lines = (line.rstrip("\n") for line in fh)
            expected = list(lines) if method.expected == "list" else set(lines)
    setup = time.perf_counter() - setup
    gc.collect()
    peak_setup, peak_reset = rss_peak(), reset_peak()  # so the peak below is the merge's, not the setup's
    rss_base = rss_now()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    method.run(shards, Path(spec["out"]), expected)
    wall = time.perf_counter() - start
    done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    user = sum(b.ru_utime - a.ru_utime for a, b in zip(usage, done, strict=True))
    system = sum(b.ru_stime - a.ru_stime for a, b in zip(usage, done, strict=True))
    if profiler is not None:
        import pstats

        profiler.disable()
        print(f"--- cProfile of {method.name} (wall {wall:.3f} s), top 25 by cumulative time ---")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    reply({"wall": wall, "cpu": user + system, "cpu_user": user, "cpu_sys": system, "setup": setup,
           "rss_imports": rss_imports, "rss_base": rss_base, "peak_setup": peak_setup, "peak_reset": peak_reset,
           "peak": rss_peak()})


# --------------------------------------------------------------------------- checking outputs


@dataclass(frozen=True)
class Run:
    """A built run on disk."""

    size: Size
    shards: list[Path]
    expected_file: Path


def _files_equal(a: Path, b: Path, block: int = 8 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True


def _same_bits(expected: np.ndarray, got: np.ndarray) -> bool:
    """Exact equality of float32 rows, bit for bit (NaN-safe)."""
    expected, got = np.ascontiguousarray(expected, dtype=np.float32), np.ascontiguousarray(got)
    return got.dtype == np.float32 and expected.shape == got.shape and np.array_equal(
        expected.view(np.uint32), got.view(np.uint32))


def _reference_blocks(run: Run, order: str, block: int = 16384) -> Iterator[tuple[int, np.ndarray, list]]:
    """The expected output, ``(first output row, embeddings, IDs)`` block by block."""
    handles = [h5py.File(p, "r") for p in run.shards]
    try:
        if order == "shards":
            offset = 0
            for f in handles:
                n = f["embeddings"].shape[0]
                for start in range(0, n, block):
                    stop = min(start + block, n)
                    yield offset + start, f["embeddings"][start:stop], f["sequence_ids"][start:stop].tolist()
                offset += n
            return
        n_shards, rows = len(handles), run.size.rows  # stride: position p is row p // N of shard p % N
        step = max(1, block // n_shards)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            emb = np.empty(((stop - start) * n_shards, run.size.dim), dtype=np.float32)
            ids: list = [None] * len(emb)
            for rank, f in enumerate(handles):
                emb[rank::n_shards] = f["embeddings"][start:stop]
                ids[rank::n_shards] = f["sequence_ids"][start:stop].tolist()
            yield start * n_shards, emb, ids
    finally:
        for f in handles:
            f.close()


def verify(method: Method, run: Run, out: Path) -> str:
    """Check an output against the shards, every row and every ID; return its layout."""
    if method.kind == "copy":
        for shard in run.shards:
            if not _files_equal(shard, out / shard.name):
                msg = f"{method.name}: {shard.name} copy differs from the shard"
                raise VerificationError(msg)
        return "contiguous (shard copy)"
    if method.kind == "floor":
        return verify_floor(method, run, out)
    path, size = out / MERGED, run.size
    if not path.is_file():
        msg = f"{method.name}: wrote no {MERGED}"
        raise VerificationError(msg)
    with h5py.File(path, "r") as f:
        emb, ids = f["embeddings"], f["sequence_ids"]
        if emb.shape != (size.total, size.dim) or emb.dtype != np.float32:
            msg = f"{method.name}: embeddings {emb.shape} {emb.dtype}, expected ({size.total}, {size.dim}) float32"
            raise VerificationError(msg)
        for start, ref_emb, ref_ids in _reference_blocks(run, method.order):
            stop = start + len(ref_emb)
            if not _same_bits(ref_emb, emb[start:stop]):
                msg = f"{method.name}: embeddings rows {start}-{stop} differ from the shards"
                raise VerificationError(msg)
            got_ids = ids[start:stop].tolist()
            if got_ids != ref_ids:
                bad = next(i for i, (a, b) in enumerate(zip(ref_ids, got_ids, strict=True)) if a != b)
                msg = f"{method.name}: sequence_ids differ at row {start + bad}: {got_ids[bad]!r} != {ref_ids[bad]!r}"
                raise VerificationError(msg)
        return "virtual" if emb.is_virtual else "contiguous" if emb.chunks is None else f"chunks {emb.chunks}"


def verify_floor(method: Method, run: Run, out: Path) -> str:
    """Check a floor's output: every shard's rows, bit for bit, one shard after the other."""
    path, size = out / FLOOR_FILE, run.size
    expected_bytes = size.nbytes
    if not path.is_file() or path.stat().st_size != expected_bytes:
        msg = f"{method.name}: {FLOOR_FILE} missing or not {expected_bytes:,} bytes"
        raise VerificationError(msg)
    rows = np.memmap(path, dtype=np.float32, mode="r", shape=(size.total, size.dim))
    try:
        for start, ref_emb, _ in _reference_blocks(run, "shards"):
            if not _same_bits(ref_emb, rows[start : start + len(ref_emb)]):
                msg = f"{method.name}: rows {start}-{start + len(ref_emb)} differ from the shards"
                raise VerificationError(msg)
    finally:
        del rows
    return "raw rows (no IDs)"


def corrupt(method: Method, out: Path) -> None:
    """Change one value of an output (the smoke test proves that the check bites)."""
    if method.kind == "floor":
        with open(out / FLOOR_FILE, "r+b") as fh:
            fh.seek(fh.seek(0, os.SEEK_END) // 2)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0xFF]))
        return
    if method.kind == "copy":
        with open(out / f"shard_{WORLD_SIZE // 2}.h5", "r+b") as fh:
            fh.seek(-100, os.SEEK_END)
            byte = fh.read(1)
            fh.seek(-100, os.SEEK_END)
            fh.write(bytes([byte[0] ^ 0xFF]))
        return
    with h5py.File(out / MERGED, "r+") as f:
        emb, row = f["embeddings"], f["embeddings"].shape[0] // 2
        if emb.is_virtual:  # its rows are the shards' own bytes: change an ID instead
            f["sequence_ids"][row] = "corrupted"
            return
        value = emb[row]
        value[0] = np.nextafter(value[0], np.float32(np.inf))
        emb[row] = value


def row_read_us(method: Method, run: Run, out: Path, reads: int, seed: int) -> dict:
    """Mean time of one random-row read of the output, on a fresh open: ``ds[i]`` with
    ``ds = f["embeddings"]`` held (the layout's cost), and ``f["embeddings"][i]``."""
    if method.kind == "floor":  # raw bytes: no dataset to read a row of
        return {"row_us": None, "row_us_by_name": None}
    path = out / (run.shards[0].name if method.kind == "copy" else MERGED)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as f:
        ds = f["embeddings"]
        start = time.perf_counter()
        for i in rng.integers(0, ds.shape[0], reads):
            ds[i]
        held = (time.perf_counter() - start) / reads * 1e6
        start = time.perf_counter()
        for i in rng.integers(0, ds.shape[0], reads):
            f["embeddings"][i]
        by_name = (time.perf_counter() - start) / reads * 1e6
    return {"row_us": held, "row_us_by_name": by_name}


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """Every round's measurements of one method on one size."""

    size: Size
    method: Method
    rounds: list[dict] = field(default_factory=list)
    failed: str | None = None
    layout: str = ""

    def summary(self) -> dict:
        if not self.rounds:
            return {"failed": self.failed}
        walls = [r["wall"] for r in self.rounds]
        ratio_median, ratio_min = median_and_min([r["ratio"] for r in self.rounds if r.get("ratio") is not None])
        row_us = [r["row_us"] for r in self.rounds if r.get("row_us") is not None]
        row_us_by_name = [r["row_us_by_name"] for r in self.rounds if r.get("row_us_by_name") is not None]
        return {
            "wall_median": statistics.median(walls), "wall_min": min(walls),
            "cpu_median": statistics.median(r["cpu"] for r in self.rounds),
            "gb_per_s": self.size.nbytes / 1e9 / statistics.median(walls),
            "ratio_median": ratio_median, "ratio_min": ratio_min,
            "peak_mb": max(r["peak"] for r in self.rounds) / 1e6,
            "base_mb": statistics.median(r["rss_base"] for r in self.rounds) / 1e6,
            "delta_mb": max(r["peak"] - r["rss_base"] for r in self.rounds) / 1e6,
            "row_us": statistics.median(row_us) if row_us else None,
            "row_us_by_name": statistics.median(row_us_by_name) if row_us_by_name else None,
            "layout": self.layout, "failed": self.failed,
        }


COLUMNS = [Column("size", 9, left=True), Column("method", 39, left=True), Column("wall med", 9, ".3f"),
           Column("wall min", 9, ".3f"), Column("CPU s", 7, ".3f"), Column("GB/s", 6, ".2f"),
           Column("x raw med", 9, ".2f"), Column("x raw min", 9, ".2f"), Column("peak MB", 8, ".1f"),
           Column("base MB", 8, ".1f"), Column("dRSS MB", 8, ".1f"), Column("row us", 7, ".1f"),
           Column("f[]row", 7, ".1f"), Column("check", 6), Column("layout", 1, left=True)]
KEYS = ["wall_median", "wall_min", "cpu_median", "gb_per_s", "ratio_median", "ratio_min", "peak_mb", "base_mb",
        "delta_mb", "row_us", "row_us_by_name"]


def table_rows(results: dict[str, dict[str, Row]]) -> tuple[list[list], list[str]]:
    rows, failed = [], []
    for rows_of_size in results.values():
        for row in rows_of_size.values():
            if row.failed or not row.rounds:
                failed.append(f"{row.size.name:<9} {row.method.name:<39} FAILED: "
                              f"{(row.failed or 'no rounds').splitlines()[0]}")
                continue
            s = row.summary()
            rows.append([row.size.name, row.method.name, *(s[k] for k in KEYS), "ok", s["layout"]])
    return rows, failed


#: The ratios the table is read for: (method, baseline, target or None), same-round medians.
RATIOS = [
    ("virnucpro_merge", "naive", None),
    ("virnucpro_merge", "seed-plan", None),
    ("virnucpro_merge", "raw-copy+fsync", None),
    ("virnucpro_merge", "kernel-copy+fsync", 1.0),  # durable: at the disk's limit
    ("virnucpro_merge[no fsync]", "raw-copy", 1.25),
    ("virnucpro_merge[no fsync]", "seed-plan", 0.6),
    ("virnucpro_merge", "virnucpro_merge[no checksums]", 1.05),  # the checksums' cost
    ("virnucpro_merge[no fsync]", "virnucpro_merge[no fsync+no checksums]", 1.05),
]


def floor_lines(results: dict[str, dict[str, Row]]) -> list[str]:
    """Each mode of the merge against its floor, same rounds, beside the CPU-seconds per GiB; the rounds' loads."""
    lines = []
    for size_name, rows in results.items():
        size = next(iter(rows.values())).size
        gib = size.nbytes / GIB
        loads = [r["load1"] for r in rows[LIMIT].rounds] if LIMIT in rows else []
        if loads:
            lines.append(f"{size_name}: load average (1 min) at the start of each round: "
                         + ", ".join(f"{x:.2f}" for x in loads))
        for merge, floor in FLOORS:
            if any(n not in rows or rows[n].failed or not rows[n].rounds for n in (merge, floor)):
                continue
            ratios = same_round_ratios(rows[merge].rounds, rows[floor].rounds)
            med, low = median_and_min(ratios)
            if med is None:
                continue
            m, f = rows[merge].summary(), rows[floor].summary()
            lines.append(
                f"{size_name}: {merge} / {floor}: wall x{med:.2f} median, x{low:.2f} min of the same-round ratios "
                f"({', '.join(f'{r:.2f}' for r in ratios)}); merge {m['wall_median']:.3f} s, "
                f"{m['cpu_median'] / gib:.2f} CPU-s/GiB ({m['cpu_median'] / m['wall_median']:.2f} cores busy); "
                f"floor {f['wall_median']:.3f} s, {f['cpu_median'] / gib:.2f} CPU-s/GiB")
        setups = [r["setup"] for _, floor in FLOORS if floor in rows for r in rows[floor].rounds]
        if setups:
            lines.append(f"{size_name}: not in the floors: finding the embeddings' bytes in {size.shards:,} shards "
                         f"with h5py, {statistics.median(setups):.3f} s (median)")
    return lines


def comparisons(results: dict[str, dict[str, Row]]) -> list[str]:
    lines, pkg = [], "virnucpro_merge"
    for size_name, rows in results.items():
        for name, other, target in RATIOS:
            if any(n not in rows or rows[n].failed for n in (name, other)):
                continue
            med, low = median_and_min(same_round_ratios(rows[name].rounds, rows[other].rounds))
            if med is None:
                continue
            line = f"{size_name}: {name} / {other}: wall x{med:.2f} (median of same-round ratios; min x{low:.2f})"
            if target is not None:
                line += f" -- target <= {target:.2f}: {'met' if med <= target else 'NOT MET'}"
            if BY_NAME[other].kind == "merge" and other in ("naive", "seed-plan"):
                peak = max(r["peak"] for r in rows[name].rounds) / max(r["peak"] for r in rows[other].rounds)
                line += f", peak RSS x{peak:.2f}"
            lines.append(line)
    grown = [(rows[pkg].size, rows[pkg].summary()) for rows in results.values() if pkg in rows and rows[pkg].rounds]
    for (s1, a), (s2, b) in itertools.pairwise(grown):
        added = max(1, s2.total - s1.total)
        lines.append(f"{pkg} {s1.name} -> {s2.name} (+{s2.total - s1.total:,} IDs): growth over baseline "
                     f"{a['delta_mb']:.1f} -> {b['delta_mb']:.1f} MB "
                     f"({(b['delta_mb'] - a['delta_mb']) * 1e6 / added:+.1f} B/ID)")
    return lines


# --------------------------------------------------------------------------- driver


def bench_size(size: Size, methods: list[Method], package: PackageSource, args: argparse.Namespace,
               workdir: Path) -> dict[str, Row]:
    from virnucpro_merge.synthetic import write_stride_run

    start = time.perf_counter()
    built = write_stride_run(workdir / f"run_{size.name}", size.total, size.shards, dim=size.dim, seed=args.seed)
    run = Run(size, built.shard_files, built.expected_file)
    sync_disk()  # write the new shards back now, not during the first timed round
    for shard in run.shards:  # every method starts from a warm page cache
        shard.read_bytes()
    log(f"built {size.name}: {size.describe()} in {time.perf_counter() - start:.1f} s")
    rows = {m.name: Row(size, m) for m in methods}
    for number in range(args.rounds):
        walls, load1 = {}, os.getloadavg()[0]
        for method in rotated(methods, number):
            row = rows[method.name]
            if row.failed:
                continue
            out = workdir / f"out_{size.name}_{method.name}"
            out.mkdir()
            spec = {"method": method.name, "shards": [str(p) for p in run.shards], "out": str(out),
                    "expected": str(run.expected_file)}
            try:
                measured = run_fresh(SCRIPT, spec, package, what=f"{method.name} on {size.name}")
                measured["load1"] = load1
                if args.corrupt == method.name:
                    corrupt(method, out)
                row.layout = verify(method, run, out)
                measured.update(row_read_us(method, run, out, args.reads, seed=number))
                row.rounds.append(measured)
                walls[method.name] = measured["wall"]
            except BenchError as err:
                row.failed = str(err)
                loud = "VERIFICATION FAILED" if isinstance(err, VerificationError) else "METHOD FAILED"
                log(f"!!! {loud}: {size.name} {method.name}: {err}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
                sync_disk()
        for name, wall in walls.items():
            rows[name].rounds[-1]["ratio"] = wall / walls[LIMIT] if walls.get(LIMIT) else None
        log(f"{size.name} round {number + 1}/{args.rounds} (load {load1:.2f} at start): "
            + ", ".join(f"{k} {v:.2f}s ({rows[k].rounds[-1]['cpu']:.2f} CPU-s)" for k, v in walls.items()))
    shutil.rmtree(built.directory, ignore_errors=True)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--large", action="store_true", help="also the large size (8 x 100,000 x 1280, 4.1 GB)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all methods, alternating (default 5)")
    parser.add_argument("--methods", default=None, help="comma-separated subset (raw-copy always runs); default all")
    parser.add_argument("--reads", type=int, default=200, help="random single-row reads per output (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny run, 1 round: checks the benchmark works")
    parser.add_argument("--workdir", type=Path, default=None, help="where temporary runs go (default: system temp)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-json", action="store_true", help="do not write a results file")
    parser.add_argument("--live", action="store_true", help="import the working tree, not a snapshot taken at start")
    parser.add_argument("--profile", metavar="METHOD", default=None, help="cProfile one run of METHOD per size")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_corrupt", dest="corrupt", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.rounds, args.reads = "tiny,many-tiny", 1, 50
    if args.large and "large" not in args.sizes.split(","):
        args.sizes += ",large"
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    names = [m.name for m in METHODS] if args.methods is None else args.methods.split(",")
    bad = [n for n in [*names, *([args.profile] if args.profile else [])] if n not in BY_NAME]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {list(BY_NAME)}")
    args.method_names = names if LIMIT in names else [LIMIT, *names]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0
    sizes = [SIZES[s] for s in args.sizes.split(",")]
    try:
        with work_folder("bench_merge_", args.workdir) as workdir:
            package = locate_package(workdir, live=args.live)
            if args.profile:
                for size in sizes:
                    from virnucpro_merge.synthetic import write_stride_run

                    built = write_stride_run(workdir / f"run_{size.name}", size.total, size.shards, dim=size.dim)
                    out = workdir / "out_profile"
                    out.mkdir()
                    spec = {"method": args.profile, "shards": [str(p) for p in built.shard_files], "out": str(out),
                            "expected": str(built.expected_file), "profile": True}
                    run_fresh(SCRIPT, spec, package, what=args.profile, echo=True)
                    shutil.rmtree(out)
                    shutil.rmtree(built.directory)
                return 0
            methods = []
            for name in args.method_names:
                why = BY_NAME[name].unavailable()
                if why:
                    log(f"skipping {name}: {why}")
                else:
                    methods.append(BY_NAME[name])
            facts = machine_facts(workdir, package, fsync_bytes=0 if args.smoke else 2**30)
            facts["sizes"] = "; ".join(f"{s.name} {s.describe()}" for s in sizes)
            facts["rounds"] = f"{args.rounds} (methods alternate; each in a fresh process)"
            facts["methods"] = ", ".join(m.name for m in methods)
            speeds = run_fresh(SCRIPT, {"method": "hash-speeds"}, package, what="hash speeds")
            facts["checksums"] = ", ".join(f"{k} {v:.1f} GB/s" for k, v in speeds.items() if k != "package_file")
            print_facts("virnucpro_merge merge benchmark", facts)
            results = {size.name: bench_size(size, methods, package, args, workdir) for size in sizes}
            changed = package.changed()
    except KeyboardInterrupt:
        log("interrupted: removing temporary files")
        return 130
    facts["loadavg_end"] = os.getloadavg()
    if changed:
        log("note: virnucpro_merge's sources changed during the run; every round measured "
            + ("the snapshot taken at the start" if package.snapshot_root else "the live tree, maybe changing"))
    print()
    print("wall: seconds (median and min over rounds); GB/s: embedding bytes / median wall;")
    print("CPU s: user + sys CPU-seconds of the method (its process and children, rusage; median);")
    print("x raw: wall / raw-copy wall of the same round (median, min); peak MB: peak RSS (VmHWM) of the")
    print("merging process during the merge (max over rounds); base MB: its RSS after imports and")
    print("loading the expected IDs; dRSS: peak - base (max over rounds);")
    print('row us: mean time of ds[i] (ds = f["embeddings"] held) for random i on a freshly opened output;')
    print('f[]row: the same as f["embeddings"][i], h5py name lookup included (raw-copy rows: a shard copy)')
    print()
    rows, failed = table_rows(results)
    print(table(COLUMNS, rows))
    for line in failed:
        print(line)
    print()
    for line in comparisons(results):
        print(line)
    print()
    print("The floors (see the docstring): each mode of the merge against the least it can do, same rounds;")
    print("CPU-s/GiB: user + sys CPU-seconds of the method's process and children per GiB of embeddings (median)")
    for line in floor_lines(results):
        print(line)
    print(f"load average at start {facts['loadavg_start']}, at end {facts['loadavg_end']}")
    if failed:
        print(f"\n!!! {len(failed)} row(s) FAILED")
    else:
        count = sum(len(r.rounds) for rows_of_size in results.values() for r in rows_of_size.values())
        print(f"\nverification: all outputs verified ({count} runs)")
    if not args.no_json:
        payload = {"machine": facts, "rounds": args.rounds, "results": {
            size: {name: {"summary": row.summary(), "rounds": row.rounds, "size": row.size.__dict__}
                   for name, row in rows_of_size.items()}
            for size, rows_of_size in results.items()}}
        print(f"results written to {write_results('bench_merge', payload, args.json)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
