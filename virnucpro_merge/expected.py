"""Reading the list of sequence IDs a run was expected to produce.

Three forms are understood, told apart by their first non-blank character:

- a run's sequence-index JSON, ``{"sequences": [{"sequence_id": ...}, ...]}`` (``{``);
- a FASTA file, whose IDs are the first word after each ``>`` (``>``);
- plain text, one ID a line, blank lines and ``#`` comments ignored.

A UTF-8 byte-order mark, CRLF line endings and gzip compression are handled.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ExpectedIdsError

__all__ = ["iter_expected_ids", "read_expected_ids", "read_sequence_index"]


def _open_text(path: Path) -> io.TextIOBase:
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    except FileNotFoundError as err:
        raise ExpectedIdsError(f"{path}: expected-ID file does not exist") from err
    except IsADirectoryError as err:
        raise ExpectedIdsError(f"{path}: is a directory, not an expected-ID file") from err
    except OSError as err:
        raise ExpectedIdsError(f"{path}: cannot read expected-ID file ({err.strerror or err})") from err
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline=None)


def read_sequence_index(path: str | os.PathLike[str]) -> list[dict]:
    """Read a run's sequence-index JSON and return its ``sequences`` records."""
    path = Path(path)
    with _open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ExpectedIdsError(f"{path}: invalid JSON ({err})") from err
        except UnicodeDecodeError as err:
            raise ExpectedIdsError(f"{path}: not UTF-8 text") from err
    records = data.get("sequences") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("sequence_id"), str) for r in records
    ):
        raise ExpectedIdsError(
            f'{path}: not a sequence index: expected {{"sequences": [{{"sequence_id": ...}}, ...]}}'
        )
    return records


def _fasta_ids(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith(">"):
            words = line[1:].split(maxsplit=1)
            if words:
                yield words[0]


def _text_ids(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield stripped


def iter_expected_ids(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the expected IDs of a text, FASTA or sequence-index JSON file, in file order.

    Text and FASTA files are streamed line by line; a JSON index is parsed whole.
    """
    path = Path(path)
    with _open_text(path) as fh:
        try:
            first = ""
            for first in fh:
                if first.strip():
                    break
            if first.lstrip().startswith("{"):
                fh.close()
                yield from (r["sequence_id"] for r in read_sequence_index(path))
            else:
                lines = _chain(first, fh)
                yield from (_fasta_ids(lines) if first.startswith(">") else _text_ids(lines))
        except UnicodeDecodeError as err:
            raise ExpectedIdsError(f"{path}: not UTF-8 text") from err


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
    """
    ids = list(iter_expected_ids(path))
    if not ids:
        raise ExpectedIdsError(f"{path}: no sequence IDs in this file")
    return ids


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
