"""aggregate_shards beyond the seed tests: partial runs, dtypes, atomic output, report."""

from __future__ import annotations

import itertools
import logging
import os
import time

import h5py
import numpy as np
import pytest

from tests.helpers import ids, read_datasets
from virnucpro_merge import (
    DuplicateIdError,
    MergeError,
    MissingIdsError,
    OutputError,
    UnreadableShardError,
    aggregate_shards,
    read_merge_report,
)


@pytest.fixture
def crashed_run(make_shard, tmp_path):
    """Four workers: 0 fine, 1 truncated, 2 never wrote, 3 idle (0, 0)."""
    good = make_shard("shard_0", ["a", "b"])
    truncated = make_shard("shard_1", ["c", "d"])
    os.truncate(truncated, truncated.stat().st_size // 2)
    absent = tmp_path / "shard_2.h5"
    idle = make_shard("shard_3", [])
    return [good, truncated, absent, idle]


class TestPartial:
    def test_strict_merge_stops_at_the_crashed_worker(self, crashed_run, tmp_path):
        with pytest.raises(UnreadableShardError, match=r"shard_1\.h5: truncated"):
            aggregate_shards(crashed_run, tmp_path / "out.h5")
        assert not (tmp_path / "out.h5").exists()

    def test_absent_shard_is_named(self, make_shard, tmp_path):
        with pytest.raises(ValueError, match=r"shard_9\.h5: file does not exist"):
            aggregate_shards([make_shard("shard_0", ["a"]), tmp_path / "shard_9.h5"], tmp_path / "out.h5")

    def test_partial_merge_skips_and_records(self, crashed_run, tmp_path):
        out = aggregate_shards(crashed_run, tmp_path / "out.h5", {"a", "b", "c", "d", "e"}, partial=True)
        emb, seq = read_datasets(out)
        assert seq == ["a", "b"]
        assert emb.shape == (2, 8)
        report = read_merge_report(out)
        assert report["partial"] is True
        assert [s["status"] for s in report["shards"]] == ["ok", "failed", "failed", "empty"]
        assert report["failed_shards"] == [str(crashed_run[1]), str(crashed_run[2])]
        assert report["missing_ids"] == ["c", "d", "e"]
        assert report["num_missing"] == 3
        assert report["num_expected"] == 5
        assert "truncated" in report["shards"][1]["error"]
        assert report["shards"][2]["error"] == "file does not exist"

    def test_partial_with_missing_ids_only(self, make_shard, tmp_path):
        out = aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "o.h5", ["a", "z"], partial=True)
        report = read_merge_report(out)
        assert report["partial"] is True
        assert report["failed_shards"] == []
        assert report["missing_ids"] == ["z"]

    def test_partial_flag_false_when_nothing_failed(self, make_shard, tmp_path):
        out = aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "o.h5", ["a"], partial=True)
        assert read_merge_report(out)["partial"] is False

    def test_partial_still_refuses_incompatible_shards(self, make_shard, tmp_path):
        a = make_shard("shard_0", ["a"], dim=4)
        b = make_shard("shard_1", ["b"], dim=5)
        with pytest.raises(ValueError, match="embedding dimension"):
            aggregate_shards([a, b], tmp_path / "o.h5", partial=True)

    def test_partial_logs_what_it_skipped(self, crashed_run, tmp_path, caplog):
        with caplog.at_level(logging.INFO, logger="virnucpro_merge"):
            aggregate_shards(crashed_run, tmp_path / "out.h5", {"a", "b", "q"}, partial=True)
        text = caplog.text
        assert "shard_1.h5" in text
        assert "shard_2.h5" in text
        assert "Missing 1 expected sequences" in text
        assert f"Aggregation complete: {tmp_path / 'out.h5'}, 2 sequences" in text


