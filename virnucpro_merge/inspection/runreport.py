"""The report of a run: the report notebook, run on the user's run, rendered as one HTML file.

The notebook (``run_report.ipynb`` beside this module; ``notebooks/07_run_report.ipynb``
is the same file) has a cell tagged ``parameters``. :func:`write_run_report` puts a
cell with the given values after it (as papermill does), runs the notebook top to
bottom in a fresh kernel of this very Python, and renders it with nbconvert: code
hidden unless asked for, figures embedded, and no script or style fetched from the
network (HPC nodes have no internet), so the page opens anywhere, offline.

A run folder may come from someone else: the kernel runs with nothing of the current
folder on its import path (``python -P``), in a scratch folder of its own (so that no
``matplotlibrc`` or module lying in the run is read), with absolute paths. Nothing it
writes lands on an input: the report and its re-run list are refused, before the
notebook runs, when either is one of the run's files, and a re-run list that cannot be
written this time is removed, not left standing from an earlier report. What the
kernel prints on stderr (a library's warning) is logged, not put in the page.

Needs the ``notebooks`` extra (nbclient, nbconvert, ipykernel, matplotlib).
"""

from __future__ import annotations

import atexit
import copy
import datetime as _dt
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .._processes import hand_back_environment
from .._version import __version__
from ..errors import ExpectedIdsError, MergeError, OutputError
from ..expected import detect_form, write_id_list
from ..outputs import atomic_output, refuse_overwriting
from ..plan import shard_paths
from ..ranks import checkpoints_of, folder_shards, in_rank_order, index_beside, rank_ranges
from ..report import read_merge_report
from ..statuses import DUPLICATED, OK
from ..verdict import INVALID, ranks_named, verdict_line, verdict_of
from .interactive import bokeh_available, embed_page_figures
from .tables import health_words, rank_problem
from .views import InspectionView, RankView

__all__ = ["NOTEBOOK", "PARAMETERS", "HIDDEN_IN_PAGE", "RERUN_MIME", "RANK_COLUMNS", "RerunList", "write_rerun_list",
           "run_summary", "data_files", "inject_parameters", "kernel_manager", "write_run_report"]

logger = logging.getLogger("virnucpro_merge")

#: The report notebook (package data).
NOTEBOOK = Path(__file__).with_name("run_report.ipynb")
#: The names its ``parameters`` cell sets.
PARAMETERS = ("run", "expected", "merged", "world_size", "checkpoints", "rerun_list", "interactive", "health")
_TEMPLATES = Path(__file__).with_name("templates")
_KERNEL = "virnucpro-merge-report"
#: The tag of the notebook's cells that the page leaves out (its setup, parameters, the synthetic run's prose).
HIDDEN_IN_PAGE = "report-hide"
#: The MIME type of what the notebook says of its re-run list (read, then dropped from the page).
RERUN_MIME = "text/x-virnucpro-merge-rerun"
_NOT_CHECKED = "completeness was not checked (no expected IDs), so nothing is known to be missing"
_NOTHING_MISSING = "nothing is missing"


@dataclass(frozen=True)
class RerunList:
    """What became of a report's re-run list: ``count`` IDs written to ``path``, or why none
    was (``why``). In a notebook it shows as one sentence."""

    path: str
    count: int = 0
    why: str | None = None
    #: the run's summary (:func:`run_summary`), carried out of the notebook for the report's JSON and TSV
    run: dict[str, Any] | None = None

    @property
    def written(self) -> bool:
        return self.why is None

    def __str__(self) -> str:
        if self.written:
            return f"{self.count:,} IDs to re-run written to {self.path}"
        return f"no re-run list written: {self.why}"

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        outcome = {"written": self.written, "count": self.count, "why": self.why, "run": self.run}
        return {"text/plain": str(self), RERUN_MIME: json.dumps(outcome)}


def write_rerun_list(found: InspectionView, path: str | os.PathLike[str]) -> RerunList:
    """Write the missing IDs of an inspection one a line (a list to re-embed, and a valid
    ``--expected`` file for the merge of the re-run): when there is something to re-run, and
    it can be written so that it reads back the same.

    Returns
    -------
    RerunList
        The count written, or why nothing was: completeness was not checked (no expected
        IDs), nothing is missing, or an ID that a one-a-line list cannot hold.
    """
    run = run_summary(found)
    if found.expected_from is None:
        return RerunList(str(path), why=_NOT_CHECKED, run=run)
    missing = found.missing_ids
    if not missing:
        return RerunList(str(path), why=_NOTHING_MISSING, run=run)
    try:
        write_id_list(missing, path)
    except ExpectedIdsError as err:
        return RerunList(str(path), why=str(err), run=run)
    return RerunList(str(path), count=len(missing), run=run)


