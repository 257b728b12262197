"""The ID validation benchmark (benchmarks/bench_validation.py) still runs, and still checks its answers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_validation.py"
METHODS = ["seed-plan", "plan_merge", "validate_shard_completeness"]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--no-json", "--workdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_run_prints_a_verified_row_per_method(tmp_path):
    proc = _bench(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for method in METHODS:
        row = re.search(rf"^\s*20,000\s+{re.escape(method)}\s+(.*)$", proc.stdout, re.MULTILINE)
        assert row, f"no table row for {method}:\n{proc.stdout}"
        assert row.group(1).rstrip().endswith("ok"), f"{method} not verified: {row.group(0)}"
    assert "verification: OK" in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"


@pytest.mark.parametrize("method", ["plan_merge"])
def test_smoke_run_catches_a_wrong_answer(tmp_path, method):
    proc = _bench(tmp_path, "--_corrupt", method)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert f"VERIFICATION FAILED: {method} found" in proc.stderr
    assert re.search(rf"^\s*20,000\s+{re.escape(method)}\s+FAILED: VERIFICATION FAILED", proc.stdout, re.MULTILINE)
    assert "row(s) FAILED" in proc.stdout
    assert "verification: OK" not in proc.stdout
    assert list(tmp_path.iterdir()) == []
