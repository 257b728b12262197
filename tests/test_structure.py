"""The shape of the package: its import graph, its public names, its light core.

Read from the sources with :mod:`ast` (every import statement counts, those inside
functions too), so a cycle or a wrong arrow fails here before it bites at run time.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "virnucpro_merge"
HEAVY = ("matplotlib", "pandas", "psutil", "dask", "distributed", "nbformat", "nbclient", "nbconvert", "IPython",
         "ipykernel", "jupyter_client")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for inner in ast.walk(node)}


def _imports(name: str, *, for_types: bool = False) -> list[tuple[str, list[str], int]]:
    """Every import that runs in module ``name`` (with ``for_types``, those under ``if
    TYPE_CHECKING:`` too): (module imported, names taken from it, line)."""
    found = []
    skip = set() if for_types else _type_checking_only(TREES[name])
    for node in ast.walk(TREES[name]):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


@functools.cache
def _edges(*, for_types: bool = False) -> dict[str, set[str]]:
    """The package's own import graph: module -> the package modules it imports (those in
    functions included; with ``for_types``, those for type checking too)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, names, _ in _imports(name, for_types=for_types):
            if target in MODULES:
                graph[name].add(target)
            for taken in names:  # `from . import sysio` imports a module
                if f"{target}.{taken}" in MODULES:
                    graph[name].add(f"{target}.{taken}")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    """Counting every import: in functions, and for type checking only."""
    assert _cycle(_edges(for_types=True)) is None


#: The layers of the package, lowest first (docs/reference/modules.md): a module imports
#: modules of its own layer and of those below, never above. A name stands for the module
#: and everything under it.
LAYERS = {
    "ground": ["virnucpro_merge._version", "virnucpro_merge.errors", "virnucpro_merge.ids", "virnucpro_merge._files",
               "virnucpro_merge.statuses", "virnucpro_merge._processes", "virnucpro_merge.outputs"],
    "reading": ["virnucpro_merge.shards", "virnucpro_merge.readahead", "virnucpro_merge.checkpoints",
                "virnucpro_merge.manifest",
                "virnucpro_merge.timeline",
                "virnucpro_merge.sources",
                "virnucpro_merge.ranks", "virnucpro_merge.expected"],
    "deciding": ["virnucpro_merge.validation", "virnucpro_merge.crosscheck", "virnucpro_merge.salvage",
                 "virnucpro_merge.health",
                 "virnucpro_merge.plan", "virnucpro_merge.checksums", "virnucpro_merge.verdict"],
    "writing": ["virnucpro_merge.report", "virnucpro_merge.checks", "virnucpro_merge.merge", "virnucpro_merge._write",
                "virnucpro_merge.rerun", "virnucpro_merge.verify"],
    "faces": ["virnucpro_merge.cluster", "virnucpro_merge.cli", "virnucpro_merge.synthetic",
              "virnucpro_merge.inspection", "virnucpro_merge.__main__", "virnucpro_merge"],
}
#: The imports that go up, each for a reason (all inside a function).
UPWARD = {
    ("virnucpro_merge.report", "virnucpro_merge.inspection.tables"): "a merge report shows itself in a notebook",
    ("virnucpro_merge.verify", "virnucpro_merge.inspection.tables"): "a verification shows itself in a notebook",
    ("virnucpro_merge.checks", "virnucpro_merge.cluster"): "the one place that picks the route: here or on Dask",
}


def _layer(module: str) -> int:
    """The index of the layer of ``module`` (by its longest listed prefix)."""
    best = max(((entry, at) for at, entries in enumerate(LAYERS.values()) for entry in entries
                if module == entry or module.startswith(entry + ".")), key=lambda found: len(found[0]), default=None)
    assert best is not None, f"{module} is in no layer"
    return best[1]


def test_every_module_is_in_a_layer():
    assert all(_layer(module) >= 0 for module in MODULES)


def test_no_import_goes_up_a_layer():
    wrong = sorted(f"{name} ({list(LAYERS)[_layer(name)]}) imports {target} ({list(LAYERS)[_layer(target)]})"
                   for name, targets in _edges(for_types=True).items() for target in targets
                   if _layer(target) > _layer(name) and (name, target) not in UPWARD)
    assert not wrong


def test_the_layer_check_sees_an_upward_import(monkeypatch):
    edges = {name: set(targets) for name, targets in _edges(for_types=True).items()}  # (a copy: _edges is cached)
    edges["virnucpro_merge.shards"].add("virnucpro_merge.merge")
    monkeypatch.setitem(globals(), "_edges", lambda **_: edges)
    with pytest.raises(AssertionError, match=r"virnucpro_merge\.shards \(reading\) imports virnucpro_merge\.merge"):
        test_no_import_goes_up_a_layer()


ADAPTERS = {"virnucpro_merge.cluster", "virnucpro_merge.cli", "virnucpro_merge.synthetic"}
VIEWING = {name for name in MODULES if name.startswith("virnucpro_merge.inspection")}
CORE = set(MODULES) - ADAPTERS - VIEWING - {"virnucpro_merge", "virnucpro_merge.__main__"}


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_imports_no_adapter_and_not_the_viewing_wing(module):
    allowed = {  # the one route choice, and the display hooks (a report, a verification show themselves in Jupyter)
        "virnucpro_merge.checks": {"virnucpro_merge.cluster"},
        "virnucpro_merge.report": {"virnucpro_merge.inspection.tables"},
        "virnucpro_merge.verify": {"virnucpro_merge.inspection.tables"},
    }.get(module, set())
    wrong = (_edges()[module] & (ADAPTERS | VIEWING)) - allowed
    assert not wrong, f"{module} imports {sorted(wrong)}"


