"""Expected-ID files: text, FASTA and sequence-index JSON, with their usual quirks."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import virnucpro_merge._processes
from virnucpro_merge import ExpectedIdsError, read_expected_ids
from virnucpro_merge.cli import main
from virnucpro_merge.expected import (
    detect_form,
    expected_ranges,
    ranges_agree,
    read_range,
    read_sequence_index,
)
from virnucpro_merge.ids import encode_ids
from virnucpro_merge.synthetic import write_shard


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
    ("content", "words"),
    [
        ("", "no sequence IDs"),
        ("\n\n# only comments\n", "no sequence IDs"),
        ('{"sequences": [', "invalid JSON"),
        ('{"seqs": []}', "not a sequence index"),
        ('{"sequences": [{"id": "a"}]}', "not a sequence index"),
        (b"\xff\xfeseq\n", "not UTF-8"),
        ('{"sequences": [{"sequence_id": "ok\\ud83d\\ude00"}, {"sequence_id": "x\\ud83d"}]}',
         r"sequence ID 'x\\ud83d' is not Unicode text"),
    ],
    ids=["empty", "comments only", "broken JSON", "wrong key", "records without sequence_id", "not UTF-8",
         "half a surrogate pair"],
)
@pytest.mark.parametrize("reader", ["read_expected_ids", "read_expected_lookup", "read_expected_lookup in ranges"])
def test_bad_files_give_one_line_errors(tmp_path, monkeypatch, content, words, reader):
    """Every reader of a whole file holds it to the same rules: the lookup the commands build
    (in one process, or in byte ranges by several) as the list of str."""
    import virnucpro_merge.expected._ranges as ranges

    if reader.endswith("in ranges"):
        monkeypatch.setattr(ranges, "_LOOKUP_RANGE", 3)
        monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 3)
    read = read_expected_ids if reader == "read_expected_ids" else ranges.read_expected_lookup
    name = "expected.json" if isinstance(content, str) and content.startswith("{") else "expected.txt"
    path = write(tmp_path, name, content)
    with pytest.raises(ExpectedIdsError, match=words) as err:
        read(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["", "# only comments\n", '{"sequences": []}'])
def test_a_list_of_no_id_fails_validate_and_aggregate_as_unreadable(tmp_path, content):
    """Not "all 0 expected sequences are there": an upstream step that wrote nothing is told."""
    name = "expected.json" if content.startswith("{") else "expected.txt"
    path = write(tmp_path, name, content)
    shard = write_shard(tmp_path / "shard_0.h5", ["a", "b"], np.zeros((2, 2), "f4"))
    assert main(["validate", str(shard), "--expected", str(path)]) == 2
    assert main(["aggregate", str(shard), "-o", str(tmp_path / "m.h5"), "--expected", str(path)]) == 2
    assert not (tmp_path / "m.h5").exists()
    from virnucpro_merge import validate_shard_completeness

    with pytest.raises(ExpectedIdsError, match="no sequence IDs"):
        validate_shard_completeness([shard], path)


def test_absent_file(tmp_path):
    with pytest.raises(ExpectedIdsError, match="does not exist"):
        read_expected_ids(tmp_path / "nope.txt")


def test_directory(tmp_path):
    with pytest.raises(ExpectedIdsError, match="is a directory"):
        read_expected_ids(tmp_path)


# --------------------------------------------------------------------------- one parser, in byte ranges too


def _whole(path):
    """The IDs of a whole-file read, or the error it gives."""
    try:
        return read_expected_ids(path)
    except ExpectedIdsError as err:
        return str(err)


def _in_ranges(path, range_bytes):
    """The IDs as the cluster's workers read them (byte ranges, then the JSON check), or the error."""
    try:
        form, _, why = detect_form(path)
        no_ids = f"{path}: no sequence IDs in this file" + (f"; {why}" if why else "")  # as the cluster says
        if form is None:
            raise ExpectedIdsError(no_ids)
        parts = [read_range(path, form, a, b, why=why) for a, b in expected_ranges(path, range_bytes)]
        if form == "json" and not ranges_agree(parts):
            return read_expected_ids(path)  # what the cluster then does: one task reads it all
        ids = [i for part in parts for i in part.ids]
        if not ids:
            raise ExpectedIdsError(no_ids)
    except ExpectedIdsError as err:
        return str(err)
    return ids


