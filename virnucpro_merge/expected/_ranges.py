"""An expected-ID file read in byte ranges, by a cluster's workers or by this machine's
cores: the same rules and errors as a read from start to end."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal, overload

import numpy as np

from .._processes import pool, pool_size
from ..errors import ExpectedIdsError
from ..ids import MAX_WIDTH, IdLookup, encode_and_hash_ids, encode_ids, hash_order, id_hashes
from ._index import Chain, IndexReader, JsonText
from ._text import (
    JSON,
    TEXT,
    char_start,
    line_ids,
    line_start,
    open_expected,
    plain_line_ids,
    read_blocks,
    read_head,
    text_blocks,
    whole_lines,
)
from ._whole import detect_form, iter_expected_id_blocks, noted

__all__ = ["RANGE_BYTES", "RangeIds", "expected_ranges", "read_range", "ranges_agree", "iter_encoded_id_blocks",
           "read_expected_lookup"]


RANGE_BYTES = 32 * 2**20


@dataclass
class RangeIds:
    """The expected IDs whose line (or JSON record) starts in bytes ``[first, last)`` of a
    file: the lines that start in the range asked for."""

    first: int
    last: int
    ids: list[str] = field(default_factory=list)
    #: for a JSON index: where its records sit (None: its guess of a record start failed)
    chain: Chain | None = None


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
    with open_expected(path, name) as raw:
        if form != JSON:
            found, region = _lines_of(raw, start, end, name)
            found.ids = _ids_of_lines(region, found.first, form, name, why)
            return found
        first, last = char_start(raw, start), char_start(raw, end)  # (records are found by parsing,
        found = RangeIds(first, last)  # wherever the lines break)
        raw.seek(first)
        blocks = read_blocks(raw)
        reader = IndexReader(JsonText(text_blocks(name, blocks, first, cut_at=last), name, owned_until=last))
        try:
            records = reader.from_the_top() if first == 0 else reader.from_a_range()
            found.ids = [record["sequence_id"] for block in records for record in block]
        except ExpectedIdsError as err:
            if first == 0:
                raise noted(err, why) from err
            found.ids = []
            return found
        found.chain = reader.chain
        return found


def _ids_of_lines(region: bytes, first: int, form: str, name: object, why: str) -> list[str]:
    """The IDs of the lines in ``region`` (read at byte ``first``), by the rules of each line."""
    try:
        return [i for text, _ in whole_lines(text_blocks(name, [region], first)) for i in line_ids(text, form, name)]
    except ExpectedIdsError as err:
        raise noted(err, why) from err


def _lines_of(raw: BinaryIO, start: int, end: int, name: object) -> tuple[RangeIds, bytes]:
    """The lines that start in bytes ``[start, end)`` of an open text or FASTA file: where they
    are (without their IDs), and their bytes."""
    first = line_start(raw, start, until=end)
    last = line_start(raw, end) if first < end else first  # (no line starts in it: it holds none)
    raw.seek(first)
    return RangeIds(first, last), read_head(raw, name, last - first) if first < last else b""


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
                   max_width: int | None, hashed: _Hashed) -> tuple[_Block, RangeIds]:
    """Worker task: the encoded IDs of one byte range (and their hashes), and the range read
    (without its IDs). A range of plain ASCII lines is encoded in numpy, with no str a line
    (:func:`plain_line_ids`); any other is read by the rules of each line."""
    if form == JSON:
        found = read_range(path, form, start, end, shown_as=shown, why=why)
        return _encoded(found.ids, max_width, hashed), replace(found, ids=[])
    with open_expected(path, shown or path) as raw:  # (a range's bytes read once, whichever way they are read)
        where, region = _lines_of(raw, start, end, shown or path)
    plain = plain_line_ids(region, max_width) if form == TEXT else None
    if plain is not None:
        return _with_hashes(plain, id_hashes(plain.tolist()), hashed) if hashed else plain, where
    return _encoded(_ids_of_lines(region, where.first, form, shown or path, why), max_width, hashed), where


_Block = np.ndarray | tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]
_Hashed = bool | Literal["ordered"]  # (with their hashes; "ordered": and the order that sorts those)


def _count(block: _Block) -> int:
    return (block[0] if isinstance(block, tuple) else block).size


def _encoded(ids: Sequence[str], max_width: int | None, hashed: _Hashed) -> _Block:
    if not hashed:
        return encode_ids(ids, max_width=max_width)
    return _with_hashes(*encode_and_hash_ids(ids, max_width=max_width), hashed)


def _with_hashes(encoded: np.ndarray, hashes: np.ndarray, hashed: _Hashed) -> _Block:
    return (encoded, hashes, hash_order(hashes)) if hashed == "ordered" else (encoded, hashes)


@overload
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = ..., max_width: int | None = ...,
                           range_bytes: int | None = ..., shown_as: object = ...,
                           hashed: Literal[False] = ..., require_ids: bool = ...) -> Iterator[np.ndarray]: ...
@overload
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = ..., max_width: int | None = ...,
                           range_bytes: int | None = ..., shown_as: object = ...,
                           hashed: Literal[True], require_ids: bool = ...
                           ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
@overload
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = ..., max_width: int | None = ...,
                           range_bytes: int | None = ..., shown_as: object = ...,
                           hashed: Literal["ordered"], require_ids: bool = ...
                           ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...
def iter_encoded_id_blocks(path: str | os.PathLike[str], *, workers: int = 1, max_width: int | None = None,
                           range_bytes: int | None = None, shown_as: object = None,
                           hashed: _Hashed = False, require_ids: bool = False) -> Iterator[_Block]:
    """The expected IDs of a file in file order, as arrays of their UTF-8 bytes
    (:func:`encode_ids`), read by up to ``workers`` processes at once where that helps.

    A plain file larger than one range (``range_bytes``, by default :data:`RANGE_BYTES`)
    is read in byte ranges (:func:`read_range`) by
    a pool of ``workers`` processes: the same rules and errors as a read from start to
    end (the first error in the file is the one raised), and a JSON index whose ranges
    do not agree (:func:`ranges_agree`) is read again from start to end. A gzipped
    file, a pipe, a small file, ``workers=1`` or a system without ``fork``: read here,
    from start to end. With ``hashed``, each block comes with its IDs' hashes
    (:func:`encode_and_hash_ids`), worked out by the process that read it, and with
    ``hashed="ordered"`` with the order that sorts those too (``hash_order``: what
    :class:`~virnucpro_merge.ids.IdLookup` merges the blocks by). With
    ``require_ids``, a file that holds no ID is an error (:func:`read_expected_ids`'s).

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
    blocks = _read_in_ranges(path, workers, range_bytes or RANGE_BYTES, shown_as, max_width, hashed)
    if blocks is not None and (not require_ids or any(_count(block) for block in blocks)):
        blocks.reverse()
        while blocks:  # (each block let go of here as it is handed on: a lookup built of them holds it once)
            yield blocks.pop()
        return  # (else a file of no ID is read again from start to end: that read says what is wrong)
    for ids in iter_expected_id_blocks(path, shown_as=shown_as, require_ids=require_ids):
        yield _encoded(ids, max_width, hashed)


def _read_in_ranges(path: Path, workers: int, range_bytes: int, shown_as: object, max_width: int | None,
                    hashed: _Hashed) -> list[_Block] | None:
    """The encoded IDs of a file read in byte ranges by a pool of processes; None where it
    cannot be (one worker, one range, gzip, a pipe, no fork) or a JSON index's ranges do not
    agree: then it is read from start to end."""
    ranges = expected_ranges(path, range_bytes) if workers > 1 else None
    if not ranges or len(ranges) < 2:
        return None
    form, _, why = detect_form(path, shown_as=shown_as)
    if form is None:
        return None
    with pool(min(workers, len(ranges))) as readers:
        if readers is None:
            return None
        tasks = [(path, form, a, b, shown_as or path, why, max_width, hashed) for a, b in ranges]
        parts = list(readers.map(_encoded_range, *zip(*tasks, strict=True)))
    if form == JSON and not ranges_agree([where for _, where in parts]):
        return None
    return [block for block, _ in parts]


#: The bytes of a large expected-ID file each process takes at a time.
_LOOKUP_RANGE = 8 * 2**20


def read_expected_lookup(path: str | os.PathLike[str], *, shown_as: object = None) -> IdLookup:
    """The expected IDs of a file as a lookup (:class:`~virnucpro_merge.ids.IdLookup`: their
    UTF-8 bytes, hashes and order, about 26 bytes an ID of 10 characters, never a Python str
    each), read by as many processes as this one may use (``iter_encoded_id_blocks``). A
    file that holds no ID is an :class:`~virnucpro_merge.ExpectedIdsError`, as with
    :func:`~virnucpro_merge.read_expected_ids`.

    >>> from pathlib import Path
    >>> _ = Path("ids.txt").write_text("seq1\\nseq2\\nseq1\\n")
    >>> found = read_expected_lookup("ids.txt")
    >>> found.n, found.distinct, list(found.ids())
    (3, 2, ['seq1', 'seq2', 'seq1'])
    """
    return IdLookup(iter_encoded_id_blocks(path, workers=pool_size(), max_width=MAX_WIDTH,
                                           range_bytes=_LOOKUP_RANGE, shown_as=shown_as, hashed="ordered",
                                           require_ids=True))
