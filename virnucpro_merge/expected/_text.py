"""Expected-ID files as text: bytes, gzip, pieces and lines, the forms and the rules of
each line and record, and ID lists written to be read back the same.

The pieces of text end at line breaks where a block holds one, and at a whole character
where it does not (a file on one line streams like any other); readers of lines join them
(:func:`whole_lines`).
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from .._files import open_input
from ..errors import ExpectedIdsError, shown_id
from ..ids import wasteful_width
from ..outputs import atomic_output

__all__ = ["TEXT", "FASTA", "JSON", "BLOCK", "GZIP_MAGIC", "LINE_BREAK", "NOT_AN_INDEX", "READ_AS",
           "open_expected", "read_head", "read_blocks", "raw_blocks", "text_blocks", "whole_lines", "line_start",
           "char_start", "form_by_name", "form_by_content", "line_ids", "plain_line_ids", "checked_records",
           "record_ids", "not_text",
           "holds_nul", "unstorable_id", "write_id_list"]

TEXT, FASTA, JSON = "text", "fasta", "json"

BLOCK = 4 * 2**20  # bytes read at a time
GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"
_ID_BLOCK = 2**16  # IDs checked at a time
LINE_BREAK = re.compile(r"\r\n|\r|\n")
NOT_AN_INDEX = 'not a sequence index: expected {"sequences": [{"sequence_id": ...}, ...]}'


# --------------------------------------------------------------------------- bytes and lines


def read_blocks(raw: BinaryIO) -> Iterator[bytes]:
    """The rest of an open file, :data:`BLOCK` bytes at a time."""
    return iter(lambda: raw.read(BLOCK), b"")


def open_expected(path: Path, name: object) -> BinaryIO:
    """Open ``path`` for reading; errors name it as ``name`` (the path as the user gave it)."""
    return open_input(path, "expected-ID file", ExpectedIdsError, shown=name)


class _Prefixed:
    """A binary stream whose first bytes were already read (a pipe cannot be re-read)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            head, self.head = (self.head, b"") if size < 0 or size >= len(self.head) else (
                self.head[:size], self.head[size:])
            return head
        return self.rest.read(size)


def read_head(raw: BinaryIO, name: object, size: int) -> bytes:
    """The first ``size`` bytes (fewer only at the end of the file), however a pipe delivers them."""
    head = b""
    try:
        while len(head) < size and (more := raw.read(size - len(head))):
            head += more
    except OSError as err:
        msg = f"{name}: cannot read expected-ID file ({err.strerror or err})"
        raise ExpectedIdsError(msg) from err
    return head