TRICKY = {
    "index.json": json.dumps({"sequences": [{"sequence_id": f"s{i}", "length": i} for i in range(40)]}, indent=1),
    "compact.json": json.dumps({"sequences": [{"sequence_id": f"s{i}"} for i in range(40)]}),
    "keys before and after.json": json.dumps({"v": {"x": [{"y": 1}, {"z": [2]}]},
                                              "sequences": [{"sequence_id": f"s{i}", "m": [{"a": 1}, {"b": 2}]}
                                                            for i in range(30)],
                                              "after": [{"q": 1}]}, indent=2),
    "value on the next line.json": '{"sequences": [\n{"sequence_id":\n "a"},\n{"sequence_id"\n:\n"b"}\n]}\n',
    "ids that look like json.json": json.dumps({"sequences": [{"sequence_id": s} for s in
                                                ['{"sequence_id": "x"},', "]}", "a\\nb", 'q"}', "β"]]}, indent=1),
    "other keys are not ids.json": '{"sequences": [{"sequence_id": "a", "parent": {"sequence_id": "b"}}]}',
    "record without sequence_id.json": '{"sequences": [{"sequence_id": "a"},\n {"id": "b"}]}',
    "non-string id.json": '{"sequences": [{"sequence_id": "a"},\n {"sequence_id": 7}]}',
    "half a surrogate pair.json": json.dumps({"sequences": [{"sequence_id": f"s{i}\u00e9"} for i in range(30)]
                                             + [{"sequence_id": "\ud800"}]}, indent=1),
    "two lists.json": '{"sequences": [{"sequence_id": "a"}],\n "sequences": [{"sequence_id": "b"}]}',
    "truncated.json": '{"sequences": [\n {"sequence_id": "a"},\n {"sequence_id": "b"',
    "trailing comma.json": '{"sequences": [\n {"sequence_id": "a"},\n]}',
    "extra data.json": '{"sequences": []}\n{"sequences": []}',
    "crlf.txt": "\ufeff# a list\r\nx1\r\n\r\n  x2  \r\n#x3\r\nx4\r\n",
    "cr only.txt": "x1\rx2\r\rx3\r",
    "mixed line ends.txt": "x1\r\nx2\rx3\nx4",
    "fasta.fa": ">a desc\nACGT\n >not-a-header\nAC\n>b\n>c|d e\nGG\n",
    "comments only.txt": "# nothing\n\n# here\n",
    "blank.txt": "\n \n\t\n",
    "latin-1.txt": "café\n".encode("latin-1"),
}


@pytest.mark.parametrize("name", sorted(TRICKY))
@pytest.mark.parametrize("range_bytes", [1, 3, 17, 64, 10**6])
def test_byte_ranges_read_what_the_whole_file_holds(tmp_path, name, range_bytes):
    """The cluster's workers read expected files in byte ranges: same IDs, same errors."""
    path = write(tmp_path, name, TRICKY[name])
    assert _in_ranges(path, range_bytes) == _whole(path)


@pytest.mark.parametrize("name", sorted(TRICKY))
@pytest.mark.parametrize("block", [1, 5, 64])
def test_small_read_blocks_change_nothing(tmp_path, monkeypatch, name, block):
    """Files are read a block at a time (4 MiB): a value cut by a block's end reads on."""
    from virnucpro_merge import expected

    path = write(tmp_path, name, TRICKY[name])
    whole = _whole(path)
    monkeypatch.setattr(expected._text, "BLOCK", block)
    assert _whole(path) == whole
    assert _in_ranges(path, 23) == whole


