"""What every benchmark here shares: fresh processes, the same code in every round,
same-round ratios, the facts of the machine, and the tables.

- **Fresh processes.** Each measurement runs in its own interpreter
  (:func:`run_fresh`): the script is started again with ``--_child SPEC`` and answers
  with one line, ``BENCH-RESULT {json}`` (:func:`reply`). No run inherits another's
  page cache of Python objects, heap or peak RSS.
- **The same code.** The package may be edited while a benchmark runs (minutes).
  :func:`locate_package` copies its sources into the work folder at the start, and
  every child imports that copy (``live=True`` measures the working tree instead).
- **Same-round ratios.** Machines here are noisy. Methods alternate within a round,
  who goes first rotating (:func:`rotated`), and a method is reported as the median
  over rounds of its time divided by the baseline's time *in the same round*
  (:func:`same_round_ratios`).
- **Machine facts.** Cores, memory, versions, the filesystem of the work folder and
  what an fsync of 1 GB costs there (:func:`fsync_cost`), since disks differ.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
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
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULT_TAG = "BENCH-RESULT "


class BenchError(RuntimeError):
    """A method failed or gave a wrong answer."""


class VerificationError(BenchError):
    """A method's output or answer is wrong."""


# --------------------------------------------------------------------------- memory (Linux /proc/self)


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    msg = f"no {field} in /proc/self/status"
    raise RuntimeError(msg)


def rss_now() -> int:
    """Current resident set size of this process, in bytes."""
    return _status_bytes("VmRSS")


class ChildMemory:
    """The memory of the processes under this one, sampled every ``every`` seconds on a thread
    while the ``with`` block runs: the largest one process took (``largest``) and the most they
    took together (``total``), each by ``measure(process)`` (psutil's RSS by default; nothing
    is sampled without psutil)."""

    def __init__(self, every: float = 0.05, measure: Callable[[object], int] | None = None) -> None:
        import threading

        self.every, self.measure = every, measure or (lambda process: process.memory_info().rss)  # type: ignore[attr-defined]
        self.largest = self.total = self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self.done.wait(self.every):
            sizes = []
            for child in me.children(recursive=True):
                try:
                    sizes.append(self.measure(child))
                except psutil.Error:
                    continue
            if sizes:
                self.largest, self.total = max(self.largest, *sizes), max(self.total, sum(sizes))
                self.samples += 1

    def __enter__(self) -> ChildMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def rss_peak() -> int:
    """Peak resident set size of this process, in bytes.

    VmHWM, not ``ru_maxrss``: Linux keeps ``ru_maxrss`` across ``execve``, so a
    child would report its parent's peak at fork time whenever that is larger.
    """
    return _status_bytes("VmHWM")


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, if the kernel lets us."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the package under test


@dataclass(frozen=True)
class PackageSource:
    """Where virnucpro_merge is imported from, and which version of it that is."""

    directory: Path | None  # the package folder (None: not importable)
    fingerprint: str = ""
    git: str = ""
    snapshot_root: Path | None = None  # prepended to PYTHONPATH of every child

    def describe(self) -> str:
        if self.directory is None:
            return "not found"
        where = f"snapshot of {self.directory}" if self.snapshot_root else f"live {self.directory}"
        return f"sources {self.fingerprint}, git {self.git}, {where}"

    def changed(self) -> bool:
        """Whether the package's sources changed since the benchmark started."""
        return self.directory is not None and sources_fingerprint(self.directory) != self.fingerprint


def sources_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.py")):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git_state(directory: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def locate_package(workdir: Path, *, live: bool = False) -> PackageSource:
    """Find virnucpro_merge (without importing it) and, unless ``live``, snapshot its sources."""
    spec = importlib.util.find_spec("virnucpro_merge")
    if spec is None or not spec.submodule_search_locations:
        return PackageSource(None)
    directory = Path(next(iter(spec.submodule_search_locations))).resolve()
    root = None
    if not live:
        root = workdir / "package"
        shutil.copytree(directory, root / "virnucpro_merge", ignore=shutil.ignore_patterns("__pycache__"))
    return PackageSource(directory, sources_fingerprint(directory), _git_state(directory), root)


# --------------------------------------------------------------------------- fresh processes


def run_fresh(script: Path, spec: dict, package: PackageSource, *, what: str, echo: bool = False) -> dict:
    """Run ``script --_child SPEC`` in a fresh interpreter; return the JSON it replied.

    Raises :class:`BenchError` (naming ``what``) when the child fails, replies
    nothing, or imported virnucpro_merge from somewhere else than the snapshot.
    """
    env = dict(os.environ)
    if package.snapshot_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.snapshot_root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(script), "--_child", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        msg = f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}"
        raise BenchError(msg)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        msg = f"{what} printed no result:\n{proc.stdout}{proc.stderr}"
        raise BenchError(msg)
    if echo:
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith(RESULT_TAG)))
    result = json.loads(lines[-1][len(RESULT_TAG):])
    imported = result.get("package_file")
    if package.snapshot_root is not None and imported and not imported.startswith(str(package.snapshot_root)):
        msg = f"{what} imported virnucpro_merge from {imported}, not from the snapshot"
        raise BenchError(msg)
    return result


