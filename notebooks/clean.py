"""Keep the notebooks clean, and render them into the HTML run report.

Usage (from the repository root; ``make notebooks`` and ``make demo`` call these)::

    python notebooks/render.py clean [NOTEBOOK ...]   strip metadata after re-executing
    python notebooks/render.py html [--output-dir reports]
                                                       execute every notebook afresh and
                                                       write reports/*.html, index.html
                                                       and reports/figures/*.png

``clean`` keeps, of the notebook metadata, only the kernelspec and the stable part
of ``language_info`` (not the Python version), and drops per-cell execution
timing, so that re-running a notebook changes its file only where its outputs
change. ``html`` never touches the committed notebooks.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL = "python3"
DEMO_REPORT = "demo_run.html"
TIMEOUT = 300  # seconds per cell
KEEP_LANGUAGE_INFO = ("name", "codemirror_mode", "pygments_lexer", "file_extension", "mimetype")


def notebooks() -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip a notebook's metadata to the kernelspec and stable language info."""
    language = nb.metadata.get("language_info", {})
    nb.metadata = nbformat.from_dict({
        "kernelspec": nb.metadata.get("kernelspec", {"display_name": "Python 3", "language": "python",
                                                     "name": KERNEL}),
        "language_info": {k: v for k, v in language.items() if k in KEEP_LANGUAGE_INFO} or {"name": "python"},
    })
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
        cell.metadata.pop("scrolled", None)
    return nb


def title_and_promise(nb: nbformat.NotebookNode) -> tuple[str, str]:
    """The H1 of a notebook's first cell and the line that follows it."""
    lines = [line.strip() for line in nb.cells[0].source.splitlines() if line.strip()]
    return lines[0].lstrip("# ").strip(), (lines[1] if len(lines) > 1 else "")


def execute(path: Path) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a fresh kernel, in its own folder."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=TIMEOUT, record_timing=False,
                   # the kernel's own start-up chatter (a TCP warning) is not for this report
                   extra_arguments=["--IPKernelApp.log_level=ERROR"],
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return clean(nb)


def save_figures(nb: nbformat.NotebookNode, stem: str, folder: Path) -> list[Path]:
    """Write a notebook's PNG outputs as ``<stem>_<n>.png``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    pngs = [o.data["image/png"] for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if "image/png" in o.get("data", {})]
    for n, png in enumerate(pngs, start=1):
        target = folder / f"{stem}_{n}.png"
        target.write_bytes(base64.b64decode(png))
        written.append(target)
    return written


def index_page(entries: list[tuple[str, str, str, str | None]]) -> str:
    """A small HTML page linking the rendered notebooks (title, promise, href, figure)."""
    items = []
    for title, promise, href, figure in entries:
        thumb = f'<a href="{html.escape(href)}"><img src="{html.escape(figure)}" alt=""></a>' if figure else ""
        items.append(f'<li><h2><a href="{html.escape(href)}">{html.escape(title)}</a></h2>'
                     f"<p>{html.escape(promise)}</p>{thumb}</li>")
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>virnucpro_merge: run report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
ul {{ list-style: none; padding: 0; }} li {{ margin-bottom: 2rem; }} h2 {{ margin-bottom: .2rem; }}
img {{ max-width: 28rem; border: 1px solid #ddd; }}
</style></head><body>
<h1>virnucpro_merge: run report</h1>
<p>The notebooks, executed afresh. Notebooks 01 to 03 and 05 use the seeded synthetic run of
<code>virnucpro-merge demo</code> (8 workers, 2000 sequences, four of the workers failed);
04 measures merges of clean runs of 10&nbsp;000 to 40&nbsp;000 sequences; 05 re-runs the
missing sequences, merges without copying (virtual) and in the run's input order; 06 checks the
same run, ten times larger (20&nbsp;000 sequences), on a local Dask cluster of two worker processes
and gets the single-process answer. To open them interactively:
<code>pip install -e '.[jupyter]'</code>, then <code>jupyter lab notebooks/</code>.</p>
<ul>
{items}
</ul></body></html>
""".format(items="\n".join(items))


def render_html(output_dir: Path) -> Path:
    """Execute every notebook and write the HTML report; return the index page."""
    from nbconvert import HTMLExporter

    output_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    entries = []
    for path in notebooks():
        print(f"executing {path.name} ...", flush=True)
        nb = execute(path)
        body, _ = exporter.from_notebook_node(nb)
        page = output_dir / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        figures = save_figures(nb, path.stem, output_dir / "figures")
        title, promise = title_and_promise(nb)
        first = figures[0].relative_to(output_dir).as_posix() if figures else None
        entries.append((title, promise, page.name, first))
    demo_report = output_dir / DEMO_REPORT
    if demo_report.exists():  # written by `virnucpro-merge report` (make demo): first on the page
        entries.insert(0, ("The demo run's report", "What virnucpro-merge report says of the demo run: one self-contained "
                           "page, written the same way for any run folder.", demo_report.name, None))
    index = output_dir / "index.html"
    index.write_text(index_page(entries), encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_clean = sub.add_parser("clean", help="strip metadata of notebooks (default: all)")
    cmd_clean.add_argument("paths", nargs="*", type=Path)
    cmd_html = sub.add_parser("html", help="execute the notebooks and write the HTML report")
    cmd_html.add_argument("--output-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)

    if args.command == "clean":
        for path in args.paths or notebooks():
            nb = nbformat.read(path, as_version=4)
            nbformat.validate(nb)
            nbformat.write(clean(nb), path)
        return 0
    index = render_html(args.output_dir)
    print(f"HTML report: {index} ({len(notebooks())} notebooks; figures as PNG in {args.output_dir / 'figures'})")
    print(f"open in a browser: {index.resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