#: The columns of ``<report>-ranks.tsv`` and of the ``ranks`` of ``<report>.json``.
RANK_COLUMNS = ("rank", "shard", "status", "expected", "present", "missing", "checkpointed", "problem", "median_norm",
                "health")


def run_summary(found: InspectionView) -> dict[str, Any]:
    """An inspection as plain data: the verdict (:mod:`virnucpro_merge.verdict`), the counts,
    one record a rank (:data:`RANK_COLUMNS`; ``problem``:
    :func:`~virnucpro_merge.inspection.tables.rank_problem`) -- what ``<report>.json`` and
    ``<report>-ranks.tsv`` hold."""
    expected = len(found.sequence_ids) if found.expected_from is not None else None
    counted = found.num_missing if expected is not None else 0  # (nothing is known missing unless checked)
    problems = _ranks_to_rerun(found)
    said = health_words(found)
    return {
        "verdict": verdict_of(expected, counted, problems), "line": verdict_line(expected, counted, problems),
        "world_size": found.world_size, "world_size_from": found.world_size_from,
        "expected": expected, "expected_from": found.expected_from, "present": found.num_present,
        "missing": found.num_missing if expected is not None else None, "extra": found.num_extra,
        "ranks_by_status": problems,
        "health_flags": [str(flag) for flag in found.health_flags] if said is not None else None,
        "ranks": [_rank_record(found, s, said) for s in found.shards],
    }


def _ranks_to_rerun(found: InspectionView) -> dict[str, list[int]]:
    """The ranks of each status but ``ok`` (where completeness was checked, those that lack
    sequences, and those that repeat IDs: a merge refuses them, whatever else they hold)."""
    checked = found.expected_from is not None  # (then a rank none of whose sequences is missing is not to re-run)
    return {status: kept for status, ranks in found.by_status.items() if status != OK
            if (kept := [r for r in ranks if not checked or status == DUPLICATED or found.shards[r].missing])}


def _rank_record(found: InspectionView, shard: RankView, said: dict[int, str] | None) -> dict[str, Any]:
    """One rank of :func:`run_summary` (:data:`RANK_COLUMNS`); ``said``: what stands out in each
    rank's embeddings (None: not read)."""
    return {"rank": shard.rank, "shard": shard.path.name, "status": shard.status, "expected": shard.expected,
            "present": shard.present, "missing": shard.missing, "checkpointed": shard.checkpointed,
            "problem": rank_problem(found, shard),
            "median_norm": shard.health.median_norm if shard.health is not None else None,
            "health": None if said is None else said.get(shard.rank, "")}


#: Run in the report's kernel after its parameters: each matplotlib figure shown as a PNG whose
#: metadata carries its description (``plots.describe``), which the page gives as the image's alt text.
_ALT_TEXT = [
    "from IPython import get_ipython as _ipython",
    "from IPython.core.pylabtools import print_figure as _print_figure",
    "from matplotlib.figure import Figure as _Figure",
    "from virnucpro_merge.inspection.plots import describe as _describe",
    "_earlier = _ipython().display_formatter.formatters['image/png'].for_type(  # (a cell's last value is shown)",
    "    _Figure, lambda fig: (_print_figure(fig, 'png', bbox_inches='tight'), {'alt': _describe(fig)}))",
]


def inject_parameters(nb: Any, values: Mapping[str, object]) -> Any:
    """A copy of notebook ``nb`` with a cell setting ``values`` right after its ``parameters`` cell."""
    import nbformat

    unknown = set(values) - set(PARAMETERS)
    if unknown:
        msg = f"the report notebook has no parameter {', '.join(sorted(unknown))}"
        raise MergeError(msg)
    nb = copy.deepcopy(nb)
    where = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if where is None:
        msg = f"{NOTEBOOK}: no cell tagged 'parameters'"
        raise MergeError(msg)
    lines = ["# Parameters of this report"] + [f"{name} = {value!r}" for name, value in values.items()]
    lines += _ALT_TEXT  # (each picture of the page described in its alt text)
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(where + 1, cell)
    return nb


