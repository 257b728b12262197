"""Reading the list of sequence IDs a run was expected to produce: one parser, one set of rules.

Three forms are understood, told apart by the first non-blank line:

- a run's sequence-index JSON, ``{"sequences": [{"sequence_id": ...}, ...]}`` (it starts with ``{``);
- a FASTA file, whose IDs are the first word after each ``>`` (it starts with ``>``);
- plain text, one ID a line, blank lines and ``#`` comments ignored.

A UTF-8 byte-order mark, any line ending (``\\n``, ``\\r\\n``, ``\\r``: Python's universal
newlines) and gzip compression are handled. A file is opened once and read as a
stream, so a pipe (``/dev/stdin``, ``<(...)``) works like a file.

The same rules hold wherever a file is read. One process reads it from start to end
(:func:`iter_expected_ids`); the workers of a Dask cluster read it in byte ranges
(:func:`read_range`) with the same line splitting, the same rule per line and per
record, and the same errors. A JSON index is read record by record (each record by
:mod:`json` itself), never whole: a worker starts at the first record it finds in its
range, and :func:`ranges_agree` accepts the ranges' answers only when every record
start follows from the one before, back to the start of the file; otherwise the file
is read from start to end, which gives the one true answer (or error).
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import numpy as np

from ._processes import pool
from .errors import ExpectedIdsError, shown_id
from .ids import encode_and_hash_ids, encode_ids
from .outputs import atomic_output

__all__ = [
    "TEXT",
    "FASTA",
    "JSON",
    "RangeIds",
    "detect_form",
    "iter_expected_ids",
    "iter_expected_id_blocks",
    "read_expected_ids",
    "iter_index_records",
    "read_sequence_index",
    "RANGE_BYTES",
    "not_text",
    "iter_encoded_id_blocks",
    "expected_ranges",
    "read_range",
    "ranges_agree",
    "write_id_list",
]

TEXT, FASTA, JSON = "text", "fasta", "json"

_BLOCK = 4 * 2**20  # bytes read at a time
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")  # after a record of the list
_DECODE = json.JSONDecoder().raw_decode  # one value at a position: (value, end)
_NEAR_END = 8  # characters: longer than any token the window can cut short and still read (true, \\uXXXX, 1e+5)
_NOT_AN_INDEX = 'not a sequence index: expected {"sequences": [{"sequence_id": ...}, ...]}'


# --------------------------------------------------------------------------- bytes and lines


def _open(path: Path, name: object) -> BinaryIO:
    """Open ``path`` for reading; errors name it as ``name`` (the path as the user gave it)."""
    try:
        return open(path, "rb")
    except FileNotFoundError as err:
        msg = f"{name}: expected-ID file does not exist"
        raise ExpectedIdsError(msg) from err
    except IsADirectoryError as err:
        msg = f"{name}: is a directory, not an expected-ID file"
        raise ExpectedIdsError(msg) from err
    except OSError as err:
        msg = f"{name}: cannot read expected-ID file ({err.strerror or err})"
        raise ExpectedIdsError(msg) from err


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


def _read_head(raw: BinaryIO, name: object, size: int) -> bytes:
    """The first ``size`` bytes (fewer only at the end of the file), however a pipe delivers them."""
    head = b""
    try:
        while len(head) < size and (more := raw.read(size - len(head))):
            head += more
    except OSError as err:
        msg = f"{name}: cannot read expected-ID file ({err.strerror or err})"
        raise ExpectedIdsError(msg) from err
    return head


def _raw_blocks(name: object, raw: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, decompressed if gzipped, a block at a time (each byte read once)."""
    head = _read_head(raw, name, 2)
    stream: BinaryIO | _Prefixed | gzip.GzipFile = _Prefixed(head, raw)
    if head == _GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[arg-type]
    try:
        while block := stream.read(_BLOCK):
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


