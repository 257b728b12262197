"""Docstring examples (``pytest --doctest-modules virnucpro_merge``) each run in a fresh
temporary folder, so that they can write ``run/`` and ``merged.h5`` as a user would."""

from __future__ import annotations

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _examples_in_a_temporary_folder(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> None:
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
