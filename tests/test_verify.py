"""A merged file proves it is intact: checksums recorded by the merge, ``verify_merged``."""

from __future__ import annotations

import itertools
import json
import os
import zlib

import h5py
import numpy as np
import pytest

from tests.helpers import ids, read_datasets
from virnucpro_merge import MergeError, aggregate_shards, materialize, read_expected_ids, verify_merged
from virnucpro_merge.checksums import rows_checksum
from virnucpro_merge.cli import main
from virnucpro_merge.synthetic import make_demo_run, write_shard


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 ranks, two of them failed: the merges below are partial, with missing IDs."""
    return make_demo_run(tmp_path_factory.mktemp("run"), n_sequences=3000, world_size=8, dim=32, seed=5)


@pytest.fixture
def merged(run, tmp_path):
    return aggregate_shards(run.shard_files, tmp_path / "m.h5", read_expected_ids(run.index), partial=True,
                            chunk_size=100)


def flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


def edit_summary(path, edit):
    """Change a merged file's report summary in place (as a damaged or edited file would be)."""
    with h5py.File(path, "r+") as f:
        summary = json.loads(f["merge_report/summary"].asstr()[()])
        edit(summary)
        del f["merge_report/summary"]
        f["merge_report/summary"] = json.dumps(summary)


def row_offset(path, row, dim):
    with h5py.File(path) as f:
        return f["embeddings"].id.get_offset() + row * dim * 4


class TestFreshMergesVerify:
    @pytest.mark.parametrize("options", [{}, {"order": "index"}, {"layout": "virtual"}, {"durable": False}],
                             ids=["shards", "index", "virtual", "not durable"])
    def test_every_route(self, run, tmp_path, options):
        expected = read_expected_ids(run.index)
        out = aggregate_shards(run.shard_files, tmp_path / "m.h5", list(expected), partial=True, **options)
        found = verify_merged(out)
        assert found.intact, found.problems
        assert verify_merged(out, run.shard_files).intact

    def test_materialized(self, run, tmp_path):
        virtual = aggregate_shards(run.shard_files, tmp_path / "v.h5", partial=True, layout="virtual")
        found = verify_merged(materialize(virtual, tmp_path / "m.h5"))
        assert found.intact
        assert "of rows checksummed" in found.summary()

    def test_float16_and_fixed_length_ids(self, tmp_path, rng):
        half = write_shard(tmp_path / "a.h5", ids("a", 300), rng.random((300, 8)).astype("f2"))
        with h5py.File(tmp_path / "b.h5", "w") as f:  # fixed-length byte-string IDs
            f["embeddings"] = rng.random((5, 8), dtype=np.float32)
            f["sequence_ids"] = np.array([b"b1", b"b2", b"b3", b"b4", b"b5"], dtype="S4")
        out = aggregate_shards([half, tmp_path / "b.h5"], tmp_path / "m.h5", chunk_size=64)
        assert verify_merged(out, [half, tmp_path / "b.h5"]).intact

    def test_a_run_of_empty_shards(self, make_shard, tmp_path):
        out = aggregate_shards([make_shard("s0", []), make_shard("s1", [])], tmp_path / "m.h5")
        assert verify_merged(out).intact