class TestDtypesAndIds:
    def test_float16_is_upcast_exactly(self, make_shard, tmp_path):
        half = np.array([[0.1, 65504.0, -2.0**-24, np.inf], [np.nan, 1.0, -0.0, 3.0]], dtype=np.float16)
        a = make_shard("shard_0", ["h1", "h2"], embeddings=half)
        b = make_shard("shard_1", ["f1"], embeddings=np.array([[1, 2, 3, 4]], np.float32))
        emb, _ = read_datasets(aggregate_shards([a, b], tmp_path / "o.h5", chunk_size=1))
        assert emb.dtype == np.float32
        np.testing.assert_array_equal(emb[:2], half.astype(np.float32))
        assert np.signbit(emb[1, 2])

    def test_unicode_and_odd_ids_round_trip(self, make_shard, tmp_path):
        odd = ["NC_045512.2|ORF1ab", "β-coronavirus", "病毒_1", "emoji🦠", " padded ", "", "tab\tid"]
        _emb, seq = read_datasets(aggregate_shards([make_shard("shard_0", odd)], tmp_path / "o.h5"))
        assert seq == odd

    def test_merged_file_is_a_valid_shard(self, make_shard, tmp_path):
        first = aggregate_shards([make_shard("shard_0", ["a"]), make_shard("shard_1", ["b"])], tmp_path / "m1.h5")
        second = aggregate_shards([first, make_shard("shard_2", ["c"])], tmp_path / "m2.h5", ["a", "b", "c"])
        emb, seq = read_datasets(second)
        assert seq == ["a", "b", "c"]
        np.testing.assert_array_equal(emb[:2], read_datasets(first)[0])


class TestOutput:
    def test_layout_is_contiguous_or_whole_row_chunks(self, make_shard, tmp_path):
        out = aggregate_shards([make_shard("shard_0", ids("s", 50), dim=1280)], tmp_path / "o.h5")
        with h5py.File(out) as f:
            chunks = f["embeddings"].chunks
            assert chunks is None or chunks[1] == 1280
            assert h5py.check_string_dtype(f["sequence_ids"].dtype).encoding == "utf-8"

    def test_replaces_existing_output_on_success(self, make_shard, tmp_path):
        target = tmp_path / "o.h5"
        target.write_bytes(b"old contents")
        aggregate_shards([make_shard("shard_0", ["new"])], target)
        assert read_datasets(target)[1] == ["new"]
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

    def test_existing_output_survives_missing_ids(self, make_shard, tmp_path):
        target = tmp_path / "o.h5"
        target.write_bytes(b"previous good merge")
        with pytest.raises(MissingIdsError):
            aggregate_shards([make_shard("shard_0", ["a"])], target, ["a", "b"])
        assert target.read_bytes() == b"previous good merge"

    def test_output_permissions_follow_umask(self, make_shard, tmp_path):
        old = os.umask(0o022)
        try:
            out = aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "o.h5")
        finally:
            os.umask(old)
        assert out.stat().st_mode & 0o777 == 0o644

    def test_output_folder_missing(self, make_shard, tmp_path):
        with pytest.raises(OutputError, match="does not exist"):
            aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "nope" / "o.h5")

    def test_output_is_an_input(self, make_shard, tmp_path):
        shard = make_shard("shard_0", ["a"])
        before = shard.read_bytes()
        with pytest.raises(OutputError, match="also an input shard"):
            aggregate_shards([shard], tmp_path / "." / "shard_0.h5")
        assert shard.read_bytes() == before

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
    def test_output_folder_not_writable(self, make_shard, tmp_path):
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="cannot write"):
            aggregate_shards([make_shard("shard_0", ["a"])], folder / "o.h5")

    @pytest.mark.parametrize("bad", [0, -5, 2.5, True])
    def test_bad_chunk_size(self, make_shard, tmp_path, bad):
        with pytest.raises(MergeError, match="chunk_size"):
            aggregate_shards([make_shard("shard_0", ["a"])], tmp_path / "o.h5", chunk_size=bad)

    def test_progress_bar(self, make_shard, tmp_path, capsys):
        aggregate_shards([make_shard("shard_0", ids("s", 30))], tmp_path / "o.h5", chunk_size=10, progress=True)
        assert "30/30" in capsys.readouterr().err

    def test_no_progress_bar_by_default(self, make_shard, tmp_path, capsys):
        aggregate_shards([make_shard("shard_0", ids("s", 30))], tmp_path / "o.h5")
        assert capsys.readouterr().err == ""


