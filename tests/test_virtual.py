"""layout="virtual": same validation, no embedding copied, and lost sources never pass silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import ids, read_datasets
from virnucpro_merge import MergeError, UnreadableShardError, aggregate_shards, materialize, read_merge_report
from virnucpro_merge.cli import main
from virnucpro_merge.synthetic import make_demo_run


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    shards = []
    rng = np.random.default_rng(5)
    from virnucpro_merge.synthetic import write_shard

    folder.mkdir()
    for rank, (n, dtype) in enumerate([(40, "f4"), (0, "f4"), (25, "f2"), (33, "f4")]):
        emb = rng.standard_normal((n, 16)).astype(dtype)
        shards.append(write_shard(folder / f"shard_{rank}.h5", ids(f"r{rank}_", n), emb))
    return folder, shards


def concatenated(shards):
    return np.concatenate([read_datasets(s)[0].astype("f4") for s in shards if read_datasets(s)[1]])


def test_virtual_reads_like_contiguous(run):
    folder, shards = run
    virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
    emb, seq = read_datasets(virtual)
    np.testing.assert_array_equal(emb, concatenated(shards))
    assert seq == [i for s in shards for i in read_datasets(s)[1]]
    with h5py.File(virtual) as f:
        assert f["embeddings"].is_virtual
    report = read_merge_report(virtual)
    assert report["layout"] == "virtual"
    assert report["source_problems"] == []
    assert [s["path"] for s in report["sources"]] == ["shard_0.h5", "shard_2.h5", "shard_3.h5"]  # relative
    assert report["nonfinite_rows"] is None  # never read


def test_virtual_holds_no_embeddings(make_shard, tmp_path):
    shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 200), dim=512) for r in range(3)]  # 400 KiB each
    virtual = aggregate_shards(shards, tmp_path / "virtual.h5", layout="virtual")
    assert virtual.stat().st_size < 100_000


def test_same_validation_as_contiguous(run, make_shard):
    folder, shards = run
    with pytest.raises(ValueError, match="Missing 1 expected sequences"):
        aggregate_shards(shards, folder / "v.h5", [*ids("r0_", 40), "gone"], layout="virtual")
    dup = make_shard("dup", ["r0_3"], dim=16)
    with pytest.raises(ValueError, match="Duplicate sequence ID found: r0_3"):
        aggregate_shards([*shards, dup], folder / "v.h5", layout="virtual")
    assert not (folder / "v.h5").exists()


def test_moving_the_folder_keeps_it_working(run, tmp_path):
    folder, shards = run
    aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    emb, _ = read_datasets(moved / "virtual.h5")
    assert not np.isnan(emb).any()
    assert read_merge_report(moved / "virtual.h5")["source_problems"] == []


class TestLostSources:
    """The trap: HDF5 reads a lost source as fill values instead of failing."""

    def test_deleted_source_is_reported(self, run, caplog):
        folder, shards = run
        virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
        os.unlink(shards[2])
        emb, _ = read_datasets(virtual)
        assert np.isnan(emb[40:65]).all()
        assert not np.isnan(emb[:40]).any()
        report = read_merge_report(virtual)
        assert report["source_problems"] == [f"{shards[2]}: source shard of the virtual output {virtual} is missing"]
        assert "its rows read as NaN (or from a same-named file in the current folder)" in caplog.text

    def test_changed_source_is_reported(self, run):
        folder, shards = run
        virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
        with h5py.File(shards[0], "a") as f:
            f["embeddings"][0] = 0.0
        assert read_merge_report(virtual)["source_problems"] == [
            f"{shards[0]}: source shard of the virtual output {virtual} changed since the merge"
        ]

    def test_info_exits_1(self, run, capsys):
        folder, shards = run
        virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
        os.unlink(shards[3])
        assert main(["info", str(virtual)]) == 1
        assert "PROBLEM:" in capsys.readouterr().out

    def test_merging_a_broken_virtual_output_refuses(self, run, tmp_path):
        folder, shards = run
        virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
        os.unlink(shards[0])
        with pytest.raises(UnreadableShardError, match="virtual output with 1 lost sources"):
            aggregate_shards([virtual], tmp_path / "again.h5")

    def test_materialize_refuses(self, run, tmp_path):
        folder, shards = run
        virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
        os.unlink(shards[0])
        with pytest.raises(MergeError, match="is missing"):
            materialize(virtual, tmp_path / "solid.h5")
        assert not (tmp_path / "solid.h5").exists()


def test_materialize(run, tmp_path):
    folder, shards = run
    virtual = aggregate_shards(shards, folder / "virtual.h5", layout="virtual")
    solid = materialize(virtual, tmp_path / "solid.h5")
    for shard in shards:
        os.unlink(shard)  # the copy stands alone
    emb, seq = read_datasets(solid)
    assert not np.isnan(emb).any()
    assert len(seq) == 98
    report = read_merge_report(solid)
    assert report["layout"] == "contiguous"
    assert report["materialized_from"] == str(virtual)
    with h5py.File(solid) as f:
        assert not f["embeddings"].is_virtual
        assert f["embeddings"].chunks is None


def test_materialize_keeps_partial_findings(tmp_path):
    demo = make_demo_run(tmp_path / "demo", n_sequences=400)
    from virnucpro_merge import read_expected_ids

    virtual = aggregate_shards(demo.shard_files, tmp_path / "demo" / "v.h5", read_expected_ids(demo.index),
                               partial=True, layout="virtual")
    solid = read_merge_report(materialize(virtual, tmp_path / "solid.h5"))
    before = read_merge_report(virtual)
    for key in ("partial", "failed_shards", "missing_ids", "num_missing", "num_expected", "total_sequences"):
        assert solid[key] == before[key]
    assert solid["partial"] is True


def test_materialize_a_contiguous_output_refuses(run, tmp_path):
    folder, shards = run
    solid = aggregate_shards(shards, folder / "solid.h5")
    with pytest.raises(MergeError, match="not a virtual output"):
        materialize(solid, tmp_path / "x.h5")


def test_cli(run, capsys):
    folder, shards = run
    assert main(["-q", "aggregate", str(folder), "-o", str(folder / "v.h5"), "--layout", "virtual"]) == 0
    assert main(["-q", "materialize", str(folder / "v.h5"), "-o", str(folder / "m.h5")]) == 0
    np.testing.assert_array_equal(read_datasets(folder / "m.h5")[0], concatenated(shards))
    assert main(["info", str(folder / "v.h5")]) == 0
    assert "virtual: embeddings stay in 3 source shards" in capsys.readouterr().out


def test_virtual_refuses_fail_on_nonfinite(run):
    folder, shards = run
    with pytest.raises(MergeError, match="fail_on_nonfinite"):
        aggregate_shards(shards, folder / "v.h5", layout="virtual", fail_on_nonfinite=True)


def test_materialize_counts_nonfinite_per_source(make_shard, tmp_path):
    bad = np.ones((4, 8), "f4")
    bad[1, 2] = np.inf
    shards = [make_shard("shard_0", ids("a", 3)), make_shard("shard_1", ids("b", 4), embeddings=bad)]
    virtual = aggregate_shards(shards, tmp_path / "v.h5", layout="virtual")
    report = read_merge_report(materialize(virtual, tmp_path / "solid.h5"))
    assert [s["nonfinite_rows"] for s in report["shards"]] == [0, 1]
    assert report["nonfinite_rows"] == 1


@pytest.fixture
def percent_run(tmp_path, monkeypatch):
    from virnucpro_merge.synthetic import write_shard

    monkeypatch.chdir(tmp_path)
    Path("run_50%b").mkdir()
    a = write_shard("run_50%b/shard_0.h5", ["a", "b"], np.ones((2, 3), "f4"))
    b = write_shard("run_50%b/shard_1.h5", ["c"], np.full((1, 3), 2, "f4"))
    return [a, b]


def test_a_percent_sign_in_a_source_path(percent_run):
    """HDF5 reads a source name's % as a printf code: it is escaped, and the mapping checked."""
    out = aggregate_shards(percent_run, "virtual.h5", layout="virtual")
    assert read_datasets(out)[0][:, 0].tolist() == [1, 1, 2]
    assert read_merge_report(out)["source_problems"] == []