def kernel_manager(folder: Path) -> Any:
    """A kernel of this Python (a user's own ``python3`` kernelspec may point elsewhere)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / _KERNEL
    spec.mkdir(parents=True)
    # -P: nothing of the folder it starts in on its import path (a run folder holds data, never code)
    argv = [sys.executable, "-P", "-m", "ipykernel_launcher", "-f", "{connection_file}",
            "--IPKernelApp.log_level=ERROR"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "virnucpro-merge report",
                                                  "language": "python", "env": hand_back_environment()}))
    return KernelManager(kernel_name=_KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def _exporter(*, show_code: bool) -> Any:
    """The HTML exporter, warmed up: its template compiled, its filters imported."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(_TEMPLATES)],
                            exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    if not show_code:  # (how the notebook is set up is the notebook's business, not the page's)
        exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={HIDDEN_IN_PAGE}), enabled=True)
    exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("*warm-up*")]))
    return exporter


_VERDICT_STYLE = {  # (the statuses' colours: statuses.py)
    "complete": "background:#e6f4ee;border-left:6px solid #009E73",
    "incomplete": "background:#fbece4;border-left:6px solid #D55E00",
    "invalid": "background:#fbece4;border-left:6px solid #D55E00",
    "not checked": "background:#f0f0f0;border-left:6px solid #999999",
}


def _execute_and_render(nb: Any, timeout: int, *, show_code: bool, facts: dict[str, Any],
                        settle: Callable[[dict[str, Any] | None], list[str]] | None = None, progress: bool = False
                        ) -> tuple[str, dict[str, Any] | None]:
    """Run notebook ``nb`` (in place) in a fresh kernel, in a scratch folder, then render it as HTML.

    The kernel is started first, and the exporter made while it starts; the kernel is
    shut down whatever happens (none is left running). ``settle(outcome)``, called between
    the run and the rendering, does what the outcome asks (the re-run files) and returns
    the page's next steps.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    cells = sum(cell.cell_type == "code" for cell in nb.cells)
    with tempfile.TemporaryDirectory(prefix="virnucpro-report-") as scratch, \
            tqdm(total=cells, desc="report: its notebook's cells", unit="cell", disable=not progress,
                 file=sys.stderr) as bar:
        km = kernel_manager(Path(scratch))
        client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False,
                                on_cell_executed=lambda **_: bar.update(1))
        workdir = Path(scratch) / "work"
        workdir.mkdir()
        said = Path(scratch) / "kernel.log"  # (what the kernel prints is logged, never on the user's terminal)
        try:
            with open(said, "wb") as kernel_log:
                km.start_kernel(cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=kernel_log, stderr=kernel_log)
            exporter = _exporter(show_code=show_code)
            client.execute()
            _refuse_a_signal(client, None)  # (one that came as the last cell ended: not a finished page)
        except CellExecutionError as err:
            _refuse_a_signal(client, err)
            problem = f"{err.ename}: {err.evalue}".strip().splitlines()[0] if err.ename else str(err).splitlines()[0]
            msg = f"the report notebook stopped: {problem}"
            raise MergeError(msg) from err
        except (DeadKernelError, RuntimeError) as err:  # (nbclient's words for a kernel that died or never came up)
            _refuse_a_signal(client, err)
            last = _last_line(said)
            msg = f"the report's kernel died: {last or str(err).strip().splitlines()[0]}"
            raise MergeError(msg) from err
        except Exception as err:
            _refuse_a_signal(client, err)
            raise
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)
            # (nbclient leaves its clean-up registered at exit when the kernel died before answering;
            # run then, it fails with a traceback on the user's terminal: the kernel is shut down here)
            atexit.unregister(client._cleanup_kernel)
            if said.exists() and said.stat().st_size:
                logger.debug("the report's kernel said: %s", said.read_text(errors="replace")[-4000:].strip())
    _keep_stderr_out_of_the_page(nb)
    head_js = embed_page_figures(nb)
    outcome = _rerun_outcome(nb)
    run = (outcome or {}).get("run")
    name = facts["title"]
    resources: dict[str, Any] = {"metadata": {"name": f"{name}: {run['verdict'].upper()}" if run else name},
                                 "facts": _shown_facts(facts), "title": name,  # (every value escaped by the template)
                                 "head_js": head_js}  # (Bokeh's own script, once, when the page has its figures)
    if run:  # the verdict first, in one coloured line (and, when the embeddings were read and some stand out, one more)
        resources["verdict"] = {"line": run["line"], "style": _VERDICT_STYLE.get(run["verdict"], ""),
                                "comment": facts["comment"], "steps": settle(outcome) if settle is not None else [],
                                "health": _health_line(run.get("health_flags"))}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body, outcome


def _refuse_a_signal(client: Any, err: Exception | None) -> None:
    """Raise KeyboardInterrupt where ``err`` is what a Ctrl-C (or a SIGTERM) left: while it
    runs the notebook, nbclient takes both signals itself and stops the kernel, then fails
    in its own way (an assertion: a traceback); the kernel, in the terminal's process
    group too, may stop its cell with a KeyboardInterrupt of its own."""
    stopped = getattr(client, "_async_cleanup_kernel_future", None) is not None  # (set by nbclient's handler only)
    if stopped or getattr(err, "ename", None) == "KeyboardInterrupt":
        raise KeyboardInterrupt from err


def _last_line(path: Path) -> str:
    """The last line a kernel printed that says something (a traceback's last), or ''."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace")[-4000:].splitlines()]
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line), "")


