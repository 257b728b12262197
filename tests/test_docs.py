"""The API reference (docs/reference/api.md) names every public name, and every public
function shows how it is called in an example that runs (``--doctest-modules``)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "api.md"
# The modules whose every __all__ name is public (the others lend the page a few names).
PUBLIC_MODULES = ["virnucpro_merge", "virnucpro_merge.inspection", "virnucpro_merge.synthetic"]


def documented() -> list[str]:
    """The fully qualified names the page's autosummary blocks list."""
    names, module = [], "virnucpro_merge"
    for line in API_PAGE.read_text().splitlines():
        if found := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = found.group(1)
        elif found := re.fullmatch(r"   ([A-Za-z_][\w.]*)", line):
            name = found.group(1)
            names.append(name if name.startswith("virnucpro_merge.") else f"{module}.{name}")
    return names


def resolve(qualified: str) -> object:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_page_lists_names():
    assert len(documented()) > 50


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_has_an_entry(module):
    listed = set(documented())
    absent = [n for n in importlib.import_module(module).__all__ if f"{module}.{n}" not in listed]
    assert not absent, f"not in {API_PAGE.name}: {absent}"


def test_every_entry_is_public_and_importable():
    for qualified in documented():
        module, _, name = qualified.rpartition(".")
        resolve(qualified)  # raises AttributeError for a stale entry
        assert name in importlib.import_module(module).__all__, f"{qualified} is listed but not in __all__"


def test_every_public_function_has_an_example():
    functions = [q for q in documented() if inspect.isfunction(inspect.unwrap(resolve(q)))]
    without = [q for q in functions if ">>>" not in (inspect.getdoc(resolve(q)) or "")]
    assert len(functions) > 30
    assert not without, f"no example (>>>) in the docstring of: {without}"