class TestReport:
    def test_offsets_and_counts(self, make_shard, tmp_path):
        shards = [make_shard(f"shard_{r}", ids(f"r{r}_", n)) for r, n in enumerate([3, 0, 5, 2])]
        report = read_merge_report(aggregate_shards(shards, tmp_path / "o.h5", chunk_size=2))
        assert [s["offset"] for s in report["shards"]] == [0, 3, 3, 8]
        assert [s["num_sequences"] for s in report["shards"]] == [3, 0, 5, 2]
        assert [s["path"] for s in report["shards"]] == [str(s) for s in shards]
        assert report["total_sequences"] == 10
        assert report["embedding_dim"] == 8
        assert report["partial"] is False
        assert report["failed_shards"] == []
        assert report["missing_ids"] == []

    def test_many_missing_ids_are_stored(self, make_shard, tmp_path):
        expected = ["have", *ids("gone", 20000)]
        out = aggregate_shards([make_shard("shard_0", ["have"])], tmp_path / "o.h5", expected, partial=True)
        assert read_merge_report(out)["missing_ids"] == sorted(ids("gone", 20000))

    def test_plain_shard_has_no_report(self, make_shard):
        shard = make_shard("shard_0", ["a"])
        with pytest.raises(MergeError, match="not a merged output"):
            read_merge_report(shard)


