"""Benchmark the shard merge against its physical limit and two baselines.

Builds synthetic multi-GPU runs (8 shards of contiguous float32 embeddings and
vlen-str sequence IDs, written the way workers write them), then merges each run
with every method, each in its own fresh Python process, alternating the methods
round by round::

    raw-copy          shutil.copyfile of every shard: the physical limit
    raw-copy+fsync    the same, then fsync of every copy (what an fsync'ed output costs)
    seed-plan         the original plan's algorithm (../shared/seed-plan-07-05.md)
    naive             load everything into memory, then write
    virnucpro_merge   this package's aggregate_shards (expected IDs given)
    virnucpro_merge[...]  its other paths (layout="virtual", order="index", ...),
                      one line each in METHODS; skipped where not supported

Every output is checked against the shards (every byte of every row, every ID,
in order) before its time is reported; a failed check is a loud error and a
non-zero exit status. The table gives wall time (median and minimum over the
rounds), throughput, peak RSS of the merging process (and its growth over the
process's baseline after imports and after loading the expected IDs), the ratio
to the raw copy of the same round, and the cost of reading one random row of the
output.

Usage::

    python benchmarks/bench_merge.py                 # small + medium, 5 rounds
    python benchmarks/bench_merge.py --large         # ... and large (8 x 100,000 x 1280)
    python benchmarks/bench_merge.py --sizes medium --rounds 9
    python benchmarks/bench_merge.py --smoke         # tiny run, 1 round, a few seconds
    python benchmarks/bench_merge.py --profile virnucpro_merge --sizes medium

Results also go to ``benchmarks/results/bench_merge-<time>.json`` (``--no-json``
to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from procmem import reset_peak, rss_now, rss_peak  # beside this script

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULT_TAG = "BENCH-RESULT "  # prefix of the child's one-line JSON answer
WORLD_SIZE = 8


# --------------------------------------------------------------------------- sizes


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
}


# --------------------------------------------------------------------------- methods
#
# Each method runs in a fresh child process: ``run(shards, out, expected)`` where
# ``out`` is an empty folder it may write into and ``expected`` holds all the run's
# IDs (a set, or a list in index order: ``Method.expected``). A merge writes
# ``out / MERGED``; a copy writes one file per shard.

MERGED = "merged.h5"
SEED_CHUNK_SIZE = 10000  # the seed plan's CHUNK_SIZE


def raw_copy(shards: Sequence[Path], out: Path, expected: set[str] | None, *, fsync: bool = False) -> None:
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


def seed_plan(shards: Sequence[Path], out: Path, expected: set[str] | None) -> None:
    """The original plan's ``aggregate_shards``, re-implemented as written.

    Count rows and take D from the first shard; pre-allocate a ``chunks=True``
    output; per shard, read ``embeddings[chunk_start:chunk_end]`` and the IDs,
    check each ID against a ``seen_ids`` set in a Python loop, write at
    ``write_offset``; then ``expected - seen`` (error) and ``seen - expected``
    (warning); delete the partial output on any error.
    """
    output_path = out / MERGED
    total_sequences = 0
    embedding_dim = None
    for shard in shards:
        with h5py.File(shard, "r") as f:
            total_sequences += f["embeddings"].shape[0]
            if embedding_dim is None:
                embedding_dim = f["embeddings"].shape[1]
    seen_ids: set[str] = set()
    try:
        with h5py.File(output_path, "w") as out_f:
            out_emb = out_f.create_dataset(
                "embeddings", shape=(total_sequences, embedding_dim), dtype=np.float32, chunks=True
            )
            out_ids = out_f.create_dataset("sequence_ids", shape=(total_sequences,), dtype=h5py.string_dtype())
            write_offset = 0
            for shard in shards:
                with h5py.File(shard, "r") as f:
                    embeddings = f["embeddings"]
                    sequence_ids = f["sequence_ids"]
                    n = embeddings.shape[0]
                    for chunk_start in range(0, n, SEED_CHUNK_SIZE):
                        chunk_end = min(chunk_start + SEED_CHUNK_SIZE, n)
                        chunk_emb = embeddings[chunk_start:chunk_end]
                        chunk_ids = [
                            s.decode("utf-8") if isinstance(s, bytes) else s
                            for s in sequence_ids[chunk_start:chunk_end]
                        ]
                        for seq_id in chunk_ids:
                            if seq_id in seen_ids:
                                raise ValueError(f"Duplicate sequence ID found: {seq_id} (in {shard.name})")
                            seen_ids.add(seq_id)
                        rows = chunk_end - chunk_start
                        out_emb[write_offset : write_offset + rows] = chunk_emb
                        out_ids[write_offset : write_offset + rows] = chunk_ids
                        write_offset += rows
        if expected is not None:
            missing = expected - seen_ids
            if missing:
                raise ValueError(
                    f"Missing {len(missing)} expected sequences. First 10 missing IDs: {sorted(missing)[:10]}"
                )
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
        raise ValueError("Duplicate sequence ID found")
    if expected is not None and expected - seen:
        raise ValueError(f"Missing {len(expected - seen)} expected sequences")
    with h5py.File(out / MERGED, "w") as f:
        f.create_dataset("embeddings", data=merged)
        f.create_dataset("sequence_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())


def package_merge(**options) -> Callable[[Sequence[Path], Path, set[str] | None], None]:
    """``virnucpro_merge.aggregate_shards`` with extra keyword ``options``."""

    def run(shards: Sequence[Path], out: Path, expected: set[str] | None) -> None:
        from virnucpro_merge import aggregate_shards

        aggregate_shards(list(shards), out / MERGED, expected, **options)

    run.options = options  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class Method:
    """One row of the table."""

    name: str
    run: Callable[[Sequence[Path], Path, set[str] | None], None]
    #: "copy": one output file per shard; "merge": one merged file
    kind: str = "merge"
    #: row order of a merged output: "shards" (concatenation) or "index" (run order)
    order: str = "shards"
    #: how the expected IDs are passed: "set", or "list" (in index order)
    expected: str = "set"

    def unavailable(self) -> str | None:
        """Why this row cannot run here (None when it can)."""
        options = getattr(self.run, "options", None)
        if options is None:
            return None
        try:
            from virnucpro_merge import aggregate_shards
        except Exception as err:  # noqa: BLE001 - report anything
            return f"cannot import virnucpro_merge ({err})"
        params = inspect.signature(aggregate_shards).parameters
        unknown = [k for k in options if k not in params]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return f"aggregate_shards has no keyword {', '.join(unknown)}"
        return None


METHODS: list[Method] = [
    Method("raw-copy", raw_copy, kind="copy"),
    Method("raw-copy+fsync", lambda s, o, e: raw_copy(s, o, e, fsync=True), kind="copy"),
    Method("seed-plan", seed_plan),
    Method("naive", naive),
    Method("virnucpro_merge", package_merge()),
    # More package paths: one line each. A row whose keyword aggregate_shards does
    # not (yet) accept is reported as skipped, not as a failure.
    Method("virnucpro_merge[virtual]", package_merge(layout="virtual")),
    Method("virnucpro_merge[index]", package_merge(order="index"), order="index", expected="list"),
]
LIMIT = "raw-copy"  # the denominator of the ratios
BY_NAME = {m.name: m for m in METHODS}


# --------------------------------------------------------------------------- building runs


def sequence_id(position: int) -> str:
    return f"seq{position:09d}"


@dataclass(frozen=True)
class Run:
    """A built synthetic run on disk."""

    size: Size
    directory: Path
    shards: list[Path]
    expected_file: Path


def build_run(size: Size, directory: Path, seed: int = 0, block: int = 8192) -> Run:
    """Write ``size.shards`` shards, as workers do, generating embeddings block-wise.

    Worker ``r`` holds index positions ``r, r + N, r + 2N, ...`` (stride
    distribution). ``embeddings`` is contiguous float32 (like
    ``create_dataset(data=...)``, but filled ``block`` rows at a time so building
    a large run needs no GBs); ``sequence_ids`` is vlen str written with ``data=``.
    """
    directory.mkdir(parents=True)
    shards = []
    for rank in range(size.shards):
        positions = np.arange(rank, size.total, size.shards)
        path = directory / f"shard_{rank}.h5"
        rng = np.random.default_rng([seed, rank])
        with h5py.File(path, "w") as f:
            emb = f.create_dataset("embeddings", shape=(size.rows, size.dim), dtype="float32")
            for start in range(0, size.rows, block):
                stop = min(start + block, size.rows)
                emb[start:stop] = rng.standard_normal((stop - start, size.dim), dtype=np.float32)
            ids = np.array([sequence_id(p) for p in positions], dtype=object)
            f.create_dataset("sequence_ids", data=ids, dtype=h5py.string_dtype())
            assert emb.chunks is None and emb.compression is None, "shards must be contiguous"
        shards.append(path)
    expected_file = directory / "expected_ids.txt"
    with open(expected_file, "w") as fh:
        for position in range(size.total):
            fh.write(sequence_id(position) + "\n")
    return Run(size, directory, shards, expected_file)


def warm_cache(run: Run) -> None:
    """Read every shard once so that all methods start from a warm page cache."""
    for shard in run.shards:
        with open(shard, "rb") as fh:
            while fh.read(16 << 20):
                pass


# --------------------------------------------------------------------------- the package under test
#
# The package may be edited while a benchmark runs (several minutes). So that every
# round measures the same code, its sources are copied into the work folder at the
# start and every process imports that copy (``--live`` measures the working tree).


@dataclass(frozen=True)
class PackageSource:
    """Where virnucpro_merge is imported from, and which version of it that is."""

    directory: Path | None  # the package folder (None: not importable)
    fingerprint: str = ""
    git: str = ""
    snapshot_root: Path | None = None  # prepended to sys.path / PYTHONPATH

    def describe(self) -> str:
        if self.directory is None:
            return "not found"
        where = f"snapshot of {self.directory}" if self.snapshot_root else f"live {self.directory}"
        return f"sources {self.fingerprint}, git {self.git}, {where}"


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.py")):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git_state(directory: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def locate_package(workdir: Path, snapshot: bool) -> PackageSource:
    """Find virnucpro_merge (without importing it) and, if asked, snapshot its sources."""
    spec = importlib.util.find_spec("virnucpro_merge")
    if spec is None or not spec.submodule_search_locations:
        return PackageSource(None)
    directory = Path(list(spec.submodule_search_locations)[0]).resolve()
    root = None
    if snapshot:
        root = workdir / "package"
        shutil.copytree(directory, root / "virnucpro_merge", ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, str(root))
    return PackageSource(directory, _fingerprint(directory), _git_state(directory), root)


# --------------------------------------------------------------------------- the child


def child_main(spec: dict) -> None:
    """Run one method once and print its measurements as one JSON line."""
    try:  # every child imports the same modules, so the baselines are comparable
        import virnucpro_merge

        package_file = virnucpro_merge.__file__
    except Exception:  # noqa: BLE001 - the other rows can still run
        package_file = None
    rss_imports = rss_now()
    method = BY_NAME[spec["method"]]
    expected = None
    if spec["expected"]:
        with open(spec["expected"]) as fh:
            lines = (line.rstrip("\n") for line in fh)
            expected = list(lines) if method.expected == "list" else set(lines)
    gc.collect()
    peak_setup = rss_peak()
    peak_reset = reset_peak()  # so the peak below is the merge's, not the setup's
    rss_base = rss_now()
    shards = [Path(p) for p in spec["shards"]]
    out = Path(spec["out"])
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    method.run(shards, out, expected)
    wall = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        print(f"--- cProfile of {method.name} (wall {wall:.3f} s), top 25 by cumulative time ---")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
        print("--- top 15 by own time ---")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    result = {
        "wall": wall,
        "rss_imports": rss_imports,
        "rss_base": rss_base,
        "peak_setup": peak_setup,
        "peak_reset": peak_reset,
        "peak": rss_peak(),
        "package_file": package_file,
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(
    method: Method, run: Run, out: Path, package: PackageSource, *, expected: bool, profile: bool = False
) -> dict:
    """Run ``method`` on ``run`` in a fresh interpreter; return its measurements."""
    spec = {
        "method": method.name,
        "shards": [str(p) for p in run.shards],
        "out": str(out),
        "expected": str(run.expected_file) if expected else None,
        "profile": profile,
    }
    env = dict(os.environ)
    if package.snapshot_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.snapshot_root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"{method.name} on {run.size.name} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise BenchError(f"{method.name} on {run.size.name} printed no result:\n{proc.stdout}{proc.stderr}")
    if profile:
        print("\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(RESULT_TAG)))
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    imported = result.get("package_file")
    if package.snapshot_root is not None and imported and not imported.startswith(str(package.snapshot_root)):
        raise BenchError(f"{method.name} imported virnucpro_merge from {imported}, not from the snapshot")
    return result


# --------------------------------------------------------------------------- checking outputs


class BenchError(RuntimeError):
    """A method failed or produced a wrong output."""


class VerificationError(BenchError):
    pass


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
    expected = np.ascontiguousarray(expected, dtype=np.float32)
    got = np.ascontiguousarray(got)
    return got.dtype == np.float32 and expected.shape == got.shape and np.array_equal(
        expected.view(np.uint32), got.view(np.uint32)
    )


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
                    yield (
                        offset + start,
                        f["embeddings"][start:stop],
                        f["sequence_ids"][start:stop].tolist(),
                    )
                offset += n
        elif order == "index":  # stride distribution: position p is row p // N of shard p % N
            n_shards, rows = len(handles), run.size.rows
            step = max(1, block // n_shards)
            for start in range(0, rows, step):
                stop = min(start + step, rows)
                emb = np.empty(((stop - start) * n_shards, run.size.dim), dtype=np.float32)
                ids: list = [None] * len(emb)
                for rank, f in enumerate(handles):
                    emb[rank::n_shards] = f["embeddings"][start:stop]
                    ids[rank::n_shards] = f["sequence_ids"][start:stop].tolist()
                yield start * n_shards, emb, ids
        else:
            raise ValueError(f"unknown order {order!r}")
    finally:
        for f in handles:
            f.close()


def verify(method: Method, run: Run, out: Path) -> str:
    """Check an output against the shards, every row and every ID; return its layout."""
    if method.kind == "copy":
        for shard in run.shards:
            if not _files_equal(shard, out / shard.name):
                raise VerificationError(f"{method.name}: {shard.name} copy differs from the shard")
        return "contiguous (shard copy)"
    path = out / MERGED
    if not path.is_file():
        raise VerificationError(f"{method.name}: wrote no {MERGED}")
    size = run.size
    with h5py.File(path, "r") as f:
        emb, ids = f["embeddings"], f["sequence_ids"]
        if emb.shape != (size.total, size.dim) or emb.dtype != np.float32:
            raise VerificationError(f"{method.name}: embeddings {emb.shape} {emb.dtype}, expected ({size.total}, {size.dim}) float32")
        if ids.shape != (size.total,) or h5py.check_string_dtype(ids.dtype) is None:
            raise VerificationError(f"{method.name}: sequence_ids {ids.shape} {ids.dtype}, expected ({size.total},) vlen str")
        for start, ref_emb, ref_ids in _reference_blocks(run, method.order):
            stop = start + len(ref_emb)
            if not _same_bits(ref_emb, emb[start:stop]):
                raise VerificationError(f"{method.name}: embeddings rows {start}-{stop} differ from the shards")
            got_ids = ids[start:stop].tolist()
            if got_ids != ref_ids:
                bad = next(i for i, (a, b) in enumerate(zip(ref_ids, got_ids)) if a != b)
                raise VerificationError(
                    f"{method.name}: sequence_ids differ at row {start + bad}: {got_ids[bad]!r} != {ref_ids[bad]!r}"
                )
        if emb.is_virtual:
            return "virtual"
        return "contiguous" if emb.chunks is None else f"chunks {emb.chunks}"


def corrupt(method: Method, out: Path) -> None:
    """Flip one float in an output (used by the smoke test to prove the check bites)."""
    if method.kind == "copy":
        with open(out / f"shard_{WORLD_SIZE // 2}.h5", "r+b") as fh:
            fh.seek(-100, os.SEEK_END)
            byte = fh.read(1)
            fh.seek(-100, os.SEEK_END)
            fh.write(bytes([byte[0] ^ 0xFF]))
        return
    with h5py.File(out / MERGED, "r+") as f:
        emb = f["embeddings"]
        row = emb.shape[0] // 2
        if emb.is_virtual:  # its rows are the shards' own bytes: change an ID instead
            f["sequence_ids"][row] = "corrupted"
            return
        value = emb[row]
        value[0] = np.nextafter(value[0], np.float32(np.inf))
        emb[row] = value


def row_read_us(method: Method, run: Run, out: Path, reads: int, seed: int) -> dict:
    """Mean time of one random-row read of the output, on a fresh open.

    ``row_us``: ``ds[i]`` with ``ds = f["embeddings"]`` held (the layout's cost);
    ``row_us_by_name``: ``f["embeddings"][i]``, which adds h5py's name lookup.
    """
    path = out / (run.shards[0].name if method.kind == "copy" else MERGED)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as f:
        ds = f["embeddings"]
        rows = rng.integers(0, ds.shape[0], reads)
        start = time.perf_counter()
        for i in rows:
            ds[i]
        held = (time.perf_counter() - start) / reads * 1e6
        rows = rng.integers(0, ds.shape[0], reads)
        start = time.perf_counter()
        for i in rows:
            f["embeddings"][i]
        by_name = (time.perf_counter() - start) / reads * 1e6
    return {"row_us": held, "row_us_by_name": by_name}


# --------------------------------------------------------------------------- reporting


def machine_facts(workdir: Path, package: PackageSource) -> dict:
    def _cpu_model() -> str:
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return platform.processor() or "unknown"

    def _mem_gb() -> float:
        with contextlib.suppress(OSError):
            for line in open("/proc/meminfo"):
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")

    def _fs_type(path: Path) -> str:
        best, kind = "", "unknown"
        with contextlib.suppress(OSError):
            for line in open("/proc/mounts"):
                parts = line.split()
                if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
        return kind

    try:
        import virnucpro_merge

        pkg = f"{virnucpro_merge.__version__} ({package.describe()})"
    except Exception as err:  # noqa: BLE001
        pkg = f"not importable ({err})"
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gb": round(_mem_gb(), 1),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "virnucpro_merge": pkg,
        "platform": platform.platform(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "workdir": str(workdir),
        "workdir_fs": _fs_type(workdir.resolve()),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class Row:
    """Every round's measurements of one method on one size."""

    size: Size
    method: Method
    rounds: list[dict] = field(default_factory=list)
    failed: str | None = None
    layout: str = ""

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.rounds]

    def summary(self) -> dict:
        if not self.rounds:
            return {"failed": self.failed}
        walls = self.values("wall")
        ratios = [r["ratio"] for r in self.rounds if r.get("ratio") is not None]
        return {
            "wall_median": statistics.median(walls),
            "wall_min": min(walls),
            "gb_per_s": self.size.nbytes / 1e9 / statistics.median(walls),
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "peak_mb": max(self.values("peak")) / 1e6,
            "base_mb": statistics.median(self.values("rss_base")) / 1e6,
            "delta_mb": max(r["peak"] - r["rss_base"] for r in self.rounds) / 1e6,
            "row_us": statistics.median(self.values("row_us")),
            "row_us_by_name": statistics.median(self.values("row_us_by_name")),
            "layout": self.layout,
            "failed": self.failed,
        }


