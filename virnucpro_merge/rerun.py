"""The re-run loop: the FASTA of exactly the sequences a partial merge lacks.

A ``partial=True`` merge records in its report which expected IDs it lacks. The
run's sequence index (``{"sequences": [{"sequence_id", "length", "file_path",
"byte_offset"}, ...]}``) says where each sequence's record starts in its FASTA
file, so those records are read by seeking, never by scanning the input. The
FASTA written here is what re-run workers embed; their shards are then merged
with the partial output into a complete one::

    write_missing_fasta("embeddings.h5", "sequence_index.json", "missing.fasta")
    # ... re-embed missing.fasta into rerun_0.h5 ...
    aggregate_shards(["embeddings.h5", "rerun_0.h5"], "complete.h5", expected)

An index that no longer matches its FASTA files (edited, re-generated, compressed
or moved since the run) is refused with an :class:`IndexMismatchError` that names
the file, the byte offset and what was found there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from ._files import OpenFiles, open_input
from .checkpoints import checkpointed_ids, rank_checkpoints
from .errors import IndexMismatchError
from .expected import iter_index_records, read_expected_ids
from .outputs import atomic_output, refuse_overwriting
from .ranks import checkpoints_of, rank_of
from .report import read_merge_report
from .statuses import ShardStatus

__all__ = ["write_missing_fasta", "checkpointed_missing", "is_merged_file"]

logger = logging.getLogger("virnucpro_merge")

_GZIP_MAGIC = b"\x1f\x8b"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_OPEN = 32  # FASTA files kept open at once; an index groups its records by file
_SHOWN = 60  # characters of a wrong header quoted in an error
_NEARBY = 4096  # bytes searched either side of a wrong offset for the right header


@dataclass(frozen=True)
class _Wanted:
    """Where the index says one missing sequence's record is."""

    sequence_id: str
    fasta: Path
    byte_offset: int
    length: int | None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _places(file_path: str, index_path: Path, fasta_dir: Path | None) -> list[Path]:
    """Where a FASTA named ``file_path`` by the index may be, in the order looked: in
    ``fasta_dir`` (under its path as written, then by its name), as written (absolute, or
    relative to the current directory: the pipeline writes it as it was given it), then
    relative to the index's folder."""
    written = Path(file_path)
    places = [] if fasta_dir is None else [fasta_dir / written, fasta_dir / written.name]
    places += [written, index_path.parent / written]
    return list(dict.fromkeys(places))  # (an absolute path is the same in every folder)


def _find_fasta(file_path: str, index_path: Path, fasta_dir: Path | None) -> Path:
    """The first place of :func:`_places` that holds a file; else an error naming every place tried."""
    places = _places(file_path, index_path, fasta_dir)
    for place in places:
        if place.is_file():
            return place
    hint = "" if fasta_dir is not None else "; give the folder that holds it with --fasta-dir DIR"
    tried = ", ".join(str(place) for place in places)
    msg = f"{file_path}: FASTA file does not exist (named by {index_path.name}; looked for {tried}){hint}"
    raise IndexMismatchError(msg)


def _select(records: Iterable[dict[str, Any]], missing: set[str], index_path: Path, merged_path: Path,
            fasta_dir: Path | None) -> list[_Wanted]:
    """The index records of the ``missing`` IDs, in index order, checked for shape."""
    wanted: list[_Wanted] = []
    seen: set[str] = set()
    fastas: dict[str, Path] = {}  # file_path as written -> found, looked for once per file
    for position, record in enumerate(records):
        seq_id = record["sequence_id"]
        if seq_id not in missing:
            continue
        if seq_id in seen:
            msg = f"{index_path}: {seq_id} is listed twice (second time at position {position})"
            raise IndexMismatchError(msg)
        seen.add(seq_id)
        file_path, offset, length = record.get("file_path"), record.get("byte_offset"), record.get("length")
        if not (isinstance(file_path, str) and file_path and _is_int(offset) and offset >= 0) or not (
            length is None or (_is_int(length) and length >= 0)
        ):
            msg = (f"{index_path}: the record of {seq_id} (position {position}) needs a file_path, "
                   f"a byte_offset >= 0 and optionally a length, it has {record!r}")
            raise IndexMismatchError(msg)
        fasta = fastas.get(file_path)
        if fasta is None:
            fasta = fastas[file_path] = _find_fasta(file_path, index_path, fasta_dir)
        wanted.append(_Wanted(seq_id, fasta, offset, length))
    absent = missing - seen
    if absent:
        names = sorted(absent)
        if len(names) == 1:
            problem = f"{names[0]}, missing from {merged_path}, is not in this index"
        else:
            problem = f"{len(names)} IDs missing from {merged_path} are not in this index (first 10: {names[:10]})"
        msg = f"{index_path}: {problem}: is it the index of this run?"
        raise IndexMismatchError(msg)
    return wanted