class TestCopyPaths:
    """Raw-byte copies and h5py copies give the same bytes, in any mix."""

    @pytest.fixture
    def mixed(self, make_shard, tmp_path, rng):
        plain = make_shard("shard_0", ids("a", 37), dim=16)
        half = make_shard("shard_1", ids("b", 23), dim=16, dtype="float16")
        packed = tmp_path / "shard_2.h5"
        with h5py.File(packed, "w") as f:
            f.create_dataset("embeddings", data=rng.standard_normal((41, 16)).astype("f4"),
                             chunks=(8, 16), compression="gzip")
            f.create_dataset("sequence_ids", data=ids("c", 41), dtype=h5py.string_dtype())
        big_endian = tmp_path / "shard_3.h5"
        with h5py.File(big_endian, "w") as f:
            f.create_dataset("embeddings", data=rng.standard_normal((5, 16)).astype(">f4"))
            f.create_dataset("sequence_ids", data=ids("d", 5), dtype=h5py.string_dtype())
        return [plain, half, packed, big_endian]

    def expected(self, shards):
        return np.concatenate([read_datasets(s)[0].astype("f4") for s in shards])

    def test_mixed_layouts(self, mixed, tmp_path):
        emb, seq = read_datasets(aggregate_shards(mixed, tmp_path / "o.h5", chunk_size=6))
        np.testing.assert_array_equal(emb, self.expected(mixed))
        assert seq == ids("a", 37) + ids("b", 23) + ids("c", 41) + ids("d", 5)

    @pytest.mark.parametrize("errno_name", ["ENOSYS", "EXDEV"])
    def test_fallback_without_copy_file_range(self, mixed, tmp_path, monkeypatch, errno_name):
        import errno as errno_module

        def refuse(*args):
            code = getattr(errno_module, errno_name)
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "copy_file_range", refuse)
        emb, _ = read_datasets(aggregate_shards(mixed, tmp_path / "o.h5", chunk_size=6))
        np.testing.assert_array_equal(emb, self.expected(mixed))

    @pytest.mark.parametrize(("owner", "step", "order"), [
        ("merge", "draft_plan", "shards"), ("merge", "plan_merge", "index"),
        ("_write.outfile", "refuse_changed", "shards"), ("_write.outfile", "refuse_changed", "index")])
    def test_shard_changed_after_planning(self, make_shard, tmp_path, monkeypatch, owner, step, order):
        """A worker rewrites its file after the merge read it: before or during the copy."""
        import importlib

        module = importlib.import_module(f"virnucpro_merge.{owner}")
        shard = make_shard("shard_0", ids("a", 10))
        original = getattr(module, step)

        def then_rewrite(*args, **kwargs):
            result = original(*args, **kwargs)
            make_shard("shard_0", ids("a", 12))
            return result

        monkeypatch.setattr(module, step, then_rewrite)
        with pytest.raises(ValueError, match=r"shard_0\.h5: changed while the merge was running"):
            aggregate_shards([shard], tmp_path / "o.h5", ids("a", 10), order=order)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_0.h5"]

    def test_the_scan_beside_the_copy_fails_the_merge(self, make_shard, tmp_path, monkeypatch):
        """The NaN scan and checksums of raw-copied shards run on a thread of their own:
        a failure there ends the copy too, and leaves nothing behind."""
        from virnucpro_merge._write import copy as copy_module

        shards = [make_shard(f"shard_{r}", ids(f"r{r}-", 300), dim=8) for r in range(3)]
        scanned, original = [], copy_module.scan_rows

        def fail_on_the_fourth(block, start, checksums, tally=None):
            scanned.append(start)
            if len(scanned) == 4:
                raise UnreadableShardError(shards[1], "truncated: the embeddings end early")
            return original(block, start, checksums, tally)

        monkeypatch.setattr(copy_module, "scan_rows", fail_on_the_fourth)
        with pytest.raises(UnreadableShardError, match=r"shard_1\.h5: truncated: the embeddings end early"):
            aggregate_shards(shards, tmp_path / "o.h5", chunk_size=100)
        assert sorted(p.name for p in tmp_path.iterdir()) == [s.name for s in shards]
        assert len(scanned) == 4, "the scan went on after it failed"


def test_h5py_rows_next_to_raw_rows(make_shard, tmp_path):
    """Small h5py-path writes just before raw-copied rows must not be written back over them."""
    kinds = ["float16", "float32", "float16", "float32", "float32", "float16"]
    shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 30 + r), dtype=k) for r, k in enumerate(kinds)]
    emb, _ = read_datasets(aggregate_shards(shards, tmp_path / "o.h5", chunk_size=32))
    np.testing.assert_array_equal(emb, np.concatenate([read_datasets(s)[0].astype("f4") for s in shards]))


def _break_ids(shard):
    """Damage the heap holding a shard's IDs: its metadata still reads, its IDs do not."""
    data = bytearray(shard.read_bytes())
    at = data.find(b"GCOL")
    assert at > 0
    data[at : at + 4] = b"XXXX"
    shard.write_bytes(data)
    return shard


