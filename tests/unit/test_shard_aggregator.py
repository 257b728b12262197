"""The original design plan's tests, kept and sharpened."""

from __future__ import annotations

import logging
import math

import h5py
import numpy as np
import pytest

import virnucpro_merge.merge as merge_module
from tests.helpers import ids, read_datasets
from virnucpro_merge import (
    CHUNK_SIZE,
    aggregate_shards,
    read_merge_report,
    validate_shard_completeness,
)
from virnucpro_merge._write import sysio


class EmbeddingReads(list):
    """Rows moved per read of an input shard's embeddings, by h5py or as raw bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_bytes: list[int] = []

    def rows(self, row_bytes: int) -> list[int]:
        """Every read in rows: the h5py ones, then the raw copies of ``row_bytes`` rows."""
        assert all(n % row_bytes == 0 for n in self.raw_bytes)
        return list(self) + [n // row_bytes for n in self.raw_bytes]


@pytest.fixture
def embedding_reads(monkeypatch):
    """Spy on every read of an input shard's ``embeddings``, whichever way it is done."""
    reads = EmbeddingReads()
    getitem, read_direct = h5py.Dataset.__getitem__, h5py.Dataset.read_direct
    copy_bytes = sysio.copy_bytes

    def rows(dset, selection) -> int:
        first = selection[0] if isinstance(selection, tuple) and selection else selection
        if isinstance(first, slice):
            return len(range(*first.indices(dset.shape[0])))
        if isinstance(first, (int, np.integer)):
            return 1
        return dset.shape[0]  # (), Ellipsis, None, arrays: count as a whole read

    def is_input_embeddings(dset) -> bool:
        return dset.name == "/embeddings" and dset.file.mode == "r"

    def spy_getitem(self, args, *rest, **kw):
        if is_input_embeddings(self):
            reads.append(rows(self, args))
        return getitem(self, args, *rest, **kw)

    def spy_read_direct(self, dest, source_sel=None, dest_sel=None):
        if is_input_embeddings(self):
            reads.append(rows(self, source_sel))
        return read_direct(self, dest, source_sel, dest_sel)

    def spy_copy_bytes(src, dst, count, src_offset, dst_offset):
        reads.raw_bytes.append(count)
        return copy_bytes(src, dst, count, src_offset, dst_offset)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy_getitem)
    monkeypatch.setattr(h5py.Dataset, "read_direct", spy_read_direct)
    monkeypatch.setattr(sysio, "copy_bytes", spy_copy_bytes)
    return reads


class TestAggregateShards:
    def test_aggregate_two_shards(self, make_shard, tmp_path):
        a = make_shard("shard_0", ids("a", 5))
        b = make_shard("shard_1", ids("b", 3))
        out = aggregate_shards([a, b], tmp_path / "merged.h5")
        assert out == tmp_path / "merged.h5"
        emb, seq = read_datasets(out)
        assert emb.shape == (8, 8)
        assert emb.dtype == np.float32
        assert seq == ids("a", 5) + ids("b", 3)

    @pytest.mark.parametrize("dtype", ["float32", "float16"])  # raw-byte and h5py paths
    def test_chunk_wise_memory(self, make_shard, tmp_path, embedding_reads, dtype):
        shard = make_shard("shard_0", ids("s", 1050), dtype=dtype)
        aggregate_shards([shard], tmp_path / "merged.h5", chunk_size=100)
        reads = embedding_reads.rows(row_bytes=8 * 4)
        assert reads, "the spy saw no read of the embeddings"
        assert max(reads) <= 100
        assert sum(reads) == 1050
        assert len(reads) == math.ceil(1050 / 100)

    def test_default_chunk_size_bounds_reads(self, make_shard, tmp_path, embedding_reads):
        shard = make_shard("shard_0", ids("s", CHUNK_SIZE + 7), dim=2)
        aggregate_shards([shard], tmp_path / "merged.h5")
        assert sorted(embedding_reads.rows(row_bytes=2 * 4)) == [7, CHUNK_SIZE]

    def test_output_contains_all_embeddings(self, make_shard, tmp_path):
        shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 40 + r)) for r in range(4)]
        emb, _ = read_datasets(aggregate_shards(shards, tmp_path / "m.h5", chunk_size=7))
        expected = np.concatenate([read_datasets(s)[0] for s in shards])
        assert emb.shape == expected.shape
        np.testing.assert_array_equal(emb, expected)

    def test_output_contains_all_ids(self, make_shard, tmp_path):
        shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 25)) for r in range(3)]
        _, seq = read_datasets(aggregate_shards(shards, tmp_path / "m.h5", chunk_size=4))
        assert seq == [i for s in shards for i in read_datasets(s)[1]]

    def test_preserves_embedding_values(self, make_shard, tmp_path):
        values = np.array(
            [[0.0, -0.0, 1e-45, 3.4028235e38], [np.pi, -np.e, 1 / 3, 7.5]], dtype=np.float32
        )
        shard = make_shard("shard_0", ["x", "y"], embeddings=values)
        emb, _ = read_datasets(aggregate_shards([shard], tmp_path / "m.h5"))
        assert emb.tobytes() == values.tobytes()  # bit for bit, signed zero included

    def test_rows_follow_shard_order_as_given(self, make_shard, tmp_path):
        a, b = make_shard("shard_0", ["a"]), make_shard("shard_1", ["b"])
        _, seq = read_datasets(aggregate_shards([b, a], tmp_path / "m.h5"))
        assert seq == ["b", "a"]

    def test_no_shards_raises(self, tmp_path):
        with pytest.raises(ValueError, match="No shard files provided"):
            aggregate_shards([], tmp_path / "m.h5")
        assert not (tmp_path / "m.h5").exists()


