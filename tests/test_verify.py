"""A merged file proves it is intact: checksums recorded by the merge, ``verify_merged``."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import edit_summary, ids, read_datasets, tables_of
from virnucpro_merge import MergeError, aggregate_shards, materialize, read_expected_ids, verify_merged
from virnucpro_merge.checksums import ids_crc, rows_checksum
from virnucpro_merge.cli import main
from virnucpro_merge.report import seal
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


def as_format_1(path):
    """Make a merged file what the previous version wrote: report format 1, its rows and IDs
    checksummed, the missing IDs' CRC in the summary, no checksum of the summary or tables."""
    with h5py.File(path, "r+") as f:
        group = f["merge_report"]
        summary = json.loads(group["summary"].asstr()[()])
        missing = group["missing_ids"].asstr()[:].tolist()
        summary["format_version"] = 1
        summary["checksums"] = {k: v for k, v in summary["checksums"].items() if k != "tables"}
        summary["checksums"]["missing_ids"] = zlib.crc32(("\0".join(missing) + "\0").encode()) if missing else 0
        del group["summary"]
        group["summary"] = json.dumps(summary)
        group.attrs["format_version"] = 1
        del group.attrs["summary_crc32"]


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

    @pytest.mark.parametrize("version", [2, 1])
    def test_a_missing_id_dropped_from_the_report(self, merged, version):
        if version == 1:
            as_format_1(merged)  # the previous version's files: the missing IDs' CRC in the summary
        with h5py.File(merged, "r+") as f:
            kept = f["merge_report/missing_ids"].asstr()[1:]
            del f["merge_report/missing_ids"]
            f["merge_report"].create_dataset("missing_ids", data=kept.astype(object), dtype=h5py.string_dtype())
        found = verify_merged(merged)
        checksum = ("the report's 'missing_ids' table does not match the checksum the merge recorded" if version == 2
                    else "the report's missing IDs do not match the checksum the merge recorded")
        assert found.problems[:2] == [f"{merged}: {checksum}",
                                      f"{merged}: the report lists {len(kept)} missing IDs, its summary says "
                                      f"{len(kept) + 1}"]

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
        as_format_1(merged)
        edit_summary(merged, lambda summary: summary.pop("checksums"), reseal=False)
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
        as_format_1(merged)  # a file of an earlier version: said, not damaged
        edit_summary(merged, lambda summary: summary["checksums"].update(algorithm="sha-9"), reseal=False)
        found = verify_merged(merged)
        assert found.intact
        assert "rows' checksums are of a kind this version does not know ('sha-9')" in found.summary()

    def test_an_unknown_kind_in_a_file_of_this_version_is_damage(self, merged):
        edit_summary(merged, lambda summary: summary["checksums"].update(algorithm="sha-9"))  # (its seal made anew)
        found = verify_merged(merged)
        assert found.problems == [f"{merged}: the report names checksums of a kind this version does not know "
                                  "('sha-9'): its rows cannot be checked"]


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

    @pytest.mark.parametrize(("version", "problem"), [
        (2, "the report's 'embedding_checksums' table is gone (damaged report)"),
        (1, "the report says its rows were checksummed, but 'embedding_checksums' is gone")])
    def test_a_row_table_gone_although_recorded(self, merged, version, problem):
        if version == 1:
            as_format_1(merged)
        with h5py.File(merged, "r+") as f:
            del f["merge_report/embedding_checksums"]
        assert problem in verify_merged(merged).summary()

    @pytest.mark.parametrize(("version", "problem"), [
        (2, "the report's 'missing_ids' table does not match the checksum the merge recorded"),
        (1, "the report's missing IDs do not match the checksum the merge recorded")])
    def test_one_character_of_a_missing_id(self, merged, version, problem):
        if version == 1:
            as_format_1(merged)
        with h5py.File(merged) as f:
            missing = f["merge_report/missing_ids"].asstr()[:].tolist()
        missing[-1] = missing[-1][:-1] + "="  # still sorted, still counted
        self.replace_dataset(merged, "merge_report/missing_ids", np.array(missing, dtype=h5py.string_dtype()))
        assert verify_merged(merged).problems == [f"{merged}: {problem}"]


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


# --------------------------------------------------------------------------- what verify catches, item by item