def _health_line(flags: list[str] | None) -> str | None:
    """The page's line under the verdict when some ranks' embeddings stand out (None: none, or not read)."""
    if not flags:
        return None
    ranks = sorted({int(flag.split(":")[0].removeprefix("rank ")) for flag in flags})
    return (f"EMBEDDING HEALTH: {len(ranks):,} rank{'' if len(ranks) == 1 else 's'} stand"
            f"{'s' if len(ranks) == 1 else ''} out ({rank_ranges(ranks, most=8)}): see their health below")


def _keep_stderr_out_of_the_page(nb: Any) -> None:
    """Drop what the kernel printed on stderr from the notebook (a library's warning is not
    part of the report), logging it."""
    for cell in nb.cells:
        outputs = cell.get("outputs", [])
        for output in outputs:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                logger.debug("the report notebook said on stderr: %s", output.get("text", "").strip())
        cell["outputs"] = [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


def _rerun_outcome(nb: Any) -> dict[str, Any] | None:
    """What the notebook said of its re-run list (None: nothing), that output dropped from the page."""
    outcome = None
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RERUN_MIME in data:
                outcome = json.loads(data.pop(RERUN_MIME))
    return outcome


def _readable(path: Path, what: str) -> None:
    """Refuse, in one line, an input the report's kernel could not open by name."""
    if not path.exists():
        msg = f"{path}: {what} does not exist"
        raise MergeError(msg)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe?)"
        msg = f"{path}: {what} is {kind}; the report reads it by name"
        raise MergeError(msg)


