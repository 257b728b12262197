"""Property tests: random shard sets merge to exactly the concatenation of their rows."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import read_datasets
from virnucpro_merge import aggregate_shards, read_merge_report, validate_shard_completeness
from virnucpro_merge.synthetic import write_shard

# HDF5 strings end at NUL and cannot hold lone surrogates: a worker cannot write those.
ID_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@st.composite
def runs(draw):
    dim = draw(st.integers(1, 6))
    ids = draw(st.lists(ID_TEXT, unique=True, max_size=60))
    cuts = sorted(draw(st.lists(st.integers(0, len(ids)), max_size=4)))
    pieces = [ids[a:b] for a, b in itertools.pairwise([0, *cuts, len(ids)])]
    dtypes = [draw(st.sampled_from(["float32", "float16"])) for _ in pieces]
    seed = draw(st.integers(0, 2**32 - 1))
    chunk_size = draw(st.integers(1, 25))
    others = draw(st.lists(ID_TEXT, max_size=10))
    expected = set(draw(st.lists(st.sampled_from(ids), unique=True))) if ids else set()
    return dim, pieces, dtypes, seed, chunk_size, expected | set(others)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_merge_equals_concatenation(run):
    dim, pieces, dtypes, seed, chunk_size, expected = run
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        shards, blocks = [], []
        for rank, (piece, dtype) in enumerate(zip(pieces, dtypes, strict=True)):
            emb = (rng.standard_normal((len(piece), dim)) * 100).astype(dtype)
            shards.append(write_shard(Path(tmp) / f"shard_{rank}.h5", piece, emb))
            blocks.append(emb.astype("float32").reshape(len(piece), dim))
        out = aggregate_shards(shards, Path(tmp) / "out.h5", chunk_size=chunk_size)
        emb, seq = read_datasets(out)
        all_ids = [i for piece in pieces for i in piece]
        assert seq == all_ids
        if all_ids:
            np.testing.assert_array_equal(emb, np.concatenate(blocks))
        report = read_merge_report(out)
        sizes = [len(p) for p in pieces]
        assert [s["num_sequences"] for s in report["shards"]] == sizes
        assert [s["offset"] for s in report["shards"]] == list(np.cumsum([0, *sizes[:-1]]))
        assert [s["status"] for s in report["shards"]] == ["ok" if n else "empty" for n in sizes]
        assert report["total_sequences"] == len(all_ids)

        missing, extra = validate_shard_completeness(shards, expected)
        assert missing == expected - set(all_ids)
        assert extra == set(all_ids) - expected
