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

The package's modules, each a job: :mod:`._text` (bytes, gzip, lines, the rules, and
ID lists written), :mod:`._index` (the JSON index reader), :mod:`._whole` (a file from
start to end), :mod:`._ranges` (byte ranges, and the pool that reads them).
"""

from __future__ import annotations

from ._ranges import (
    RANGE_BYTES,
    RangeIds,
    expected_ranges,
    iter_encoded_id_blocks,
    ranges_agree,
    read_expected_lookup,
    read_range,
)
from ._text import FASTA, JSON, TEXT, holds_nul, not_text, unstorable_id, write_id_list
from ._whole import (
    detect_form,
    iter_expected_id_blocks,
    iter_expected_ids,
    iter_index_records,
    read_expected_ids,
    read_sequence_index,
)

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
    "holds_nul",
    "unstorable_id",
    "iter_encoded_id_blocks",
    "read_expected_lookup",
    "expected_ranges",
    "read_range",
    "ranges_agree",
    "write_id_list",
]
