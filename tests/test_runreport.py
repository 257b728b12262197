"""The report of a run (``virnucpro-merge report``), and the folder rules it shares with the merge."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge.cli import main
from virnucpro_merge.synthetic import make_demo_run, write_shard

pytest.importorskip("nbclient", reason="the notebooks extra is not installed")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """A run folder as the pipeline leaves it: shards, sequence_index.json, its last worker dead."""
    return make_demo_run(tmp_path_factory.mktemp("pipeline") / "output", n_sequences=600, world_size=8, dim=4,
                         truncated=(2,), absent=(7,), empty=(5,), short={6: 0.5})


@pytest.fixture(scope="module")
def report(pipeline_run, tmp_path_factory):
    """The report of that run, written by the command line (one kernel, for every test below)."""
    folder = tmp_path_factory.mktemp("report")
    out = folder / "report.html"
    done = subprocess.run([sys.executable, "-m", "virnucpro_merge", "report", str(pipeline_run.directory),
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done


def test_the_report_is_about_this_run(report):
    out, done = report
    page = out.read_text(encoding="utf-8")
    assert "world size: 8 (from the IDs&#x27; index positions)" in page or "world size: 8 (from the IDs' index" in page
    assert "sequences expected: 600" in page
    assert "truncated HDF5 file" in page  # a broken shard is reported, never fatal
    assert page.count("data:image/png;base64,") >= 2  # both figures, embedded
    assert "sequence_index.json, the run folder's sequence index" in done.stderr


def test_the_report_opens_offline(report):
    page = report[0].read_text(encoding="utf-8")
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.IGNORECASE)
    fetched += re.findall(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.IGNORECASE)
    assert fetched == []
    assert "<script src" not in page


def test_code_is_hidden_and_the_rerun_list_is_beside_it(report, pipeline_run):
    out, _ = report
    page = out.read_text(encoding="utf-8")
    assert "hl-ipython3" not in page  # code hidden (code is highlighted as ipython3)
    rerun = out.with_name("report-rerun.txt")
    ids = rerun.read_text().splitlines()
    assert len(ids) == 75 + 75 + 75 + 38  # ranks 2, 5 and 7, half of rank 6
    assert set(ids) <= set(pipeline_run.sequence_ids)


def test_show_code_and_a_merged_output(pipeline_run, tmp_path):
    merged = tmp_path / "embeddings.h5"
    assert main(["-q", "aggregate", str(pipeline_run.directory), "-o", str(merged), "--partial",
                 "--expected", str(pipeline_run.index)]) == 0
    out = tmp_path / "r.html"
    assert main(["-q", "report", str(pipeline_run.directory), "-o", str(out), "--merged", str(merged),
                 "--show-code", "--rerun-list", str(tmp_path / "todo.txt")]) == 0
    page = out.read_text(encoding="utf-8")
    assert "hl-ipython3" in page
    assert "failed shards: 2 (shard_2.h5, shard_7.h5)" in page  # rank 7 left no file: found from the IDs
    assert (tmp_path / "todo.txt").exists()


@pytest.mark.parametrize("case", ["no shards", "unreadable expected", "expected is a folder", "no output folder",
                                  "broken merged"])
def test_bad_inputs_are_one_line_and_exit_2(pipeline_run, tmp_path, capsys, case):
    out = tmp_path / "r.html"
    run, extra = str(pipeline_run.directory), []
    if case == "no shards":
        (tmp_path / "empty").mkdir()
        run = str(tmp_path / "empty")
    elif case == "unreadable expected":
        bad = tmp_path / "ids.txt"
        bad.write_bytes(b"\xff\xfe\x00 not text")
        extra = ["--expected", str(bad)]
    elif case == "expected is a folder":
        extra = ["--expected", str(tmp_path)]
    elif case == "no output folder":
        out = tmp_path / "missing" / "r.html"
    else:
        extra = ["--merged", str(pipeline_run.shard_files[2])]
    out.parent.mkdir(exist_ok=True) if case != "no output folder" else None
    if case != "no output folder":
        out.write_text("a previous report")
    assert main(["report", run, "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("virnucpro-merge: error: ")
    if case != "no output folder":
        assert out.read_text() == "a previous report"
    assert not list(out.parent.glob(".*partial")) if out.parent.exists() else True


def test_a_strict_merge_names_the_dead_last_rank(pipeline_run, tmp_path, capsys):
    """The folder rule infers the world size from the IDs too: rank 7 left no file at all."""
    shards = [p for p in pipeline_run.shard_files if p.exists()]
    folder = tmp_path / "run"
    folder.mkdir()
    for p in shards:
        shutil.copy(p, folder / p.name)
    shutil.copy(pipeline_run.index, folder / "sequence_index.json")
    (folder / "shard_2.h5").unlink()  # only the last rank is lost now... and rank 2
    write_shard(folder / "shard_2.h5", [pipeline_run.sequence_ids[p] for p in range(2, 600, 8)],
                np.zeros((75, 4), np.float32))
    (folder / "shard_5.h5").unlink()
    write_shard(folder / "shard_5.h5", [pipeline_run.sequence_ids[p] for p in range(5, 600, 8)],
                np.zeros((75, 4), np.float32))
    assert main(["aggregate", str(folder), "-o", str(tmp_path / "m.h5"), "--expected",
                 str(folder / "sequence_index.json")]) == 2
    err = capsys.readouterr().err
    assert "World size 8, from the IDs' index positions: no shard_7.h5" in err
    assert err.strip().splitlines()[-1] == f"virnucpro-merge: error: {folder / 'shard_7.h5'}: file does not exist"


def test_without_expected_a_hint_names_the_index(pipeline_run, tmp_path, capsys):
    assert main(["aggregate", str(pipeline_run.directory), "-o", str(tmp_path / "m.h5"), "--partial"]) == 0
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if line.startswith("hint:")]
    assert hint == [f"hint: {pipeline_run.index} is this run's sequence index; with --expected {pipeline_run.index} "
                    f"the merge also checks that no sequence is missing"]
    assert main(["validate", str(pipeline_run.directory)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"virnucpro-merge: error: validate needs --expected FILE (this run's sequence index is {pipeline_run.index})")


def test_the_world_size_can_be_given(pipeline_run, capsys):
    assert main(["validate", str(pipeline_run.directory), "--expected", str(pipeline_run.index),
                 "--world-size", "9"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("9 shards, ")
    assert f"failed: {pipeline_run.directory / 'shard_8.h5'}: file does not exist" in out


def test_report_without_the_notebooks_extra_says_so(monkeypatch, pipeline_run, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbclient" else real(name, *a))
    assert main(["report", str(pipeline_run.directory), "-o", str(tmp_path / "r.html")]) == 2
    assert "pip install 'virnucpro-merge[notebooks]'" in capsys.readouterr().err


def test_the_packaged_notebook_is_used(tmp_path):
    """The package's copy of the notebook (not the one in notebooks/) is what runs."""
    from virnucpro_merge.inspection.runreport import NOTEBOOK

    assert NOTEBOOK.is_file()
    assert Path(NOTEBOOK).parent.name == "inspection"


def _kernels_left() -> list:
    psutil = pytest.importorskip("psutil")
    return [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]


def test_no_kernel_is_left_running(pipeline_run, tmp_path):
    """A report from Python (a notebook, a pipeline's script) shuts its kernel down."""
    from virnucpro_merge.inspection.runreport import write_run_report

    write_run_report(pipeline_run.directory, tmp_path / "r.html")
    assert (tmp_path / "r.html").is_file()
    assert _kernels_left() == []


def test_a_notebook_that_stops_says_why_and_leaves_no_kernel(pipeline_run, tmp_path, monkeypatch):
    import nbformat

    from virnucpro_merge.errors import MergeError
    from virnucpro_merge.inspection import runreport

    broken = tmp_path / "broken.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("run = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise ValueError('the disk is on fire')")]), broken)
    monkeypatch.setattr(runreport, "NOTEBOOK", broken)
    with pytest.raises(MergeError, match="the report notebook stopped: ValueError: the disk is on fire"):
        runreport.write_run_report(pipeline_run.directory, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    assert _kernels_left() == []