def reply(result: dict) -> None:
    """The child's answer: one line the parent finds among anything else printed."""
    try:
        import virnucpro_merge

        result.setdefault("package_file", virnucpro_merge.__file__)
    except ImportError:
        pass
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- rounds and ratios


def rotated(items: Sequence, round_number: int) -> list:
    """``items`` with the first ``round_number`` (mod their number) moved to the end."""
    k = round_number % len(items) if items else 0
    return [*items[k:], *items[:k]]


def same_round_ratios(rounds: Sequence[dict], baseline: Sequence[dict], key: str = "wall") -> list[float]:
    """``rounds[i][key] / baseline[i][key]`` for every round both have."""
    return [a[key] / b[key] for a, b in zip(rounds, baseline, strict=False) if b.get(key)]


def median_and_min(values: Sequence[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), min(values)) if values else (None, None)


# --------------------------------------------------------------------------- the machine


def fsync_cost(folder: Path, nbytes: int = 2**30) -> float:
    """Seconds an fsync of ``nbytes`` just written takes in ``folder`` (the disk's own speed)."""
    path = folder / ".fsync-probe"
    block = os.urandom(2**20)
    try:
        with open(path, "wb") as fh:
            for _ in range(nbytes // len(block)):
                fh.write(block)
            fh.flush()
            start = time.perf_counter()
            os.fsync(fh.fileno())
            return time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)


def _first_line_with(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            if line.startswith(prefix):
                return line
    return None


def _filesystem(path: Path) -> str:
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            device, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, f"{fstype} ({device} on {mount})"
    return kind


def machine_facts(workdir: Path, package: PackageSource, *, fsync_bytes: int = 0) -> dict:
    """The machine, the versions and the disk a benchmark ran on (``fsync_bytes``: also time an fsync)."""
    import h5py
    import numpy as np

    cpu = _first_line_with("/proc/cpuinfo", "model name")
    memory = _first_line_with("/proc/meminfo", "MemTotal:")
    facts = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu.split(":", 1)[1].strip() if cpu else platform.processor() or "unknown",
        "memory_gb": round(int(memory.split()[1]) / 2**20, 1) if memory else None,
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "virnucpro_merge": package.describe(),
        "workdir": str(workdir),
        "workdir_fs": _filesystem(workdir.resolve()),
    }
    if fsync_bytes:
        seconds = fsync_cost(workdir, fsync_bytes)
        facts["fsync"] = f"{fsync_bytes / 2**30:.3g} GiB in {seconds:.2f} s ({fsync_bytes / 1e6 / seconds:.0f} MB/s)"
    return facts


def print_facts(title: str, facts: dict) -> None:
    print(title)
    for key, value in facts.items():
        print(f"  {key:<18} {value}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- tables and files


@dataclass(frozen=True)
class Column:
    """One column of a table: its header, width, and how a value is written."""

    header: str
    width: int
    spec: str = ""  # a format spec (``.3f``); values that are None print as '-'
    left: bool = False

    def cell(self, value: object) -> str:
        text = "-" if value is None else format(value, self.spec) if self.spec else str(value)
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"


def table(columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width table, header first."""
    lines = [" ".join(c.cell(c.header) if c.left else f"{c.header:>{c.width}}" for c in columns)]
    lines += [" ".join(c.cell(v) for c, v in zip(columns, row, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def write_results(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write a benchmark's results as JSON (default ``benchmarks/results/<name>-<time>.json``)."""
    path = path or RESULTS_DIR / f"{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


@contextlib.contextmanager
def work_folder(prefix: str, base: Path | None) -> Iterator[Path]:
    """A scratch folder, removed at the end, on Ctrl-C and on ``kill`` (SIGTERM) alike."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    base = base or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def sync_disk() -> None:
    """Write back what is in the page cache now, so that it is not written during a timed run."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Logger = Callable[[str], None]


def package_at(revision: str, where: Path) -> Path:
    """The package of git ``revision`` of this repository, unpacked under ``where``: a folder to put
    first on PYTHONPATH (with ``python -P``, so that a checkout's own package does not shadow it)."""
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    archive = where / "baseline.tar"
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), revision, "virnucpro_merge"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where / "baseline", filter="data")
    archive.unlink()
    return where / "baseline"