class TestDamageIsCaughtAndLocated:
    def test_one_byte_of_the_embeddings(self, merged):
        dim = read_datasets(merged)[0].shape[1]
        flip_byte(merged, row_offset(merged, 1234, dim) + 5)
        found = verify_merged(merged)
        assert not found.intact
        (start, stop), = found.bad_rows
        assert start <= 1234 < stop
        assert found.problems[0] == (f"{merged}: rows {start}-{stop - 1} do not match the checksum the merge "
                                     f"recorded (1 of {found.summary().split(' of ')[1].split()[0]} blocks bad)")

    def test_one_byte_of_an_id(self, merged):
        ids_now = read_datasets(merged)[1]
        target = ids_now[777].encode()
        data = merged.read_bytes()
        assert data.count(target) == 1
        flip_byte(merged, data.index(target) + len(target) - 1)
        found = verify_merged(merged)
        assert not found.intact
        assert "do not match the checksum" in found.problems[0]
        assert "the IDs of rows" in found.problems[0]

    def test_two_rows_swapped(self, merged):
        with h5py.File(merged, "r+") as f:
            emb = f["embeddings"]
            a, b = emb[10], emb[1500]
            emb[10], emb[1500] = b, a
        found = verify_merged(merged)
        assert len(found.bad_rows) == 2
        assert found.bad_rows[0][0] <= 10 < found.bad_rows[0][1]
        assert found.bad_rows[1][0] <= 1500 < found.bad_rows[1][1]

    def test_two_ids_swapped(self, merged):
        with h5py.File(merged, "r+") as f:
            seq = f["sequence_ids"]
            a, b = seq[3], seq[4]
            seq[3], seq[4] = b, a
        assert "the IDs of rows 0-" in verify_merged(merged).problems[0]

    def test_a_truncated_file(self, merged, capsys):
        with open(merged, "r+b") as fh:
            fh.truncate(os.path.getsize(merged) // 2)
        found = verify_merged(merged)
        assert found.problems[0].startswith(f"{merged}: damaged: HDF5 cannot open it (")
        assert main(["verify", str(merged)]) == 1
        assert capsys.readouterr().err.startswith(f"virnucpro-merge: error: {merged}: damaged")

    def test_a_missing_id_dropped_from_the_report(self, merged):
        with h5py.File(merged, "r+") as f:
            kept = f["merge_report/missing_ids"].asstr()[1:]
            del f["merge_report/missing_ids"]
            f["merge_report"].create_dataset("missing_ids", data=kept.astype(object), dtype=h5py.string_dtype())
        found = verify_merged(merged)
        assert found.problems == [f"{merged}: the report lists {len(kept)} missing IDs, its summary says "
                                  f"{len(kept) + 1}",
                                  f"{merged}: the report's missing IDs do not match the checksum the merge recorded"]

    def test_a_missing_id_that_is_present(self, merged):
        with h5py.File(merged, "r+") as f:
            missing = f["merge_report/missing_ids"].asstr()[:].tolist()
            present = f["sequence_ids"].asstr()[0]
            del f["merge_report/missing_ids"]
            f["merge_report"].create_dataset("missing_ids", data=np.array(sorted([*missing[1:], present]), object),
                                             dtype=h5py.string_dtype())
        assert any(f"lists {present} as missing, but it is in 'sequence_ids'" in p
                   for p in verify_merged(merged).problems)

    def test_a_row_that_differs_from_its_shard(self, run, tmp_path):
        shards = [tmp_path / p.name for p in run.shard_files if p.exists()]
        for src, dst in zip([p for p in run.shard_files if p.exists()], shards, strict=True):
            dst.write_bytes(src.read_bytes())
        out = aggregate_shards(shards, tmp_path / "m.h5", partial=True)
        with h5py.File(shards[1], "r+") as f:
            f["embeddings"][3, 0] += 1
            changed = f["sequence_ids"].asstr()[3]
        found = verify_merged(out, shards)
        assert found.problems[0].startswith(f"{out}: row ")
        assert f"({changed}) differs from row 3 of {shards[1]}" in found.problems[0]
        assert verify_merged(out).intact  # the file itself is as written


class TestOlderAndOtherFiles:
    def test_merged_before_checksums_existed(self, merged, capsys):
        edit_summary(merged, lambda summary: summary.pop("checksums"))
        with h5py.File(merged, "r+") as f:
            del f["merge_report/embedding_checksums"], f["merge_report/id_checksums"]
        found = verify_merged(merged)
        assert found.intact
        assert "merged before checksums existed: its rows cannot be checked" in found.summary()
        assert main(["verify", str(merged)]) == 0

    def test_a_virtual_output_whose_source_changed(self, run, tmp_path):
        shards = [tmp_path / p.name for p in run.shard_files if p.exists()]
        for src, dst in zip([p for p in run.shard_files if p.exists()], shards, strict=True):
            dst.write_bytes(src.read_bytes())
        out = aggregate_shards(shards, tmp_path / "v.h5", partial=True, layout="virtual")
        with open(shards[0], "ab") as fh:
            fh.write(b"\0")
        assert "changed since the merge" in verify_merged(out).problems[0]

    def test_a_plain_shard_is_not_verifiable(self, run, capsys):
        with pytest.raises(MergeError, match="not a merged output"):
            verify_merged(run.shard_files[0])
        assert main(["verify", str(run.shard_files[0])]) == 2
        assert main(["verify", "no/such.h5"]) == 2

    def test_cli_intact_and_against(self, run, merged, capsys):
        assert main(["verify", str(merged), "--against", str(run.shard_files[0].parent)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{merged}: intact (structure, ")
        assert "rows compared with 6 shards" in out


class TestDurable:
    def test_not_durable_skips_fsync_only(self, make_shard, tmp_path, monkeypatch):
        shard = make_shard("s0", ids("a", 50))
        calls = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
        aggregate_shards([shard], tmp_path / "durable.h5")
        assert calls
        calls.clear()
        aggregate_shards([shard], tmp_path / "fast.h5", durable=False)
        assert calls == []
        assert read_datasets(tmp_path / "fast.h5")[1] == read_datasets(tmp_path / "durable.h5")[1]
        np.testing.assert_array_equal(read_datasets(tmp_path / "fast.h5")[0], read_datasets(shard)[0])

    def test_cli_no_fsync(self, make_shard, tmp_path, monkeypatch):
        shard = make_shard("s0", ids("a", 5))
        calls = []
        monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
        assert main(["aggregate", str(shard), "-o", str(tmp_path / "m.h5"), "--no-fsync"]) == 0
        assert calls == []
        assert verify_merged(tmp_path / "m.h5").intact


class TestTheRowsChecksum:
    """``rows_checksum`` is what its docstring defines, and sees the damage a disk or a bug does."""

    @staticmethod
    def by_the_definition(block):
        words = np.ascontiguousarray(block, "<f4").tobytes()
        width = -(-block.shape[1] * 4 // 8) * 8  # bytes per row, padded to whole words
        sums = bytearray()
        for r in range(block.shape[0]):
            row = words[r * block.shape[1] * 4 : (r + 1) * block.shape[1] * 4].ljust(width, b"\0")
            total = 0
            for j in range(width // 8):
                word = int.from_bytes(row[8 * j : 8 * j + 8], "little")
                total += (((j + 1) * 0x9E3779B97F4A7C15 % 2**64) | 1) * word
            sums += (total % 2**64).to_bytes(8, "little")
        return zlib.crc32(bytes(sums))

    @pytest.mark.parametrize("dim", [1, 2, 7, 32])
    def test_matches_its_definition(self, rng, dim):
        block = rng.standard_normal((9, dim)).astype(np.float32)
        assert rows_checksum(block) == self.by_the_definition(block)
        assert rows_checksum(block.astype(">f4")) == rows_checksum(block)  # the stored bytes, whatever the order

    def test_every_single_bit_flip_changes_it(self, rng):
        block = rng.standard_normal((4, 6)).astype(np.float32)
        raw = block.view(np.uint8).reshape(-1)
        before = rows_checksum(block)
        for byte in range(raw.size):
            for bit in range(8):
                damaged = raw.copy()
                damaged[byte] ^= 1 << bit
                assert rows_checksum(damaged.view(np.float32).reshape(block.shape)) != before, (byte, bit)

    def test_two_bit_flips_in_a_row_and_the_documented_blind_spot(self, rng):
        """Two flipped bits in two words of one row change it, but for the blind spot the
        module documents: the same high bit of both words (bit 63 always cancels)."""
        row = rng.standard_normal((1, 16)).astype(np.float32)
        words = row.view(np.uint64).reshape(-1)
        before = rows_checksum(row)
        missed: dict[int, int] = {}
        for a, b in itertools.combinations(range(words.size), 2):
            for bit_a, bit_b in [(k, k) for k in range(64)] + [(63, 31), (31, 62), (0, 63), (62, 63)]:
                damaged = words.copy()
                damaged[a] ^= np.uint64(1) << np.uint64(bit_a)
                damaged[b] ^= np.uint64(1) << np.uint64(bit_b)
                if rows_checksum(damaged.view(np.float32).reshape(row.shape)) == before:
                    assert bit_a == bit_b, (a, b, bit_a, bit_b)  # never two different bits
                    missed[bit_a] = missed.get(bit_a, 0) + 1
        pairs = words.size * (words.size - 1) // 2
        assert missed.get(63) == pairs  # the sign of two odd-numbered floats: documented
        assert all(bit >= 48 for bit in missed), missed  # nothing below the high bits

    def test_moved_rows_words_and_a_zeroed_sector_change_it(self, rng):
        block = rng.standard_normal((64, 1280)).astype(np.float32)
        before = rows_checksum(block)
        swapped_rows = block[[1, 0, *range(2, 64)]]
        swapped_words = block.copy()
        swapped_words[5, [0, 1, 2, 3]] = block[5, [2, 3, 0, 1]]  # two 8-byte words of one row exchanged
        zeroed = block.copy()
        zeroed.reshape(-1)[1024:2048] = 0  # one 4 KiB sector
        assert before not in {rows_checksum(swapped_rows), rows_checksum(swapped_words), rows_checksum(zeroed)}

    def test_checksums_of_an_unknown_kind_are_not_checked(self, merged):
        edit_summary(merged, lambda summary: summary["checksums"].update(algorithm="sha-9"))
        found = verify_merged(merged)
        assert found.intact
        assert "rows' checksums are of a kind this version does not know ('sha-9')" in found.summary()


class TestDamagedReportsAndOddFiles:
    """A damaged or edited report is a damaged file (exit 1, one line), never a traceback
    and never 'intact'."""

    @staticmethod
    def replace_dataset(path, name, data):
        with h5py.File(path, "r+") as f:
            del f[name]
            f[name] = data

    def test_an_empty_file(self, tmp_path, capsys):
        empty = tmp_path / "m.h5"
        empty.write_bytes(b"")
        assert verify_merged(empty).problems == [f"{empty}: damaged: empty file (0 bytes)"]
        assert main(["verify", str(empty)]) == 1

    def test_a_summary_that_is_not_json(self, merged, capsys):
        self.replace_dataset(merged, "merge_report/summary", "{\"total_sequences\": 17")
        found = verify_merged(merged)
        assert found.problems[0].startswith(f"{merged}: damaged: damaged merge report (")
        assert main(["verify", str(merged)]) == 1

    @pytest.mark.parametrize(("name", "data", "problem"), [
        ("merge_report/embedding_checksums", np.zeros((4, 2), np.int64), "'embedding_checksums' has shape (4, 2)"),
        ("merge_report/embedding_checksums", np.zeros(4), "'embedding_checksums' has shape (4,)"),
        ("merge_report/id_checksums", np.zeros((3, 3), np.float64), "'id_checksums' has shape (3, 3) and type float64"),
        ("merge_report/missing_ids", np.arange(3), "damaged merge report ("),
        ("sequence_ids", np.arange(1725), "'sequence_ids' holds int64, not strings"),
    ], ids=["rows table (n, 2)", "rows table 1-D", "ids table float", "missing ids ints", "ids ints"])
    def test_datasets_of_the_wrong_kind(self, merged, capsys, name, data, problem):
        self.replace_dataset(merged, name, data)
        found = verify_merged(merged)
        assert not found.intact
        assert problem in found.summary()
        assert main(["verify", str(merged)]) == 1
        assert "Traceback" not in capsys.readouterr().err

    @pytest.mark.parametrize(("edit", "problem"), [
        (lambda s: s.update(partial=False), "the report says partial=False, but 2 shards failed"),
        (lambda s: s.update(failed_shards=[]), "the report's failed_shards and its shards' statuses disagree"),
        (lambda s: s["shards"][3].update(status="ok"), "the report's failed_shards and its shards' statuses disagree"),
        (lambda s: s.update(layout="virtual"), "the report says layout 'virtual', the embeddings are contiguous"),
    ], ids=["partial", "failed_shards", "status", "layout"])
    def test_an_edited_summary(self, merged, edit, problem):
        edit_summary(merged, edit)
        assert problem in verify_merged(merged).summary()

    def test_a_row_table_gone_although_recorded(self, merged):
        with h5py.File(merged, "r+") as f:
            del f["merge_report/embedding_checksums"]
        assert "its rows were checksummed, but 'embedding_checksums' is gone" in verify_merged(merged).summary()

    def test_one_character_of_a_missing_id(self, merged):
        with h5py.File(merged) as f:
            missing = f["merge_report/missing_ids"].asstr()[:].tolist()
        missing[-1] = missing[-1][:-1] + "="  # still sorted, still counted
        self.replace_dataset(merged, "merge_report/missing_ids", np.array(missing, dtype=h5py.string_dtype()))
        assert "missing IDs do not match the checksum the merge recorded" in verify_merged(merged).summary()


class TestAgainst:
    def test_a_folder_in_python_stands_for_its_shards(self, run, merged):
        found = verify_merged(merged, against=[run.directory])
        assert found.intact, found.problems
        assert "1,725 rows compared with 6 shards" in found.summary()

    def test_nothing_to_compare_with_is_refused(self, merged, tmp_path, capsys):
        with pytest.raises(MergeError, match="no shard to compare the merged rows with"):
            verify_merged(merged, against=[tmp_path / "no-such-run"])
        assert main(["verify", str(merged), "--against", str(tmp_path / "no-such-run")]) == 2
        assert "no shard to compare" in capsys.readouterr().err

    def test_a_string_is_not_a_list(self, merged, run):
        with pytest.raises(MergeError, match="against must be a list"):
            verify_merged(merged, against=str(run.shard_files[0]))

    def test_a_virtual_output_is_not_compared_with_itself(self, run, tmp_path):
        virtual = aggregate_shards(run.shard_files, tmp_path / "v.h5", partial=True, layout="virtual")
        found = verify_merged(virtual, against=run.shard_files)
        assert found.intact
        assert "rows compared" not in found.summary()
        assert "its rows are its shards' own rows" in found.summary()