def write_run_report(
    run: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    expected: str | os.PathLike[str] | None = None,
    merged: str | os.PathLike[str] | None = None,
    world_size: int | None = None,
    rerun_list: str | os.PathLike[str] | None = None,
    show_code: bool = False,
    timeout: int = 3600,
    checkpoints: str | os.PathLike[str] | bool | None = None,
    title: str | None = None,
    comment: str | None = None,
    progress: bool = False,
    health: bool = False,
) -> Path:
    """Write the HTML report of a run: summary, per-rank table, pictures, re-run list, merge report;
    and beside it, for pipelines, ``REPORT.json`` (the verdict, the counts, a record a rank,
    provenance) and ``REPORT-ranks.tsv`` (:func:`data_files`).

    Parameters
    ----------
    run : path-like or sequence of path-like
        The run folder, or its shard files in rank order.
    output : path-like
        The HTML file to write (atomically: whole or not at all).
    expected : path-like, optional
        An expected-ID file (by default the run folder's ``sequence_index.json``).
    merged : path-like, optional
        A merged output whose own report is shown too.
    world_size : int, optional
        The number of workers (by default read off the IDs' index positions).
    rerun_list : path-like, optional
        Where to write the missing IDs (default: ``<output stem>-rerun.txt`` beside it).
    show_code : bool
        Show the notebook's code cells too.
    timeout : int
        Seconds a cell may run.
    checkpoints : path-like, optional
        The run's checkpoints folder: why each dead worker stopped, and the sequences
        its checkpoints hold (not counted missing: a merge salvages them). None: where
        the pipeline puts it; False: ignore it.
    title, comment : str, optional
        The page's title (by default "Run report of <the run's folder>"), and a comment
        shown under the verdict; both in the JSON too.
    progress : bool
        Show a progress bar (tqdm, on stderr) of the notebook's cells as they run.
    health : bool
        Read every shard's embeddings too, and say which ranks' stand out (another scale,
        rows at the float16 limit, all-zero or identical rows, another dtype): a section of
        the page and ``health_flags`` in the JSON.

    Returns
    -------
    Path
        ``output``.

    Raises
    ------
    MergeError
        A folder without shards, an input that cannot be read, an output that
        cannot be written, or the notebook stopped (its error, in one line).
    """
    output = Path(output)
    shards = _run_shards(run, world_size)
    saved = checkpoints_of(shards, checkpoints)  # (a folder that is not there: said now, in one line)
    _check_inputs(expected, merged)
    rerun = Path(rerun_list) if rerun_list is not None else output.with_name(f"{output.stem}-rerun.txt")
    index = Path(expected) if expected is not None else index_beside(shards)
    inputs = _report_inputs(shards, index, merged)
    _refuse_overwriting_inputs(output, rerun, inputs)
    shown_run = _shown_run(run, shards)
    values = {"run": shown_run, "expected": _absolute(expected), "merged": _absolute(merged),
              "world_size": world_size, "rerun_list": str(rerun.absolute()),
              "checkpoints": False if saved is None else str(saved.absolute()), "interactive": bokeh_available(),
              "health": health}
    import nbformat

    name = _run_name(run, shards)
    facts = _provenance(output, inputs, shown_run, title or f"Run report of {name}", comment)
    facts["rerun_list"] = str(rerun.absolute())
    fasta = output.with_name(f"{output.stem}-rerun.fasta")
    refuse_overwriting(fasta, [*inputs, output, rerun], "is an input of this report; choose another path for it")

    def settle(outcome: dict[str, Any] | None) -> list[str]:
        _settle_rerun_list(rerun, outcome)
        facts["rerun_fasta"] = _settle_rerun_fasta(fasta, rerun, outcome, index)
        return _next_steps(outcome, shards, index, merged, rerun, facts["rerun_fasta"])

    with atomic_output(output) as pending:  # the output folder is checked before the notebook runs
        nb = inject_parameters(nbformat.read(NOTEBOOK, as_version=4), values)
        html, outcome = _execute_and_render(nb, timeout, show_code=show_code, facts=facts, settle=settle,
                                            progress=progress)
        pending.path.write_text(html, encoding="utf-8")
    _settle_data_files(output, rerun, outcome, facts)
    return output


def _check_inputs(expected: str | os.PathLike[str] | None, merged: str | os.PathLike[str] | None) -> None:
    """Refuse, in one line and before the notebook runs, an expected-ID file or a merged output that cannot be read."""
    if expected is not None:
        _readable(Path(expected), "expected-ID file")
        detect_form(expected)  # unreadable or not UTF-8: say so now, in one line
    if merged is not None:
        read_merge_report(merged)


def _report_inputs(shards: list[Path], index: Path | None, merged: str | os.PathLike[str] | None) -> list[Path]:
    """The files the report reads: the shards, the expected IDs (or the run's index) and the merged output."""
    return [*shards, *([index] if index is not None else []), *([Path(merged)] if merged is not None else [])]


def _refuse_overwriting_inputs(output: Path, rerun: Path, inputs: list[Path]) -> None:
    """Refuse, before the notebook runs, a page, a re-run list or a data file that would overwrite
    an input of the report or one another."""
    refuse_overwriting(output, inputs, "is an input of this report; choose another path for the report")
    refuse_overwriting(rerun, inputs, "is an input of this report; choose another path for the re-run list")
    refuse_overwriting(rerun, [output], "is the report itself; choose another path for the re-run list")
    for data in data_files(output):
        refuse_overwriting(data, [*inputs, rerun], "is an input of this report; choose another path for the report")
        refuse_overwriting(data, [output], "is where the report writes its data; name the page REPORT.html")


def _shown_run(run: object, shards: list[Path]) -> object:
    """The run as the notebook is given it: the folder's absolute path, or each shard file's."""
    if isinstance(run, str | os.PathLike):
        return str(Path(run).absolute())
    return [str(p.absolute()) for p in shards]


