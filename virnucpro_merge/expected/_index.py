"""A run's sequence-index JSON, read a record at a time (each record by :mod:`json` itself),
from the top or from anywhere in the file (a byte range), never whole."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ExpectedIdsError
from ._text import LINE_BREAK, NOT_AN_INDEX, checked_records, record_ids

__all__ = ["JsonText", "Chain", "IndexReader"]

_WS = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")  # after a record of the list
_DECODE = json.JSONDecoder().raw_decode  # one value at a position: (value, end)
_NEAR_END = 8  # characters: longer than any token the window can cut short and still read (true, \\uXXXX, 1e+5)


class JsonText:
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
        line = self.line + len(LINE_BREAK.findall(self.text, 0, where))
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
class Chain:
    """Where the records a JSON reader read sit in the file (its answer to :func:`ranges_agree`)."""

    first: int | None = None  # byte offset of its first record (None: it read none)
    next: int | None = None  # byte offset of the record after its last, in the next range
    closed: bool = False  # it read the end of the records and the rest of the file, which is sound


class IndexReader:
    """The records of a sequence-index JSON: from the top, or from a record start onwards."""

    def __init__(self, text: JsonText) -> None:
        self.text, self.chain = text, Chain()

    def from_the_top(self) -> Iterator[list[dict[str, Any]]]:
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

    def records(self) -> Iterator[list[dict[str, Any]]]:
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
            yield checked_records([text.value()], text.name)
            char = text.next_char()
            text.pos += 1
            if char == "]":
                self.chain.closed = True
            elif char != ",":
                msg = "Expecting ',' delimiter"
                raise text.error(msg, text.pos - 1)

    def _quickly(self) -> Iterator[list[dict[str, Any]]]:
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
                record_ids(batch, text.name)
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
            record_ids(single, text.name)
            yield single
        text.pos = pos

    def from_a_range(self) -> Iterator[list[dict[str, Any]]]:
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
                record_ids([text.value()], text.name)
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
        return ExpectedIdsError(f"{self.text.name}: {NOT_AN_INDEX}" + (f" ({why})" if why else ""))
