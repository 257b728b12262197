"""Expected-ID files: text, FASTA and sequence-index JSON, with their usual quirks."""

from __future__ import annotations

import gzip
import json

import pytest

from virnucpro_merge import ExpectedIdsError, read_expected_ids
from virnucpro_merge.expected import read_sequence_index


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_text_ignores_blank_and_comment_lines(tmp_path):
    path = write(tmp_path, "ids.txt", "# run 42\nseq1\n\n  seq2  \n#seq3\nseq4\n")
    assert read_expected_ids(path) == ["seq1", "seq2", "seq4"]


def test_text_with_bom_and_crlf(tmp_path):
    path = write(tmp_path, "ids.txt", "\ufeffseq1\r\nseq2\r\n".encode())
    assert read_expected_ids(path) == ["seq1", "seq2"]


def test_text_keeps_duplicate_lines_in_order(tmp_path):
    assert read_expected_ids(write(tmp_path, "ids.txt", "b\na\nb\n")) == ["b", "a", "b"]


def test_fasta_takes_the_first_word(tmp_path):
    fasta = ">NC_001.1 Influenza A segment 4\nACGT\nACGT\n>seq2\nTTTT\n>seq3|x desc\nGG\n"
    assert read_expected_ids(write(tmp_path, "in.fa", fasta)) == ["NC_001.1", "seq2", "seq3|x"]


def test_gzipped_fasta(tmp_path):
    path = tmp_path / "in.fasta.gz"
    path.write_bytes(gzip.compress(b">a\nAC\n>b\nGT\n"))
    assert read_expected_ids(path) == ["a", "b"]


def test_sequence_index_json(tmp_path):
    index = {"sequences": [{"sequence_id": "x", "length": 4, "file_path": "in.fa", "byte_offset": 0},
                           {"sequence_id": "y", "length": 2, "file_path": "in.fa", "byte_offset": 9}]}
    path = write(tmp_path, "index.json", json.dumps(index, indent=2))
    assert read_expected_ids(path) == ["x", "y"]
    assert read_sequence_index(path)[1]["byte_offset"] == 9


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "no sequence IDs"),
        ("\n\n# only comments\n", "no sequence IDs"),
        ('{"sequences": [', "invalid JSON"),
        ('{"seqs": []}', "not a sequence index"),
        ('{"sequences": [{"id": "a"}]}', "not a sequence index"),
        (b"\xff\xfeseq\n", "not UTF-8"),
    ],
    ids=["empty", "comments only", "broken JSON", "wrong key", "records without sequence_id", "not UTF-8"],
)
def test_bad_files_give_one_line_errors(tmp_path, content, words):
    path = write(tmp_path, "expected.txt", content)
    with pytest.raises(ExpectedIdsError, match=words) as err:
        read_expected_ids(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_absent_file(tmp_path):
    with pytest.raises(ExpectedIdsError, match="does not exist"):
        read_expected_ids(tmp_path / "nope.txt")


def test_directory(tmp_path):
    with pytest.raises(ExpectedIdsError, match="is a directory"):
        read_expected_ids(tmp_path)
