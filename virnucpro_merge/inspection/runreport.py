"""The report of a run: the report notebook, run on the user's run, rendered as one HTML file.

The notebook (``run_report.ipynb`` beside this module; ``notebooks/07_run_report.ipynb``
is the same file) has a cell tagged ``parameters``. :func:`write_run_report` puts a
cell with the given values after it (as papermill does), runs the notebook top to
bottom in a fresh kernel of this very Python, and renders it with nbconvert: code
hidden unless asked for, figures embedded, and no script or style fetched from the
network (HPC nodes have no internet), so the page opens anywhere, offline.

Needs the ``notebooks`` extra (nbclient, nbconvert, ipykernel, matplotlib).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._write.atomic import atomic_output
from ..errors import MergeError
from ..expected import detect_form
from ..ranks import folder_shards
from ..report import read_merge_report

__all__ = ["NOTEBOOK", "PARAMETERS", "inject_parameters", "kernel_manager", "write_run_report"]

#: The report notebook (package data).
NOTEBOOK = Path(__file__).with_name("run_report.ipynb")
#: The names its ``parameters`` cell sets.
PARAMETERS = ("run", "expected", "merged", "world_size", "rerun_list")
_TEMPLATES = Path(__file__).with_name("templates")
_KERNEL = "virnucpro-merge-report"


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
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(where + 1, cell)
    return nb


def kernel_manager(folder: Path) -> Any:
    """A kernel of this Python (a user's own ``python3`` kernelspec may point elsewhere)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / _KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.log_level=ERROR"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "virnucpro-merge report",
                                                  "language": "python"}))
    return KernelManager(kernel_name=_KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def _exporter(*, show_code: bool) -> Any:
    """The HTML exporter, warmed up: its template compiled, its filters imported."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(_TEMPLATES)],
                            exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("*warm-up*")]))
    return exporter


def _execute_and_render(nb: Any, cwd: Path, timeout: int, *, show_code: bool) -> str:
    """Run notebook ``nb`` (in place) in a fresh kernel, then render it as HTML.

    The kernel is started first, and the exporter made while it starts; the kernel is
    shut down whatever happens (none is left running).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory(prefix="virnucpro-report-") as scratch:
        km = kernel_manager(Path(scratch))
        client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False)
        try:
            km.start_kernel(cwd=str(cwd))
            exporter = _exporter(show_code=show_code)
            client.execute()
        except CellExecutionError as err:
            problem = f"{err.ename}: {err.evalue}".strip().splitlines()[0] if err.ename else str(err).splitlines()[0]
            msg = f"the report notebook stopped: {problem}"
            raise MergeError(msg) from err
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "Run report"}})
    return body


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
) -> Path:
    """Write the HTML report of a run: summary, per-rank table, pictures, re-run list, merge report.

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
    if isinstance(run, str | os.PathLike):
        if Path(run).is_dir():
            folder_shards(run, world_size=world_size)  # a folder without shards: say so now
        else:
            _readable(Path(run), "the run folder")
        shown_run: object = str(run)
    else:
        shown_run = [str(p) for p in run]
    if expected is not None:
        _readable(Path(expected), "expected-ID file")
        detect_form(expected)  # unreadable or not UTF-8: say so now, in one line
    if merged is not None:
        read_merge_report(merged)
    rerun = Path(rerun_list) if rerun_list is not None else output.with_name(f"{output.stem}-rerun.txt")
    values = {"run": shown_run, "expected": None if expected is None else str(expected),
              "merged": None if merged is None else str(merged), "world_size": world_size, "rerun_list": str(rerun)}
    import nbformat

    with atomic_output(output) as pending:  # the output folder is checked before the notebook runs
        nb = inject_parameters(nbformat.read(NOTEBOOK, as_version=4), values)
        html = _execute_and_render(nb, Path.cwd(), timeout, show_code=show_code)
        pending.path.write_text(html, encoding="utf-8")
    return output
