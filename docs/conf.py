"""Sphinx configuration of the virnucpro_merge site (``make docs``: docs/_build/html).

The tutorials are the numbered notebooks, rendered by myst-nb from their committed
outputs (never executed here: nbval runs them in ``make test``). The API reference is
generated from the numpydoc docstrings; the CLI page from the argparse parser itself.
Everything builds offline: no intersphinx, no remote assets.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from virnucpro_merge import __version__  # noqa: E402

project = "virnucpro_merge"
author = "the virnucpro_merge developers"
copyright = "2026, " + author
release = version = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "reference/generated/*.rst~"]
# .rst first: autosummary writes its stubs in the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
smartquotes = False  # "--expected" stays two hyphens, to be copied into a shell

# --- notebooks: the committed outputs, as they are
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = [
    "myst.header",  # a notebook's H1 after its title cell is fine
    "mystnb.unknown_mime_type",  # what the report notebook tells the report command (its re-run list): not shown
]

# --- API reference: numpydoc docstrings through napoleon, one page per public name
templates_path = ["_templates"]  # autosummary/class.rst: members on the class's own page
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "none"  # the numpydoc "Parameters" sections say it in words
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = True  # {"a", "b"} are values; "mapping of str to X" reads as words
napoleon_type_aliases = {
    "MergePlan": "~virnucpro_merge.plan.MergePlan",
    "MergeReport": "~virnucpro_merge.report.MergeReport",
    "RunInspection": "~virnucpro_merge.inspection.RunInspection",
    "ShardSummary": "~virnucpro_merge.inspection.ShardSummary",
    "MemoryProfile": "~virnucpro_merge.inspection.MemoryProfile",
    "Verification": "~virnucpro_merge.Verification",
    "DemoRun": "~virnucpro_merge.synthetic.DemoRun",
    "StrideRun": "~virnucpro_merge.synthetic.StrideRun",
}

# --- nitpicky: every reference to this package must resolve; the world's (numpy,
# h5py, the standard library...) cannot, offline, and is not ours to check
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(os|h5py|np|numpy|pathlib|collections|typing|matplotlib|pandas|dask|distributed|bokeh|"
               r"datetime|argparse|threading|concurrent|functools|tracemalloc|zlib|json|gzip|io|shutil|logging)(\..*)?"),
    (r"py:.*", r"(Path|Figure|Axes|DataFrame|Client|Collection|Sequence|Iterable|Iterator|Callable|"
               r"RankHealth|HealthFlag|"
               r"Mapping|mapping|ndarray|dtype|Any|Self|BinaryIO|TextIO|ValueError|OSError|Exception|"
               r"KeyboardInterrupt|StrEnum|Enum|dict|list|str|int|float|bool|tuple|set|frozenset|bytes|"
               r"object|None|optional|path-like|array-like|callable|default|of|or|sequence|collection)"),
]

# --- the look: the standard theme, nothing fetched from the network
html_theme = "alabaster"
html_title = f"virnucpro_merge {version}"
html_static_path = ["_static"]
html_theme_options = {
    "description": "Merge, validate and inspect the HDF5 shards of a multi-GPU embedding run",
    "fixed_sidebar": True,
    "page_width": "1180px",
    "sidebar_width": "230px",
    "show_powered_by": False,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_css_files = ["site.css"]
html_copy_source = False
pygments_style = "sphinx"


# --- constants re-exported by a package (virnucpro_merge.inspection.OK, ...): their
# documentation is the "#:" comment where they are defined, not str's or dict's docstring
def _defining_comment(app, what, name, obj, options, lines):
    if what not in ("data", "attribute") or "\n".join(lines).strip() != "\n".join(_builtin_doc(obj)).strip():
        return
    from sphinx.pycode import ModuleAnalyzer

    attr = name.rpartition(".")[2]
    for modname, module in sorted(sys.modules.items()):
        if modname.startswith("virnucpro_merge") and getattr(module, attr, None) is obj:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", attr))
            if docs:
                lines[:] = list(docs)
                return


def _builtin_doc(obj):
    from sphinx.util.docstrings import prepare_docstring

    return prepare_docstring(type(obj).__doc__ or "")


def setup(app):
    app.connect("autodoc-process-docstring", _defining_comment)