HEADER = (
    f"{'size':<7} {'method':<24} {'wall med':>9} {'wall min':>9} {'GB/s':>6} "
    f"{'x raw med':>9} {'x raw min':>9} {'peak MB':>8} {'base MB':>8} {'dRSS MB':>8} "
    f"{'row us':>7} {'f[]row':>7}  {'check':<5} layout"
)


def format_row(row: Row) -> str:
    s = row.summary()
    if row.failed or not row.rounds:
        return f"{row.size.name:<7} {row.method.name:<24} FAILED: {(row.failed or 'no rounds').splitlines()[0]}"
    return (
        f"{row.size.name:<7} {row.method.name:<24} {s['wall_median']:>9.3f} {s['wall_min']:>9.3f} "
        f"{s['gb_per_s']:>6.2f} {_fmt(s['ratio_median'], '>9.2f')} {_fmt(s['ratio_min'], '>9.2f')} "
        f"{s['peak_mb']:>8.1f} {s['base_mb']:>8.1f} {s['delta_mb']:>8.1f} {s['row_us']:>7.1f} {s['row_us_by_name']:>7.1f}  "
        f"{'ok':<5} {s['layout']}"
    )


def same_round_ratio(rows: dict[str, Row], a: str, b: str, key: str = "wall") -> tuple[float, float] | None:
    """Median and min over rounds of ``a``'s ``key`` / ``b``'s ``key`` in the same round."""
    ra, rb = rows.get(a), rows.get(b)
    if not ra or not rb or ra.failed or rb.failed:
        return None
    pairs = [(x[key], y[key]) for x, y in zip(ra.rounds, rb.rounds) if y[key]]
    if not pairs:
        return None
    ratios = [x / y for x, y in pairs]
    return statistics.median(ratios), min(ratios)