def test_a_large_index_in_ranges(tmp_path, monkeypatch):
    """Many blocks, many ranges, records of every size: the same records as json.load."""
    from virnucpro_merge import expected

    rng = __import__("random").Random(7)
    records = [{"sequence_id": f"s{i}" + "x" * rng.randrange(40), "pad": [{"k": "},"}] * rng.randrange(3)}
               for i in range(3000)]
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"sequences": records}, indent=rng.choice([None, 1])))
    monkeypatch.setattr(expected._text, "BLOCK", 4096)
    want = [r["sequence_id"] for r in records]
    assert _whole(path) == want
    for range_bytes in (1000, 7919, 65536):
        assert _in_ranges(path, range_bytes) == want


def _blocks_or_error(blocks):
    try:
        return [i.decode() if isinstance(i, bytes) else i for block in blocks for i in block]
    except ExpectedIdsError as err:
        return str(err)


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_a_pool_of_processes_reads_what_one_reads(tmp_path, name):
    """iter_encoded_id_blocks with several workers: the same IDs, or the same first error."""
    from virnucpro_merge.expected import iter_encoded_id_blocks, iter_expected_id_blocks

    path = write(tmp_path, name, TRICKY[name])
    one = _blocks_or_error(iter_expected_id_blocks(path))
    for range_bytes in (3, 17, 10**6):
        assert _blocks_or_error(iter_encoded_id_blocks(path, workers=2, range_bytes=range_bytes)) == one
        assert _blocks_or_error(iter_encoded_id_blocks(path, workers=1, range_bytes=range_bytes)) == one


def test_a_pool_reads_a_large_index_in_order(tmp_path):
    from virnucpro_merge.expected import iter_encoded_id_blocks

    records = [{"sequence_id": f"s{i}", "pad": [{"k": "},"}] * (i % 3)} for i in range(5000)]
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"sequences": records}, indent=1))
    blocks = list(iter_encoded_id_blocks(path, workers=3, range_bytes=4096))
    assert len(blocks) > 3, "read in ranges"
    assert _blocks_or_error(blocks) == [r["sequence_id"] for r in records]


def test_ranges_agree_refuses_a_broken_chain(tmp_path):
    path = write(tmp_path, "i.json", TRICKY["index.json"])
    parts = [read_range(path, "json", a, b) for a, b in expected_ranges(path, 50)]
    assert ranges_agree(parts)
    assert any(p.chain.first is not None for p in parts[1:]), "the guess was made in later ranges"
    broken = list(parts)
    where = next(i for i, p in enumerate(parts) if i and p.chain.first is not None)
    del broken[where]
    assert not ranges_agree(broken)
    moved = [*parts]
    moved[where] = read_range(path, "json", parts[where].first + 1, parts[where].last)
    assert not ranges_agree(moved) or [i for p in moved for i in p.ids] == _whole(path)


# (no NUL: an ID holding one is refused, below; no half surrogate pair: not Unicode text)
ID_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                  max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(ID_TEXT, min_size=1, max_size=30), indent=st.sampled_from([None, 0, 1, 2, "\t"]),
       extra=st.dictionaries(st.sampled_from(["v", "meta", "z"]), st.integers() | st.lists(st.integers())),
       range_bytes=st.integers(1, 200))
def test_any_index_reads_the_same_in_ranges(tmp_path, ids, indent, extra, range_bytes):
    index = {**extra, "sequences": [{"sequence_id": i, "n": [{"k": 1}]} for i in ids]}
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index, indent=indent, ensure_ascii=False), encoding="utf-8")
    want = [r["sequence_id"] for r in json.loads(path.read_text(encoding="utf-8"))["sequences"]]
    assert _whole(path) == want
    assert _in_ranges(path, range_bytes) == want


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
                    | st.sampled_from(["", "a", "\x00", "a\x00", "\x00a", "é", "é\x00", "abcdef"]),
                    min_size=1, max_size=20),
       max_width=st.sampled_from([None, 1, 4, 16]))
