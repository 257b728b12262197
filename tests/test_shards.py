"""Reading shards: every way a shard can be broken gets a one-line error naming it."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro_merge import ShardError, UnreadableShardError, aggregate_shards, get_shard_info
from virnucpro_merge.ranks import expand_shard_args


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message


def _write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if isinstance(value, str) and value == "group":
                f.create_group(name)
            elif isinstance(value, str) and value == "broken link":
                f[name] = h5py.ExternalLink("/nowhere/emb.h5", "/embeddings")
            elif isinstance(value, str) and value == "dangling link":
                f[name] = h5py.SoftLink("/nothing")
            else:
                f.create_dataset(name, data=value)
    return path


BROKEN = {
    "absent": (None, UnreadableShardError, "does not exist"),
    "zero-byte": (b"", UnreadableShardError, "empty file"),
    "not-hdf5": (b"shard_id\tembedding\nx\t0.1\n", UnreadableShardError, "not an HDF5 file"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_unopenable_files(tmp_path, kind):
    content, error, words = BROKEN[kind]
    path = tmp_path / "shard_0.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=words) as err:
        get_shard_info(path)
    _assert_one_line_naming(err, path)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_truncated_files(make_shard, fraction):
    path = make_shard("shard_0", [f"s{i}" for i in range(300)], dim=32)
    os.truncate(path, int(path.stat().st_size * fraction))
    with pytest.raises(UnreadableShardError) as err:
        aggregate_shards([path], path.with_name("out.h5"))
    _assert_one_line_naming(err, path)
    assert "truncated" in str(err.value) or "corrupt" in str(err.value)
    assert not path.with_name("out.h5").exists()


STRUCTURE = {
    "no embeddings": (dict(sequence_ids=np.array([b"a"])), "no 'embeddings' dataset"),
    "no sequence_ids": (dict(embeddings=np.zeros((1, 4), "f4")), "no 'sequence_ids' dataset"),
    "embeddings is a group": (dict(embeddings="group", sequence_ids=np.array([b"a"])), "not a dataset"),
    "embeddings a broken link": (dict(embeddings="broken link", sequence_ids=np.array([b"a"])),
                                 "'embeddings' is there but cannot be opened"),
    "sequence_ids a dangling link": (dict(embeddings=np.zeros((1, 4), "f4"), sequence_ids="dangling link"),
                                     "'sequence_ids' is there but cannot be opened"),
    "1-D embeddings": (dict(embeddings=np.zeros(4, "f4"), sequence_ids=np.array([b"a"])), "must be 2-D"),
    "3-D embeddings": (dict(embeddings=np.zeros((1, 2, 2), "f4"), sequence_ids=np.array([b"a"])), "must be 2-D"),
    "integer embeddings": (dict(embeddings=np.zeros((1, 4), "i4"), sequence_ids=np.array([b"a"])), "dtype int32"),
    "float64 embeddings": (dict(embeddings=np.zeros((1, 4), "f8"), sequence_ids=np.array([b"a"])), "dtype float64"),
    "numeric IDs": (dict(embeddings=np.zeros((1, 4), "f4"), sequence_ids=np.array([7])), "not strings"),
    "rows != IDs": (dict(embeddings=np.zeros((3, 4), "f4"), sequence_ids=np.array([b"a", b"b"])), "3 rows but"),
    "(0, 0) with IDs": (dict(embeddings=np.zeros((0, 0), "f4"), sequence_ids=np.array([b"a"])), "0 rows but"),
}


@pytest.mark.parametrize("kind", STRUCTURE)
def test_malformed_shards(tmp_path, kind):
    datasets, words = STRUCTURE[kind]
    path = _write_raw(tmp_path / "shard_0.h5", **datasets)
    with pytest.raises(ShardError, match=words) as err:
        aggregate_shards([path], tmp_path / "out.h5")
    _assert_one_line_naming(err, path)
    assert not (tmp_path / "out.h5").exists()


def test_dimension_mismatch_names_both_files(make_shard, tmp_path):
    a = make_shard("shard_0", ["a"], dim=768)
    b = make_shard("shard_1", ["b"], dim=1280)
    with pytest.raises(ShardError, match="embedding dimension 1280 differs from 768") as err:
        aggregate_shards([a, b], tmp_path / "out.h5")
    _assert_one_line_naming(err, b)
    assert str(a) in str(err.value)


def test_idle_worker_shard_is_not_a_dimension_mismatch(make_shard, tmp_path):
    idle = make_shard("shard_0", [])
    full = make_shard("shard_1", ["a", "b"], dim=1280)
    with h5py.File(aggregate_shards([idle, full], tmp_path / "out.h5")) as f:
        assert f["embeddings"].shape == (2, 1280)


def test_only_idle_shards_merge_to_an_empty_shard(make_shard, tmp_path):
    out = aggregate_shards([make_shard("shard_0", []), make_shard("shard_1", [])], tmp_path / "out.h5")
    info = get_shard_info(out)
    assert (info["num_sequences"], info["embedding_dim"]) == (0, 0)


def test_get_shard_info(make_shard):
    path = make_shard("shard_3", [f"id{i}" for i in range(12)], dim=16, dtype="float16")
    info = get_shard_info(path)
    assert info["num_sequences"] == 12
    assert info["embedding_dim"] == 16
    assert info["dtype"] == "float16"
    assert info["sequence_ids_sample"] == ["id0", "id1", "id2", "id3", "id4"]
    assert all(isinstance(i, str) for i in info["sequence_ids_sample"])
    assert info["merged"] is False


def test_get_shard_info_on_idle_shard(make_shard):
    info = get_shard_info(make_shard("shard_0", []))
    assert (info["num_sequences"], info["embedding_dim"], info["sequence_ids_sample"]) == (0, 0, [])


def test_directory_given_as_shard(tmp_path):
    with pytest.raises(ShardError, match="is a directory"):
        get_shard_info(tmp_path)


def test_expand_orders_shards_numerically(tmp_path, make_shard):
    for rank in (10, 2, 1, 0):
        make_shard(f"shard_{rank}", [f"r{rank}"])
    (tmp_path / "shard_x.h5").write_bytes(b"")  # not a rank: ignored
    (tmp_path / "notes.txt").write_text("hi")
    paths = expand_shard_args([tmp_path])
    assert [p.name for p in paths] == [f"shard_{rank}.h5" for rank in range(11)]
    assert [p.exists() for p in paths] == [True, True, True] + [False] * 7 + [True]  # 3..9: dead workers


def test_expand_keeps_odd_rank_spellings(tmp_path, make_shard):
    make_shard("shard_00", ["a"])
    make_shard("shard_1", ["b"])
    assert [p.name for p in expand_shard_args([tmp_path])] == ["shard_00.h5", "shard_1.h5"]


def test_expand_keeps_files_as_given(tmp_path):
    assert expand_shard_args([tmp_path / "b.h5", tmp_path / "a.h5"]) == [tmp_path / "b.h5", tmp_path / "a.h5"]


def test_expand_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no shard_<N>\.h5 files"):
        expand_shard_args([tmp_path])


def test_two_files_claiming_one_rank_are_refused(tmp_path, make_shard):
    make_shard("shard_1", ["a"])
    make_shard("shard_01", ["b"])
    make_shard("shard_0", ["c"])
    with pytest.raises(ValueError, match=r": shard_01\.h5 and shard_1\.h5 both claim rank 1$"):
        expand_shard_args([tmp_path])


def test_a_fifo_named_like_a_shard_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "shard_0.h5")
    with pytest.raises(ShardError, match=r"shard_0\.h5: not a regular file"):
        get_shard_info(tmp_path / "shard_0.h5")
    with pytest.raises(ShardError, match="not a regular file"):
        aggregate_shards([tmp_path / "shard_0.h5"], tmp_path / "o.h5")


def test_embeddings_through_an_external_link_are_read_not_raw_copied(tmp_path):
    """The link's target sits at some offset of *another* file: copying the shard's bytes
    there would be garbage. The link is followed instead."""
    import h5py

    with h5py.File(tmp_path / "target.h5", "w") as f:
        f.create_dataset("pad", data=np.ones(1000, "f4"))
        f.create_dataset("embeddings", data=np.arange(12, dtype="f4").reshape(3, 4))
    with h5py.File(tmp_path / "shard_0.h5", "w") as f:
        f["embeddings"] = h5py.ExternalLink("target.h5", "embeddings")
        f.create_dataset("sequence_ids", data=np.array(["a", "b", "c"], dtype=object), dtype=h5py.string_dtype())
    out = aggregate_shards([tmp_path / "shard_0.h5"], tmp_path / "o.h5")
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["embeddings"][:], np.arange(12, dtype="f4").reshape(3, 4))


def test_embeddings_in_external_storage(tmp_path, monkeypatch):
    """Readable where the shard says; and a check of IDs never needs them at all."""
    import h5py

    from virnucpro_merge import validate_shard_completeness

    monkeypatch.chdir(tmp_path)  # HDF5 finds external storage from the working folder
    np.arange(12, dtype="f4").tofile("raw.bin")
    with h5py.File("shard_0.h5", "w") as f:
        f.create_dataset("embeddings", shape=(3, 4), dtype="f4", external=[("raw.bin", 0, 48)])
        f.create_dataset("sequence_ids", data=np.array(["x", "y", "z"], dtype=object), dtype=h5py.string_dtype())
    out = aggregate_shards(["shard_0.h5"], "o.h5")
    with h5py.File(out) as f:
        assert f["embeddings"][:].sum() == 66
    Path("raw.bin").unlink()  # the embeddings lost: the IDs still tell what is there
    assert get_shard_info("shard_0.h5")["num_sequences"] == 3
    assert validate_shard_completeness(["shard_0.h5"], {"x", "y", "z", "w"}) == ({"w"}, set())
    with pytest.raises(UnreadableShardError, match=r"shard_0\.h5: cannot read rows"):
        aggregate_shards(["shard_0.h5"], "o2.h5")


@pytest.mark.parametrize("link", ["broken link", "dangling link"])
def test_a_dataset_there_but_unopenable_is_not_taken_for_a_dead_worker(tmp_path, link):
    """A link to nothing is not a shard a worker died before writing: even a partial merge
    refuses it (it does not leave the rank's IDs out as missing)."""
    good = _write_raw(tmp_path / "shard_0.h5", embeddings=np.zeros((1, 4), "f4"), sequence_ids=np.array([b"a"]))
    bad = _write_raw(tmp_path / "shard_1.h5", embeddings=link, sequence_ids=np.array([b"b"]))
    with pytest.raises(ShardError, match="is there but cannot be opened") as err:
        aggregate_shards([good, bad], tmp_path / "out.h5", partial=True)
    assert not isinstance(err.value, UnreadableShardError)
    _assert_one_line_naming(err, bad)