def raw_blocks(name: object, raw: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, decompressed if gzipped, a block at a time (each byte read once)."""
    head = read_head(raw, name, 2)
    stream: BinaryIO | _Prefixed | gzip.GzipFile = _Prefixed(head, raw)
    if head == GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[arg-type]
    try:
        while block := stream.read(BLOCK):
            yield block
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        problem = str(err) or type(err).__name__
        msg = f"{name}: damaged gzip file ({problem})"
        raise ExpectedIdsError(msg) from err
    except OSError as err:
        msg = f"{name}: cannot read expected-ID file ({err.strerror or err})"
        raise ExpectedIdsError(msg) from err


def _cut(data: bytes) -> int:
    """Where the last complete line of ``data`` ends (0: no complete line).

    A final ``\\r`` may be the first half of ``\\r\\n``: it waits for the next block.
    """
    return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1


def _char_end(data: bytes) -> int:
    """Where the last whole UTF-8 character of ``data`` ends, before a final ``\\r`` (which may
    be the first half of ``\\r\\n``)."""
    end = len(data) - (data[-1:] == b"\r")
    for at in range(end - 1, max(end - 4, 0) - 1, -1):
        byte = data[at]
        if byte & 0xC0 != 0x80:  # an ASCII byte, or the first of a character
            size = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if at + size <= end else at
    return end  # (not UTF-8: the decoding says so)


def text_blocks(name: object, blocks: Iterable[bytes], offset: int = 0, *, cut_at: int | None = None
                 ) -> Iterator[tuple[str, int]]:
    """Decoded text, with the byte offset where each piece starts.

    A piece ends at the last line break of a block, or, in a block without one (a file
    written on one line), at its last whole character: the text streams whatever its
    lines, and no more than a character is ever held back. Readers that need whole
    lines join such pieces (:func:`_whole_lines`). ``offset`` is the byte offset of the
    first block; a piece also ends at byte ``cut_at``, so that the text before it is a
    piece of its own.
    """
    held = b""
    for block in blocks:
        start = offset + len(held)  # where ``block`` starts in the file
        if cut_at is not None and offset < cut_at and start <= cut_at < start + len(block):
            yield _decode(name, held + block[: cut_at - start], offset)
            block, offset, held = block[cut_at - start :], cut_at, b""
        data = held + block
        cut = _cut(data) or _char_end(data)
        if cut:
            yield _decode(name, data[:cut], offset)
            offset += cut
        held = data[cut:]
    if held:
        yield _decode(name, held, offset)


def whole_lines(pieces: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """The pieces, joined where one ends inside a line: each then ends at a line break (or
    at the end of the file)."""
    parts: list[str] = []
    first = 0
    for text, offset in pieces:
        if not parts:
            first = offset
        parts.append(text)
        if text.endswith(("\n", "\r")):
            yield "".join(parts), first
            parts = []
    if parts:
        yield "".join(parts), first


def _decode(name: object, data: bytes, offset: int) -> tuple[str, int]:
    """The text of ``data`` (read at byte ``offset``) and the byte offset where the text starts
    (after a UTF-8 byte-order mark at the start of the file)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        msg = f"{name}: not UTF-8 text"
        raise ExpectedIdsError(msg) from err
    if offset == 0 and text.startswith(_BOM):
        return text[1:], len(_BOM.encode())
    return text, offset

def line_start(raw: BinaryIO, position: int, *, until: int | None = None) -> int:
    """The first line start at or after byte ``position`` (looked for up to byte ``until``
    at most, which is returned when there is none before it: a file on one line is not
    read to its end by every range)."""
    if position == 0:
        return 0
    raw.seek(position - 1)
    previous = raw.read(1)
    while until is None or position < until:
        data = raw.read(BLOCK if until is None else min(BLOCK, until - position + 1))
        if not data:
            return position
        if previous == b"\n" or (previous == b"\r" and data[:1] != b"\n"):
            return position
        found = re.search(rb"\r\n|\r(?!$)|\n", data)
        if found is None:
            position, previous = position + len(data), data[-1:]
            continue
        return position + found.end()
    return until


def char_start(raw: BinaryIO, position: int) -> int:
    """The first start of a UTF-8 character at or after byte ``position``."""
    raw.seek(position)
    head = raw.read(4)
    skip = 0
    while skip < len(head) and head[skip] & 0xC0 == 0x80:
        skip += 1
    return position + skip


# --------------------------------------------------------------------------- the rules


_BY_EXTENSION = {".json": JSON, ".txt": TEXT, ".ids": TEXT, ".list": TEXT,
                 **dict.fromkeys((".fa", ".fasta", ".fna", ".faa", ".ffn", ".frn", ".fas", ".fsa"), FASTA)}
READ_AS = {JSON: "a sequence index", FASTA: "FASTA", TEXT: "a list of IDs, one a line"}


def form_by_name(name: object) -> tuple[str | None, str]:
    """The form a file's name says (``.json``, ``.fa``..., ``.txt``; ``.gz`` aside), and why."""
    suffixes = [s.lower() for s in Path(str(name)).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes.pop()
    form = _BY_EXTENSION.get(suffixes[-1]) if suffixes else None
    return (form, f"read as {READ_AS[form]}: its name ends in {suffixes[-1]}") if form else (None, "")


def form_by_content(first_line: str) -> tuple[str, str]:
    """The form a file's first non-blank line says, and why."""
    start = first_line.lstrip()[:1]
    if start in ("{", "["):
        return JSON, f"read as a sequence index: it starts with '{start}'"
    if first_line.startswith(">"):
        return FASTA, "read as FASTA: it starts with '>'"
    return TEXT, f"read as {READ_AS[TEXT]}"


def line_ids(text: str, form: str, name: object) -> list[str]:
    """The IDs of the lines of a piece of text: a text file's non-blank lines that are not
    ``#`` comments (stripped), a FASTA file's first word after each ``>`` that starts a line
    (one holding a NUL character is an error: :func:`holds_nul`)."""
    lines = (text if "\r" not in text else text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    if form == TEXT:
        ids = [s for s in map(str.strip, lines) if s and s[0] != "#"]
    else:
        ids = [words[0] for words in (line[1:].split(maxsplit=1) for line in lines if line[:1] == ">") if words]
    if "\x00" in text:
        _refuse_nul(ids, name)
    return ids


def plain_line_ids(data: bytes, max_width: int | None = None) -> np.ndarray | None:
    """The IDs of the lines of a piece of a text file, as :func:`line_ids` finds them, encoded
    (``dtype='S'``, as :func:`~virnucpro_merge.ids.encode_ids` encodes them), found in numpy
    without a str a line; None where a rule of a line could apply (a byte that is not ASCII;
    a space, a NUL or any other control byte but the line feed, so nothing that stripping
    takes away and no carriage return; a ``#`` that starts a line) or, where ``max_width`` is
    given, an ID is longer than that or many times as long as most
    (:func:`~virnucpro_merge.ids.wasteful_width`): then :func:`line_ids` reads it.

    >>> plain_line_ids(b"seq1\\n\\nseq22\\n").tolist()
    [b'seq1', b'seq22']
    >>> plain_line_ids(b"seq1 \\n") is None, plain_line_ids(b"#seq1\\n") is None
    (True, True)
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size and raw.max() >= 0x80:
        return None
    breaks = np.flatnonzero(raw == 0x0A)
    if np.count_nonzero(raw <= 0x20) != breaks.size:  # (a byte up to the space that is not a line feed)
        return None
    if not data.endswith(b"\n"):  # (the last line, unended)
        data += b"\n"
        raw, breaks = np.frombuffer(data, dtype=np.uint8), np.append(breaks, len(data) - 1)
    starts = np.concatenate(([0], breaks[:-1] + 1))
    lengths = breaks - starts
    kept = lengths > 0  # (a blank line holds no ID)
    starts, lengths = starts[kept], lengths[kept]
    if not lengths.size:
        return np.empty(0, dtype="S1")
    if (raw[starts] == ord("#")).any():
        return None
    widest = int(lengths.max())
    if max_width is not None and (widest > max_width or wasteful_width(widest, float(lengths.mean()))):
        return None  # (encode_ids keeps such IDs as bytes objects)
    if kept.all() and (lengths == widest).all():  # (IDs of one length, one a line: rows of a table)
        return np.ascontiguousarray(raw.reshape(-1, widest + 1)[:, :widest]).view(f"S{widest}").ravel()
    rows = np.zeros((lengths.size, widest), dtype=np.uint8)
    rows[np.arange(widest) < lengths[:, None]] = raw[raw != 0x0A]  # (row by row, each ID's bytes in order)
    return rows.view(f"S{widest}").ravel()


def holds_nul(ids: Iterable[str]) -> str | None:
    """The first ID holding a NUL character, which no merged file can store (an HDF5 string
    ends at its first NUL), or None.

    >>> holds_nul(["seq1", "seq\\x002"]), holds_nul(["seq1"])
    ('seq\\x002', None)
    """
    for block, joined in _joined_blocks(ids):
        if "\x00" in joined:
            return next(i for i in block if "\x00" in i)
    return None


def unstorable_id(ids: Iterable[object]) -> tuple[str, object] | None:
    """The first ID a merged file cannot store, and why, in one pass over the IDs: ``"type"``
    (not a str), ``"surrogate"`` (no UTF-8 form: :func:`not_text`) or ``"nul"``
    (:func:`holds_nul`); None when every one is stored as it is.

    >>> unstorable_id(["seq1", "séq2"]), unstorable_id(["seq1", 2]), unstorable_id(["s", "x\\ud83d"])
    (None, ('type', 2), ('surrogate', 'x\\ud83d'))
    """
    each = iter(ids)
    while block := list(itertools.islice(each, _ID_BLOCK)):
        try:
            joined = "".join(block)  # type: ignore[arg-type]  # (a TypeError names an ID that is not str)
        except TypeError:
            return "type", next(i for i in block if not isinstance(i, str))
        texts = cast("list[str]", block)
        if not joined.isascii() and not _encodable(joined):
            return "surrogate", next(i for i in texts if not _encodable(i))
        if "\x00" in joined:
            return "nul", next(i for i in texts if "\x00" in i)
    return None


def _joined_blocks(ids: Iterable[str]) -> Iterator[tuple[list[str], str]]:
    """IDs a block at a time, each with its IDs joined (one C pass answers a question of a block)."""
    each = iter(ids)
    while block := list(itertools.islice(each, _ID_BLOCK)):
        yield block, "".join(block)


#: Why an ID of a file cannot be stored, in words (by :func:`unstorable_id`'s kind; in a file,
#: only a \u escape makes half a surrogate pair).
_UNSTORABLE_IN_A_FILE = {
    "surrogate": "is not Unicode text (a \\u escape of half a surrogate pair)",
    "nul": "holds a NUL character, which no merged file can store",
}


def _refuse_nul(ids: Iterable[str], name: object) -> None:
    bad = holds_nul(ids)
    if bad is not None:
        msg = f"{name}: sequence ID {shown_id(bad)} {_UNSTORABLE_IN_A_FILE['nul']}"
        raise ExpectedIdsError(msg)


def checked_records(records: list[Any], name: object) -> list[dict[str, Any]]:
    """``records``, checked to be index records: each a dict with a str ``sequence_id``."""
    record_ids(records, name)
    return records


def record_ids(records: list[Any], name: object) -> list[str]:
    """The IDs of a list of index records, each a dict with a str ``sequence_id``."""
    try:
        ids = [record["sequence_id"] for record in records]
    except (KeyError, TypeError, IndexError):
        ids = None
    if ids is None or not set(map(type, ids)) <= {str} or not set(map(type, records)) <= {dict}:
        msg = f"{name}: {NOT_AN_INDEX}"
        raise ExpectedIdsError(msg)
    bad = unstorable_id(ids)  # (str, each of them: checked above)
    if bad is not None:
        msg = f"{name}: sequence ID {shown_id(str(bad[1]))} {_UNSTORABLE_IN_A_FILE[bad[0]]}"
        raise ExpectedIdsError(msg)
    return ids


def not_text(ids: Iterable[str]) -> str | None:
    """The first ID that has no UTF-8 form (it holds half a surrogate pair), or None.

    >>> not_text(["seq1", "séq2", "\\U0001f600"]) is None, not_text(["seq1", "x\\ud83d"])
    (True, 'x\\ud83d')
    """
    for block, joined in _joined_blocks(ids):
        if not joined.isascii() and not _encodable(joined):
            return next(i for i in block if not _encodable(i))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True

# --------------------------------------------------------------------------- writing


def _unwritable(sequence_id: str) -> str | None:
    """Why an ID would not read back the same from a one-ID-a-line list (None: it would)."""
    if not sequence_id:
        return "it is empty"
    if sequence_id != sequence_id.strip():
        return "it starts or ends with white space"
    if sequence_id[0] == "#":
        return "it starts with '#', which marks a comment"
    if "\n" in sequence_id or "\r" in sequence_id:
        return "it holds a line break"
    return None


def write_id_list(ids: Iterable[str], path: str | os.PathLike[str]) -> Path:
    """Write sequence IDs one per line (a re-run list); return the path.

    The file can be given back as ``--expected`` (it reads back exactly these IDs) or
    to the embedding pipeline to re-run just those sequences. An ID that would read
    back otherwise (white space at an end, a leading ``#``, a line break, or empty) is
    refused before anything is written; the file appears whole or not at all.

    Raises
    ------
    ExpectedIdsError
        An ID cannot be written this way (the message says which, and why).

    Examples
    --------
    >>> from virnucpro_merge.expected import read_expected_ids
    >>> out = write_id_list(["seq2", "seq1"], "rerun.txt")
    >>> out.read_text()
    'seq2\\nseq1\\n'
    >>> read_expected_ids(out)
    ['seq2', 'seq1']
    """
    path = Path(path)
    given: list[object] = list(ids)
    for sequence_id in given:
        if not isinstance(sequence_id, str):
            msg = f"{path}: a sequence ID must be a str, not {type(sequence_id).__name__}"
            raise ExpectedIdsError(msg)
        why = _unwritable(sequence_id)
        if why is not None:
            msg = (f"{path}: the sequence ID {shown_id(sequence_id)!s} cannot be written one a line and read "
                   f"back the same ({why}); nothing written")
            raise ExpectedIdsError(msg)
    ids = [str(i) for i in given]
    with atomic_output(path, sum(map(len, ids)) * 4 + len(ids)) as pending, \
            open(pending.path, "w", encoding="utf-8", newline="\n") as fh:
        for start in range(0, len(ids), 2**16):
            fh.write("".join(f"{i}\n" for i in ids[start : start + 2**16]))
    return path
