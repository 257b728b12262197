"""The report of a run (``virnucpro-merge report``), and the folder rules it shares with the merge."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge import aggregate_shards
from virnucpro_merge.cli import main
from virnucpro_merge.synthetic import make_demo_run, write_shard

pytest.importorskip("nbclient", reason="the notebooks extra is not installed")

pytestmark = pytest.mark.slow  # (make unit-fast leaves these out)


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
    assert page.count("Bokeh.embed.embed_item(") == 2  # both figures, for hovering (their static pictures dropped)
    assert re.findall(r"<img[^>]*data:image/png", page) == []
    assert "sequence_index.json, the run folder's sequence index" in done.stderr


class _Fetches(HTMLParser):
    """What a page would fetch from the network: the address of each element's ``src`` or
    ``href``, and each ``@import`` or ``url(//...)`` of its styles."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.fetched += [value for name, value in attrs if name in ("src", "href") and value
                         and re.match(r"\s*(?:https?:)?//", value, re.IGNORECASE)]
        self.fetched += [value for name, value in attrs if name == "style" and value and _REMOTE_CSS.search(value)]

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.fetched += _REMOTE_CSS.findall(data)


_REMOTE_CSS = re.compile(r"@import|url\(\s*['\"]?(?:https?:)?//", re.IGNORECASE)


def test_the_report_opens_offline(report):
    """No element or style fetches anything, and no script is loaded from outside. (Bokeh's inlined
    script holds one address, MathJax's, which it would load only for a figure with TeX: none has.)"""
    page = report[0].read_text(encoding="utf-8")
    parser = _Fetches()
    parser.feed(page)
    assert parser.fetched == []
    assert "<script src" not in page
    assert page.count("<script") >= 3  # (Bokeh, and each figure's data and its call)
    assert not re.search(r'"name": "(?:TeX|MathML|MathText)"', page)


def test_the_offline_check_sees_what_would_be_fetched():
    parser = _Fetches()
    parser.feed('<img src="https://x/y.png"><link href=//cdn/a.css><style>@import "b.css"</style>'
                '<div style="background:url(//x/z.png)"></div><script>t.src="https://cdn/m.js"</script>')
    assert len(parser.fetched) == 4


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
                 "--world-size", "9"]) == 1  # (incomplete)
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("9 shards, ")
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


# --------------------------------------------------------------------------- trust what it says (issue 20)


def _copy_run(pipeline_run, folder):
    shutil.copytree(pipeline_run.directory, folder)
    return folder