def print_comparisons(results: dict[str, dict[str, Row]]) -> list[str]:
    lines = []
    pkg = "virnucpro_merge"
    for size_name, rows in results.items():
        for other in ("naive", "seed-plan", "raw-copy+fsync"):
            wall = same_round_ratio(rows, pkg, other)
            if wall is None:
                continue
            line = (
                f"{size_name}: {pkg} / {other}: wall x{wall[0]:.2f} "
                f"(median of same-round ratios; min x{wall[1]:.2f})"
            )
            if BY_NAME[other].kind == "merge":
                peak = max(r["peak"] for r in rows[pkg].rounds) / max(r["peak"] for r in rows[other].rounds)
                grow = max(r["peak"] - r["rss_base"] for r in rows[pkg].rounds) / max(
                    1, max(r["peak"] - r["rss_base"] for r in rows[other].rounds)
                )
                line += f", peak RSS x{peak:.2f}, RSS growth over baseline x{grow:.2f}"
            lines.append(line)
    # memory flatness of the package across sizes
    pkg_rows = [(rows[pkg].size, rows[pkg].summary()) for rows in results.values() if pkg in rows and rows[pkg].rounds]
    for (s1, a), (s2, b) in zip(pkg_rows, pkg_rows[1:]):
        added = max(1, s2.total - s1.total)
        lines.append(
            f"{pkg} {s1.name} -> {s2.name} (+{s2.total - s1.total:,} IDs): growth over baseline "
            f"{a['delta_mb']:.1f} -> {b['delta_mb']:.1f} MB ({(b['delta_mb'] - a['delta_mb']) * 1e6 / added:+.1f} B/ID); "
            f"peak {a['peak_mb']:.1f} -> {b['peak_mb']:.1f} MB ({(b['peak_mb'] - a['peak_mb']) * 1e6 / added:+.1f} B/ID, "
            f"the caller's expected-ID set included)"
        )
    return lines


