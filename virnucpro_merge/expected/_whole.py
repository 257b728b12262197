"""An expected-ID file read from start to end, in one process: its form told, its IDs (or
a sequence index's records) in file order, a block at a time."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ExpectedIdsError
from ._index import IndexReader, JsonText
from ._text import (
    GZIP_MAGIC,
    JSON,
    LINE_BREAK,
    NOT_AN_INDEX,
    form_by_content,
    form_by_name,
    line_ids,
    open_expected,
    raw_blocks,
    read_head,
    text_blocks,
    whole_lines,
)

__all__ = ["form_and_pieces", "noted", "detect_form", "iter_expected_id_blocks", "iter_expected_ids",
           "read_expected_ids", "iter_index_records", "read_sequence_index"]


def form_and_pieces(name: object, raw: BinaryIO) -> tuple[str | None, str, Iterator[tuple[str, int]]]:
    """The file's form (None: no way to tell, and nothing in it), why, and its text from the start.

    The rule: the name's extension first (``.json``; ``.fa``, ``.fasta``, ``.fna``,
    ``.faa``, ``.ffn``, ``.frn``, ``.fas``, ``.fsa``; ``.txt``, ``.ids``, ``.list``; a
    ``.gz`` after it aside), then the first non-blank line (``{`` or ``[``: JSON, ``>``
    at its start: FASTA, else text).
    """
    pieces = text_blocks(name, raw_blocks(name, raw))
    form, why = form_by_name(name)
    if form is not None:
        return form, why, pieces
    seen: list[tuple[str, int]] = []
    at_line_start = True
    for piece in pieces:
        seen.append(piece)
        for number, line in enumerate(LINE_BREAK.split(piece[0])):
            if line.strip():  # the first non-blank line (on from a blank start: as if indented)
                form, why = form_by_content(line if at_line_start or number else " " + line)
                return form, why, _chain(seen, pieces)
        if piece[0]:  # (an empty piece, a byte-order mark alone, changes nothing)
            at_line_start = piece[0].endswith(("\n", "\r"))
    return None, "", iter(seen)


def noted(err: ExpectedIdsError, why: str) -> ExpectedIdsError:
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
    with open_expected(path, name) as raw:
        gzipped = read_head(raw, name, 2) == GZIP_MAGIC
        raw.seek(0)
        form, why, _ = form_and_pieces(name, raw)
    return form, gzipped, why


def _blocks(path: Path, name: object, *, index_only: bool, require_ids: bool = False
            ) -> Iterator[tuple[list[dict[str, Any]] | None, list[str]]]:
    """``(records, IDs)`` of the expected IDs in file order, a block at a time (``records``:
    for a JSON index)."""
    with open_expected(path, name) as raw:
        form, why, pieces = form_and_pieces(name, raw)
        if index_only and form != JSON:
            msg = f"{name}: {NOT_AN_INDEX}"
            raise noted(ExpectedIdsError(msg), why)
        found = False
        try:
            if form == JSON:
                for records in IndexReader(JsonText(pieces, name)).from_the_top():
                    found = found or bool(records)
                    yield records, [record["sequence_id"] for record in records]
            elif form is not None:
                for text, _ in whole_lines(pieces):
                    ids = line_ids(text, form, name)
                    found = found or bool(ids)
                    yield None, ids
        except ExpectedIdsError as err:
            raise noted(err, why) from err
        if require_ids and not found:
            msg = f"{name}: no sequence IDs in this file"
            raise noted(ExpectedIdsError(msg), why)


def iter_expected_id_blocks(path: str | os.PathLike[str], *, shown_as: object = None, require_ids: bool = False
                            ) -> Iterator[list[str]]:
    """The expected IDs of a file in file order, as lists (one for each piece read): the
    quick way to take in many. Errors name the file as ``shown_as`` when given; with
    ``require_ids``, a file that holds none is one (as :func:`read_expected_ids` says)."""
    path = Path(path)
    return (ids for _, ids in _blocks(path, shown_as or path, index_only=False, require_ids=require_ids))


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


def iter_index_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a run's sequence-index JSON, in index order, one at a time."""
    path = Path(path)
    return itertools.chain.from_iterable(records or [] for records, _ in _blocks(path, path, index_only=True))


def read_sequence_index(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
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