@pytest.mark.parametrize("module", ["virnucpro_merge.plan", "virnucpro_merge.validation"])
def test_deciding_knows_nothing_of_routes_or_writing(module):
    wrong = _edges()[module] & {"virnucpro_merge.checks", "virnucpro_merge.merge", "virnucpro_merge.cluster"}
    assert not wrong


def test_the_cluster_returns_plain_data():
    """It reads and checks on the workers; it does not build plans or write."""
    wrong = {m for m in _edges()["virnucpro_merge.cluster"]
             if m in ("virnucpro_merge.plan", "virnucpro_merge.checks", "virnucpro_merge.merge")
             or m.startswith("virnucpro_merge._write")}
    assert not wrong


@pytest.mark.parametrize("module", sorted(CORE | {"virnucpro_merge.cli"}))
def test_no_heavy_import_at_module_level(module):
    """matplotlib, pandas, psutil and Dask are extras: only imported inside the functions that need them."""
    top = [n for n in TREES[module].body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [alias.name for n in top if isinstance(n, ast.Import) for alias in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom) and n.level == 0]
    assert not [n for n in names if n.split(".")[0] in HEAVY]


def test_nothing_in_the_package_imports_the_package_facade():
    importers = [name for name in MODULES if "virnucpro_merge" in _edges()[name] and name != "virnucpro_merge"]
    assert not importers


def test_no_private_name_is_imported_from_another_module():
    found = [f"{name}:{line}: {target}.{taken}"
             for name in MODULES for target, names, line in _imports(name)
             for taken in names
             if target.startswith("virnucpro_merge") and taken.startswith("_") and not taken.startswith("__")]
    assert not found


def _all(name: str) -> list[str] | None:
    for node in TREES[name].body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _bound(name: str) -> set[str]:
    """Names bound at the top of a module (defs, classes, assignments, imports)."""
    bound: set[str] = set()
    for node in TREES[name].body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            bound |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom):
                    bound |= {alias.asname or alias.name for alias in inner.names}
    return bound


LIBRARY_MODULES = sorted(n for n in MODULES if n != "virnucpro_merge.__main__")


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_every_module_has_an_accurate_all(module):
    names = _all(module)
    if module.endswith("_write"):  # a package of private modules: nothing to export
        assert names is None
        return
    assert names is not None, "no __all__"
    assert len(names) == len(set(names)), "a name listed twice"
    assert not set(names) - _bound(module), "listed but not defined"
    defined = {n.name for n in TREES[module].body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    public = {n for n in defined if not n.startswith("_")}
    assert not public - set(names), "public functions or classes missing from __all__"


def test_what_modules_take_from_each_other_is_in_their_all():
    missing = []
    for name in MODULES:
        for target, names, line in _imports(name):
            if target not in MODULES or target == name:
                continue
            exported = set(_all(target) or [])
            for taken in names:
                if taken not in exported and f"{target}.{taken}" not in MODULES:
                    missing.append(f"{name}:{line} takes {taken} from {target}")
    assert not missing


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Whatever is imported first, it imports (an import order that only works one way fails here)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(LIBRARY_MODULES, pool.map(lambda m: _fresh(f"import {m}"), LIBRARY_MODULES), strict=True))
    failed = {m: d.stderr.strip().splitlines()[-1] for m, d in done.items() if d.returncode != 0}
    assert not failed


@pytest.mark.parametrize("entry", ["virnucpro_merge", "virnucpro_merge.cli", "virnucpro_merge.inspection"])
def test_the_light_entry_points_load_no_extra(entry):
    done = _fresh(f"import sys, {entry}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_module_map_matches_the_tree():
    page = (ROOT / "docs" / "reference" / "modules.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w/.]+)` \|", page, re.MULTILINE))
    tree = {str(p.relative_to(PACKAGE).with_suffix("")).removesuffix("/__init__")
            for p in PACKAGE.rglob("*.py") if p.name not in ("__main__.py", "_version.py")}
    tree.discard("__init__")
    assert listed == tree


def test_nothing_stray_is_committed_at_the_top():
    """The top of the repository holds what the brief names, not what an example wrote where it stood
    (a merged m.h5 and a run/ folder were once committed so)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    top = {line.split("/")[0] for line in listed.stdout.splitlines()}
    assert top <= {".ci", ".gitignore", "Makefile", "README.md", "benchmarks", "conftest.py", "docs",
                   "environment.yml", "notebooks", "pyproject.toml", "tests", "virnucpro_merge"}, sorted(top)


def _complexities() -> dict[str, int]:
    from radon.complexity import cc_visit

    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for block in cc_visit(path.read_text()):
            for function in [block, *getattr(block, "methods", [])]:
                found[f"{path.relative_to(PACKAGE).as_posix()}:{function.fullname}"] = function.complexity
    return found


def test_no_function_above_complexity_15():
    """radon's count (each branch, loop, handler and boolean operator: ruff's C901 leaves the
    boolean operators out), for every function and method of the package."""
    over = {name: score for name, score in _complexities().items() if score > 15}
    assert not over, f"split into named steps: {over}"