def test_encoded_ids_are_each_ids_utf8_bytes(ids, max_width):
    raw = [i.encode() for i in ids]
    encoded = encode_ids(ids, max_width=max_width)
    keeps_all = max_width is not None and (max(map(len, raw)) > max_width or any(r.endswith(b"\x00") for r in raw))
    assert encoded.dtype == (object if keeps_all else np.dtype(f"S{max(max(map(len, raw)), 1)}"))
    assert encoded.tolist() == (raw if keeps_all or max_width is not None else [r.rstrip(b"\x00") for r in raw])
    if not any(i.endswith("\x00") for i in ids):  # (which numpy's own str arrays drop)
        assert encode_ids(np.array(ids), max_width=max_width).tolist() == encoded.tolist()


def test_a_pipe_is_read_once(tmp_path):
    """Format sniffing must not eat the start of a stream that cannot be read twice."""
    import os
    import threading

    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    ids = [f"seq{i:06d}" for i in range(5000)]  # more than one block of sniffing

    def feed():
        with open(fifo, "w") as fh:
            fh.write("\n".join(ids) + "\n")

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert read_expected_ids(fifo) == ids
    finally:
        writer.join(timeout=30)


@pytest.mark.parametrize("text", [
    '{"sequences": [', '{"sequences": [\r{"sequence_id": "a"},\r{"sequence_id": "b"}\r,]}',
    '{"sequences": [\r\n{"sequence_id": "a"},\r\n{"sequence_id": "b"}\r\n,]}',
    '\ufeff{"sequences": [{"sequence_id": "a"} x]}', '{"sequences": [{"sequence_id": "a"},]}',
    '{"sequences": []} x', '\u00a0{"sequences": []}', '{"sequences": [\n {"sequence_id": "a"}\n {"sequence_id": "b"}]}',
], ids=["open", "CR", "CRLF", "BOM", "trailing comma", "extra data", "nbsp", "no comma"])
def test_invalid_json_is_placed_as_json_places_it(tmp_path, monkeypatch, text):
    """The message is json's own, line, column and char (line ends read as \\n), however the file is read."""
    from virnucpro_merge import expected

    path = write(tmp_path, "index.json", text.encode())
    with pytest.raises(json.JSONDecodeError) as truth:
        json.loads(text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"))
    want = f"{path}: invalid JSON ({truth.value}); read as a sequence index: its name ends in .json"
    assert _whole(path) == want
    monkeypatch.setattr(expected._text, "BLOCK", 3)
    assert _whole(path) == want


@pytest.mark.parametrize("sequence_id", ["seq1", "β-corona|ORF1ab", "a\u2028b", "a b", "x#y", "a\tb"])
def test_a_written_id_list_reads_back_exactly(tmp_path, sequence_id):
    from virnucpro_merge.expected import write_id_list

    out = write_id_list([sequence_id, "seq2"], tmp_path / "rerun.txt")
    assert read_expected_ids(out) == [sequence_id, "seq2"]


@pytest.mark.parametrize(("sequence_id", "why"), [
    (" seq1", "white space"), ("seq1 ", "white space"), ("seq1\r", "white space"), ("\u2028seq1", "white space"),
    ("#seq1", "starts with '#'"), ("two\nlines", "line break"), ("a\rb", "line break"), ("", "empty"),
])
def test_what_would_not_read_back_is_not_written(tmp_path, sequence_id, why):
    from virnucpro_merge.expected import write_id_list

    out = tmp_path / "rerun.txt"
    out.write_text("a previous list\n")
    with pytest.raises(ExpectedIdsError, match=f"cannot be written one a line and read back the same .*{why}"):
        write_id_list(["fine", sequence_id], out)
    assert out.read_text() == "a previous list\n"


@pytest.mark.parametrize(("name", "content", "want"), [
    ("ids.txt", ">not FASTA\nseq2\n", [">not FASTA", "seq2"]),  # the name says text
    ("ids.txt", "{odd-id}\nseq2\n", ["{odd-id}", "seq2"]),
    ("ids", ">a desc\nAC\n>b\n", ["a", "b"]),  # no telling name: the content says FASTA
    ("reads.fa.gz", b"gz", ["a"]),
    ("INDEX.JSON", '{"sequences": [{"sequence_id": "x"}]}', ["x"]),
])
def test_the_form_is_the_names_then_the_contents(tmp_path, name, content, want):
    path = write(tmp_path, name, gzip.compress(b">a\nAC\n") if content == b"gz" else content)
    assert read_expected_ids(path) == want


@pytest.mark.parametrize(("name", "content", "says"), [
    ("ids.json", '["a", "b"]', "not a sequence index: .*; read as a sequence index: its name ends in .json"),
    ("ids", '["a", "b"]', "not a sequence index: .*; read as a sequence index: it starts with '\\['"),
    ("ids", "{a\n", "invalid JSON .*; read as a sequence index: it starts with '{'"),
    ("ids.fa", "ACGT\n", "no sequence IDs in this file; read as FASTA: its name ends in .fa"),
    ("ids.txt", "# nothing\n",
     "no sequence IDs in this file; read as a list of IDs, one a line: its name ends in .txt"),
])
def test_an_error_says_how_the_file_was_read(tmp_path, name, content, says):
    path = write(tmp_path, name, content)
    assert re.fullmatch(f"{re.escape(str(path))}: {says}", _whole(path))
    assert _in_ranges(path, 3) == _whole(path)


def _damaged_gzips(tmp_path):
    data = gzip.compress(("\n".join(f"seq{i:06d}" for i in range(50_000)) + "\n").encode())
    crc = bytearray(data)
    crc[-8] ^= 0xFF  # the stored CRC-32
    inside = bytearray(data)
    inside[100] ^= 0xFF
    return {"truncated": data[: len(data) // 2], "bad CRC": bytes(crc), "corrupt": bytes(inside)}


@pytest.mark.parametrize("damage", ["truncated", "bad CRC", "corrupt"])
def test_a_damaged_gzip_is_one_line_naming_the_file(tmp_path, damage, capsys):
    path = tmp_path / "ids.txt.gz"
    path.write_bytes(_damaged_gzips(tmp_path)[damage])
    with pytest.raises(ExpectedIdsError) as err:
        read_expected_ids(path)
    assert str(err.value).startswith(f"{path}: damaged gzip file (")
    assert "\n" not in str(err.value)
    shard = tmp_path / "shard_0.h5"
    write_shard(shard, ["seq000000"], np.zeros((1, 2), "f4"))
    assert main(["validate", str(shard), "--expected", str(path)]) == 2  # unreadable input, not failed validation
    assert capsys.readouterr().err.startswith(f"virnucpro-merge: error: {path}: damaged gzip file (")


# --------------------------------------------------------------------------- an index on one line (issue 20)

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ID_TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ID_TEXT, inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(ID_TEXT, min_size=1, max_size=20), extra=st.dictionaries(st.sampled_from(["v", "n", "z"]),
                                                                              JSON_VALUES, max_size=3),
       fields=st.dictionaries(st.sampled_from(["length", "score", "ok", "meta"]), JSON_VALUES, max_size=3),
       indent=st.sampled_from([None, None, 1]), block=st.integers(1, 64), range_bytes=st.integers(1, 300))
def test_any_index_reads_the_same_whatever_its_blocks(tmp_path, ids, extra, fields, indent, block, range_bytes):
    """A block may end anywhere (inside a string, a literal, a number, an escape): the records read are json's."""
    from virnucpro_merge import expected

    index = {**extra, "sequences": [{**fields, "sequence_id": i} for i in ids]}
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index, indent=indent, ensure_ascii=bool(block % 2)), encoding="utf-8")
    want = [r["sequence_id"] for r in json.loads(path.read_text(encoding="utf-8"))["sequences"]]
    old = expected._text.BLOCK
    try:
        expected._text.BLOCK = block
        assert _whole(path) == want
        assert _in_ranges(path, range_bytes) == want
    finally:
        expected._text.BLOCK = old