def _show(line: bytes) -> str:
    """A line found where a header should be, quoted for an error message."""
    if not line:
        return "the end of the file"
    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
    if not text.strip():
        return "a blank line"
    return repr(text[:_SHOWN] + "..." if len(text) > _SHOWN else text)


class _FastaReader(OpenFiles[Path, BinaryIO]):
    """Read FASTA records by byte offset, opening each file on first use (a few kept open)."""

    def __init__(self, index_path: Path) -> None:
        super().__init__(self._open_fasta, _MAX_OPEN)
        self._index_name = index_path.name

    def _open_fasta(self, path: Path) -> BinaryIO:
        """Open a FASTA file named by the index, checked to be plain (not gzipped)."""
        handle = open_input(path, "FASTA file", IndexMismatchError, note=f" (named by {self._index_name})",
                            regular=True)
        if handle.read(2) == _GZIP_MAGIC:
            handle.close()
            msg = (f"{path}: gzip-compressed FASTA, which byte offsets cannot address: "
                   f"decompress it and point {self._index_name} at the plain file")
            raise IndexMismatchError(msg)
        return handle

    def _hint(self, handle: BinaryIO, want: _Wanted) -> str:
        """Where the right header is, if it sits near the wrong offset."""
        start = max(0, want.byte_offset - _NEARBY)
        handle.seek(start)
        prefix = b"" if start else b"\n"  # a header at byte 0 follows no newline
        window = prefix + handle.read(want.byte_offset + _NEARBY - start)
        target = b"\n>" + want.sequence_id.encode()
        at = window.find(target)
        while at >= 0:
            if window[at + len(target) : at + len(target) + 1] in (b"", b"\n", b"\r", b" ", b"\t"):
                byte = start + at + 1 - len(prefix)
                return f"; its header is at byte {byte}: was the FASTA changed after the index was made?"
            at = window.find(target, at + 1)
        return "; was the FASTA changed after the index was made?"

    def read(self, want: _Wanted) -> bytes:
        """The record of ``want``, verbatim, checked against the index."""
        handle = self.get(want.fasta)
        handle.seek(want.byte_offset)
        try:
            header = handle.readline()
            words = header[1:].split(maxsplit=1) if header.startswith(b">") else []
            if not words or words[0] != want.sequence_id.encode():
                found = _show(header)
                if not header:
                    found += f" ({os.fstat(handle.fileno()).st_size} bytes)"
                msg = (f"{want.fasta}: byte {want.byte_offset} should start the record of {want.sequence_id} "
                       f"(from {self._index_name}), found {found}{self._hint(handle, want)}")
                raise IndexMismatchError(msg)
            parts = [header]
            residues = 0
            while True:
                line = handle.readline()
                if not line or line.startswith(b">"):
                    break
                parts.append(line)
                residues += len(line.strip())
        except OSError as err:
            msg = f"{want.fasta}: cannot read FASTA file ({err.strerror or err})"
            raise IndexMismatchError(msg) from err
        if want.length is not None and residues != want.length:
            msg = (f"{want.fasta}: the record of {want.sequence_id} at byte {want.byte_offset} holds "
                   f"{residues} residues, {self._index_name} says {want.length}")
            raise IndexMismatchError(msg)
        record = b"".join(parts)
        return record if record.endswith(b"\n") else record + b"\n"