def _run_name(run: object, shards: list[Path]) -> str:
    """The run as the default title names it: its folder's name, or how many shards in which folder."""
    if isinstance(run, str | os.PathLike):
        return Path(run).resolve().name
    return f"{len(shards)} shards in {shards[0].parent.resolve().name}"


def _absolute(path: str | os.PathLike[str] | None) -> str | None:
    """A path as the notebook is given it: absolute (None for none)."""
    return None if path is None else str(Path(path).absolute())


def _settle_data_files(output: Path, rerun: Path, outcome: dict[str, Any] | None, facts: dict[str, Any]) -> None:
    """After the page: its data files written when the notebook gave a verdict; else those of an
    earlier report removed (they would say another run's), the re-run list settled first where
    the notebook said of it."""
    if outcome is not None and outcome.get("run") is not None:
        _write_data_files(output, outcome["run"], facts)
        return
    if outcome is not None:
        _settle_rerun_list(rerun, outcome)
    for stale in data_files(output):
        stale.unlink(missing_ok=True)


def data_files(output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where a report at ``output`` (``REPORT.html``) writes its data: ``REPORT.json`` (the
    verdict, the counts, one record a rank, provenance) and ``REPORT-ranks.tsv`` (the ranks).

    >>> [p.name for p in data_files("out/report.html")]
    ['report.json', 'report-ranks.tsv']
    """
    output = Path(output)
    return output.with_suffix(".json"), output.with_name(f"{output.stem}-ranks.tsv")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _provenance(output: Path, inputs: list[Path], shown_run: object, title: str, comment: str | None
                ) -> dict[str, Any]:
    """How the report was made: the tool, the date, the host, the command line, the run, the
    inputs beside its shards (their sizes and modification times); in the page and the JSON."""
    shards = [path for path in inputs if path.name.startswith("shard_")]
    return {"format": "virnucpro-merge report 1", "title": title, "comment": comment,
            "created_by": f"virnucpro_merge {__version__}",
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "host": socket.gethostname(),
            "command": _command(), "run": shown_run, "page": str(output.absolute()), "shards": len(shards),
            "inputs": [_input(path) for path in inputs if path not in shards]}


def _write_data_files(output: Path, run: dict[str, Any], facts: dict[str, Any]) -> None:
    """``REPORT.json`` and ``REPORT-ranks.tsv`` beside the page, each written whole or not at all."""
    summary, ranks = data_files(output)
    with atomic_output(summary) as pending:
        pending.path.write_text(json.dumps({**facts, **run}, indent=1) + "\n", encoding="utf-8")
    with atomic_output(ranks) as pending, open(pending.path, "w", encoding="utf-8", newline="") as table:
        table.write("\t".join(RANK_COLUMNS) + "\n")  # (plain TSV: no quoting; control characters made spaces)
        table.writelines("\t".join(_CONTROL.sub(" ", "" if record[c] is None else str(record[c])) for c in RANK_COLUMNS)
                         + "\n"
                         for record in run["ranks"])
    logger.info("%s", run["line"])


def _shown_facts(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The provenance as the page's last lines show it: a label and a text each."""
    shown = [("made by", facts["created_by"]), ("on", f"{facts['created_at']} (UTC), host {facts['host']}"),
             ("command", facts["command"]),
             ("run", facts["run"] if isinstance(facts["run"], str) else f"{len(facts['run'])} shard files"),
             ("shards", f"{facts['shards']:,}")]
    shown += [("input", f"{i['path']} ({i['size']:,} bytes, modified "
                        f"{_dt.datetime.fromtimestamp(i['mtime_ns'] / 1e9, _dt.UTC).isoformat(timespec='seconds')})")
              if i["size"] is not None else ("input", f"{i['path']} (not readable)") for i in facts["inputs"]]
    return shown


def _command() -> str:
    """The command line that made the report (``virnucpro-merge report ...``), or that it was
    called from Python (a notebook's kernel or ``python -c`` has no command line worth showing)."""
    if Path(sys.argv[0]).name in ("__main__.py", "virnucpro-merge"):
        return shlex.join(["virnucpro-merge", *sys.argv[1:]])
    return "write_run_report(...), from Python"


def _input(path: Path) -> dict[str, Any]:
    try:
        stats = path.stat()
    except OSError:
        return {"path": str(path.absolute()), "size": None, "mtime_ns": None}
    return {"path": str(path.absolute()), "size": stats.st_size, "mtime_ns": stats.st_mtime_ns}


def _run_shards(run: object, world_size: int | None) -> list[Path]:
    """The shard paths of ``run`` (a folder, or shard files), checked enough to say what is wrong in one line."""
    if isinstance(run, str | os.PathLike):
        if not Path(run).is_dir():
            _readable(Path(run), "the run folder")
            return [Path(run)]
        return folder_shards(run, world_size=world_size)  # a folder without shards: said now
    return in_rank_order(shard_paths(run))


def _settle_rerun_fasta(fasta: Path, rerun: Path, outcome: dict[str, Any] | None, index: Path | None
                        ) -> str | None:
    """Write the FASTA of the IDs to re-run beside the report, when there are some and the
    run's sequence index can give their records; else leave none (an earlier one is removed).
    Return its path, or None."""
    from ..expected import detect_form
    from ..rerun import write_missing_fasta

    if outcome is None or not outcome.get("written") or index is None or detect_form(index)[0] != "json":
        fasta.unlink(missing_ok=True)  # (nothing to re-run, or no index: none, and none of an earlier report)
        return None
    try:
        count = write_missing_fasta(rerun, index, fasta)
    except MergeError as err:
        fasta.unlink(missing_ok=True)
        logger.warning("No re-run FASTA written: %s", err)
        return None
    logger.info("Re-run FASTA: %s sequences in %s", f"{count:,}", fasta)
    return str(fasta.absolute())


def _next_steps(outcome: dict[str, Any] | None, shards: list[Path], index: Path | None, merged: object,
                rerun: Path, fasta: str | None) -> list[str]:
    """What to do next, as commands with absolute paths: the partial merge (when no merge was
    given), the re-run, the merge of the re-run shards with it."""
    run = (outcome or {}).get("run") or {}
    folder = shards[0].parent.absolute() if shards else Path.cwd()
    expected = f" --expected {shlex.quote(str(index.absolute()))}" if index is not None else ""
    target = Path(str(merged)).absolute() if merged is not None else folder / "embeddings.h5"
    quoted = shlex.quote(str(target))
    if run.get("verdict") == "complete":
        return [] if merged is not None else [f"merge it: virnucpro-merge aggregate {shlex.quote(str(folder))}"
                                               f"{expected} -o {quoted}"]
    invalid = run.get("verdict") == INVALID  # (no merge takes a run that repeats IDs, --partial neither)
    steps: list[str] = []
    if invalid:
        steps.append(f"remove the repeated sequence IDs ({ranks_named(run['ranks_by_status'][DUPLICATED])}: the "
                     "table below says which) before merging: a merge refuses them, --partial too")
    elif merged is None:
        steps.append(f"merge what there is: virnucpro-merge aggregate {shlex.quote(str(folder))}{expected} --partial "
                     f"-o {quoted}")
    if fasta is not None:
        steps.append(f"embed again the sequences of {fasta} (the pipeline's input for the re-run)")
    elif (outcome or {}).get("written"):
        steps.append(f"re-run the IDs listed in {rerun.absolute()} (virnucpro-merge rerun "
                     f"{shlex.quote(str(rerun.absolute()))} --index INDEX -o rerun.fasta writes their FASTA)")
    if steps and not invalid:
        steps.append(f"then merge the re-run shards with it: virnucpro-merge aggregate {quoted} RERUN_SHARDS..."
                     f"{expected} -o {shlex.quote(str(target.with_name(target.stem + '-complete.h5')))}")
    return steps


def _settle_rerun_list(rerun: Path, outcome: dict[str, Any] | None) -> None:
    """Say what became of the re-run list; where none was written this time, remove one an
    earlier report left there (it would name the wrong sequences)."""
    if outcome is None:
        return
    if outcome["written"]:
        logger.info("Re-run list: %s IDs in %s", f"{outcome['count']:,}", rerun)
        return
    why = outcome["why"]
    if rerun.exists():
        try:
            rerun.unlink()
        except OSError as err:
            msg = f"{rerun}: a re-run list of an earlier report, and it cannot be removed ({err.strerror or err})"
            raise OutputError(msg) from err
        logger.warning("Removed %s, the re-run list of an earlier report: %s", rerun, why)
    log = logger.info if why in (_NOT_CHECKED, _NOTHING_MISSING) else logger.warning  # (an ID it cannot hold)
    log("No re-run list written: %s", why)