class TestCopyWhileChecking:
    """A plain merge copies embeddings into its temp file while the IDs are checked."""

    def test_a_duplicate_stops_the_copy(self, make_shard, tmp_path, monkeypatch):
        from virnucpro_merge._write import sysio

        shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 100)) for r in range(3)]
        shards.append(make_shard("shard_3", ["r0_0"]))
        out = tmp_path / "o.h5"
        out.write_bytes(b"previous good merge")
        copy_bytes, calls = sysio.copy_bytes, []

        def slow_copy(*args):
            calls.append(args[2])
            time.sleep(0.05)
            return copy_bytes(*args)

        monkeypatch.setattr(sysio, "copy_bytes", slow_copy)
        with pytest.raises(DuplicateIdError, match="r0_0"):
            aggregate_shards(shards, out, chunk_size=10)
        assert 1 <= len(calls) < 30 // 2  # 31 chunks in all; the check takes milliseconds
        assert out.read_bytes() == b"previous good merge"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5"] + [s.name for s in shards]

    def test_unreadable_ids_in_a_partial_merge(self, make_shard, tmp_path):
        """Metadata fine, IDs not: the rows after that shard move, and the merge starts over."""
        first = make_shard("shard_0", ids("a", 20), dim=4)
        broken = _break_ids(make_shard("shard_1", ids("b", 5), dim=4))
        last = make_shard("shard_2", ids("c", 7), dim=4, dtype="float16")
        out = aggregate_shards([first, broken, last], tmp_path / "o.h5", chunk_size=6, partial=True)
        emb, seq = read_datasets(out)
        assert seq == ids("a", 20) + ids("c", 7)
        np.testing.assert_array_equal(emb, np.concatenate([read_datasets(s)[0].astype("f4") for s in (first, last)]))
        report = read_merge_report(out)
        assert [s["status"] for s in report["shards"]] == ["ok", "failed", "ok"]
        assert "cannot read 'sequence_ids'" in report["shards"][1]["error"]
        assert [s["offset"] for s in report["shards"] if s["status"] == "ok"] == [0, 20]

    def test_unreadable_ids_in_a_strict_merge(self, make_shard, tmp_path):
        shards = [make_shard("shard_0", ids("a", 20)), _break_ids(make_shard("shard_1", ids("b", 5)))]
        with pytest.raises(UnreadableShardError, match=r"shard_1.h5: cannot read 'sequence_ids'"):
            aggregate_shards(shards, tmp_path / "o.h5")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_0.h5", "shard_1.h5"]

    def test_a_duplicate_is_named_before_a_full_disk(self, make_shard, tmpfs):
        shards = [make_shard("shard_0", ["x", "y"], dim=512 * 1024)]  # 4 MiB of embeddings
        shards.append(make_shard("shard_1", ["x"], dim=512 * 1024))
        small = tmpfs("size=2m")
        with pytest.raises(DuplicateIdError):
            aggregate_shards(shards, small / "o.h5")
        with pytest.raises(OutputError, match="not enough free space"):
            aggregate_shards(shards[:1], small / "o.h5")
        assert list(small.iterdir()) == []

    def test_the_space_is_reserved_before_copying(self, make_shard, tmpfs, monkeypatch):
        """Past the free-space estimate (here: switched off), a full disk fails at once."""
        from virnucpro_merge import outputs
        from virnucpro_merge._write import sysio

        shard = make_shard("shard_0", ["x", "y"], dim=512 * 1024)
        small = tmpfs("size=2m")
        copies = []
        monkeypatch.setattr(outputs, "room_problem", lambda *args: None)
        monkeypatch.setattr(sysio, "copy_bytes", lambda *args: copies.append(args))
        with pytest.raises(OutputError, match=r"o.h5: cannot write the merged file \(\[Errno 28\]"):
            aggregate_shards([shard], small / "o.h5")
        assert copies == []
        assert list(small.iterdir()) == []

    def test_every_written_row_is_sent_to_disk(self, make_shard, tmp_path, monkeypatch):
        """Reserved once, written back span by span: together, exactly the embeddings."""
        from virnucpro_merge._write import sysio

        calls = []
        call = sysio.libc_call

        def spy(name, argtypes, *args):
            calls.append((name, args[-3:-1] if name == "sync_file_range" else args[-2:]))
            return call(name, argtypes, *args)

        class EveryHint(sysio.ThreadPoolExecutor):
            """Hints still queued at close are dropped (the fsync follows); here, all run."""

            def shutdown(self, wait=True, *, cancel_futures=False):
                super().shutdown(wait=True)

        monkeypatch.setattr(sysio, "libc_call", spy)
        monkeypatch.setattr(sysio, "ThreadPoolExecutor", EveryHint)
        shards = [make_shard("shard_0", ids("a", 25), dim=16),
                  make_shard("shard_1", ids("b", 9), dim=16, dtype="float16")]
        out = aggregate_shards(shards, tmp_path / "o.h5", chunk_size=10)
        with h5py.File(out) as f:
            start, size = f["embeddings"].id.get_offset(), 34 * 16 * 4
        assert [args for name, args in calls if name == "fallocate"] == [(start, size)]
        spans = sorted(args for name, args in calls if name == "sync_file_range")
        assert len(spans) == 4  # 3 chunks copied raw, 1 through h5py
        assert spans[0][0] == start
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
        assert spans[-1][0] + spans[-1][1] == start + size