class TestDuplicateDetection:
    def test_duplicate_within_shard(self, make_shard, tmp_path):
        shard = make_shard("shard_0", ["a", "b", "a"])
        with pytest.raises(ValueError, match="Duplicate sequence ID found: a"):
            aggregate_shards([shard], tmp_path / "m.h5")

    def test_duplicate_across_shards(self, make_shard, tmp_path):
        a = make_shard("shard_0", ["x", "y"])
        b = make_shard("shard_1", ["z", "y"])
        with pytest.raises(ValueError, match="Duplicate sequence ID found: y"):
            aggregate_shards([a, b], tmp_path / "m.h5")

    def test_duplicate_error_message(self, make_shard, tmp_path):
        a = make_shard("shard_0", ids("s", 10))
        b = make_shard("shard_1", ["new", "s7"])
        with pytest.raises(ValueError, match="Duplicate sequence ID found") as info:
            aggregate_shards([a, b], tmp_path / "m.h5")
        message = str(info.value)
        assert "Duplicate sequence ID found: s7" in message
        assert "shard_1.h5" in message
        assert "shard_0.h5" in message
        assert "\n" not in message

    def test_duplicate_within_shard_names_that_shard(self, make_shard, tmp_path):
        a = make_shard("shard_0", ["a"])
        b = make_shard("shard_1", ["b", "c", "b"])
        with pytest.raises(ValueError, match=r"Duplicate sequence ID found: b .*shard_1\.h5"):
            aggregate_shards([a, b], tmp_path / "m.h5")

    def test_duplicates_raise_even_when_partial(self, make_shard, tmp_path):
        a, b = make_shard("shard_0", ["a"]), make_shard("shard_1", ["a"])
        with pytest.raises(ValueError, match="Duplicate sequence ID found: a"):
            aggregate_shards([a, b], tmp_path / "m.h5", partial=True)


