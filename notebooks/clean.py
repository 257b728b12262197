"""Strip the notebooks' volatile metadata after re-executing them (``make notebooks``).

Usage (from the repository root)::

    python notebooks/clean.py [NOTEBOOK ...]      default: every numbered notebook

Of the notebook metadata only the kernelspec and the stable part of
``language_info`` (not the Python version) are kept, and per-cell execution timing
is dropped, so that re-running a notebook changes its file only where its outputs
change. Rendering is the docs site's job (``make docs``: myst-nb, from the committed
outputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL = "python3"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to clean (default: all)")
    args = parser.parse_args(argv)
    for path in args.paths or notebooks():
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        nbformat.write(clean(nb), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