def write_missing_fasta(
    merged_path: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    fasta_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Write the FASTA records of the sequences a partial merge lacks (or of a list of IDs).

    The missing IDs come from the merged file's report (or the list); each is looked up in the
    run's sequence index and its record read by byte offset (each FASTA file is
    opened once and never read whole). Every record is checked: its header's
    first word must be the ID, and its sequence must have the index's
    ``length`` where the index gives one. Records are written verbatim, in index
    order. A merge that lacks nothing gives an empty FASTA.

    Parameters
    ----------
    merged_path : path-like
        A file written by :func:`aggregate_shards`, usually with ``partial=True``
        and expected IDs; or a list of the IDs to write, one a line (the re-run list
        ``report`` writes; a FASTA file or a sequence index is read too).
    index_path : path-like
        The run's sequence-index JSON. Each ``file_path`` entry is looked for
        as written (absolute, or relative to the current directory, as the
        pipeline was given it), then relative to the index's folder.
    output_path : path-like
        The FASTA to write; it appears atomically, whole or not at all.
    fasta_dir : path-like, optional
        A folder to look in first: for ``file_path`` under it, then for the
        file's name in it (FASTA files moved since the run).

    Returns
    -------
    int
        The number of sequences written.

    Raises
    ------
    MergeError
        ``merged_path`` is unreadable or carries no merge report.
    ExpectedIdsError
        ``index_path`` is absent, unreadable or not a sequence index.
    IndexMismatchError
        A missing ID is not in the index, or the index no longer matches its
        FASTA files: a file is in none of the places looked (all named), is
        unreadable or gzip-compressed, or the
        record at an offset is another sequence or of another length.
    OutputError
        ``output_path`` cannot be written, or is one of the inputs.

    Examples
    --------
    >>> from virnucpro_merge import aggregate_shards
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=40, world_size=4, absent=(1,), truncated=(), empty=(), short={})
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5", run.index, partial=True)
    >>> write_missing_fasta(merged, run.index, "missing.fasta")  # the 10 sequences of the dead rank 1
    10
    """
    merged_path, index_path, output_path = Path(merged_path), Path(index_path), Path(output_path)
    folder = None if fasta_dir is None else Path(fasta_dir)
    if folder is not None and not folder.is_dir():
        msg = f"{folder}: not a folder (given as the folder of the FASTA files)"
        raise IndexMismatchError(msg)
    report = read_merge_report(merged_path) if is_merged_file(merged_path) else None
    missing = set(report["missing_ids"]) if report is not None else set(read_expected_ids(merged_path))
    wanted = _select(iter_index_records(index_path), missing, index_path, merged_path, folder)
    fastas = list(dict.fromkeys(w.fasta for w in wanted))
    refuse_overwriting(output_path, [merged_path, index_path, *fastas],
                       "is an input of this re-run; choose another output path")

    if not wanted:
        if report is None:
            logger.info("%s lists no ID; writing an empty %s", merged_path, output_path)
        elif report.get("num_expected") is None:
            logger.warning(
                "%s was merged without expected IDs, so it records none missing; writing an empty %s",
                merged_path,
                output_path,
            )
        else:
            logger.info("%s lacks no expected sequence; writing an empty %s", merged_path, output_path)

    size_hint = sum((w.length or 0) + len(w.sequence_id) + 2 for w in wanted)
    with atomic_output(output_path, size_hint) as pending, _FastaReader(index_path) as reader, \
            open(pending.path, "wb") as out:
        for want in wanted:
            out.write(reader.read(want))
    if wanted:
        logger.info(
            "Wrote the %s sequences missing from %s (from %d FASTA file%s) to %s",
            f"{len(wanted):,}",
            merged_path,
            len(fastas),
            "" if len(fastas) == 1 else "s",
            output_path,
        )
    return len(wanted)


def is_merged_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file (a merged output, for the re-run), not a list of IDs;
    a file that cannot be read is taken for one (reading its report then says what is wrong).

    >>> from pathlib import Path
    >>> _ = Path("ids.txt").write_text("seq1\\n")
    >>> is_merged_file("ids.txt")
    False
    """
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    except OSError:
        return True


def checkpointed_missing(merged_path: str | os.PathLike[str], checkpoints: object = None) -> tuple[int, Path] | None:
    """How many of a merged file's missing IDs the run's checkpoints hold (a merge made
    without them, or before they were there), and where; None when none (or no folder).

    ``checkpoints`` as for :func:`~virnucpro_merge.aggregate_shards` (None: beside the
    shards the merge recorded; False: never). Only the checkpoints of the ranks whose
    shards failed in the merge are read.

    Examples
    --------
    >>> from virnucpro_merge import aggregate_shards
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=400, world_size=4, dim=4, truncated=(), absent=(2,), empty=(),
    ...                     short={}, checkpoint_every=25)
    >>> merged = aggregate_shards(run.shard_files, "o.h5", run.index, partial=True, checkpoints=False)
    >>> checkpointed_missing(merged)[0]
    50
    """
    if not is_merged_file(merged_path):
        return None  # (a list of IDs: its shards are not known)
    report = read_merge_report(merged_path)
    missing = set(report["missing_ids"])
    folder = checkpoints_of([Path(s["path"]) for s in report["shards"]], checkpoints) if missing else None
    if folder is None:
        return None
    held: set[str] = set()
    for shard in report["shards"]:
        rank = rank_of(shard["path"])
        if rank is None or shard["status"] not in (ShardStatus.FAILED, ShardStatus.SALVAGED):
            continue
        held.update(missing.intersection(checkpointed_ids(rank_checkpoints(folder / f"shard_{rank}").files)))
    return (len(held), folder) if held else None
