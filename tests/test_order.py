"""order="index": rows in the run's input order, equal to a reference reordering."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import read_datasets
from virnucpro_merge import MergeError, aggregate_shards, read_expected_ids, read_merge_report
from virnucpro_merge.cli import main
from virnucpro_merge.synthetic import make_demo_run, write_shard


def reference(shard_order_file, index_ids):
    """Reorder a shard-order merge by the index, in plain Python."""
    emb, seq = read_datasets(shard_order_file)
    row = {sequence_id: i for i, sequence_id in enumerate(seq)}
    present = [i for i in index_ids if i in row]
    extra = [i for i in seq if i not in set(index_ids)]
    order = [row[i] for i in present + extra]
    return emb[order], present + extra


@pytest.mark.parametrize("chunk_size", [7, 100, 10000])
def test_demo_run_in_index_order(tmp_path, chunk_size):
    run = make_demo_run(tmp_path / "run", n_sequences=600)
    index_ids = read_expected_ids(run.index)
    plain = aggregate_shards(run.shard_files, tmp_path / "plain.h5", index_ids, partial=True)
    ordered = aggregate_shards(run.shard_files, tmp_path / "ordered.h5", index_ids, partial=True,
                               order="index", chunk_size=chunk_size)
    emb, seq = read_datasets(ordered)
    ref_emb, ref_seq = reference(plain, index_ids)
    assert seq == ref_seq
    np.testing.assert_array_equal(emb, ref_emb)
    report = read_merge_report(ordered)
    missing = read_merge_report(plain)["missing_ids"]
    assert report["order"] == "index"
    assert [index_ids[p] for p in report["missing_positions"]] == sorted(missing, key=index_ids.index)
    assert all(s["offset"] is None for s in report["shards"])


def test_scattered_assignment_and_extras(tmp_path):
    """Not a stride run: positions dealt at random, shuffled within shards, plus IDs not in the index."""
    rng = np.random.default_rng(11)
    index_ids = [f"q{i:04d}" for i in range(500)]
    owner = rng.integers(0, 3, 500)
    shards = []
    for rank in range(3):
        mine = rng.permutation(np.flatnonzero(owner == rank))[: 150]
        ids = [index_ids[p] for p in mine] + [f"extra{rank}_{k}" for k in range(4)]
        dtype = "f2" if rank == 1 else "f4"
        shards.append(write_shard(tmp_path / f"shard_{rank}.h5", ids, rng.standard_normal((len(ids), 8)).astype(dtype)))
    plain = aggregate_shards(shards, tmp_path / "plain.h5", index_ids, partial=True)
    ordered = aggregate_shards(shards, tmp_path / "ordered.h5", index_ids, partial=True, order="index", chunk_size=32)
    emb, seq = read_datasets(ordered)
    ref_emb, ref_seq = reference(plain, index_ids)
    assert seq == ref_seq
    assert seq[-12:] == [f"extra{r}_{k}" for r in range(3) for k in range(4)]
    np.testing.assert_array_equal(emb, ref_emb)


def test_strict_and_complete(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=300, truncated=(), absent=(), empty=(), short={})
    index_ids = read_expected_ids(run.index)
    emb, seq = read_datasets(aggregate_shards(run.shard_files, tmp_path / "o.h5", index_ids, order="index"))
    assert seq == index_ids
    from virnucpro_merge.synthetic import synthetic_embeddings

    np.testing.assert_array_equal(emb, synthetic_embeddings(np.arange(300), run.dim, run.seed))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(expected_sequence_ids={"a"}), "in index order \\(a list, not a set\\)"),
        (dict(expected_sequence_ids=None), "in index order"),
        (dict(expected_sequence_ids=["a"], layout="virtual"), "needs layout='contiguous'"),
        (dict(expected_sequence_ids=["a", "a"]), "without repeated sequence IDs \\(a is there 2 times, at positions "
                                                 "0, 1\\)"),
        (dict(expected_sequence_ids=["b", "a", "b", "a", "b", "b"]), "\\(b is there 4 times, at positions 0, 2, 4, "
                                                                   "...\\)$"),
        (dict(expected_sequence_ids=["a"], order="random"), "order must be one of"),
    ],
)
def test_bad_options(make_shard, tmp_path, kwargs, words):
    kwargs = {"order": "index", **kwargs}
    with pytest.raises(MergeError, match=words):
        aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "o.h5", **kwargs)
    assert not (tmp_path / "o.h5").exists()


def test_cli(tmp_path, capsys):
    run = make_demo_run(tmp_path / "run", n_sequences=200)
    out = tmp_path / "o.h5"
    args = ["-q", "aggregate", str(run.directory), "-o", str(out), "--partial", "--order", "index"]
    assert main(args) == 2
    assert "--order index needs --expected" in capsys.readouterr().err
    assert main([*args, "--expected", str(run.index)]) == 0
    seq = read_datasets(out)[1]
    assert seq == sorted(seq)  # the demo's IDs sort in index order


def test_nonfinite_counted_per_shard_in_index_order(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=160, truncated=(), absent=(), empty=(), short={})
    from virnucpro_merge.synthetic import synthetic_embeddings

    for rank, bad_rows in ((2, [0, 5]), (6, [19])):
        emb = synthetic_embeddings(np.arange(rank, 160, 8), run.dim, run.seed)
        emb[bad_rows, 3] = np.nan
        write_shard(run.shard_files[rank], read_datasets(run.shard_files[rank])[1], emb)
    index_ids = read_expected_ids(run.index)
    plain = read_merge_report(aggregate_shards(run.shard_files, tmp_path / "p.h5", index_ids))
    ordered = read_merge_report(aggregate_shards(run.shard_files, tmp_path / "o.h5", index_ids, order="index",
                                                 chunk_size=7))
    assert [s["nonfinite_rows"] for s in ordered["shards"]] == [s["nonfinite_rows"] for s in plain["shards"]]
    assert ordered["nonfinite_rows"] == 3


def test_index_order_takes_a_numpy_array_of_ids(make_shard, tmp_path):
    a = make_shard("shard_0", ["b", "d"])
    b = make_shard("shard_1", ["a", "c"])
    merged = aggregate_shards([a, b], tmp_path / "m.h5", np.array(["a", "b", "c", "d"]), order="index")
    with h5py.File(merged) as f:
        assert f["sequence_ids"].asstr()[:].tolist() == ["a", "b", "c", "d"]


def test_index_order_reads_fixed_length_ids_that_are_not_ascii(tmp_path):
    """Fixed-length IDs are UTF-8 bytes like any (h5py would read them as ASCII)."""
    for rank, names in enumerate([["caf\u00e9", "b"], ["\u00e0", "d"]]):
        with h5py.File(tmp_path / f"shard_{rank}.h5", "w") as f:
            f["embeddings"] = np.full((2, 2), rank, np.float32)
            f["sequence_ids"] = np.array([n.encode() for n in names], dtype="S8")
    merged = aggregate_shards([tmp_path / "shard_0.h5", tmp_path / "shard_1.h5"], tmp_path / "m.h5",
                              ["\u00e0", "b", "caf\u00e9", "d"], order="index")
    with h5py.File(merged) as f:
        assert f["sequence_ids"].asstr()[:].tolist() == ["\u00e0", "b", "caf\u00e9", "d"]
        assert f["embeddings"][:, 0].tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("hashing", ["python hash", "colliding hash"])
def test_index_order_places_rows_by_their_ids_not_their_hashes(make_shard, tmp_path, monkeypatch, hashing):
    """Every row where its ID is in the index, however the IDs' hashes collide: a missing ID
    whose hash an extra ID shares, and present IDs that share one (64-bit hashes of 10^8 IDs
    collide about once in 3,700 runs; here every ID collides with those of its length, mod 3)."""
    import virnucpro_merge.ids as ids_module

    if hashing == "colliding hash":
        monkeypatch.setattr(ids_module, "_id_hash", lambda s: len(s) % 3)
    shards = [make_shard("shard_0", ["a", "bb", "ccc", "dddd", "xx"]), make_shard("shard_1", ["ee", "f", "gggggg"])]
    index_ids = ["gggggg", "a", "hh", "f", "ccc", "bb", "ee", "dddd"]  # ("hh" is missing, "xx" extra: both 2 long)
    plain = aggregate_shards(shards, tmp_path / "plain.h5", index_ids, partial=True)
    ordered = aggregate_shards(shards, tmp_path / "ordered.h5", index_ids, partial=True, order="index", chunk_size=3)
    emb, seq = read_datasets(ordered)
    ref_emb, ref_seq = reference(plain, index_ids)
    assert seq == ref_seq == ["gggggg", "a", "f", "ccc", "bb", "ee", "dddd", "xx"]
    np.testing.assert_array_equal(emb, ref_emb)
    assert read_merge_report(ordered)["missing_positions"] == [2]


def test_index_order_reads_every_kind_of_shard(tmp_path):
    """Contiguous float32 shards are read as raw bytes, the others through HDF5 (float16, chunked
    and compressed, big-endian): the same rows in the same places either way, and each rank's
    health summed up as in a merge in shard order."""
    run = make_demo_run(tmp_path / "run", n_sequences=400, truncated=(), absent=(), empty=(), short={})
    for rank, how in ((1, "float16"), (2, "gzip"), (3, "big-endian")):
        emb, names = read_datasets(run.shard_files[rank])
        with h5py.File(run.shard_files[rank], "w") as f:
            f.create_dataset("sequence_ids", data=np.array(names, dtype=h5py.string_dtype()))
            if how == "gzip":
                f.create_dataset("embeddings", data=emb, chunks=(7, emb.shape[1]), compression="gzip")
            else:
                f.create_dataset("embeddings", data=emb.astype("float16" if how == "float16" else ">f4"))
    index_ids = read_expected_ids(run.index)
    plain = aggregate_shards(run.shard_files, tmp_path / "plain.h5", index_ids)
    ordered = aggregate_shards(run.shard_files, tmp_path / "ordered.h5", index_ids, order="index", chunk_size=64)
    emb, seq = read_datasets(ordered)
    ref_emb, ref_seq = reference(plain, index_ids)
    assert seq == ref_seq == index_ids
    np.testing.assert_array_equal(emb, ref_emb)
    assert [s["health"] for s in read_merge_report(ordered)["shards"]] == \
        [s["health"] for s in read_merge_report(plain)["shards"]]


_FEW_FILES = """
import resource, sys
import h5py
from virnucpro_merge import aggregate_shards, read_expected_ids
from virnucpro_merge.synthetic import make_demo_run

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
run = make_demo_run(sys.argv[1] + "/run", n_sequences=1000, world_size=100, truncated=(), absent=(), empty=(),
                    short={})