def _bytes_read_in_ranges(path, range_bytes, monkeypatch):
    """How many bytes reading ``path`` in byte ranges reads from the disk, all ranges together."""
    from virnucpro_merge import expected

    total = [0]
    real_open = expected._text.open_expected

    class Counting:
        def __init__(self, raw):
            self.raw = raw

        def read(self, size=-1):
            data = self.raw.read(size)
            total[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.raw, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.raw.close()

    monkeypatch.setattr(expected._ranges, "open_expected", lambda p, name: Counting(real_open(p, name)))
    ids = _in_ranges(path, range_bytes)
    return total[0], ids


@pytest.mark.parametrize("layout", ["one line", "a line a record", "text on one line", "fasta, one long line"])
def test_where_the_lines_break_does_not_change_the_cost(tmp_path, monkeypatch, layout):
    """Each range reads about its own bytes: an index on one line (json.dump's default) is not read
    to its end by every range (which cost size squared)."""
    records = [{"sequence_id": f"contig_{i:07d}", "length": i, "file_path": "a.fa", "byte_offset": i * 9}
               for i in range(4000)]
    path = tmp_path / ("index.json" if "text" not in layout and "fasta" not in layout else "ids.fa")
    if layout == "one line":
        path.write_text(json.dumps({"sequences": records}))
    elif layout == "a line a record":
        path.write_text(json.dumps({"sequences": records}, indent=1))
    elif layout == "text on one line":  # (one ID: the whole file)
        path = tmp_path / "ids.txt"
        path.write_text("x" * 300_000)
    else:
        path.write_text(">a\n" + "ACGT" * 75_000 + "\n>b\nAC\n")
    from virnucpro_merge import expected

    monkeypatch.setattr(expected._text, "BLOCK", 1024)  # (a range of 4 KiB, read 1 KiB at a time)
    size = path.stat().st_size
    read, ids = _bytes_read_in_ranges(path, 4096, monkeypatch)
    assert not isinstance(ids, str), ids
    assert read <= 3 * size, f"{read / size:.1f} x the file read"


@pytest.mark.parametrize("block", [1, 2, 3, 4096])
def test_a_byte_order_mark_alone_in_a_piece_tells_no_form(tmp_path, monkeypatch, block):
    """A file without an extension is told by its first line, however the blocks fall (a piece that
    holds only the byte-order mark is no line)."""
    from virnucpro_merge import expected

    path = tmp_path / "ids"
    path.write_bytes("\ufeff>a\nACGT\n>b\nAC\n".encode())
    monkeypatch.setattr(expected._text, "BLOCK", block)
    assert read_expected_ids(path) == ["a", "b"]


@pytest.mark.parametrize(("name", "content"), [
    ("ids.txt", "seq1\nse\x00q2\n"),
    ("ids.fa", ">seq1\nACGT\n>se\x00q2 a phage\nAC\n"),
    ("index.json", json.dumps({"sequences": [{"sequence_id": "seq1"}, {"sequence_id": "se\x00q2"}]})),
])
def test_an_expected_id_holding_a_nul_is_refused_by_every_reader(tmp_path, monkeypatch, name, content):
    """No merged file can store it (an HDF5 string ends at its first NUL): said as the list is read,
    not as a traceback when the missing IDs are written."""
    import virnucpro_merge.expected._ranges as ranges

    path = write(tmp_path, name, content)
    says = re.escape(f"{path}: sequence ID 'se\\x00q2' holds a NUL character, which no merged file can store")
    for read in (read_expected_ids, ranges.read_expected_lookup):
        with pytest.raises(ExpectedIdsError, match=says):
            read(path)
    monkeypatch.setattr(ranges, "_LOOKUP_RANGE", 4)
    monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 3)
    with pytest.raises(ExpectedIdsError, match=says):
        ranges.read_expected_lookup(path)
    shard = write_shard(tmp_path / "shard_0.h5", ["seq1"], np.zeros((1, 2), "f4"))
    assert main(["validate", str(shard), "--expected", str(path)]) == 2
    from virnucpro_merge import MergeError, aggregate_shards

    with pytest.raises(MergeError, match="holds a NUL character"):
        aggregate_shards([shard], tmp_path / "m.h5", ["seq1", "se\x00q2"], partial=True)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab1#\n \t\r\x00\x1c\x7fé-", max_size=40))
