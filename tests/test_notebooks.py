"""The committed notebooks: executed, clean, with their figures, ready for nbval.

nbval (``make test``) re-runs the notebooks and compares outputs, but a cell stored
without outputs is run and *not* compared, and figures are never compared. These
checks, which read the files only, catch what nbval would let through: stale or
stripped outputs, missing figures, leaked paths, churned metadata, and a sanitize
file whose patterns silently match nothing.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SANITIZE = NOTEBOOKS / "sanitize.cfg"

#: Each notebook, and the fewest figures (image/png outputs) it must carry.
MIN_FIGURES = {
    "01_aggregate_shards.ipynb": 0,
    "02_per_shard_counts.ipynb": 1,
    "03_missing_id_heatmap.ipynb": 1,
    "04_memory_profile.ipynb": 2,
    "05_rerun_missing.ipynb": 2,
    "06_distributed_validation.ipynb": 1,
    "07_run_report.ipynb": 2,
    "08_crashed_run.ipynb": 1,
    "09_watch_a_run.ipynb": 1,
}
MAX_BYTES = 275_000  # (the report notebook holds five figures, one of them a line per rank over time)
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|Users|private|var/folders)/")
IGNORE_MARKER = "NBVAL_IGNORE_OUTPUT"


def _load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _markers(cell: nbformat.NotebookNode) -> set[str]:
    comments = {line.strip().lstrip("#").strip() for line in cell.source.splitlines() if line.strip().startswith("#")}
    tags = set(cell.metadata.get("tags", []))
    return comments | tags | {tag.upper().replace("-", "_") for tag in tags}  # (nbval-ignore-output too)


def _python(source: str) -> str:
    """Cell source with IPython magics blanked, so that ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _expects_output(source: str) -> bool:
    """Whether a cell must print something: it prints, shows a figure, or ends in a bare value."""
    tree = ast.parse(_python(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("print", "show", "display"):
                return True
    last = tree.body[-1] if tree.body else None
    return isinstance(last, ast.Expr) and not isinstance(last.value, ast.Call)


def _texts(cell: nbformat.NotebookNode) -> list[str]:
    """Every text an output of the cell carries (not images)."""
    texts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            texts.append(out.text)
        elif out.output_type == "error":
            texts.append(f"{out.ename}: {out.evalue}")
        else:
            texts.extend(v for k, v in out.get("data", {}).items() if not k.startswith("image/"))
    return texts


def test_the_numbered_notebooks_and_only_those():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(MIN_FIGURES)


@pytest.mark.parametrize("name", sorted(MIN_FIGURES))
class TestNotebook:
    def test_valid_small_and_clean_metadata(self, name):
        nb = _load(name)
        nbformat.validate(nb)
        assert (NOTEBOOKS / name).stat().st_size < MAX_BYTES
        assert set(nb.metadata) <= {"kernelspec", "language_info"}
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert "version" not in nb.metadata.get("language_info", {}), "run `make notebooks` (strips metadata)"
        for cell in nb.cells:
            assert "execution" not in cell.metadata, "timing metadata: run `make notebooks`"

    def test_literate_shape(self, name):
        nb = _load(name)
        first = nb.cells[0]
        lines = [line for line in first.source.splitlines() if line.strip()]
        assert first.cell_type == "markdown", "open with an H1"
        assert lines[0].startswith("# "), "open with an H1"
        assert len(lines) >= 2, "an H1 and a one-line promise"
        for before, cell in itertools.pairwise(nb.cells):
            if cell.cell_type == "code":
                assert before.cell_type == "markdown", f"no markdown before:\n{cell.source}"
        for cell in _code_cells(nb):
            assert len(cell.source.splitlines()) <= 15, f"a long code cell:\n{cell.source}"

    def test_executed_top_to_bottom_in_one_fresh_kernel(self, name):
        counts = [c.execution_count for c in _code_cells(_load(name))]
        assert counts == list(range(1, len(counts) + 1)), "stale outputs: run `make notebooks`"

    def test_outputs_are_stored_where_the_code_produces_some(self, name):
        for cell in _code_cells(_load(name)):
            if _expects_output(cell.source):
                assert cell.outputs, f"no stored output (stripped or stale?):\n{cell.source}"
            if "plt.show()" in cell.source:
                assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"no figure:\n{cell.source}"

    def test_enough_figures(self, name):
        nb = _load(name)
        pngs = sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.outputs)
        assert pngs >= MIN_FIGURES[name]
        if MIN_FIGURES[name]:
            assert "%matplotlib inline" in _code_cells(nb)[0].source

    def test_errors_only_where_expected(self, name):
        for cell in _code_cells(_load(name)):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            if "raises-exception" in _markers(cell):
                assert len(errors) == 1, f"expected to fail:\n{cell.source}"
            else:
                assert not errors, f"unexpected error in:\n{cell.source}"

    def test_no_absolute_paths_in_outputs(self, name):
        for cell in _code_cells(_load(name)):
            for text in _texts(cell):
                assert not ABSOLUTE_PATH.search(text), f"absolute path in output:\n{text}"

    def test_ignored_outputs_are_followed_by_a_compared_conclusion(self, name):
        cells = _code_cells(_load(name))
        for i, cell in enumerate(cells):
            if IGNORE_MARKER in _markers(cell):
                later = [c for c in cells[i + 1:] if IGNORE_MARKER not in _markers(c)]
                assert any("True" in t or "False" in t for c in later for t in _texts(c)), (
                    f"nothing compared concludes from:\n{cell.source}")


def test_the_report_notebook_is_the_one_the_package_ships():
    """One source of truth: notebooks/07 is the package's report notebook (a link to it)."""
    from virnucpro_merge.inspection.runreport import NOTEBOOK

    assert (NOTEBOOKS / "07_run_report.ipynb").samefile(NOTEBOOK)
    nb = _load("07_run_report.ipynb")
    (parameters,) = [c for c in _code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    names = [line.split("=")[0].strip() for line in parameters.source.splitlines() if "=" in line]
    assert tuple(names) == __import__("virnucpro_merge.inspection.runreport", fromlist=["x"]).PARAMETERS


def test_the_demo_notebooks_show_the_strict_failure():
    cells = _code_cells(_load("01_aggregate_shards.ipynb"))
    (failing,) = [c for c in cells if "raises-exception" in _markers(c)]
    (error,) = [o for o in failing.outputs if o.output_type == "error"]
    assert error.ename == "UnreadableShardError"
    assert error.evalue.startswith("demo_run/shard_3.h5: truncated")


def test_the_rerun_notebook_shows_the_stale_index_failure_and_closes_the_loop():
    cells = _code_cells(_load("05_rerun_missing.ipynb"))
    (failing,) = [c for c in cells if "raises-exception" in _markers(c)]
    (error,) = [o for o in failing.outputs if o.output_type == "error"]
    assert error.ename == "IndexMismatchError"
    assert error.evalue.startswith("demo_run/sequences.fasta: byte ")
    texts = "\n".join(t for c in cells for t in _texts(c))
    assert "partial: False" in texts
    assert "missing sequences: 0 of 2000 expected" in texts
    assert "rows now NaN: 850" in texts
    assert "IDs equal the sequence index: True" in texts


def test_the_memory_notebook_concludes_true():
    cells = _code_cells(_load("04_memory_profile.ipynb"))
    conclusions = [line for c in cells if IGNORE_MARKER not in _markers(c) for t in _texts(c)
                   for line in t.splitlines() if line.endswith((": True", ": False"))]
    assert len(conclusions) >= 4
    assert all(line.endswith(": True") for line in conclusions), conclusions


def test_the_cluster_notebook_agrees_with_one_process_and_closes_its_cluster():
    cells = _code_cells(_load("06_distributed_validation.ipynb"))
    ignored = [c for c in cells if IGNORE_MARKER in _markers(c)]
    assert [c.source.count("dashboard_link") for c in ignored] == [1], "only the dashboard link is ignored"
    texts = "\n".join(t for c in cells if IGNORE_MARKER not in _markers(c) for t in _texts(c))
    for conclusion in ("the same on a worker: True", "same as one process: True", "same shards: True",
                       "same missing IDs: True", "same message: True", "cluster mean equals numpy's: True",
                       "hash within 1 % of an even share: True"):
        assert conclusion in texts
    assert "missing: 8500  extra: 0" in texts
    assert "distributed." not in texts, "no Dask log lines in outputs"
    assert "client.close()" in cells[-1].source
    assert "cluster.close()" in cells[-1].source


def _sanitize_blocks() -> list[tuple[str, str, str, str]]:
    """(regex, replace, example, becomes) for every pair in the sanitize file."""
    blocks, example, becomes = [], None, None
    lines = SANITIZE.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# example: "):
            example = line.removeprefix("# example: ")
        elif line.startswith("# becomes: "):
            becomes = line.removeprefix("# becomes: ")
        elif line.startswith("regex: "):
            replace = lines[i + 1].removeprefix("replace: ")
            blocks.append((line.removeprefix("regex: "), replace, example, becomes))
            example = becomes = None
    return blocks


def test_sanitize_file_parses_as_nbval_reads_it():
    text = SANITIZE.read_text(encoding="utf-8")
    assert "\r" not in text
    for line in text.splitlines():
        assert line == line.rstrip(), f"trailing space: {line!r}"
    regex_lines = [line for line in text.splitlines() if line.startswith("regex:")]
    pairs = get_sanitize_patterns(text)
    assert len(pairs) == len(regex_lines) >= 3, "a pair was dropped (blank line? missing space?)"
    assert [(r, s) for r, s, *_ in _sanitize_blocks()] == pairs


@pytest.mark.parametrize(("regex", "replace", "example", "becomes"), _sanitize_blocks(), ids=lambda v: str(v)[:30])
def test_each_sanitize_pattern_does_what_its_example_says(regex, replace, example, becomes):
    assert example is not None, f"no example for {regex}"
    assert becomes is not None, f"no example for {regex}"
    assert re.search(regex, example), f"{regex} matches nothing in its example"
    assert re.sub(regex, replace, example) == becomes


@pytest.mark.parametrize("name", sorted(MIN_FIGURES))
def test_no_nbval_marker_shows_in_the_code_a_learner_reads(name):
    """nbval's markers are cell tags (nbval-ignore-output), never comments in the code shown on the site."""
    for cell in _code_cells(_load(name)):
        assert "NBVAL" not in cell.source, cell.source
