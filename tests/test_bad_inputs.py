"""The bad-input catalogue (docs/reference/bad-inputs.md): each kind gets a clear error or a defined behaviour.

Structural problems of a single shard are in ``test_shards.py`` and expected-ID file
problems in ``test_expected.py``; this file holds the rest.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.helpers import ids, read_datasets
from virnucpro_merge import (
    MergeError,
    NonFiniteError,
    OutputError,
    ShardError,
    UnreadableShardError,
    aggregate_shards,
    inspection,
    read_merge_report,
    validate_shard_completeness,
)
from virnucpro_merge.checks import plan_merge
from virnucpro_merge.cli import main
from virnucpro_merge.plan import failed_summary
from virnucpro_merge.ranks import folder_shards
from virnucpro_merge.synthetic import make_demo_run


def raw_shard(path, embeddings, sequence_ids, ids_dtype=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=embeddings)
        f.create_dataset("sequence_ids", data=sequence_ids, dtype=ids_dtype)
    return path


def test_fixed_length_byte_ids_are_decoded(tmp_path):
    shard = raw_shard(tmp_path / "s.h5", np.ones((2, 3), "f4"), np.array(["α1".encode(), b"b2"], dtype="S4"))
    _, seq = read_datasets(aggregate_shards([shard], tmp_path / "o.h5", {"α1", "b2"}))
    assert seq == ["α1", "b2"]


def test_non_utf8_ids(tmp_path):
    shard = raw_shard(tmp_path / "s.h5", np.ones((2, 3), "f4"), np.array([b"ok", b"\xff\xfe"], dtype=object),
                      ids_dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(ShardError, match=r"s\.h5: a sequence ID near row 0 is not valid UTF-8"):
        aggregate_shards([shard], tmp_path / "o.h5")


def test_empty_and_padded_ids_kept_exactly(make_shard, tmp_path):
    odd = ["", " lead", "trail ", "\tx\n"]
    out = aggregate_shards([make_shard("shard_0", odd)], tmp_path / "o.h5", set(odd))
    assert read_datasets(out)[1] == odd


def test_same_shard_listed_twice(make_shard, tmp_path):
    shard = make_shard("shard_0", ["a"])
    with pytest.raises(ShardError, match=r"shard_0\.h5: listed twice \(also as .*shard_0\.h5\)"):
        aggregate_shards([shard, tmp_path / "." / "shard_0.h5"], tmp_path / "o.h5")


def test_extra_datasets_are_ignored(make_shard, tmp_path):
    shard = make_shard("shard_0", ["a", "b"])
    with h5py.File(shard, "a") as f:
        f.create_dataset("attention", data=np.zeros((2, 5)))
        f.create_group("meta").attrs["model"] = "esm2_t33_650M"
    _emb, seq = read_datasets(aggregate_shards([shard], tmp_path / "o.h5"))
    with h5py.File(tmp_path / "o.h5") as f:
        assert sorted(f) == ["embeddings", "merge_report", "sequence_ids"]
    assert seq == ["a", "b"]


@pytest.mark.parametrize("dtype", ["complex64", "S8"])
def test_complex_or_string_embeddings(tmp_path, dtype):
    shard = raw_shard(tmp_path / "s.h5", np.zeros((1, 2), dtype), np.array([b"a"]))
    with pytest.raises(ShardError, match=r"s\.h5: 'embeddings' has dtype .*; expected float32 or float16"):
        aggregate_shards([shard], tmp_path / "o.h5")


@pytest.mark.slow
def test_thousand_shards_one_file_open_at_a_time(tmp_path):
    """1,000 shards merge with the process allowed only 64 open files."""
    rng = np.random.default_rng(0)
    for rank in range(1000):
        raw_shard(tmp_path / f"shard_{rank}.h5", rng.standard_normal((2, 4)).astype("f4"),
                  np.array([f"r{rank}a", f"r{rank}b"], dtype=object), ids_dtype=h5py.string_dtype())
    out = tmp_path / "out" / "merged.h5"
    out.parent.mkdir()

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    done = subprocess.run([sys.executable, "-m", "virnucpro_merge", "-q", "aggregate", str(tmp_path), "-o", str(out)],
                          capture_output=True, text=True, preexec_fn=few_files, timeout=300)
    assert done.returncode == 0, done.stderr
    report = read_merge_report(out)
    assert report["total_sequences"] == 2000
    assert len(report["shards"]) == 1000
    assert read_datasets(out)[1][-2:] == ["r999a", "r999b"]


def test_shard_still_being_written(make_shard, tmp_path):
    """HDF5 file locking: a worker that still has its shard open for writing."""
    shard = make_shard("shard_0", ["a"])
    hold_open = "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold_open, str(shard)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        try:
            aggregate_shards([shard], tmp_path / "o.h5")
        except UnreadableShardError as err:
            problem = str(err)
        else:
            pytest.skip("this filesystem does not enforce HDF5 file locks")
        assert problem == f"{shard}: file is locked: is a worker still writing it?"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / "o.h5").exists()


def test_output_folder_read_only(make_shard, tmpfs):
    folder = tmpfs("ro,size=64m")
    with pytest.raises(OutputError, match=rf"{folder}/o\.h5: cannot write in folder .* \(Read-only file system\)"):
        aggregate_shards([make_shard("shard_0", ["a"])], folder / "o.h5")


class TestNonFinite:
    @pytest.fixture
    def shards(self, make_shard):
        clean = make_shard("shard_0", ids("c", 30))
        bad32 = np.ones((25, 8), "f4")
        bad32[[3, 7, 7, 20], [0, 1, 2, 5]] = [np.nan, np.inf, -np.inf, np.nan]
        bad16 = np.ones((10, 8), "f2")
        bad16[9, 0] = np.inf  # what an overflow in unstable fp16 inference leaves
        return [clean, make_shard("shard_1", ids("x", 25), embeddings=bad32),
                make_shard("shard_2", ids("y", 10), embeddings=bad16)]

    def test_counted_per_shard(self, shards, tmp_path):
        report = read_merge_report(aggregate_shards(shards, tmp_path / "o.h5", chunk_size=4))
        assert [s["nonfinite_rows"] for s in report["shards"]] == [0, 3, 1]
        assert report["nonfinite_rows"] == 4

    def test_fail_on_nonfinite(self, shards, tmp_path):
        named = r"4 rows of embeddings hold NaN or Inf, in 2 shards: .*shard_1\.h5 \(3\), .*shard_2\.h5 \(1\)"
        with pytest.raises(NonFiniteError, match=named):
            aggregate_shards(shards, tmp_path / "o.h5", fail_on_nonfinite=True)
        assert list(tmp_path.glob("o.h5*")) == []
        assert list(tmp_path.glob(".o.h5*")) == []

    def test_cli_flag_exits_1(self, shards, tmp_path, capsys):
        argv = ["aggregate", *map(str, shards), "-o", str(tmp_path / "o.h5")]
        assert main([*argv, "--fail-on-nonfinite"]) == 1
        assert "hold NaN or Inf" in capsys.readouterr().err
        assert main(argv) == 0
        assert "4 rows of embeddings hold NaN or Inf" in capsys.readouterr().err


# --------------------------------------------------------------------------- the API used wrongly


@pytest.mark.parametrize(("call", "words"), [
    (lambda s, out: aggregate_shards(str(s[0]), out), "not the one path"),
    (lambda s, out: aggregate_shards(s[0], out), "not the one path"),
    (lambda s, out: aggregate_shards([1, 2], out), "must hold paths"),
    (lambda s, out: aggregate_shards(s, out, "seq1"), "not the one str seq1"),
    (lambda s, out: aggregate_shards(s, out, [1, 2]), "must be str, not int"),
    (lambda s, out: aggregate_shards(s, out, {"a", "b\udcff"}), r"ID 'b\\udcff' is not Unicode text"),
    (lambda s, out: validate_shard_completeness(s, "a"), "not the one str a"),
    (lambda s, out: validate_shard_completeness(str(s[0]), {"a"}), "not the one path"),
    (lambda s, out: __import__("virnucpro_merge.checks", fromlist=["x"]).plan_merge(str(s[0])), "not the one path"),
    (lambda s, out: aggregate_shards(s, out, chunk_size=0), "chunk_size must be a positive integer"),
], ids=["str path", "Path", "ints", "str IDs", "int IDs", "half a surrogate pair",
        "validate str IDs", "validate str path", "plan str path",
        "chunk size"])
def test_arguments_of_the_wrong_kind_are_named(make_shard, tmp_path, call, words):
    shards = [make_shard("shard_0", ["a", "b"]), make_shard("shard_1", ["c"])]
    with pytest.raises(MergeError, match=words):
        call(shards, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_an_array_of_paths_is_a_list_of_paths(make_shard, tmp_path):
    shards = np.array([str(make_shard("shard_0", ["a"])), str(make_shard("shard_1", ["b"]))])
    out = aggregate_shards(shards, tmp_path / "o.h5", ["a", "b"])
    assert read_merge_report(out)["total_sequences"] == 2


def test_index_order_from_an_iterator(make_shard, tmp_path):
    """The IDs are read once: an iterator still gives rows in index order (not shard order)."""
    from tests.helpers import read_datasets

    shards = [make_shard("shard_0", ["s0", "s2"]), make_shard("shard_1", ["s1", "s3"])]
    out = aggregate_shards(shards, tmp_path / "o.h5", (f"s{i}" for i in range(4)), order="index")
    assert read_datasets(out)[1] == ["s0", "s1", "s2", "s3"]
    assert read_merge_report(out)["order"] == "index"


def test_same_shard_under_a_hard_link(make_shard, tmp_path):
    shard = make_shard("shard_0", ["a"])
    (tmp_path / "sub").mkdir()
    os.link(shard, tmp_path / "sub" / "shard_0.h5")
    with pytest.raises(ShardError, match=r"listed twice"):
        aggregate_shards([shard, tmp_path / "sub" / "shard_0.h5"], tmp_path / "o.h5")


def test_output_a_hard_link_of_a_shard(make_shard, tmp_path):
    shard = make_shard("shard_0", ["a"])
    os.link(shard, tmp_path / "o.h5")
    with pytest.raises(OutputError, match=r"o\.h5: "):
        aggregate_shards([shard], tmp_path / "o.h5")
    assert read_datasets(shard)[1] == ["a"]


@pytest.fixture
def stray_run(make_shard, tmp_path):
    """Two real shards and a stray ``shard_5000.h5``: 4,998 ranks without a file."""
    for rank in range(2):
        make_shard(f"shard_{rank}", ids(f"r{rank}_", 3))
    make_shard("shard_5000", ["stray"])
    return tmp_path


def test_strict_merge_looks_no_further_than_the_first_absent_rank(stray_run, monkeypatch):
    import virnucpro_merge.readahead as reading  # (where a merge opens its shards to read their metadata)

    opened = []
    real = reading.open_shard
    monkeypatch.setattr(reading, "open_shard", lambda path: opened.append(path) or real(path))
    with pytest.raises(UnreadableShardError, match=r"shard_2\.h5: file does not exist"):
        aggregate_shards(folder_shards(stray_run), stray_run / "o.h5")
    assert [path.name for path in opened] == ["shard_0.h5", "shard_1.h5", "shard_2.h5"]  # not 4,998 more


def test_partial_merge_summarises_absent_ranks_in_one_line(stray_run, caplog):
    with caplog.at_level("WARNING", logger="virnucpro_merge"):
        aggregate_shards(folder_shards(stray_run), stray_run / "o.h5", partial=True)
    skipping = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert skipping == [f"Skipping 4,998 absent shards, ranks 2-4999 (in {stray_run}) (partial merge)"]
    assert read_datasets(stray_run / "o.h5")[1] == [*ids("r0_", 3), *ids("r1_", 3), "stray"]


def test_failed_summary_keeps_other_failures_one_a_line(stray_run):
    (stray_run / "shard_3.h5").write_bytes(b"not hdf5")
    (stray_run / "notes.h5").write_bytes(b"")
    plan = plan_merge([*folder_shards(stray_run), stray_run / "notes.h5"], partial=True)
    lines = failed_summary(plan)
    assert lines[0] == f"4,997 absent shards, ranks 2, 4-4999 (in {stray_run})"
    assert lines[1:] == [
        f"{stray_run / 'shard_3.h5'}: not an HDF5 file",
        f"{stray_run / 'notes.h5'}: empty file (0 bytes): the worker died before writing it",
    ]


def test_validate_says_failed_not_skipping(stray_run, capsys):
    index = stray_run / "ids.txt"
    index.write_text("\n".join([*ids("r0_", 3), *ids("r1_", 3), "stray"]) + "\n")
    code = main(["validate", str(stray_run), "--expected", str(index)])
    out, err = capsys.readouterr()
    assert "Skipping" not in out + err
    assert f"failed: 4,998 absent shards, ranks 2-4999 (in {stray_run})" in out
    assert out.startswith("COMPLETE: all 7 expected sequences are there\n")  # (every one of them is in a shard)
    assert code == 0  # complete, though the stray name makes gaps of absent shards, which it lists


# --------------------------------------------------------------------------- a shard without its IDs (issue 20)


@pytest.fixture
def ids_never_written(tmp_path):
    """A run folder whose rank 1 was killed between its two writes (usual on Lustre without
    file locking): ``embeddings`` there, ``sequence_ids`` not."""
    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=4, dim=4, truncated=(), absent=(), empty=(),
                        short={})
    with h5py.File(run.shard_files[1], "r+") as f:
        del f["sequence_ids"]
    return run


@pytest.mark.parametrize("argv", [["aggregate", "{run}", "--partial", "-o", "{out}"],
                                  ["aggregate", "{run}", "--partial", "-o", "{out}", "--expected", "{index}"],
                                  ["validate", "{run}", "--expected", "{index}"],
                                  ["aggregate", "{run}", "-o", "{out}", "--expected", "{index}"],
                                  ["aggregate", "{run}", "--partial", "-o", "{out}", "--expected", "{index}",
                                   "--order", "index"],
                                  ["verify", "{merged}", "--against", "{run}"]],
                         ids=["partial", "partial, expected", "validate", "strict", "index order", "verify against"])
def test_a_shard_without_ids_is_one_line_never_a_traceback(ids_never_written, tmp_path, capsys, argv):
    run = ids_never_written
    merged = tmp_path / "whole.h5"
    good = [p for i, p in enumerate(run.shard_files) if i != 1]
    aggregate_shards(good, merged)
    words = {"run": run.directory, "out": tmp_path / "m.h5", "index": run.index, "merged": merged}
    code = main([arg.format(**words) for arg in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "KeyError" not in err
    problem = "no 'sequence_ids' dataset (was the worker killed before writing it?)"
    if argv[0] == "verify":
        assert code == 0  # its rows are in no shard compared with: said in a note
        return
    if "--partial" in argv:
        assert code == 0
        assert f"Skipping {run.shard_files[1]}: {problem} (partial merge)" in err
    elif argv[0] == "validate":
        assert code in (1, 2)
    else:
        assert code == 2
        assert err.strip().splitlines()[-1] == f"virnucpro-merge: error: {run.shard_files[1]}: {problem}"


def test_the_world_size_is_read_past_a_shard_without_ids(ids_never_written):
    run = ids_never_written
    assert len(folder_shards(run.directory, index_ids=run.sequence_ids)) == 4
    found = inspection.inspect_run(run.directory)
    assert found.shards[1].status == "failed"
    assert "sequence_ids" in found.shards[1].error