def _replace(path, name, data, *, reseal=True):
    """Replace dataset ``name`` of a merged file (its report's checksums made anew with ``reseal``)."""
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=data, dtype=h5py.string_dtype() if data.dtype == object else data.dtype)
        if reseal:
            group = f["merge_report"]
            seal(group, json.loads(group["summary"].asstr()[()]), tables_of(group))


def _duplicate_an_id(path):
    """Write the first ID over the second, its IDs' checksums made anew to match (as a careful forger would)."""
    with h5py.File(path, "r+") as f:
        stored = f["sequence_ids"].asstr()[:].tolist()
        f["sequence_ids"][1] = stored[0]
        crc = ids_crc([stored[0], stored[0], *stored[2:]])
        group = f["merge_report"]
        del group["id_checksums"]
        group["id_checksums"] = np.array([[0, len(stored), crc]], np.int64)
        seal(group, json.loads(group["summary"].asstr()[()]), tables_of(group))


def _flip_in_summary(path, text):
    """Flip the lowest bit of the last character of ``text`` in the summary's bytes in the file."""
    data = path.read_bytes()
    at = data.index(text.encode()) + len(text.encode()) - 1
    flip = bytes([data[at] ^ 1])
    path.write_bytes(data[:at] + flip + data[at + 1:])


def _missing_ids(path):
    with h5py.File(path) as f:
        return f["merge_report/missing_ids"].asstr()[:].tolist()


def _set_attr(path, name, value):
    with h5py.File(path, "r+") as f:
        if value is None:
            del f["merge_report"].attrs[name]
        else:
            f["merge_report"].attrs[name] = value


#: One case for each row of the table of what verify catches (docs/howto/verify.md): the
#: damage done to a fresh partial merge, and the start of the first problem it gives.
CATCHES = {
    "row count": (lambda m: edit_summary(m, lambda s: s.update(total_sequences=s["total_sequences"] - 1)),
                  "'embeddings' has shape"),
    "shard offsets": (lambda m: edit_summary(m, lambda s: s["shards"][1].update(offset=s["shards"][1]["offset"] + 1)),
                      "the report puts "),
    "dimension": (lambda m: edit_summary(m, lambda s: s.update(embedding_dim=31)), "'embeddings' has shape"),
    "layout": (lambda m: edit_summary(m, lambda s: s.update(layout="virtual")), "the report says layout 'virtual'"),
    "missing IDs sorted": (lambda m: _replace(m, "merge_report/missing_ids",
                                              np.array(_missing_ids(m)[::-1], dtype=object)),
                           "the report's missing IDs are not sorted"),
    "missing IDs counted": (lambda m: edit_summary(m, lambda s: s.update(num_missing=s["num_missing"] + 1)),
                            "the report lists 1275 missing IDs, its summary says 1276"),
    "missing IDs checksummed": (lambda m: _replace(m, "merge_report/missing_ids",
                                                   np.array([*_missing_ids(m)[:-1], "zzz"], dtype=object),
                                                   reseal=False),
                                "the report's 'missing_ids' table does not match the checksum"),
    "missing IDs absent from the IDs": (
        lambda m: _replace(m, "merge_report/missing_ids",
                           np.array(sorted([*_missing_ids(m)[1:], read_datasets(m)[1][0]]), dtype=object)),
        "the report lists "),
    "every ID once": (_duplicate_an_id, "the ID "),
    "failed shards and statuses": (lambda m: edit_summary(m, lambda s: s.update(failed_shards=[])),
                                   "the report's failed_shards and its shards' statuses disagree"),
    "partial": (lambda m: edit_summary(m, lambda s: s.update(partial=False)), "the report says partial=False"),
    "counts derivable": (lambda m: edit_summary(m, lambda s: s.update(num_expected=s["num_expected"] ^ 2)),
                         "the report's counts disagree"),
    "unexpected IDs counted": (lambda m: edit_summary(m, lambda s: s.update(num_extra=1)),
                               "the report's counts disagree"),
    "rows checksummed": (lambda m: flip_byte(m, row_offset(m, 10, 32) + 3), "rows 0-"),
    "IDs checksummed": (lambda m: _replace(m, "sequence_ids",
                                           np.array(["x" + i for i in read_datasets(m)[1]], dtype=object),
                                           reseal=False),
                        "the IDs of rows 0-"),
    "NaN/Inf count": (lambda m: edit_summary(m, lambda s: s.update(nonfinite_rows=3)),
                      "0 rows hold NaN or Inf, the report says 3"),
    "summary checksummed": (lambda m: _flip_in_summary(m, '"num_expected": 3000'),
                            "the report's summary does not match the checksum"),
    "summary checksum there": (lambda m: _set_attr(m, "summary_crc32", None), "the report's summary has no checksum"),
    "every table there": (lambda m: _delete(m, "merge_report/id_checksums"),
                          "the report's 'id_checksums' table is gone"),
    "no table unlisted": (lambda m: _add(m, "merge_report/notes", np.arange(3)),
                          "the report holds 'notes', which its summary does not list"),
    "checksum kind known": (lambda m: edit_summary(m, lambda s: s["checksums"].update(algorithm="wsum64-crc33")),
                            "the report names checksums of a kind this version does not know"),
    "format version": (lambda m: _set_attr(m, "format_version", 3), "the report's format version is 3 in its group"),
}