for shard in run.shard_files[::2]:  # (half of them float16: read through HDF5)
    with h5py.File(shard, "r+") as f:
        rows = f["embeddings"][:]
        del f["embeddings"]
        f["embeddings"] = rows.astype("float16")
aggregate_shards(run.shard_files, sys.argv[1] + "/o.h5", read_expected_ids(run.index), order="index", chunk_size=50)
print("merged")
"""


def test_index_order_of_more_shards_than_the_process_may_open(tmp_path):
    """100 shards, half of them float32 (read as raw bytes) and half float16 (through HDF5),
    every block reads from each, and the process may open 64 files: both kinds together keep
    fewer open (and it merges)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FEW_FILES, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["merged"], done.stderr[-2000:]


def test_the_first_shards_stay_open_the_others_are_opened_for_each_read(tmp_path, monkeypatch):
    """Every block reads the shards in the same order: with fewer kept open than shards, the
    least recently used would be the next one wanted (every read an open). The first ones stay
    open instead."""
    from virnucpro_merge._write import reorder

    run = make_demo_run(tmp_path / "run", n_sequences=400, world_size=10, truncated=(), absent=(), empty=(), short={})
    opened: list[str] = []

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(reorder, "_raw_limit", lambda: 3)
    monkeypatch.setattr(reorder, "open", counted, raising=False)
    index_ids = read_expected_ids(run.index)
    ordered = aggregate_shards(run.shard_files, tmp_path / "o.h5", index_ids, order="index", chunk_size=40)
    assert read_datasets(ordered)[1] == index_ids
    blocks = 400 // 40
    assert sorted(set(opened)) == sorted(f"shard_{r}.h5" for r in range(10))
    assert len(opened) == 3 + 7 * blocks  # (the first three once, the other seven every block)


def test_the_index_order_keeps_rows_and_places_in_four_bytes(tmp_path):
    """Where each output row comes from, and each index position's place: 4 bytes each below
    2^31 rows (at 10^7 IDs, 80 MB less at the merge's peak), the same order as before."""
    from virnucpro_merge._write.reorder import index_lookup, index_order
    from virnucpro_merge.checks import plan_merge

    run = make_demo_run(tmp_path / "run", n_sequences=300)
    index_ids = read_expected_ids(run.index)
    order = index_order(plan_merge(run.shard_files, index_lookup(index_ids), partial=True, keep_ids=True))
    assert order.source_rows.dtype == order.ordered.dtype == order.missing_positions.dtype == np.int32
    _, seq = read_datasets(aggregate_shards(run.shard_files, tmp_path / "plain.h5", index_ids, partial=True))
    assert [seq[row] for row in order.source_rows[: order.ordered.size]] == [index_ids[p] for p in order.ordered]
    assert sorted(order.ordered.tolist() + order.missing_positions.tolist()) == list(range(len(index_ids)))
