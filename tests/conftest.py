"""Shared fixtures: small, seeded shard files built in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge.synthetic import write_shard

ShardFactory = Callable[..., Path]


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