def _delete(path, name):
    with h5py.File(path, "r+") as f:
        del f[name]


def _add(path, name, data):
    with h5py.File(path, "r+") as f:
        f[name] = data


def _documented_catches():
    """The first column of the table under "What verify catches" in docs/howto/verify.md."""
    page = (Path(__file__).parents[1] / "docs" / "howto" / "verify.md").read_text(encoding="utf-8")
    section = page.split("## What verify catches", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    return rows[1:]  # (after the header)


def test_the_docs_list_every_case_and_nothing_else():
    assert _documented_catches() == list(CATCHES)


@pytest.mark.parametrize("case", list(CATCHES))
def test_verify_catches(merged, capsys, case):
    damage, problem = CATCHES[case]
    assert verify_merged(merged).intact
    damage(merged)
    found = verify_merged(merged)
    assert not found.intact, case
    assert any(line.startswith(f"{merged}: {problem}") for line in found.problems), found.problems
    assert main(["verify", str(merged)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_ids_swapped_after_their_checksums_were_removed(merged):
    """Two IDs swapped (two embeddings carrying each other's labels) after the IDs' checksums went."""
    _delete(merged, "merge_report/id_checksums")
    with h5py.File(merged, "r+") as f:
        first, second = f["sequence_ids"].asstr()[:2]
        f["sequence_ids"][0], f["sequence_ids"][1] = second, first
    assert verify_merged(merged).problems[0] == f"{merged}: the report's 'id_checksums' table is gone (damaged report)"
    as_format_1(merged)  # a file of the previous version: its summary says the IDs were checksummed
    assert verify_merged(merged).problems[0] == (f"{merged}: the report says its IDs were checksummed, but "
                                                 "'id_checksums' is gone (damaged report)")


def test_a_flipped_bit_in_the_missing_positions(run, tmp_path):
    out = aggregate_shards(run.shard_files, tmp_path / "i.h5", read_expected_ids(run.index), partial=True,
                           order="index")
    with h5py.File(out, "r+") as f:
        positions = f["merge_report/missing_positions"]
        positions[5] = positions[5] ^ 16
    assert verify_merged(out).problems == [
        f"{out}: the report's 'missing_positions' table does not match the checksum the merge recorded"]


@pytest.mark.parametrize("field", ["num_expected", "num_extra", "num_missing", "total_sequences"])
def test_a_flipped_bit_in_a_stored_count(merged, field):
    with h5py.File(merged) as f:
        value = json.loads(f["merge_report/summary"].asstr()[()])[field]
    _flip_in_summary(merged, f'"{field}": {value}')
    assert verify_merged(merged).problems[0] == (
        f"{merged}: the report's summary does not match the checksum the merge recorded")


def test_a_flipped_bit_in_the_checksum_name_is_damage(merged):
    _flip_in_summary(merged, "wsum64")  # (all row checks would be skipped, with a note)
    assert verify_merged(merged).problems == [
        f"{merged}: the report's summary does not match the checksum the merge recorded"]
    edit_summary(merged, lambda summary: None)  # the flipped name, its summary's checksum made anew
    assert verify_merged(merged).problems == [
        f"{merged}: the report names checksums of a kind this version does not know ('wsum65-crc32'): "
        "its rows cannot be checked"]


class TestAShardThatAppearedSince:
    """``verify --against run/`` after a shard the partial merge recorded as absent has appeared."""

    def test_it_is_intact_with_a_note(self, run, tmp_path, capsys):
        shutil.copytree(run.directory, tmp_path / "run")
        folder = tmp_path / "run"
        shards = [folder / p.name for p in run.shard_files]
        absent = next(p for p, original in zip(shards, run.shard_files, strict=True) if not original.exists())
        merged = aggregate_shards(shards, tmp_path / "m.h5", read_expected_ids(run.index), partial=True)
        rank = run.shard_files.index(next(p for p in run.shard_files if not p.exists()))
        expected = read_expected_ids(run.index)[rank :: run.world_size]
        write_shard(absent, expected, np.ones((len(expected), 32), np.float32))  # its worker, re-run
        found = verify_merged(merged, against=[folder])
        assert found.intact, found.problems
        assert any(f"{absent}: the merge recorded it as failed (file does not exist); it is there now" in note
                   for note in found.notes)
        assert main(["verify", str(merged), "--against", str(folder)]) == 0
        assert "it is there now" in capsys.readouterr().out

    def test_a_shard_the_merge_never_saw_is_still_a_problem(self, run, merged, tmp_path):
        stranger = write_shard(tmp_path / "shard_0.h5", ["not-in-the-run"], np.ones((1, 32), np.float32))
        assert "not-in-the-run of" in verify_merged(merged, against=[stranger]).problems[0]


# --------------------------------------------------------------------------- found by a review (issue 20)


@pytest.mark.parametrize("edit", [lambda s: s.update(failed_shards=[*s["failed_shards"], "run/shard_9.h5"]),
                                  lambda s: s.update(failed_shards=[*s["failed_shards"], s["failed_shards"][0]])],
                         ids=["a failed shard that is not among the shards", "a failed shard listed twice"])
def test_failed_shards_agree_with_the_shards_both_ways(merged, capsys, edit):
    edit_summary(merged, edit)
    assert "the report's failed_shards and its shards' statuses disagree" in verify_merged(merged).summary()
    assert main(["info", str(merged)]) == 0
    assert "from 6 of 8 shards" in capsys.readouterr().out  # (counted from the statuses, one owner)


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda m: edit_summary(m, lambda s: s.update(lineage=[{"total_sequences": 3}])),
     "damaged merge report ('lineage' holds a record without its 'path')"),
    (lambda m: edit_summary(m, lambda s: s["shards"][0].pop("offset")),
     "damaged merge report ('shards' holds a record without its 'offset')"),
    (lambda m: _delete(m, "merge_report/missing_ids"), "damaged merge report (its 'missing_ids' table is gone)"),
], ids=["lineage without a path", "a shard without an offset", "missing IDs gone"])
def test_what_the_tables_need_is_there_or_the_report_is_damaged(merged, capsys, damage, problem):
    damage(merged)
    assert main(["info", str(merged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert problem in err[0]
    assert not verify_merged(merged).intact


def test_info_needs_no_count_it_can_derive(merged, capsys):
    edit_summary(merged, lambda s: s.pop("num_missing"))
    assert main(["info", str(merged)]) == 0
    assert "missing sequences: 1275 of 3000 expected" in capsys.readouterr().out


def test_damaged_metadata_of_the_report_is_damage_not_a_traceback(merged, capsys):
    with h5py.File(merged) as f:
        header = h5py.h5o.get_info(f["merge_report/id_checksums"].id).addr
    data = bytearray(merged.read_bytes())
    data[header + 12] ^= 0x04  # a bit of the table's object header
    merged.write_bytes(bytes(data))
    found = verify_merged(merged)
    assert found.problems[0].startswith(f"{merged}: damaged: HDF5 cannot read it (")
    assert main(["verify", str(merged)]) == 1
    assert main(["info", str(merged)]) == 0  # (it reads the summary and the missing IDs only)
    assert "Traceback" not in capsys.readouterr().err


def test_damaged_metadata_read_by_info_is_one_line(merged, capsys):
    with h5py.File(merged) as f:
        header = h5py.h5o.get_info(f["merge_report/missing_ids"].id).addr
    data = bytearray(merged.read_bytes())
    data[header + 12] ^= 0x04
    merged.write_bytes(bytes(data))
    assert main(["info", str(merged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"virnucpro-merge: error: {merged}: corrupt HDF5 file (")


def test_a_same_named_shard_of_another_folder_is_still_compared(tmp_path, rng):
    """The pipeline names every run's folder output/: a shard that failed in one is not another's."""
    one, two = tmp_path / "exp1" / "output", tmp_path / "exp2" / "output"
    for folder in (one, two):
        folder.mkdir(parents=True)
    write_shard(one / "shard_1.h5", ids("a", 5), rng.random((5, 4), dtype=np.float32))
    write_shard(two / "shard_0.h5", ids("b", 5), rng.random((5, 4), dtype=np.float32))
    merged = aggregate_shards([one / "shard_0.h5", one / "shard_1.h5", two / "shard_0.h5"], tmp_path / "m.h5",
                              partial=True)
    found = verify_merged(merged, against=[two / "shard_0.h5"])
    assert found.intact
    assert found.notes == [f"{10 - 5:,} rows are in none of the shards compared with"]
    assert "5 rows compared with 1 shard" in found.checked


def test_a_verification_shows_its_verdict_in_a_notebook(tmp_path):
    from virnucpro_merge import Verification

    good = Verification(tmp_path / "m.h5", checked=["structure", "12 IDs checksummed"])._repr_html_()
    assert "INTACT: m.h5" in good
    assert "#009E73" in good
    bad = Verification(tmp_path / "m.h5", problems=[f"m.h5: rows {i}-{i + 1} <differ>" for i in range(12)])
    page = bad._repr_html_()
    assert "DAMAGED: m.h5: rows 0-1 &lt;differ&gt; (and 11 more problems)" in page
    assert "#D55E00" in page
    assert "... and 2 more" in page
    assert "<differ>" not in page


def test_what_was_compared_is_counted_as_it_was_when_a_row_differs(tmp_path):
    """A damaged row found against the first shard: the count says the rows of that shard's block compared,
    and that the comparison stopped there (it said '0 rows compared with 4 shards')."""
    run = make_demo_run(tmp_path / "run", n_sequences=200, world_size=4, dim=4, truncated=(), absent=(), empty=(),
                        short={})
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.index)
    assert verify_merged(merged, against=run.shard_files).checked[-1] == "200 rows compared with 4 shards"
    with h5py.File(merged, "r+") as f:
        f["embeddings"][5] = np.float32(7)
    found = verify_merged(merged, against=run.shard_files)
    assert not found.intact
    assert found.checked[-1] == "50 rows compared with 1 shard (then stopped: something is wrong already)"


@pytest.mark.parametrize("hashing", ["python hash", "colliding hash"])
def test_against_its_shards_whatever_the_ids_hashes(make_shard, tmp_path, monkeypatch, hashing):
    """Each shard's row is compared with the merged row of the same ID, told by its bytes: where
    IDs share a hash (here every ID with those of its length, mod 3), a changed row is still
    found, and an ID the merged file lacks is still named (it was passed over in silence)."""
    import virnucpro_merge.ids as ids_module

    if hashing == "colliding hash":
        monkeypatch.setattr(ids_module, "_id_hash", lambda s: len(s) % 3)
    a = make_shard("shard_0", ["aa", "b", "ccc", "dddd"])
    b = make_shard("shard_1", ["ee", "f", "gggg"])
    merged = aggregate_shards([a, b], tmp_path / "m.h5")
    assert not verify_merged(merged, against=[a, b]).problems
    emb, names = read_datasets(b)
    emb[0] += 1  # "ee": its hash is that of "aa", merged first
    write_shard(b, names, emb)
    assert verify_merged(merged, against=[a, b]).problems == [
        f"{merged}: row 4 (ee) differs from row 0 of {b} (1 of this block's 3 rows differ)"]
    stranger = make_shard("shard_2", ["hh"])  # (its hash is that of "aa" and "ee")
    assert verify_merged(merged, against=[a, stranger]).problems == [f"{merged}: hh of {stranger} is not in it"]