def _text_blocks(name: object, blocks: Iterable[bytes], offset: int = 0, *, cut_at: int | None = None
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


def _whole_lines(pieces: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
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


# --------------------------------------------------------------------------- the rules


_BY_EXTENSION = {".json": JSON, ".txt": TEXT, ".ids": TEXT, ".list": TEXT,
                 **dict.fromkeys((".fa", ".fasta", ".fna", ".faa", ".ffn", ".frn", ".fas", ".fsa"), FASTA)}
_READ_AS = {JSON: "a sequence index", FASTA: "FASTA", TEXT: "a list of IDs, one a line"}


def _form_by_name(name: object) -> tuple[str | None, str]:
    """The form a file's name says (``.json``, ``.fa``..., ``.txt``; ``.gz`` aside), and why."""
    suffixes = [s.lower() for s in Path(str(name)).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes.pop()
    form = _BY_EXTENSION.get(suffixes[-1]) if suffixes else None
    return (form, f"read as {_READ_AS[form]}: its name ends in {suffixes[-1]}") if form else (None, "")


def _form_by_content(first_line: str) -> tuple[str, str]:
    """The form a file's first non-blank line says, and why."""
    start = first_line.lstrip()[:1]
    if start in ("{", "["):
        return JSON, f"read as a sequence index: it starts with '{start}'"
    if first_line.startswith(">"):
        return FASTA, "read as FASTA: it starts with '>'"
    return TEXT, f"read as {_READ_AS[TEXT]}"


def _line_ids(text: str, form: str) -> list[str]:
    """The IDs of the lines of a piece of text: a text file's non-blank lines that are not
    ``#`` comments (stripped), a FASTA file's first word after each ``>`` that starts a line."""
    lines = (text if "\r" not in text else text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    if form == TEXT:
        return [s for s in map(str.strip, lines) if s and s[0] != "#"]
    return [words[0] for words in (line[1:].split(maxsplit=1) for line in lines if line[:1] == ">") if words]


def _checked(records: list[Any], name: object) -> list[dict]:
    """``records``, checked to be index records: each a dict with a str ``sequence_id``."""
    _check_records(records, name)
    return records


def _check_records(records: list[Any], name: object) -> list[str]:
    """The IDs of a list of index records, each a dict with a str ``sequence_id``."""
    try:
        ids = [record["sequence_id"] for record in records]
    except (KeyError, TypeError, IndexError):
        ids = None
    if ids is None or not set(map(type, ids)) <= {str} or not set(map(type, records)) <= {dict}:
        msg = f"{name}: {_NOT_AN_INDEX}"
        raise ExpectedIdsError(msg)
    bad = not_text(ids)  # (in a file, only a \u escape can make one)
    if bad is not None:
        msg = f"{name}: sequence ID {shown_id(bad)} is not Unicode text (a \\u escape of half a surrogate pair)"
        raise ExpectedIdsError(msg)
    return ids


def not_text(ids: Iterable[str]) -> str | None:
    """The first ID that has no UTF-8 form (it holds half a surrogate pair), or None.

    >>> not_text(["seq1", "séq2", "\\U0001f600"]) is None, not_text(["seq1", "x\\ud83d"])
    (True, 'x\\ud83d')
    """
    each = iter(ids)
    while block := list(itertools.islice(each, 2**16)):
        joined = "".join(block)
        if not joined.isascii() and not _encodable(joined):
            return next(i for i in block if not _encodable(i))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- JSON, a record at a time


class _JsonText:
    """A window onto a file's text, fed piece by piece, for reading one JSON value at a time.

    A value the window cuts short fails at its very end, or (a number) ends there: then
    more text is read and the value read again.
    """

    def __init__(self, pieces: Iterator[tuple[str, int]], name: object, *, owned_until: int | None = None) -> None:
        self.pieces, self.name = pieces, name
        self.text, self.pos = "", 0
        self.dropped = 0  # characters dropped from the front of the window so far
        self.byte_base: int | None = None  # byte offset of the window's first character
        self.line = 1  # line number of the window's first character
        self.column = 0  # characters of that line dropped before it
        self.owned_until = owned_until  # byte offset where this reader's records end
        self.owned_chars: int | None = None  # ... as a character count from the start of reading
        self.pin: int | None = None  # a character (counted likewise) that must stay in the window
        self.dropped_crlf = 0  # \r\n pairs among the dropped characters (json counts them as one)

    def more(self) -> bool:
        """Read one more piece into the window; False at the end of the file. What was read
        is dropped first (a file on one line streams as one of many lines does)."""
        piece = next(self.pieces, None)
        if piece is None:
            return False
        text, offset = piece
        if self.byte_base is None:
            self.byte_base = offset
        if offset == self.owned_until:
            self.owned_chars = self.dropped + len(self.text)
        keep = self.pos if self.pin is None else min(self.pos, self.pin - self.dropped)
        keep -= keep > 0 and self.text[keep - 1] == "\r"  # (a \r\n is dropped whole, or not at all)
        if keep > 0 and self.byte_base is not None:
            gone = self.text[:keep]
            crs, pairs = (gone.count("\r"), gone.count("\r\n")) if "\r" in gone else (0, 0)  # most files: no \r
            breaks = gone.count("\n") + crs - pairs
            self.line += breaks
            self.column = keep - _after_last_break(gone, keep) if breaks else self.column + keep
            self.dropped_crlf += pairs
            self.byte_base += len(gone) if gone.isascii() else len(gone.encode())
            self.dropped += keep
            self.text, self.pos = self.text[keep:], self.pos - keep
        self.text += text
        return True

    def next_char(self) -> str:
        """The next character that is not whitespace ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def take(self, char: str, what: str) -> None:
        if self.next_char() != char:
            msg = f"Expecting {what}"
            raise self.error(msg, self.pos)
        self.pos += 1

    def value(self) -> object:
        """The JSON value at the current position (after any whitespace).

        A value the window may have cut short is read again with more text: one that
        fails or ends within a few characters of the window's end (a literal, an escape,
        a number's tail), or a string that runs to its end.
        """
        self.next_char()
        while True:
            try:
                found, end = _DECODE(self.text, self.pos)
            except json.JSONDecodeError as err:
                where, problem = err.pos, err.msg
            else:
                if end >= len(self.text) - _NEAR_END and self.more():
                    continue
                self.pos = end
                return found
            cut_short = problem.startswith("Unterminated string") or (
                where >= len(self.text.rstrip(" \t\n\r")) - _NEAR_END)
            if cut_short and self.more():
                continue
            raise self.error(problem, where)

    def byte_offset(self) -> int:
        """The byte offset of the current position in the file."""
        return (self.byte_base or 0) + len(self.text[: self.pos].encode())

    def owned(self) -> bool:
        """Whether the current position is before the end of this reader's range."""
        if self.owned_until is None:
            return True
        if self.owned_chars is None:
            return True  # the piece that starts at the end of the range has not been read yet
        return self.dropped + self.pos < self.owned_chars

    def error(self, problem: str, where: int) -> ExpectedIdsError:
        """``invalid JSON``, placed as :mod:`json` places it (line, column and character of the
        text with its line ends read as ``\\n``)."""
        line = self.line + len(_LINE_BREAK.findall(self.text, 0, where))
        start = _after_last_break(self.text, where)
        column = where - start + 1 + (self.column if start == 0 else 0)
        char = self.dropped - self.dropped_crlf + where - self.text.count("\r\n", 0, where)
        msg = f"{self.name}: invalid JSON ({problem}: line {line} column {column} (char {char}))"
        return ExpectedIdsError(msg)


def _after_last_break(text: str, until: int) -> int:
    """Where the line under way at ``until`` starts (0: at the start of ``text``)."""
    newline, cr = text.rfind("\n", 0, until), text.rfind("\r", 0, until)
    if cr > newline and cr + 1 < len(text) and text[cr + 1] == "\n":
        return newline + 1  # the \r of a \r\n whose \n is not yet before ``until``
    return max(newline, cr) + 1


@dataclass
class _Chain:
    """Where the records a JSON reader read sit in the file (its answer to :func:`ranges_agree`)."""

    first: int | None = None  # byte offset of its first record (None: it read none)
    next: int | None = None  # byte offset of the record after its last, in the next range
    closed: bool = False  # it read the end of the records and the rest of the file, which is sound


class _IndexReader:
    """The records of a sequence-index JSON: from the top, or from a record start onwards."""

    def __init__(self, text: _JsonText) -> None:
        self.text, self.chain = text, _Chain()

    def from_the_top(self) -> Iterator[list[dict]]:
        """Every record of the file, the whole file checked as :func:`json.load` would
        (up to the end of this reader's range, if it has one)."""
        text = self.text
        self.chain.first = 0
        if text.next_char() == "[":  # valid JSON, perhaps, but not an index
            text.value()
            raise self._not_an_index()
        text.take("{", "value")
        more = text.next_char() != "}"
        if not more:
            text.pos += 1
        while more:
            if self._key() == "sequences":
                if text.next_char() != "[":
                    text.value()
                    raise self._not_an_index()
                text.pos += 1
                yield from self.records()
                if self.chain.closed:
                    self._rest_of_file()
                return
            text.value()
            more = self._after_member()
        self._end_of_file()
        raise self._not_an_index()

    def records(self) -> Iterator[list[dict]]:
        """Records from the current position to the end of the list (then ``chain.closed``)
        or of this reader's range (then ``chain.next`` is where the next record starts),
        a list at a time."""
        text = self.text
        if text.next_char() == "]":
            text.pos += 1
            self.chain.closed = True
            return
        while not self.chain.closed:
            text.next_char()  # to the record's first character
            if not text.owned():
                self.chain.next = text.byte_offset()
                return
            if self.chain.first is None:
                self.chain.first = text.byte_offset()
            at = text.dropped + text.pos
            yield from self._quickly()
            if self.chain.closed or text.dropped + text.pos != at:
                continue  # (and there, see whether the next record is still this reader's)
            # at the edge of the window: one record the careful way (reads on, or names the error)
            while text.next_char() == "{" and text.text.find("}", text.pos) < 0 and text.more():
                pass  # (its end not yet read: a failed parse would cost as much as a good one)
            yield _checked([text.value()], text.name)
            char = text.next_char()
            text.pos += 1
            if char == "]":
                self.chain.closed = True
            elif char != ",":
                msg = "Expecting ',' delimiter"
                raise text.error(msg, text.pos - 1)

    def _quickly(self) -> Iterator[list[dict]]:
        """The records that lie whole in the window: most of them by one C call, as one
        list (from here to the last ``},`` in the window), the rest one at a time.

        A ``},`` that is not between two records (inside a string or a nested object)
        leaves that list unfinished, so it fails to parse: then every record is read
        on its own. One that parses holds exactly the records the list holds there.
        """
        text = self.text
        window, pos = text.text, text.pos
        owned = len(window) if text.owned_chars is None else text.owned_chars - text.dropped
        cut = window.rfind("},", pos, min(owned, len(window)) + 1)
        if cut > pos:
            try:
                batch = json.loads("[" + window[pos : cut + 1] + "]")
            except json.JSONDecodeError:
                batch = None
            if batch is not None:
                _check_records(batch, text.name)
                yield batch
                pos = _WS.match(window, cut + 2).end()  # type: ignore[union-attr]
        single = []
        while pos < owned and window.find("}", pos) >= 0:  # (no '}': the record goes on in the next piece)
            try:
                record, end = _DECODE(window, pos)
            except json.JSONDecodeError:
                break
            after = _SEPARATOR.match(window, end)
            if after is None or after.end() == len(window):
                break  # the separator may go on in the next piece
            single.append(record)
            pos = after.end()
            if after[1] == "]":
                self.chain.closed = True
                break
        if single:
            _check_records(single, text.name)
            yield single
        text.pos = pos

    def from_a_range(self) -> Iterator[list[dict]]:
        """The records that start in this reader's range: from the first place where a
        record parses and is followed by ',' or ']' (a guess :func:`ranges_agree` checks)."""
        text = self.text
        while True:
            char = text.next_char()
            if char == "" or not text.owned():
                return
            if char != "{":  # (a '{' inside a string never parses as a record: its quotes are escaped)
                brace = text.text.find("{", text.pos)
                text.pos = len(text.text) if brace < 0 else brace
                continue
            start = text.pin = text.dropped + text.pos  # keep it in the window while guessing
            try:
                _check_records([text.value()], text.name)
                follows = text.next_char()
            except ExpectedIdsError:
                follows = ""
            text.pos, text.pin = start - text.dropped, None
            if follows in (",", "]"):
                yield from self.records()
                if self.chain.closed:
                    self._rest_of_file()
                return
            text.pos += 1

    def _key(self) -> object:
        """The name of a member of the top object, and the ':' after it."""
        if self.text.next_char() != '"':
            msg = "Expecting property name enclosed in double quotes"
            raise self.text.error(msg, self.text.pos)
        key = self.text.value()
        self.text.take(":", "':' delimiter")
        return key

    def _after_member(self) -> bool:
        """Past a member of the top object: True if another follows, False at its end."""
        char = self.text.next_char()
        self.text.pos += 1
        if char == ",":
            return True
        if char == "}":
            return False
        msg = "Expecting ',' delimiter"
        raise self.text.error(msg, self.text.pos - 1)

    def _rest_of_file(self) -> None:
        """After the list: the rest of the top object, then nothing but whitespace."""
        while self._after_member():
            if self._key() == "sequences":
                msg = "it has two 'sequences'"
                raise self._not_an_index(msg)
            self.text.value()
        self._end_of_file()

    def _end_of_file(self) -> None:
        if self.text.next_char() != "":
            msg = "Extra data"
            raise self.text.error(msg, self.text.pos)

    def _not_an_index(self, why: str = "") -> ExpectedIdsError:
        return ExpectedIdsError(f"{self.text.name}: {_NOT_AN_INDEX}" + (f" ({why})" if why else ""))


# --------------------------------------------------------------------------- reading a whole file


def _form_and_pieces(name: object, raw: BinaryIO) -> tuple[str | None, str, Iterator[tuple[str, int]]]:
    """The file's form (None: no way to tell, and nothing in it), why, and its text from the start.

    The rule: the name's extension first (``.json``; ``.fa``, ``.fasta``, ``.fna``,
    ``.faa``, ``.ffn``, ``.frn``, ``.fas``, ``.fsa``; ``.txt``, ``.ids``, ``.list``; a
    ``.gz`` after it aside), then the first non-blank line (``{`` or ``[``: JSON, ``>``
    at its start: FASTA, else text).
    """
    pieces = _text_blocks(name, _raw_blocks(name, raw))
    form, why = _form_by_name(name)
    if form is not None:
        return form, why, pieces
    seen: list[tuple[str, int]] = []
    at_line_start = True
    for piece in pieces:
        seen.append(piece)
        for number, line in enumerate(_LINE_BREAK.split(piece[0])):
            if line.strip():  # the first non-blank line (on from a blank start: as if indented)
                form, why = _form_by_content(line if at_line_start or number else " " + line)
                return form, why, _chain(seen, pieces)
        if piece[0]:  # (an empty piece, a byte-order mark alone, changes nothing)
            at_line_start = piece[0].endswith(("\n", "\r"))
    return None, "", iter(seen)


def _noted(err: ExpectedIdsError, why: str) -> ExpectedIdsError:
    """The error, saying how the file was read (so that a file taken for another form says so)."""
    return ExpectedIdsError(f"{err}; {why}") if why else err


def _chain(first: list[tuple[str, int]], rest: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    yield from first
    yield from rest


def detect_form(path: str | os.PathLike[str], *, shown_as: object = None) -> tuple[str | None, bool, str]:
    """The form of an expected-ID file (``text``, ``fasta``, ``json``; None when nothing
    tells), whether it is gzipped, and why it is read as it is (its extension, else
    its first non-blank line). Errors name the file as ``shown_as`` when given."""
    path = Path(path)
    name = shown_as or path
    with _open(path, name) as raw:
        gzipped = _read_head(raw, name, 2) == _GZIP_MAGIC
        raw.seek(0)
        form, why, _ = _form_and_pieces(name, raw)
    return form, gzipped, why


def _blocks(path: Path, name: object, *, index_only: bool, require_ids: bool = False
            ) -> Iterator[tuple[list[dict] | None, list[str]]]:
    """``(records, IDs)`` of the expected IDs in file order, a block at a time (``records``:
    for a JSON index)."""
    with _open(path, name) as raw:
        form, why, pieces = _form_and_pieces(name, raw)
        if index_only and form != JSON:
            msg = f"{name}: {_NOT_AN_INDEX}"
            raise _noted(ExpectedIdsError(msg), why)
        found = False
        try:
            if form == JSON:
                for records in _IndexReader(_JsonText(pieces, name)).from_the_top():
                    found = found or bool(records)
                    yield records, [record["sequence_id"] for record in records]
            elif form is not None:
                for text, _ in _whole_lines(pieces):
                    ids = _line_ids(text, form)
                    found = found or bool(ids)
                    yield None, ids
        except ExpectedIdsError as err:
            raise _noted(err, why) from err
        if require_ids and not found:
            msg = f"{name}: no sequence IDs in this file"
            raise _noted(ExpectedIdsError(msg), why)


def iter_expected_id_blocks(path: str | os.PathLike[str], *, shown_as: object = None) -> Iterator[list[str]]:
    """The expected IDs of a file in file order, as lists (one for each piece read): the
    quick way to take in many. Errors name the file as ``shown_as`` when given."""
    path = Path(path)
    return (ids for _, ids in _blocks(path, shown_as or path, index_only=False))


def iter_expected_ids(path: str | os.PathLike[str], *, shown_as: object = None) -> Iterator[str]:
    """Yield the expected IDs of a text, FASTA or sequence-index JSON file, in file order.

    The file is read once, as a stream (a JSON index record by record). Errors name
    the file as ``shown_as`` when given (a worker's absolute path is not the user's).

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("ids.txt").write_text("seq1\\nseq2\\nseq3\\n")
    >>> ids = iter_expected_ids("ids.txt")
    >>> next(ids), list(ids)
    ('seq1', ['seq2', 'seq3'])
    """
    return itertools.chain.from_iterable(iter_expected_id_blocks(path, shown_as=shown_as))


def read_expected_ids(path: str | os.PathLike[str]) -> list[str]:
    """Read expected sequence IDs from a text, FASTA or sequence-index JSON file.

    Parameters
    ----------
    path : path-like
        The file; its form is detected from its content.

    Returns
    -------
    list of str
        The IDs in file order (duplicates kept; callers that need a set make one).

    Raises
    ------
    ExpectedIdsError
        The file is absent, unreadable, malformed, or holds no ID.

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("ids.txt").write_text("# the run's sequences\\nseq1\\nseq2\\n")
    >>> read_expected_ids("ids.txt")
    ['seq1', 'seq2']
    >>> _ = Path("ids.fasta").write_text(">seq1 a phage\\nACGT\\n>seq2\\nTTGA\\n")
    >>> read_expected_ids("ids.fasta")
    ['seq1', 'seq2']
    """
    path = Path(path)
    return [i for _, ids in _blocks(path, path, index_only=False, require_ids=True) for i in ids]


def iter_index_records(path: str | os.PathLike[str]) -> Iterator[dict]:
    """Yield the records of a run's sequence-index JSON, in index order, one at a time."""
    path = Path(path)
    return itertools.chain.from_iterable(records or [] for records, _ in _blocks(path, path, index_only=True))


def read_sequence_index(path: str | os.PathLike[str]) -> list[dict]:
    """Read a run's sequence-index JSON and return its ``sequences`` records.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4)
    >>> records = read_sequence_index(run.index)
    >>> len(records), sorted(records[0])
    (12, ['byte_offset', 'file_path', 'length', 'sequence_id'])
    """
    return list(iter_index_records(path))


# --------------------------------------------------------------------------- reading in byte ranges

#: A file read in byte ranges (by a cluster's workers, or by this machine's cores) is
#: read in ranges of about this size: what one task holds in memory at a time.
RANGE_BYTES = 32 * 2**20


@dataclass
class RangeIds:
    """The expected IDs whose line (or JSON record) starts in bytes ``[first, last)`` of a
    file: the lines that start in the range asked for."""

    first: int
    last: int
    ids: list[str] = field(default_factory=list)
    #: for a JSON index: where its records sit (None: its guess of a record start failed)
    chain: _Chain | None = None


def expected_ranges(path: str | os.PathLike[str], range_bytes: int) -> list[tuple[int, int]] | None:
    """Byte ranges of about ``range_bytes`` that cover the file; None where the file can only
    be read from start to end (gzipped, or not a regular file)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file() or detect_form(path)[1]:
        return None
    bounds = [*range(0, stat.st_size, max(1, range_bytes)), stat.st_size]
    return list(itertools.pairwise(bounds)) or [(0, 0)]


def _line_start(raw: BinaryIO, position: int, *, until: int | None = None) -> int:
    """The first line start at or after byte ``position`` (looked for up to byte ``until``
    at most, which is returned when there is none before it: a file on one line is not
    read to its end by every range)."""
    if position == 0:
        return 0
    raw.seek(position - 1)
    previous = raw.read(1)
    while until is None or position < until:
        data = raw.read(_BLOCK if until is None else min(_BLOCK, until - position + 1))
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


def _char_start(raw: BinaryIO, position: int) -> int:
    """The first start of a UTF-8 character at or after byte ``position``."""
    raw.seek(position)
    head = raw.read(4)
    skip = 0
    while skip < len(head) and head[skip] & 0xC0 == 0x80:
        skip += 1
    return position + skip


def read_range(path: str | os.PathLike[str], form: str, start: int, end: int, *, shown_as: object = None,
               why: str = "") -> RangeIds:
    """The expected IDs of the lines that start in bytes ``[start, end)`` of a plain file.

    A text or FASTA range holds the IDs of those lines. A JSON range holds the records
    that start on them, found by a guess that :func:`ranges_agree` checks; a range
    whose guess fails reports ``chain=None`` instead of an error (the range that
    starts the file is no guess: its errors are the file's). Errors name the file
    as ``shown_as`` when given, and say ``why`` it is read as ``form``
    (:func:`detect_form`), as a whole-file read does.
    """
    path = Path(path)
    name = shown_as or path
    with _open(path, name) as raw:
        if form == JSON:  # records are found by parsing, wherever the lines break
            first, last = _char_start(raw, start), _char_start(raw, end)
        else:
            first = _line_start(raw, start, until=end)
            last = _line_start(raw, end) if first < end else first  # (no line starts in it: it holds none)
        found = RangeIds(first, last)
        raw.seek(first)
        if form != JSON:
            region = _read_head(raw, name, last - first) if first < last else b""
            try:
                found.ids = [i for text, _ in _whole_lines(_text_blocks(name, [region], first))
                             for i in _line_ids(text, form)]
            except ExpectedIdsError as err:
                raise _noted(err, why) from err
            return found
        blocks = iter(lambda: raw.read(_BLOCK), b"")
        reader = _IndexReader(_JsonText(_text_blocks(name, blocks, first, cut_at=last), name, owned_until=last))
        try:
            records = reader.from_the_top() if first == 0 else reader.from_a_range()
            found.ids = [record["sequence_id"] for block in records for record in block]
        except ExpectedIdsError as err:
            if first == 0:
                raise _noted(err, why) from err
            found.ids = []
            return found
        found.chain = reader.chain
        return found


def ranges_agree(ranges: list[RangeIds]) -> bool:
    """Whether the records that the JSON ranges found are exactly the file's records.

    The range that starts the file reads from the top; every other range must start
    its records exactly where the range before it said the next record starts (or
    find none, where that is past its end), and the list must end, with the rest of
    the file sound, in the last range that holds records.
    """
    expected_next: int | None = 0  # where the next record starts; None: past the list's end
    for part in ranges:  # in file order
        if part.chain is None:
            return False
        owns = expected_next is not None and part.first <= expected_next < part.last
        if part.chain.first != (expected_next if owns else None):
            return False
        if owns:
            expected_next = None if part.chain.closed else part.chain.next
    return expected_next is None


def _encoded_range(path: Path, form: str, start: int, end: int, shown: object, why: str,
                   max_width: int | None, hashed: bool) -> tuple[_Block, RangeIds]:
    """Worker task: the encoded IDs of one byte range (and their hashes), and the range read
    (without its IDs)."""
    found = read_range(path, form, start, end, shown_as=shown, why=why)
    return _encoded(found.ids, max_width, hashed), replace(found, ids=[])


_Block = np.ndarray | tuple[np.ndarray, np.ndarray]


def _encoded(ids: Sequence[str], max_width: int | None, hashed: bool) -> _Block:
    return encode_and_hash_ids(ids, max_width=max_width) if hashed else encode_ids(ids, max_width=max_width)


@overload
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = ..., max_width: int | None = ...,
                           range_bytes: int | None = ..., shown_as: object = ...,
                           hashed: Literal[False] = ...) -> Iterator[np.ndarray]: ...
@overload
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = ..., max_width: int | None = ...,
                           range_bytes: int | None = ..., shown_as: object = ...,
                           hashed: Literal[True]) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = 1, max_width: int | None = None,
                           range_bytes: int | None = None, shown_as: object = None,
                           hashed: bool = False) -> Iterator[_Block]:
    """The expected IDs of a file in file order, as arrays of their UTF-8 bytes
    (:func:`encode_ids`), read by up to ``workers`` processes at once where that helps.

    A plain file larger than one range (``range_bytes``, by default :data:`RANGE_BYTES`)
    is read in byte ranges (:func:`read_range`) by
    a pool of ``workers`` processes: the same rules and errors as a read from start to
    end (the first error in the file is the one raised), and a JSON index whose ranges
    do not agree (:func:`ranges_agree`) is read again from start to end. A gzipped
    file, a pipe, a small file, ``workers=1`` or a system without ``fork``: read here,
    from start to end. With ``hashed``, each block comes with its IDs' hashes
    (:func:`encode_and_hash_ids`), worked out by the process that read it.

    Examples
    --------
    >>> from pathlib import Path
    >>> _ = Path("ids.txt").write_text("seq1\\nseq2\\n")
    >>> [block.tolist() for block in iter_encoded_id_blocks("ids.txt", workers=2)]
    [[b'seq1', b'seq2']]
    >>> [hashes.size for _, hashes in iter_encoded_id_blocks("ids.txt", hashed=True)]
    [2]
    """
    path = Path(path)
    ranges = expected_ranges(path, range_bytes or RANGE_BYTES) if workers > 1 else None
    form, _, why = detect_form(path, shown_as=shown_as) if ranges and len(ranges) > 1 else (None, False, "")
    parts = None
    if ranges and form is not None:
        with pool(min(workers, len(ranges))) as readers:
            if readers is not None:
                tasks = [(path, form, a, b, shown_as or path, why, max_width, hashed) for a, b in ranges]
                parts = list(readers.map(_encoded_range, *zip(*tasks, strict=True)))
    if parts is not None and (form != JSON or ranges_agree([where for _, where in parts])):
        yield from (block for block, _ in parts)
        return
    for ids in iter_expected_id_blocks(path, shown_as=shown_as):
        yield _encoded(ids, max_width, hashed)


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