def _cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "virnucpro_merge", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_nothing_in_the_run_folder_is_run(pipeline_run, tmp_path):
    """A matplotlib.py (or a matplotlibrc) lying in a shared run folder is data: `cd run && report .` runs none."""
    run = _copy_run(pipeline_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    (run / "matplotlib.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (run / "pandas.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (run / "matplotlibrc").write_text("backend: module://evil_backend\n")
    (run / "evil_backend.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    done = _cli("report", ".", "-o", tmp_path / "r.html", cwd=run)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "sequences expected: 600" in (tmp_path / "r.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", ["rerun list is the expected file", "rerun list is the index", "report is the index",
                                  "rerun list is the report", "report is a shard", "report is the merged file"])
def test_no_output_is_an_input(pipeline_run, tmp_path, capsys, case):
    run = _copy_run(pipeline_run, tmp_path / "run")
    index = run / "sequence_index.json"
    ids = tmp_path / "report-rerun.txt"
    ids.write_text("".join(f"{i}\n" for i in pipeline_run.sequence_ids[:50]))
    merged = tmp_path / "m.h5"
    argv = {"rerun list is the expected file": ["-o", tmp_path / "report.html", "--expected", ids],
            "rerun list is the index": ["-o", tmp_path / "x.html", "--rerun-list", index],
            "report is the index": ["-o", index],
            "rerun list is the report": ["-o", tmp_path / "x.html", "--rerun-list", tmp_path / "x.html"],
            "report is a shard": ["-o", run / "shard_0.h5"],
            "report is the merged file": ["-o", merged, "--merged", merged]}[case]
    if case == "report is the merged file":
        assert main(["-q", "aggregate", str(run), "-o", str(merged), "--partial"]) == 0
    before = {p: p.read_bytes() for p in [*run.iterdir(), ids, *([merged] if merged.exists() else [])]}
    assert main(["report", str(run), *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("virnucpro-merge: error: ")
    assert "is an input of this report" in err[0] or "is the report itself" in err[0]
    assert {p: p.read_bytes() for p in before} == before


def test_the_documented_rerun_loop_keeps_its_list(pipeline_run, tmp_path):
    """report, re-embed report-rerun.txt, report the re-run with --expected report-rerun.txt: the list survives."""
    run = _copy_run(pipeline_run, tmp_path / "run")
    assert _cli("report", run, "-o", tmp_path / "report.html").returncode == 0
    listed = (tmp_path / "report-rerun.txt").read_text()
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    ids = listed.split()
    write_shard(rerun / "shard_0.h5", ids, np.zeros((len(ids), 4), np.float32))
    same = _cli("report", rerun, "--expected", tmp_path / "report-rerun.txt", "-o", tmp_path / "report.html")
    assert same.returncode == 2  # its list would be written over its --expected: refused, before writing
    assert "report-rerun.txt: is an input of this report" in same.stderr
    assert (tmp_path / "report-rerun.txt").read_text() == listed
    done = _cli("report", rerun, "--expected", tmp_path / "report-rerun.txt", "-o", tmp_path / "again.html")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report-rerun.txt").read_text() == listed
    assert "No re-run list written: nothing is missing" in done.stderr
    assert not (tmp_path / "again-rerun.txt").exists()


def test_the_list_and_the_page_are_never_one_file_under_two_names(pipeline_run, tmp_path, capsys):
    (tmp_path / "lnk").symlink_to(tmp_path, target_is_directory=True)
    assert main(["report", str(pipeline_run.directory), "-o", str(tmp_path / "r.html"),
                 "--rerun-list", str(tmp_path / "lnk" / "r.html")]) == 2
    assert "is the report itself" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_some_of_a_folders_shards_are_not_checked_against_its_whole_index(pipeline_run, tmp_path):
    """Shard files of one folder use its index only when they are all of its shards: the index would
    call the other shards' sequences missing."""
    done = _cli("report", pipeline_run.shard_files[0], "-o", tmp_path / "one.html")
    assert done.returncode == 0, done.stderr
    assert "completeness NOT checked: no expected IDs" in (tmp_path / "one.html").read_text(encoding="utf-8")
    assert not (tmp_path / "one-rerun.txt").exists()


def test_a_list_that_cannot_be_written_is_never_left_stale(pipeline_run, tmp_path):
    """A missing ID with white space at an end: no list this time, and the earlier report's list removed."""
    run = _copy_run(pipeline_run, tmp_path / "run")
    ids = [*pipeline_run.sequence_ids, "odd id "]
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"sequences": [{"sequence_id": i} for i in ids]}))
    stale = tmp_path / "r-rerun.txt"
    stale.write_text("seq_from_an_earlier_report\n")
    done = _cli("report", run, "--expected", index, "-o", tmp_path / "r.html", "--world-size", "8")
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert f"warning: Removed {stale}, the re-run list of an earlier report:" in done.stderr
    assert "cannot be written one a line" in done.stderr
    assert "Re-run list:" not in done.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no re-run list written:" in page