class TestMissingValidation:
    def test_missing_sequences_raises(self, make_shard, tmp_path):
        shard = make_shard("shard_0", ["a", "b"])
        with pytest.raises(ValueError, match="Missing 2 expected sequences"):
            aggregate_shards([shard], tmp_path / "m.h5", {"a", "b", "c", "d"})
        assert not (tmp_path / "m.h5").exists()

    def test_missing_error_lists_ids(self, make_shard, tmp_path):
        shard = make_shard("shard_0", ["keep"])
        expected = {"keep"} | {f"m{i:02d}" for i in range(15)}
        with pytest.raises(ValueError, match="Missing 15 expected sequences") as info:
            aggregate_shards([shard], tmp_path / "m.h5", expected)
        first_ten = [f"m{i:02d}" for i in range(10)]
        assert f"First 10 missing IDs: {first_ten}" in str(info.value)
        assert "m10" not in str(info.value)

    def test_extra_sequences_warns(self, make_shard, tmp_path, caplog):
        shard = make_shard("shard_0", ["a", "b", "surprise"])
        with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
            out = aggregate_shards([shard], tmp_path / "m.h5", ["a", "b"])
        assert read_datasets(out)[1] == ["a", "b", "surprise"]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("extra sequences" in r.getMessage() and "surprise" in r.getMessage() for r in warnings)

    def test_no_expected_ids_skips_validation(self, make_shard, tmp_path, caplog):
        shard = make_shard("shard_0", ["a"])
        with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
            out = aggregate_shards([shard], tmp_path / "m.h5", None)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        report = read_merge_report(out)
        assert report["num_expected"] is None
        assert report["missing_ids"] == []

    @pytest.mark.parametrize("container", [list, tuple, set, frozenset, dict.fromkeys])
    def test_expected_ids_any_collection(self, make_shard, tmp_path, container):
        shard = make_shard("shard_0", ["a", "b"])
        with pytest.raises(ValueError, match="Missing 1 expected sequences"):
            aggregate_shards([shard], tmp_path / "m.h5", container(["a", "b", "c"]))


class TestValidateShardCompleteness:
    def test_returns_missing_and_extra(self, make_shard):
        a = make_shard("shard_0", ["a", "b", "x"])
        b = make_shard("shard_1", ["c", "y"])
        missing, extra = validate_shard_completeness([a, b], {"a", "b", "c", "d", "e"})
        assert missing == {"d", "e"}
        assert extra == {"x", "y"}

    def test_complete_run(self, make_shard):
        a = make_shard("shard_0", ["a"])
        assert validate_shard_completeness([a], ["a"]) == (set(), set())

    def test_empty_shards(self, make_shard):
        idle = make_shard("shard_0", [])  # (0, 0) embeddings, as an idle worker writes
        empty_d = make_shard("shard_1", [], embeddings=np.empty((0, 8), np.float32))
        full = make_shard("shard_2", ["a"])
        with h5py.File(idle) as f:
            assert f["embeddings"].shape == (0, 0)
        assert validate_shard_completeness([idle, empty_d, full], {"a", "b"}) == ({"b"}, set())
        assert validate_shard_completeness([idle], {"a"}) == ({"a"}, set())

    def test_never_reads_embeddings(self, make_shard, embedding_reads):
        shard = make_shard("shard_0", ids("s", 500))
        validate_shard_completeness([shard], ids("s", 500))
        assert embedding_reads == []


class TestExceptionSafety:
    def test_cleanup_on_failure(self, make_shard, tmp_path):
        a = make_shard("shard_0", ["a"])
        b = make_shard("shard_1", ["a"])
        with pytest.raises(ValueError, match="Duplicate sequence ID found: a"):
            aggregate_shards([a, b], tmp_path / "merged.h5")
        assert not (tmp_path / "merged.h5").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_0.h5", "shard_1.h5"]

    @pytest.mark.parametrize(("dtype", "target"), [("float32", "raw"), ("float16", "h5py"), ("float32", "ids")])
    def test_cleanup_when_copy_fails_midway(self, make_shard, tmp_path, monkeypatch, dtype, target):
        shards = [make_shard(f"shard_{r}", ids(f"s{r}_", 30), dtype=dtype) for r in range(3)]
        calls = {"n": 0}
        owner, name = {"raw": (sysio, "copy_bytes"), "h5py": (sysio, "write_block"),
                       "ids": (h5py.Dataset, "__setitem__")}[target]
        original = getattr(owner, name)

        def fail_on_third(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the user pressed Ctrl-C mid-copy
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, fail_on_third)
        monkeypatch.setattr(merge_module, "ID_BATCH", 10)  # (IDs written a shard at a time: the third is midway)
        with pytest.raises(KeyboardInterrupt):
            aggregate_shards(shards, tmp_path / "merged.h5", chunk_size=10)
        assert calls["n"] == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_0.h5", "shard_1.h5", "shard_2.h5"]

    def test_existing_output_survives_failure(self, make_shard, tmp_path):
        good = aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "merged.h5")
        before = good.read_bytes()
        bad = make_shard("shard_1", ["b", "b"])
        with pytest.raises(ValueError, match="Duplicate"):
            aggregate_shards([bad], good)
        assert good.read_bytes() == before