def test_a_virtual_output_written_through_a_symlink(percent_run):
    """The data goes where the link points (the link stays); the sources read from both names."""
    import os

    Path("real").mkdir()
    os.symlink("real/v.h5", "link.h5")
    aggregate_shards(percent_run, "link.h5", layout="virtual")
    assert Path("link.h5").is_symlink()
    for name in ("link.h5", "real/v.h5"):
        assert read_datasets(Path(name))[0][:, 0].tolist() == [1, 1, 2]
        assert read_merge_report(name)["source_problems"] == []


def test_a_virtual_output_of_a_virtual_output_is_refused(percent_run):
    virtual = aggregate_shards(percent_run, "v.h5", layout="virtual")
    with pytest.raises(MergeError, match=r"^v\.h5: is a virtual output, which another virtual output cannot map"):
        aggregate_shards([virtual], "stacked.h5", layout="virtual")
    assert not Path("stacked.h5").exists()
    contiguous = aggregate_shards([virtual], "copy.h5")  # a copy of it is fine
    assert read_datasets(contiguous)[0][:, 0].tolist() == [1, 1, 2]


def test_a_merge_onto_a_source_of_a_virtual_input_is_refused(percent_run):
    virtual = aggregate_shards(percent_run, "v.h5", layout="virtual")
    before = Path("run_50%b/shard_0.h5").read_bytes()
    for order in ("shards", "index"):
        with pytest.raises(MergeError, match="the output path is a source of a virtual input"):
            aggregate_shards([virtual], "run_50%b/shard_0.h5", ["a", "b", "c"], order=order)
    assert Path("run_50%b/shard_0.h5").read_bytes() == before


def test_materialize_a_virtual_output_of_empty_shards(make_shard, tmp_path):
    shards = [make_shard(f"shard_{rank}", []) for rank in range(2)]
    virtual = aggregate_shards(shards, tmp_path / "v.h5", layout="virtual")
    out = materialize(virtual, tmp_path / "m.h5")
    with h5py.File(out) as f:
        assert f["embeddings"].shape[0] == 0
        assert f["sequence_ids"].shape == (0,)
    report = read_merge_report(out)
    assert [Path(s["path"]).name for s in report["shards"]] == ["shard_0.h5", "shard_1.h5"]
    assert [s["status"] for s in report["shards"]] == ["empty", "empty"]
    assert report["materialized_from"] == str(virtual)