# --------------------------------------------------------------------------- driver


def _sync() -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


def bench_size(
    size: Size,
    methods: list[Method],
    package: PackageSource,
    args: argparse.Namespace,
    workdir: Path,
    log: Callable[[str], None],
) -> dict[str, Row]:
    start = time.perf_counter()
    run = build_run(size, workdir / f"run_{size.name}", seed=args.seed)
    _sync()  # write the new shards back now, not during the first timed round
    warm_cache(run)
    log(f"built {size.name}: {size.describe()} in {time.perf_counter() - start:.1f} s")
    rows = {m.name: Row(size, m) for m in methods}
    for rnd in range(args.rounds):
        # alternate the methods, and rotate who goes first, to spread the host's noise
        order = methods[rnd % len(methods) :] + methods[: rnd % len(methods)]
        walls = {}
        for method in order:
            row = rows[method.name]
            if row.failed:
                continue
            out = workdir / f"out_{size.name}_{method.name}"
            out.mkdir()
            try:
                measured = run_child(method, run, out, package, expected=True)
                if args.corrupt == method.name:
                    corrupt(method, out)
                row.layout = verify(method, run, out)
                measured.update(row_read_us(method, run, out, args.reads, seed=rnd))
                row.rounds.append(measured)
                walls[method.name] = measured["wall"]
            except BenchError as err:
                row.failed = str(err)
                loud = "VERIFICATION FAILED" if isinstance(err, VerificationError) else "METHOD FAILED"
                log(f"!!! {loud}: {size.name} {method.name}: {err}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
                _sync()
        limit = walls.get(LIMIT)
        for method in methods:
            row = rows[method.name]
            if method.name in walls:
                row.rounds[-1]["ratio"] = walls[method.name] / limit if limit else None
        log(
            f"{size.name} round {rnd + 1}/{args.rounds}: "
            + ", ".join(f"{name} {wall:.2f}s" for name, wall in walls.items())
        )
    shutil.rmtree(run.directory, ignore_errors=True)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--large", action="store_true", help="also run the large size (8 x 100,000 x 1280, 4.1 GB)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all methods, alternating (default 5)")
    parser.add_argument("--methods", default=None, help="comma-separated subset (raw-copy is always run); default all")
    parser.add_argument("--reads", type=int, default=200, help="random single-row reads per output (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny run, 1 round: checks the benchmark works")
    parser.add_argument("--workdir", type=Path, default=None, help="where temporary runs go (default: system temp)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-json", action="store_true", help="do not write a results file")
    parser.add_argument(
        "--live", action="store_true", help="import the package's working tree, not a snapshot taken at the start"
    )
    parser.add_argument("--profile", metavar="METHOD", default=None, help="cProfile one run of METHOD per size, then exit")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_corrupt", dest="corrupt", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.rounds, args.reads = "tiny", 1, 50
    if args.large and "large" not in args.sizes.split(","):
        args.sizes += ",large"
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    names = [m.name for m in METHODS] if args.methods is None else args.methods.split(",")
    bad = [n for n in names + ([args.profile] if args.profile else []) if n not in BY_NAME]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {list(BY_NAME)}")
    if LIMIT not in names:
        names.insert(0, LIMIT)
    args.method_names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0

    def on_term(signum, frame):  # clean up on `kill` too, as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=base))
    sizes = [SIZES[s] for s in args.sizes.split(",")]
    try:
        package = locate_package(workdir, snapshot=not args.live)
        facts = machine_facts(workdir, package)
        if args.profile:
            for size in sizes:
                run = build_run(size, workdir / f"run_{size.name}", seed=args.seed)
                warm_cache(run)
                out = workdir / "out_profile"
                out.mkdir()
                run_child(BY_NAME[args.profile], run, out, package, expected=True, profile=True)
                shutil.rmtree(out)
                shutil.rmtree(run.directory)
            return 0

        methods = []
        for name in args.method_names:
            why = BY_NAME[name].unavailable()
            if why:
                log(f"skipping {name}: {why}")
            else:
                methods.append(BY_NAME[name])
        print("virnucpro_merge merge benchmark")
        for key, value in facts.items():
            print(f"  {key:<18} {value}")
        print(f"  {'sizes':<18} " + "; ".join(f"{s.name} {s.describe()}" for s in sizes))
        print(f"  {'rounds':<18} {args.rounds} (methods alternate; each in a fresh process)")
        print(f"  {'methods':<18} {', '.join(m.name for m in methods)}")
        sys.stdout.flush()

        results = {size.name: bench_size(size, methods, package, args, workdir, log) for size in sizes}
    except KeyboardInterrupt:
        log("interrupted: removing temporary files")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    facts["loadavg_end"] = os.getloadavg()
    if package.directory is not None and _fingerprint(package.directory) != package.fingerprint:
        log(
            "note: virnucpro_merge's sources changed during the run; "
            + ("every round measured the snapshot taken at the start" if package.snapshot_root else
               "with --live, rounds may have measured different versions")
        )
        facts["package_changed_during_run"] = True
    print()
    print("wall: seconds (median and min over rounds); GB/s: embedding bytes / median wall;")
    print("x raw: wall / raw-copy wall of the same round (median, min); peak MB: peak RSS (VmHWM) of the")
    print("merging process during the merge (max over rounds); base MB: its RSS after imports and")
    print("loading the expected IDs; dRSS: peak - base (max over rounds);")
    print('row us: mean time of ds[i] (ds = f["embeddings"] held) for random i on a freshly opened output;')
    print('f[]row: the same as f["embeddings"][i], h5py name lookup included (raw-copy rows: a shard copy)')
    print()
    print(HEADER)
    for rows in results.values():
        for row in rows.values():
            print(format_row(row))
    print()
    for line in print_comparisons(results):
        print(line)
    print(f"load average at start {facts['loadavg_start']}, at end {facts['loadavg_end']}")
    failures = [row for rows in results.values() for row in rows.values() if row.failed]
    if failures:
        print(f"\n!!! {len(failures)} row(s) FAILED: " + ", ".join(f"{r.size.name}/{r.method.name}" for r in failures))
    else:
        print(f"\nverification: all outputs verified ({sum(len(r.rounds) for rows in results.values() for r in rows.values())} runs)")

    if not args.no_json:
        path = args.json or RESULTS_DIR / f"bench_merge-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": facts,
            "rounds": args.rounds,
            "results": {
                size: {
                    name: {"summary": row.summary(), "rounds": row.rounds, "size": row.size.__dict__}
                    for name, row in rows.items()
                }
                for size, rows in results.items()
            },
        }
        path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"results written to {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