def test_plain_lines_read_as_the_rules_of_each_line_read_them(text):
    """The numpy reading of a range of plain ASCII lines finds what the rules of each line
    find, or leaves the range to them (where a rule could apply)."""
    from virnucpro_merge.expected._text import TEXT, line_ids, plain_line_ids

    data = text.encode()
    found = plain_line_ids(data)
    plain = all(c in "ab1#\n\x7f-" for c in text) and not any(line.startswith("#") for line in text.split("\n"))
    assert (found is not None) == plain, "read in numpy exactly where no rule of a line applies"
    if found is not None:
        want = encode_ids(line_ids(text, TEXT, "f"))
        assert found.tolist() == want.tolist()
        assert found.dtype == want.dtype


def test_plain_lines_keep_to_the_widest_id_allowed():
    from virnucpro_merge.expected._text import plain_line_ids

    assert plain_line_ids(b"a\nbbbb\n", max_width=4).tolist() == [b"a", b"bbbb"]
    assert plain_line_ids(b"a\nbbbbb\n", max_width=4) is None


def test_a_plain_list_in_ranges_is_read_in_numpy_and_gives_the_same_lookup(tmp_path, monkeypatch):
    """A large plain list is read in ranges by the numpy reading (no str a line), and its lookup
    is the one a read by the rules of each line gives: the same IDs, in order, duplicates kept."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    import virnucpro_merge.expected._ranges as ranges

    ids = [f"contig_{i:06d}" for i in range(3000)] + ["x", "contig_000007", "y" * 30]
    path = write(tmp_path, "ids.txt", "\n".join(ids) + "\n")
    monkeypatch.setattr(ranges, "_LOOKUP_RANGE", 4096)
    monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 2)
    in_ranges = ranges.read_expected_lookup(path)  # (forked processes)

    calls = []
    real = ranges.plain_line_ids
    monkeypatch.setattr(ranges, "plain_line_ids", lambda data, width=None: calls.append(real(data, width)) or
                        calls[-1])
    monkeypatch.setattr(ranges, "pool", lambda workers: contextlib.nullcontext(ThreadPoolExecutor(workers)))
    assert list(ranges.read_expected_lookup(path).ids()) == ids
    assert len(calls) > 3
    assert all(found is not None for found in calls), "every range read in numpy"

    calls.clear()
    monkeypatch.setattr(ranges, "pool", lambda workers: contextlib.nullcontext(None))
    by_the_rules = ranges.read_expected_lookup(path)  # (no pool: from start to end, by the rules of each line)
    assert not calls
    assert list(in_ranges.ids()) == list(by_the_rules.ids()) == ids
    assert in_ranges.distinct == by_the_rules.distinct == len(ids) - 1
    assert in_ranges.sorted.tolist() == by_the_rules.sorted.tolist()
    assert in_ranges.order.tolist() == by_the_rules.order.tolist()
