"""The benchmarks (benchmarks/bench_merge.py, bench_validation.py, bench_checkpoints.py, bench_ids.py, ...)
still run, and still check their answers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Rows that must always be there (package variants come and go with its keywords).
CORE_METHODS = ["raw-copy", "raw-copy+fsync", "seed-plan", "naive", "virnucpro_merge"]
VALIDATION_METHODS = ["seed-plan", "plan_merge", "validate_shard_completeness"]

pytestmark = pytest.mark.slow  # (make unit-fast leaves these out)


def _bench(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--no-json", "--workdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_merge_smoke_run_prints_a_verified_row_per_method(tmp_path):
    proc = _bench("bench_merge.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = re.search(r"^\s+methods\s+(.+)$", proc.stdout, re.MULTILINE)
    assert header, proc.stdout
    methods = header.group(1).split(", ")
    assert set(CORE_METHODS) <= set(methods), methods
    for method in methods:
        row = re.search(rf"^tiny\s+{re.escape(method)}\s+(.*)$", proc.stdout, re.MULTILINE)
        assert row, f"no table row for {method}:\n{proc.stdout}"
        assert re.search(r"\sok\s", row.group(1)), f"{method} not verified: {row.group(0)}"
    sizes = re.findall(r"^(\S+)\s+virnucpro_merge\s+\d", proc.stdout, re.MULTILINE)  # (tiny, and many tiny shards)
    assert "tiny" in sizes
    assert f"verification: all outputs verified ({len(methods) * len(sizes)} runs)" in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"


@pytest.mark.parametrize("method", ["virnucpro_merge"])
def test_merge_smoke_run_catches_a_wrong_output(tmp_path, method):
    proc = _bench("bench_merge.py", tmp_path, "--methods", method, "--_corrupt", method)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "VERIFICATION FAILED" in proc.stderr
    assert re.search(rf"^tiny\s+{re.escape(method)}\s+FAILED: .*differ", proc.stdout, re.MULTILINE)
    assert list(tmp_path.iterdir()) == []


def test_validation_smoke_run_prints_a_verified_row_per_method(tmp_path):
    proc = _bench("bench_validation.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for method in VALIDATION_METHODS:
        row = re.search(rf"^\s*20,000\s+{re.escape(method)}\s+(.*)$", proc.stdout, re.MULTILINE)
        assert row, f"no table row for {method}:\n{proc.stdout}"
        assert row.group(1).rstrip().endswith("ok"), f"{method} not verified: {row.group(0)}"
    assert "verification: OK" in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"


@pytest.mark.parametrize("method", ["plan_merge"])
def test_validation_smoke_run_catches_a_wrong_answer(tmp_path, method):
    proc = _bench("bench_validation.py", tmp_path, "--_corrupt", method)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert f"VERIFICATION FAILED: {method} found" in proc.stderr
    assert re.search(rf"^\s*20,000\s+{re.escape(method)}\s+FAILED: VERIFICATION FAILED", proc.stdout, re.MULTILINE)
    assert "verification: OK" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_smoke_run_prints_both_readers(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_checkpoints.py"), "--smoke", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^h5py +[\d.]+", proc.stdout, re.MULTILINE)
    assert re.search(r"^checkpoints +[\d.]+", proc.stdout, re.MULTILINE)
    assert "checkpoints / h5py: x" in proc.stdout
    assert re.search(r"^cross-checked +[\d.]+", proc.stdout, re.MULTILINE)
    assert "cross-checked merge / merge: x" in proc.stdout


def test_report_scale_smoke_run_compares_with_the_baseline_revision(tmp_path):
    """Both reports run, each with its own revision's package (the earlier one has no interactive figures)."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_report_scale.py"), "--smoke", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^report@36f309f\s+\d", proc.stdout, re.MULTILINE)
    ratio = re.search(r"report / report@36f309f, same round: median (\d+\.\d+)", proc.stdout)
    assert ratio
    assert float(ratio.group(1)) > 0
    assert list(tmp_path.iterdir()) == []


def test_health_smoke_run_compares_with_the_revision_without_it(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_health.py"), "--smoke", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for durable in ("", r" \(no fsync\)"):
        assert re.search(rf"merge{durable} / merge@cbb6f02{durable}, same round: wall median \d+\.\d+", proc.stdout)
    assert list(tmp_path.iterdir()) == []


def test_ids_smoke_run_checks_every_command_against_reading_the_ids(tmp_path):
    proc = _bench("bench_ids.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for method in ("read-ids", "validate", "aggregate", "report"):
        assert re.search(rf"^{method}\s+\d+\.\d+", proc.stdout, re.MULTILINE), proc.stdout
    assert "verification: OK" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"


def test_merge_smoke_run_compares_the_merge_with_its_floors(tmp_path):
    proc = _bench("bench_merge.py", tmp_path, "--methods", "floor-durable,floor-nondurable,virnucpro_merge,"
                  "virnucpro_merge[no fsync]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for size in ("tiny", "many-tiny"):
        for merge, floor in (("virnucpro_merge", "floor-durable"),
                             (r"virnucpro_merge\[no fsync\]", "floor-nondurable")):
            assert re.search(rf"^{size}: {merge} / {floor}: wall x\d+\.\d+ median.* CPU-s/GiB", proc.stdout,
                             re.MULTILINE), proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr


def test_watch_smoke_run_prints_the_refresh_against_a_listing(tmp_path):
    proc = _bench("bench_watch.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for method in ("walk", "refresh", "idle"):
        assert re.search(rf"^{method}\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"refresh / walk at 64 ranks: x\d+\.\d+ \(median of same-round ratios\)", proc.stdout)
    assert "verification: OK" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"
