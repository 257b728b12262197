"""Shared fixtures: small, seeded shard files built in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge.synthetic import write_shard

ShardFactory = Callable[..., Path]

#: Fixture files and the scripts that wrote them (with torch, which the tests do not need)
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def make_shard(tmp_path: Path, rng: np.random.Generator) -> ShardFactory:
    """Write a shard as a worker would; return its path.

    ``make_shard("a", ["x", "y"])`` writes ``tmp_path/a.h5`` with random float32
    embeddings of dimension ``dim``; pass ``embeddings=`` to choose them.
    """

    def factory(
        name: str,
        ids: Sequence[str],
        *,
        dim: int = 8,
        dtype: str = "float32",
        embeddings: np.ndarray | None = None,
    ) -> Path:
        if embeddings is None:
            embeddings = rng.standard_normal((len(ids), dim)).astype(dtype)
        return write_shard(tmp_path / f"{name}.h5", ids, embeddings)

    return factory



@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs("size=2m")``: a fresh folder with a tmpfs mounted on it (skip where that is refused)."""
    import subprocess

    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