def test_shard_files_of_one_folder_use_its_index(pipeline_run, tmp_path):
    """The glob form of the how-to (`report run/shard_*.h5`), without --expected: the folder's index is used."""
    run = _copy_run(pipeline_run, tmp_path / "run")
    shards = sorted(run.glob("shard_*.h5"))
    done = _cli("report", *shards, "-o", tmp_path / "g.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "g.html").read_text(encoding="utf-8")
    assert "sequences expected: 600" in page
    assert len((tmp_path / "g-rerun.txt").read_text().split()) == 75 + 75 + 75 + 38


def test_without_expected_ids_completeness_is_not_checked(pipeline_run, tmp_path):
    """No index anywhere: the page says completeness was not checked, no list is written, no warning in the page."""
    lone = tmp_path / "lone"
    lone.mkdir()
    for shard in pipeline_run.shard_files[:2]:
        shutil.copy(shard, lone / shard.name)
    done = _cli("report", lone, "-o", tmp_path / "l.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "l.html").read_text(encoding="utf-8")
    assert "completeness NOT checked: no expected IDs" in page
    assert "Missing sequences: not checked" not in done.stderr
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page  # no library warning in the page
    assert "Warning" not in re.sub(r"<style.*?</style>", "", page, flags=re.DOTALL)
    assert not (tmp_path / "l-rerun.txt").exists()


def test_a_crafted_merged_file_cannot_put_markup_in_the_page(pipeline_run, tmp_path):
    from tests.helpers import edit_summary

    merged = tmp_path / "m.h5"
    assert main(["-q", "aggregate", str(pipeline_run.directory), "-o", str(merged), "--partial"]) == 0
    markup = "<script>document.title='owned'</script>"

    def inject(summary):
        for shard in summary["shards"]:
            shard.update(path=f"{markup}.h5", error=markup, status="failed")
        summary.update(failed_shards=[s["path"] for s in summary["shards"]], created_by=markup,
                       lineage=[{"path": markup, "total_sequences": 1, "partial": False}])

    edit_summary(merged, inject)
    done = _cli("report", pipeline_run.directory, "--merged", merged, "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script>document.title" not in page
    assert "&lt;script&gt;document.title" in page  # shown, as text
    edit_summary(merged, lambda summary: summary["lineage"][0].update(total_sequences=markup))
    done = _cli("report", pipeline_run.directory, "--merged", merged, "-o", tmp_path / "r.html")
    assert done.returncode == 2
    assert done.stderr.strip().endswith("damaged merge report ('lineage' holds a record whose 'total_sequences' "
                                        "is not a whole number >= 0 or null)")


def test_the_report_says_why_each_worker_stopped(tmp_path):
    """A run folder as the pipeline leaves it, checkpoints, manifest and logs included."""
    run = make_demo_run(tmp_path / "run", n_sequences=800, world_size=4, dim=4, truncated=(), absent=(2,), empty=(),
                        short={}, checkpoint_every=40, preempted=(3,))
    done = _cli("report", run.directory, "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert ("rank 2: failed: RuntimeError: CUDA error: an illegal memory access was encountered "
            "(logs/worker_2.log") in page
    assert "rank 3: stopped by SIGTERM (preempted) after 120 sequences in 3 checkpoints" in page


def test_beside_the_page_a_pipeline_reads_the_verdict_and_the_ranks(report, pipeline_run):
    out, done = report
    found = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert found["verdict"] == "incomplete"
    assert found["line"].startswith("INCOMPLETE: ")
    assert found["line"] in done.stderr
    assert (found["expected"], found["world_size"]) == (600, 8)
    assert found["ranks_by_status"] == {"incomplete": [6], "empty": [5], "failed": [2], "absent": [7]}
    assert found["command"].startswith("virnucpro-merge report ")
    assert found["run"] == str(pipeline_run.directory.absolute())
    assert [i["path"] for i in found["inputs"]] == [str(pipeline_run.index.absolute())]
    rows = out.with_name("report-ranks.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["rank", "shard", "status", "expected", "present", "missing", "checkpointed",
                                   "problem", "median_norm", "health"]
    assert [r.split("\t")[:3] for r in rows[1:]] == [[str(s["rank"]), s["shard"], s["status"]] for s in found["ranks"]]
    assert rows[8].split("\t")[-3:] == ["file does not exist", "", ""]  # (no health read: empty, not "None")


def test_fail_on_incomplete_exits_1_and_a_complete_run_0(pipeline_run, tmp_path):
    whole = make_demo_run(tmp_path / "whole", n_sequences=40, world_size=2, dim=4, truncated=(), absent=(), empty=(),
                          short={})
    done = _cli("report", whole.directory, "-o", tmp_path / "w.html", "--fail-on-incomplete")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "w.json").read_text())["line"] == "COMPLETE: all 40 expected sequences are there"
    broken = _cli("report", pipeline_run.directory, "-o", tmp_path / "b.html", "--fail-on-incomplete")
    assert broken.returncode == 1
    assert (tmp_path / "b.html").exists()
    assert json.loads((tmp_path / "b.json").read_text())["verdict"] == "incomplete"


def _text(page: str) -> str:
    """The words of a page's body, as a reader sees them (no script, no style)."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.DOTALL)  # (a script may hold "<body")
    body = page[page.index("<body"):]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip())


def test_the_page_answers_first(report, pipeline_run):
    out, _ = report
    page = out.read_text(encoding="utf-8")
    line = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["line"]
    assert _text(page).startswith(f"Run report of {pipeline_run.directory.name} {line}")
    assert f"<title>Run report of {pipeline_run.directory.name}: INCOMPLETE</title>" in page
    assert "With no run given" not in page  # (the notebook's set-up prose stays in the notebook)
    assert "functools" not in _text(page)  # (nor does what the report's injected set-up returns)
    assert ">Parameters<" not in page


def test_a_run_folder_named_like_markup_is_text_in_the_title(pipeline_run, tmp_path):
    odd = tmp_path / "<i>run&co"
    shutil.copytree(pipeline_run.directory, odd)
    done = _cli("report", odd, "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<title>Run report of &lt;i&gt;run&amp;co: INCOMPLETE</title>" in page
    assert "<i>run" not in page


def test_a_title_a_comment_and_how_the_page_was_made_are_text(pipeline_run, tmp_path):
    done = _cli("report", pipeline_run.directory, "-o", tmp_path / "r.html", "--title", "Batch <7> & co",
                "--comment", "after the <b>node</b> died")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    text = _text(page)
    assert text.startswith("Batch <7> & co INCOMPLETE: ")
    assert "after the <b>node</b> died" in text
    assert "<b>node</b>" not in page
    assert "<title>Batch &lt;7&gt; &amp; co: INCOMPLETE</title>" in page
    found = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert (found["title"], found["comment"]) == ("Batch <7> & co", "after the <b>node</b> died")
    made = text[text.index("How this page was made"):]
    assert f"made by: virnucpro_merge {found['created_by'].split()[-1]}" in made
    assert f"run: {pipeline_run.directory.absolute()}" in made
    assert f"input: {pipeline_run.index.absolute()} ({pipeline_run.index.stat().st_size:,} bytes, modified" in made


def test_the_page_says_what_to_do_next_and_the_fasta_to_re_run_is_beside_it(report, pipeline_run):
    out, _ = report
    found = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    fasta = out.with_name("report-rerun.fasta")
    assert found["rerun_fasta"] == str(fasta.absolute())
    listed = out.with_name("report-rerun.txt").read_text().split()
    assert fasta.read_text().count(">") == found["missing"] == len(listed)
    text = _text(out.read_text(encoding="utf-8"))
    steps = text[text.index("Next steps"):text.index("Summary")]
    assert f"--partial -o {pipeline_run.directory.absolute() / 'embeddings.h5'}" in steps
    assert f"embed again the sequences of {fasta.absolute()}" in steps


def test_a_complete_run_leaves_no_re_run_files(pipeline_run, tmp_path):
    whole = make_demo_run(tmp_path / "whole", n_sequences=40, world_size=2, dim=4, truncated=(), absent=(), empty=(),
                          short={})
    for stale in ("w-rerun.txt", "w-rerun.fasta"):
        (tmp_path / stale).write_text("left by an earlier report\n")
    done = _cli("report", whole.directory, "-o", tmp_path / "w.html")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "w-rerun.txt").exists()
    assert not (tmp_path / "w-rerun.fasta").exists()
    assert json.loads((tmp_path / "w.json").read_text())["rerun_fasta"] is None
    text = _text((tmp_path / "w.html").read_text(encoding="utf-8"))
    assert "merge it: virnucpro-merge aggregate " in text


_TYPES = {"string": str, "integer": int, "list": list, "object": dict, "null": type(None)}


def _documented_fields() -> dict[str, tuple[type, ...]]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "format.md").read_text(encoding="utf-8")
    table = page[page.index("## The report's data"):]
    fields = {}
    for row in re.findall(r"^\| `(\w+)` \| ([a-z ]+) \|", table, flags=re.MULTILINE):
        fields[row[0]] = tuple(_TYPES[t] for t in row[1].split(" or "))
    return fields


def test_the_json_is_what_the_format_page_says(report):
    out, _ = report
    found = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    fields = _documented_fields()
    assert len(fields) > 20
    assert set(found) == set(fields)
    wrong = {name: type(found[name]).__name__ for name, kinds in fields.items() if not isinstance(found[name], kinds)}
    assert not wrong
    assert set(found["ranks"][0]) == {"rank", "shard", "status", "expected", "present", "missing", "checkpointed",
                                      "problem", "median_norm", "health"}
    assert found["ranks"][0]["health"] is None  # (the embeddings not read)


def test_a_report_of_1024_ranks_stays_small_and_draws_each_figure_once(tmp_path):
    """1,024 ranks, 128 of them lost (past 64: every rank is drawn): the page, its figures for
    hovering with Bokeh's script inlined once, stays under 5 MB."""
    run = make_demo_run(tmp_path / "run", n_sequences=1024 * 12, world_size=1024, dim=2, truncated=(),
                        absent=range(0, 1024, 8), empty=(), short={})
    out = tmp_path / "report.html"
    assert main(["-q", "report", str(run.directory), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert out.stat().st_size < 5 * 2**20
    assert page.count("Bokeh.embed.embed_item(") == 2
    assert page.count("/* BEGIN bokeh.min.js */") == 1  # (the library itself: once, whatever the figures)
    text = _text(page)
    assert "Rows per rank against its assignment, 1,024 ranks" in page
    assert "absent (128)" in page
    assert text.count("INCOMPLETE") >= 1


def test_progress_of_the_report_on_stderr_only_when_asked(pipeline_run, tmp_path, capsys):
    """Not a terminal: no bar unless asked for; --progress: the notebook's cells counted on stderr."""
    assert main(["report", str(pipeline_run.directory), "-o", str(tmp_path / "a.html")]) == 0
    assert "report: its notebook's cells" not in capsys.readouterr().err
    assert main(["report", str(pipeline_run.directory), "-o", str(tmp_path / "b.html"), "--progress"]) == 0
    captured = capsys.readouterr()
    done = re.findall(r"report: its notebook's cells: 100%\|.*?\| (\d+)/(\d+)", captured.err)
    assert done
    assert done[-1][0] == done[-1][1]
    assert "cells" not in captured.out


def test_a_kernel_that_dies_is_one_line_and_prints_nothing_on_the_terminal(pipeline_run, tmp_path):
    """A kernel that cannot start (a port taken, a broken install) is the report's error in one line, with
    the kernel's last words; what it printed goes to the log, not to the user's terminal, and nothing
    fails with a traceback as the command exits."""
    script = tmp_path / "dying.py"
    script.write_text(f"""
import json, sys
from pathlib import Path
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from virnucpro_merge.cli import main
from virnucpro_merge.inspection import runreport

def dying(folder):
    spec = folder / "kernels" / "dying"
    spec.mkdir(parents=True)
    code = "import sys; print('Traceback (most recent call last):', file=sys.stderr); " \\
           "sys.exit('zmq.error.ZMQError: Address already in use')"
    argv = [sys.executable, "-c", code, "{{connection_file}}"]
    (spec / "kernel.json").write_text(json.dumps({{"argv": argv, "display_name": "dying", "language": "python"}}))
    return KernelManager(kernel_name="dying", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))

runreport.kernel_manager = dying
sys.exit(main(["report", {str(pipeline_run.directory)!r}, "-o", {str(tmp_path / "r.html")!r}]))
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "the report's kernel died: zmq.error.ZMQError: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_health_reads_the_embeddings_and_names_the_ranks_that_stand_out(tmp_path):
    from virnucpro_merge.synthetic import make_unhealthy_run

    run = make_unhealthy_run(tmp_path / "run", n_sequences=800, world_size=8, dim=8)
    out = tmp_path / "r.html"
    assert main(["-q", "report", str(run.directory), "-o", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["health_flags"] is None  # (not read unless asked)
    assert "not checked: the embeddings were not read" in _text(out.read_text(encoding="utf-8"))
    assert main(["-q", "report", str(run.directory), "-o", str(out), "--health"]) == 0
    found = json.loads(out.with_suffix(".json").read_text())
    assert [flag.split(":")[0] for flag in found["health_flags"]] == ["rank 2", "rank 4", "rank 4", "rank 5", "rank 6"]
    assert found["ranks"][6]["health"] == "16 all-zero rows: a batch that never ran?"
    assert found["ranks"][0]["health"] == ""
    assert found["ranks"][0]["median_norm"] > 10 * found["ranks"][2]["median_norm"]
    tsv = out.with_name("r-ranks.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[-2:] == ["median_norm", "health"]
    assert tsv[7].endswith("\t16 all-zero rows: a batch that never ran?")
    text = _text(out.read_text(encoding="utf-8"))
    assert "rank 6: 16 all-zero rows: a batch that never ran?" in text
    page = out.read_text(encoding="utf-8")
    assert text.startswith(f"Run report of run {found['line']} EMBEDDING HEALTH: 4 ranks stand out (2, 4-6): see "
                           "their health below")  # (the answer first: complete, but four GPUs' rows stand out)
    assert "functools" not in text  # (nothing of the report's own set-up reaches the page)
    assert page.count("Bokeh.embed.embed_item(") == 3  # (the row norms too, for hovering)
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.index)
    assert main(["-q", "report", str(run.directory), "-o", str(out), "--merged", str(merged)]) == 0
    taken = json.loads(out.with_suffix(".json").read_text())  # (no --health: the merge's own sums, not read again)
    assert taken["health_flags"] == found["health_flags"]
    assert 'aria-label="Row norms per rank: 4 of 8 ranks stand out (interactive: hover' in page
    assert "No description has been provided" not in page  # (every picture described in its alt text)


def test_the_reports_kernel_hands_large_frees_back(tmp_path):
    """The kernel that runs the report's notebook builds the run's lookups: its C allocator is
    told, as the command line's is, to hand freed arrays back (at 10^7 IDs: 765 MB at the peak
    without, 530 MB with)."""
    from virnucpro_merge._processes import hand_back_environment
    from virnucpro_merge.inspection.runreport import kernel_manager

    manager = kernel_manager(tmp_path)
    spec = manager.kernel_spec_manager.get_kernel_spec(manager.kernel_name)
    assert hand_back_environment().items() <= spec.env.items()


def test_a_run_that_repeats_ids_is_invalid_whatever_else_it_lacks(tmp_path):
    """A rank that repeats sequence IDs misses none of its own: it was left out of the ranks
    to look at, and the verdict said INCOMPLETE (re-run the absent rank) where no merge
    takes the run, --partial neither (validate said INVALID)."""
    from virnucpro_merge.inspection import inspect_run
    from virnucpro_merge.inspection.runreport import run_summary

    run = make_demo_run(tmp_path / "run", n_sequences=200, world_size=4, dim=4, duplicated=(1,), truncated=(),
                        absent=(3,), empty=(), short={})
    summary = run_summary(inspect_run(run.directory))
    assert summary["verdict"] == "invalid"
    assert summary["ranks_by_status"] == {"duplicated": [1], "absent": [3]}
    assert summary["line"] == ("INVALID: sequence IDs repeated (rank 1), which a merge refuses; "
                               "50 of 200 sequences missing (25.00%); ranks to re-run: 1 (absent 3)")
    assert main(["validate", str(run.directory), "--expected", str(run.index)]) == 1
    with pytest.raises(ValueError, match="Duplicate sequence ID found"):
        aggregate_shards(run.shard_files, tmp_path / "out.h5", run.sequence_ids, partial=True)


_CTRL_C_WHILE_THE_NOTEBOOK_RUNS = """
import os, signal, sys
import nbclient.client
from virnucpro_merge.cli import main

real = nbclient.client.NotebookClient.async_execute_cell
async def execute_cell(self, cell, cell_index, *args, **kwargs):
    if cell_index == 3:  # (nbclient has its own handlers of SIGINT and SIGTERM by now)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return await real(self, cell, cell_index, *args, **kwargs)
nbclient.client.NotebookClient.async_execute_cell = execute_cell
sys.exit(main(["report", sys.argv[2], "-o", sys.argv[3], "--no-progress"]))
"""


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_ctrl_c_while_the_report_runs_says_interrupted(tmp_path, signal_name):
    """nbclient takes Ctrl-C and SIGTERM itself while it runs the notebook, stops the kernel,
    then fails an assertion of its own: a traceback and exit 1."""
    run = make_demo_run(tmp_path / "run", n_sequences=200, world_size=4, dim=4)
    done = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_THE_NOTEBOOK_RUNS, signal_name, str(run.directory),
                           str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "virnucpro-merge: interrupted; the output was left as it was"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_signal_nbclient_took_is_an_interruption_even_when_the_notebook_ended():
    """nbclient's own handler stops the kernel and says only that a signal came (its clean-up
    future): the notebook may still have ended as the signal came, the page unfinished."""
    from types import SimpleNamespace

    from virnucpro_merge.inspection.runreport import _refuse_a_signal

    _refuse_a_signal(SimpleNamespace(), None)  # (none came: nothing to say)
    _refuse_a_signal(SimpleNamespace(), RuntimeError("kernel died"))
    with pytest.raises(KeyboardInterrupt):
        _refuse_a_signal(SimpleNamespace(_async_cleanup_kernel_future=object()), None)
    stopped_cell = RuntimeError("the kernel's cell")
    stopped_cell.ename = "KeyboardInterrupt"  # (as nbclient's CellExecutionError names what the cell raised)
    with pytest.raises(KeyboardInterrupt):
        _refuse_a_signal(SimpleNamespace(), stopped_cell)
