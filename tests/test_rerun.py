"""The re-run loop: the FASTA of a partial merge's missing sequences, and merging the re-run back."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest

from tests.helpers import read_datasets
from virnucpro_merge import MergeError, aggregate_shards, read_expected_ids, read_merge_report
from virnucpro_merge.cli import main
from virnucpro_merge.errors import IndexMismatchError, OutputError
from virnucpro_merge.expected import read_sequence_index
from virnucpro_merge.rerun import write_missing_fasta
from virnucpro_merge.synthetic import embed_fasta_like_run, make_demo_run, synthetic_embeddings


@pytest.fixture
def run(tmp_path):
    """A small demo run: rank 3 truncated, 5 absent, 7 idle, 6 died at 60 %."""
    return make_demo_run(tmp_path / "run", n_sequences=400, world_size=8, dim=16, seed=3)


@pytest.fixture
def merged(run, tmp_path):
    expected = read_expected_ids(run.index)
    return aggregate_shards(run.shard_files, tmp_path / "merged.h5", expected, partial=True)


def fasta_records(path):
    """``{id: record bytes}`` of a FASTA file, in file order."""
    records = {}
    for chunk in path.read_bytes().split(b"\n>"):
        chunk = chunk if chunk.startswith(b">") else b">" + chunk
        chunk = chunk if chunk.endswith(b"\n") else chunk + b"\n"
        records[chunk[1:].split(maxsplit=1)[0].decode()] = chunk
    return records if path.stat().st_size else {}


def edit_fasta(run, old: bytes, new: bytes):
    data = run.fasta.read_bytes()
    assert data.count(old) == 1
    run.fasta.write_bytes(data.replace(old, new))


class TestMissingFasta:
    def test_holds_exactly_the_missing_ids_in_index_order(self, run, merged, tmp_path):
        out = tmp_path / "missing.fasta"
        report = read_merge_report(merged)
        assert report["partial"]
        assert report["num_missing"] > 0
        assert write_missing_fasta(merged, run.index, out) == report["num_missing"]
        written = list(fasta_records(out))
        assert set(written) == set(report["missing_ids"])
        assert len(written) == len(set(written))
        index_order = [r["sequence_id"] for r in read_sequence_index(run.index)]
        assert written == [i for i in index_order if i in set(written)]

    def test_records_are_byte_identical_to_the_run_input(self, run, merged, tmp_path):
        out = tmp_path / "missing.fasta"
        write_missing_fasta(merged, run.index, out)
        original = fasta_records(run.fasta)
        for seq_id, record in fasta_records(out).items():
            assert record == original[seq_id]

    def test_a_complete_merge_gives_an_empty_fasta(self, tmp_path, caplog):
        run = make_demo_run(tmp_path / "run", n_sequences=50, world_size=4, truncated=(), absent=(), empty=(), short={})
        complete = aggregate_shards(run.shard_files, tmp_path / "complete.h5", read_expected_ids(run.index))
        out = tmp_path / "missing.fasta"
        with caplog.at_level(logging.INFO, logger="virnucpro_merge"):
            assert write_missing_fasta(complete, run.index, out) == 0
        assert out.read_bytes() == b""
        assert "lacks no expected sequence" in caplog.text

    def test_a_merge_without_expected_ids_warns(self, run, tmp_path, caplog):
        merged = aggregate_shards(run.shard_files, tmp_path / "merged.h5", partial=True)
        with caplog.at_level(logging.INFO, logger="virnucpro_merge"):
            assert write_missing_fasta(merged, run.index, tmp_path / "missing.fasta") == 0
        assert any(r.levelno == logging.WARNING and "without expected IDs" in r.message for r in caplog.records)

    def test_relative_and_absolute_file_paths(self, run, merged, tmp_path):
        index = json.loads(run.index.read_text())
        for record in index["sequences"]:
            record["file_path"] = str(run.fasta)  # absolute
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "index.json").write_text(json.dumps(index))
        n = write_missing_fasta(merged, elsewhere / "index.json", tmp_path / "a.fasta")
        assert n == write_missing_fasta(merged, run.index, tmp_path / "b.fasta")
        assert (tmp_path / "a.fasta").read_bytes() == (tmp_path / "b.fasta").read_bytes()


class TestTheLoop:
    def test_partial_merge_rerun_and_complete_merge(self, run, merged, tmp_path):
        expected = read_expected_ids(run.index)
        missing_fasta = tmp_path / "missing.fasta"
        write_missing_fasta(merged, run.index, missing_fasta)
        rerun_shard = embed_fasta_like_run(missing_fasta, run.index, tmp_path / "rerun_0.h5", run.dim, run.seed)

        complete = aggregate_shards([merged, rerun_shard], tmp_path / "complete.h5", expected)

        report = read_merge_report(complete)
        assert report["partial"] is False
        assert report["missing_ids"] == []
        assert report["total_sequences"] == len(expected)
        embeddings, seq_ids = read_datasets(complete)
        assert sorted(seq_ids) == sorted(expected)
        position = {seq_id: i for i, seq_id in enumerate(expected)}
        reference = synthetic_embeddings([position[s] for s in seq_ids], run.dim, run.seed)
        np.testing.assert_array_equal(embeddings, reference)

    def test_the_rerun_shard_reproduces_the_lost_rows(self, run, merged, tmp_path):
        missing_fasta = tmp_path / "missing.fasta"
        write_missing_fasta(merged, run.index, missing_fasta)
        shard = embed_fasta_like_run(missing_fasta, run.index, tmp_path / "rerun_0.h5", run.dim, run.seed)
        embeddings, seq_ids = read_datasets(shard)
        assert seq_ids == list(fasta_records(missing_fasta))
        np.testing.assert_array_equal(
            embeddings, synthetic_embeddings([int(s[3:]) for s in seq_ids], run.dim, run.seed)
        )

    def test_an_empty_rerun_fasta_gives_an_idle_shard(self, run, tmp_path):
        empty = tmp_path / "missing.fasta"
        empty.write_bytes(b"")
        embeddings, seq_ids = read_datasets(embed_fasta_like_run(empty, run.index, tmp_path / "r.h5", 16, 3))
        assert embeddings.shape == (0, 0)
        assert seq_ids == []

    def test_simulating_an_id_not_in_the_index_fails(self, run, tmp_path):
        fasta = tmp_path / "other.fasta"
        fasta.write_text(">stranger\nACGT\n")
        with pytest.raises(IndexMismatchError, match=r"\['stranger'\]"):
            embed_fasta_like_run(fasta, run.index, tmp_path / "r.h5", 16, 3)


def first_missing(merged):
    return read_merge_report(merged)["missing_ids"][0]


class TestIndexMismatch:
    def assert_refused(self, merged, index, out, match):
        with pytest.raises(IndexMismatchError, match=match) as err:
            write_missing_fasta(merged, index, out)
        assert "\n" not in str(err.value)
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*"))  # no temp left behind

    def test_a_byte_inserted_at_the_start(self, run, merged, tmp_path):
        run.fasta.write_bytes(b"\n" + run.fasta.read_bytes())
        seq_id = first_missing(merged)
        offset = next(r["byte_offset"] for r in read_sequence_index(run.index) if r["sequence_id"] == seq_id)
        self.assert_refused(
            merged,
            run.index,
            tmp_path / "missing.fasta",
            rf"sequences\.fasta: byte {offset} should start the record of {seq_id} "
            rf"\(from sequence_index\.json\), found a blank line; its header is at byte {offset + 1}",
        )

    def test_a_rewritten_header(self, run, merged, tmp_path):
        seq_id = first_missing(merged)
        edit_fasta(run, f">{seq_id}\n".encode(), b">renamed_by_hand some description\n")
        self.assert_refused(
            merged,
            run.index,
            tmp_path / "missing.fasta",
            rf"should start the record of {seq_id} \(from sequence_index\.json\), "
            r"found '>renamed_by_hand some description'; was the FASTA changed",
        )

    def test_a_header_whose_id_only_starts_alike(self, run, merged, tmp_path):
        seq_id = first_missing(merged)
        edit_fasta(run, f">{seq_id}\n".encode(), f">{seq_id}x\n".encode())
        self.assert_refused(merged, run.index, tmp_path / "m.fasta", rf"found '>{seq_id}x'")

    def test_a_sequence_of_another_length(self, run, merged, tmp_path):
        seq_id = first_missing(merged)
        record = next(r for r in read_sequence_index(run.index) if r["sequence_id"] == seq_id)
        edit_fasta(run, f">{seq_id}\n".encode(), f">{seq_id}\nACGT\n".encode())
        self.assert_refused(
            merged,
            run.index,
            tmp_path / "m.fasta",
            rf"the record of {seq_id} at byte {record['byte_offset']} holds {record['length'] + 4} residues, "
            rf"sequence_index\.json says {record['length']}",
        )

    def test_a_truncated_fasta(self, run, merged, tmp_path):
        seq_id = read_merge_report(merged)["missing_ids"][-1]
        offset = next(r["byte_offset"] for r in read_sequence_index(run.index) if r["sequence_id"] == seq_id)
        run.fasta.write_bytes(run.fasta.read_bytes()[:offset])
        match = rf"{seq_id} .*found the end of the file \({offset} bytes\)"
        self.assert_refused(merged, run.index, tmp_path / "m.fasta", match)

    def test_an_absent_fasta_names_every_place_looked(self, run, merged, tmp_path):
        run.fasta.unlink()
        with pytest.raises(IndexMismatchError) as err:
            write_missing_fasta(merged, run.index, tmp_path / "m.fasta")
        assert str(err.value) == (
            f"sequences.fasta: FASTA file does not exist (named by sequence_index.json; looked for "
            f"sequences.fasta, {run.fasta}); give the folder that holds it with --fasta-dir DIR")
        assert not (tmp_path / "m.fasta").exists()


    def test_a_gzip_fasta(self, run, merged, tmp_path):
        run.fasta.write_bytes(gzip.compress(run.fasta.read_bytes()))
        self.assert_refused(merged, run.index, tmp_path / "m.fasta", r"sequences\.fasta: gzip-compressed FASTA")

    def test_a_missing_id_not_in_the_index(self, run, merged, tmp_path):
        seq_id = first_missing(merged)
        index = json.loads(run.index.read_text())
        index["sequences"] = [r for r in index["sequences"] if r["sequence_id"] != seq_id]
        run.index.write_text(json.dumps(index))
        match = rf"sequence_index\.json: {seq_id}, missing from .*merged\.h5, is not in this index"
        self.assert_refused(merged, run.index, tmp_path / "m.fasta", match)

    def test_many_missing_ids_not_in_the_index(self, run, merged, tmp_path):
        other = tmp_path / "other.json"
        other.write_text(json.dumps({"sequences": [{"sequence_id": "x", "file_path": "x.fa", "byte_offset": 0}]}))
        n = read_merge_report(merged)["num_missing"]
        match = rf"{n} IDs missing from .* are not in this index \(first 10:"
        self.assert_refused(merged, other, tmp_path / "m.fasta", match)

    @pytest.mark.parametrize(
        "change",
        [{"byte_offset": -1}, {"byte_offset": "12"}, {"file_path": ""}, {"length": "300"}],
        ids=["negative offset", "offset as text", "no file path", "length as text"],
    )
    def test_malformed_index_records(self, run, merged, tmp_path, change):
        seq_id = first_missing(merged)
        index = json.loads(run.index.read_text())
        next(r for r in index["sequences"] if r["sequence_id"] == seq_id).update(change)
        run.index.write_text(json.dumps(index))
        self.assert_refused(merged, run.index, tmp_path / "m.fasta", rf"the record of {seq_id} .* needs a file_path")

    def test_an_existing_output_is_left_intact(self, run, merged, tmp_path):
        out = tmp_path / "m.fasta"
        out.write_text("keep me\n")
        run.fasta.unlink()
        with pytest.raises(IndexMismatchError):
            write_missing_fasta(merged, run.index, out)
        assert out.read_text() == "keep me\n"


class TestOtherInputs:
    def test_refuses_to_overwrite_the_fasta(self, run, merged):
        with pytest.raises(OutputError, match="is an input of this re-run"):
            write_missing_fasta(merged, run.index, run.fasta)
        assert run.fasta.stat().st_size > 0

    def test_a_plain_shard_is_not_a_merged_file(self, run, tmp_path):
        with pytest.raises(MergeError, match="not a merged output"):
            write_missing_fasta(run.shard_files[0], run.index, tmp_path / "m.fasta")

    def test_errors_are_value_errors(self):
        assert issubclass(IndexMismatchError, MergeError)
        assert issubclass(IndexMismatchError, ValueError)


class TestWhereTheFastaIs:
    """The pipeline writes ``file_path`` as it was given it: relative to its working directory."""

    @pytest.fixture
    def pipeline_index(self, run, tmp_path):
        """The index as the real pipeline writes it: ``output/reads_a.fasta``, from the job's folder."""
        job = tmp_path / "job"
        (job / "output").mkdir(parents=True)
        run.fasta.rename(job / "output" / "reads_a.fasta")
        index = json.loads(run.index.read_text())
        for record in index["sequences"]:
            record["file_path"] = "output/reads_a.fasta"
        (job / "output" / "sequence_index.json").write_text(json.dumps(index))
        return job

    def expected(self, run, merged, tmp_path):
        records = fasta_records(tmp_path / "job" / "output" / "reads_a.fasta")
        return b"".join(records[i] for i in read_merge_report(merged)["missing_ids"])

    def test_relative_to_the_current_directory(self, run, merged, pipeline_index, tmp_path, monkeypatch):
        monkeypatch.chdir(pipeline_index)
        n = write_missing_fasta(merged, "output/sequence_index.json", tmp_path / "m.fasta")
        assert n == len(read_merge_report(merged)["missing_ids"]) > 0
        assert (tmp_path / "m.fasta").read_bytes() == self.expected(run, merged, tmp_path)

    def test_relative_to_the_index_folder(self, run, merged, pipeline_index, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)  # not the job's folder: output/reads_a.fasta is not here
        (pipeline_index / "output" / "output").mkdir()
        (pipeline_index / "output" / "reads_a.fasta").rename(pipeline_index / "output" / "output" / "reads_a.fasta")
        write_missing_fasta(merged, pipeline_index / "output" / "sequence_index.json", tmp_path / "m.fasta")
        assert fasta_records(tmp_path / "m.fasta").keys() == set(read_merge_report(merged)["missing_ids"])

    def test_in_the_fasta_dir_cli(self, run, merged, pipeline_index, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        moved = tmp_path / "archive"
        moved.mkdir()
        (pipeline_index / "output" / "reads_a.fasta").rename(moved / "reads_a.fasta")
        index = pipeline_index / "output" / "sequence_index.json"
        out = tmp_path / "m.fasta"
        assert main(["rerun", str(merged), "--index", str(index), "-o", str(out)]) == 2
        assert main(["rerun", str(merged), "--index", str(index), "-o", str(out), "--fasta-dir", str(moved)]) == 0
        assert out.read_bytes() == b"".join(
            fasta_records(moved / "reads_a.fasta")[i] for i in read_merge_report(merged)["missing_ids"])

    def test_nowhere(self, run, merged, pipeline_index, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        (pipeline_index / "output" / "reads_a.fasta").unlink()
        index = pipeline_index / "output" / "sequence_index.json"
        code = main(["rerun", str(merged), "--index", str(index), "-o", "m.fasta", "--fasta-dir", "."])
        err = capsys.readouterr().err
        assert code == 2
        assert err.splitlines() == [
            "virnucpro-merge: error: output/reads_a.fasta: FASTA file does not exist (named by sequence_index.json; "
            f"looked for output/reads_a.fasta, reads_a.fasta, {pipeline_index / 'output' / 'output' / 'reads_a.fasta'})"
        ]

    def test_a_fasta_dir_that_is_not_a_folder(self, run, merged, tmp_path):
        with pytest.raises(IndexMismatchError, match=r"m\.h5: not a folder"):
            write_missing_fasta(merged, run.index, tmp_path / "x.fasta", fasta_dir=tmp_path / "m.h5")


def test_a_list_of_ids_stands_for_a_merged_file(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=4, dim=4, truncated=(), absent=(1,), empty=(),
                        short={})
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.index, partial=True)
    listed = tmp_path / "rerun.txt"
    listed.write_text("\n".join(read_merge_report(merged)["missing_ids"]) + "\n")
    assert write_missing_fasta(listed, run.index, tmp_path / "from_list.fasta") == 10
    assert write_missing_fasta(merged, run.index, tmp_path / "from_merge.fasta") == 10
    assert (tmp_path / "from_list.fasta").read_bytes() == (tmp_path / "from_merge.fasta").read_bytes()
    assert main(["rerun", str(listed), "--index", str(run.index), "-o", str(tmp_path / "cli.fasta")]) == 0
    assert (tmp_path / "cli.fasta").read_bytes() == (tmp_path / "from_merge.fasta").read_bytes()
    listed.write_text("seq000001\nnot-in-the-index\n")
    with pytest.raises(ValueError, match=r"not-in-the-index, missing from .*rerun\.txt, is not in this index"):
        write_missing_fasta(listed, run.index, tmp_path / "x.fasta")