def test_a_copy_thrown_away_does_not_fail_the_merge(make_shard, tmp_path, monkeypatch):
    """Partial merge, a shard's IDs unreadable *and* its raw copy failing (a bad disk area):
    the copy is thrown away, so its error must not stop the merge written without that shard."""
    import errno

    from virnucpro_merge._write import sysio

    first = make_shard("shard_0", ids("a", 20), dim=4)
    broken = _break_ids(make_shard("shard_1", ids("b", 5), dim=4))
    last = make_shard("shard_2", ids("c", 7), dim=4)
    copy_bytes = sysio.copy_bytes

    def failing_on_the_broken_shard(src, *args):
        if os.readlink(f"/proc/self/fd/{src}").endswith("shard_1.h5"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return copy_bytes(src, *args)

    monkeypatch.setattr(sysio, "copy_bytes", failing_on_the_broken_shard)
    out = aggregate_shards([first, broken, last], tmp_path / "o.h5", chunk_size=6, partial=True)
    assert [s["status"] for s in read_merge_report(out)["shards"]] == ["ok", "failed", "ok"]
    assert read_datasets(out)[1] == ids("a", 20) + ids("c", 7)


def _shard_with_a_nul_in_an_id(path):
    """A fixed-length ID dataset can hold b'a\\x00b'; no variable-length string can."""
    with h5py.File(path, "w") as f:
        f["embeddings"] = np.zeros((2, 8), np.float32)  # (make_shard's width)
        f["sequence_ids"] = np.array([b"a\x00b", b"p1"], dtype="S3")
    return path


@pytest.mark.parametrize("batch", [10, 2**16])
def test_an_id_the_output_cannot_hold_is_its_shards_problem_however_the_ids_are_batched(make_shard, tmp_path,
                                                                                         monkeypatch, batch):
    """Named as the shard's, strict or partial, whatever shard is read when the IDs are written."""
    import virnucpro_merge.merge as merge_module

    monkeypatch.setattr(merge_module, "ID_BATCH", batch)
    bad = _shard_with_a_nul_in_an_id(tmp_path / "shard_0.h5")
    good = make_shard("shard_1", [f"q{i}" for i in range(30)])
    with pytest.raises(UnreadableShardError, match=r"shard_0\.h5: the sequence ID at row 0 holds a NUL byte"):
        aggregate_shards([bad, good], tmp_path / "m.h5")
    merged = aggregate_shards([bad, good], tmp_path / "m.h5", partial=True)
    with h5py.File(merged) as f:
        assert f["sequence_ids"].asstr()[:].tolist() == [f"q{i}" for i in range(30)]


def test_an_id_write_that_fails_is_the_outputs_not_the_shard_being_read(make_shard, tmp_path, monkeypatch):
    from virnucpro_merge import OutputError
    from virnucpro_merge.checksums import ChecksummedIds

    def full_disk(self, where, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ChecksummedIds, "__setitem__", full_disk)
    shards = [make_shard(f"shard_{r}", [f"s{r}_{i}" for i in range(5)]) for r in range(3)]
    with pytest.raises(OutputError, match=r"m\.h5: cannot write the merged file's sequence IDs \(.*No space left"):
        aggregate_shards(shards, tmp_path / "m.h5", partial=True)
    assert not (tmp_path / "m.h5").exists()
