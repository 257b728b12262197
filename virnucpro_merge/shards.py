"""One shard file: open it safely, check its shape, read its sequence IDs.

A shard holds two datasets: ``embeddings`` ``(n, D)`` float32 (or float16) and
``sequence_ids`` ``(n,)`` variable-length UTF-8 strings. An idle worker writes
``embeddings`` of shape ``(0, 0)``. Everything here reads metadata and IDs only; the
embeddings are copied by :mod:`virnucpro_merge._write`. This module is the one reader
of a shard's IDs: as ``str`` (:func:`iter_id_chunks`), as stored
(:func:`iter_id_blocks`) or as one bytes array (:func:`read_id_bytes`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._files import fingerprint
from .errors import ShardError, UnreadableShardError
from .ids import utf8_ids
from .sources import source_problems

__all__ = [
    "EMBEDDINGS",
    "SEQUENCE_IDS",
    "REPORT_GROUP",
    "ID_CHUNK",
    "rows_reader",
    "ABSENT",
    "TRUNCATED",
    "CORRUPT",
    "EMPTY_FILE",
    "ShardMeta",
    "first_line",
    "open_shard",
    "raised_by_hdf5",
    "open_shard_file",
    "read_shard_meta",
    "read_report_summary",
    "embeddings_of",
    "iter_id_blocks",
    "iter_id_chunks",
    "iter_id_byte_chunks",
    "read_id_rows",
    "read_rows",
    "read_id_bytes",
    "get_shard_info",
]

EMBEDDINGS = "embeddings"
SEQUENCE_IDS = "sequence_ids"
REPORT_GROUP = "merge_report"

#: IDs are small: they are read in larger slices than the embedding chunks.
ID_CHUNK = 65536

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ShardMeta:
    """What the planning step knows about one readable shard."""

    path: Path
    num_sequences: int
    embedding_dim: int
    dtype: np.dtype
    #: byte offset of contiguous, uncompressed embeddings in the file (else None)
    data_offset: int | None
    #: the merge report's summary when the shard is itself a merged output
    merged_from: dict[str, Any] | None = None
    #: the file's size and modification time when read (a rewrite changes them)
    fingerprint: dict[str, Any] | None = None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (h5py's can run to several)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


#: How the problems of an HDF5 file that HDF5 cannot open begin (a file, damaged).
TRUNCATED, CORRUPT = "truncated HDF5 file", "corrupt HDF5 file"
#: How the problem of a file of 0 bytes begins.
EMPTY_FILE = "empty file (0 bytes)"


def _diagnose_unopenable(path: Path, err: OSError) -> UnreadableShardError:
    """Explain why h5py could not open ``path``, in words a user can act on."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(_HDF5_SIGNATURE))
    except OSError as os_err:
        return UnreadableShardError(path, f"cannot read file ({os_err.strerror or os_err})")
    if size == 0:
        return UnreadableShardError(path, f"{EMPTY_FILE}: the worker died before writing it")
    if head != _HDF5_SIGNATURE:
        return UnreadableShardError(path, "not an HDF5 file")
    message = first_line(err)
    if "truncated" in message or "eof" in message.lower():
        return UnreadableShardError(path, f"{TRUNCATED} ({size} bytes): the worker died while writing it")
    if "lock" in message.lower():
        return UnreadableShardError(path, "file is locked: is a worker still writing it?")
    return UnreadableShardError(path, f"{CORRUPT} ({message})")


#: The problem of a shard that was never written (a worker that died before its first write).
ABSENT = "file does not exist"


def open_shard_file(path: str | os.PathLike[str], *, locking: bool = True) -> h5py.File:
    """Open a shard read-only (the caller closes it); every failure is a one-line ShardError.
    Without ``locking``, HDF5 takes no lock on the file (a watcher must never hold up a worker)."""
    path = Path(path)
    if not path.exists():
        raise UnreadableShardError(path, ABSENT)
    if path.is_dir():
        raise ShardError(path, "is a directory, not a shard file")
    if not path.is_file():  # a FIFO or a device: HDF5 would wait on it forever
        raise ShardError(path, "not a regular file")
    try:
        return h5py.File(path, "r") if locking else h5py.File(path, "r", locking=False)
    except OSError as err:
        raise _diagnose_unopenable(path, err) from err


@contextmanager
def open_shard(path: str | os.PathLike[str], *, locking: bool = True) -> Iterator[h5py.File]:
    """``with open_shard(path) as handle:`` -- :func:`open_shard_file`, closed on exit.

    What HDF5 cannot read inside the block (damaged metadata: h5py raises ``KeyError``,
    ``RuntimeError`` or ``OSError`` for it, from wherever it is met) is an
    :class:`UnreadableShardError` naming the file, never a traceback.
    """
    with open_shard_file(path, locking=locking) as handle:
        try:
            yield handle
        except (KeyError, RuntimeError, OSError, ValueError, TypeError) as err:
            if not raised_by_hdf5(err):
                raise
            raise UnreadableShardError(path, f"{CORRUPT} ({first_line(err)})") from err


def raised_by_hdf5(err: BaseException) -> bool:
    """Whether ``err`` was raised inside h5py (its innermost frame is h5py's own)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).parts[-2:-1] == ("h5py",)


def _dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    node = handle.get(name)  # (one look: h5py's own 'in' is a second, asked only when this finds nothing)
    if node is None and name not in handle:
        raise UnreadableShardError(path, f"no '{name}' dataset (was the worker killed before writing it?)")
    if node is None:  # (a link to nothing, or an object HDF5 cannot open)
        raise ShardError(path, f"'{name}' is there but cannot be opened (a broken link, or damaged)")
    if not isinstance(node, h5py.Dataset):
        raise ShardError(path, f"'{name}' is a {type(node).__name__.lower()}, not a dataset")
    return node


def _contiguous_offset(dset: h5py.Dataset, path: Path) -> int | None:
    """File offset of a contiguous dataset's raw bytes, checked against the file size.

    None where the bytes are not one run in this very file: a virtual, chunked or
    compressed dataset, one kept in external storage, or one reached through an
    external link (its offset is in another file): those are read through h5py.
    """
    if dset.is_virtual or dset.chunks is not None or dset.compression is not None or dset.size == 0:
        return None
    if dset.external or not _same_file(os.fsdecode(h5py.h5f.get_name(dset.id)), path):
        return None
    offset = dset.id.get_offset()
    if offset is None:  # never written: HDF5 returns its fill value
        raise UnreadableShardError(path, f"'{dset.name.lstrip('/')}' was never written")
    end = offset + dset.id.get_storage_size()
    size = path.stat().st_size
    if end > size:
        raise UnreadableShardError(
            path, f"truncated: '{dset.name.lstrip('/')}' ends at byte {end} but the file has {size}"
        )
    return int(offset)


def _same_file(name: str, path: Path) -> bool:
    try:
        return os.path.samefile(name, path)
    except OSError:
        return False


def read_shard_meta(
    handle: h5py.File, path: str | os.PathLike[str], *, check_sources: bool = True, storage: bool = True
) -> ShardMeta:
    """Check an open shard's structure and return its metadata (no data is read).

    A virtual output whose source shards are missing or changed is refused
    (``check_sources=False`` describes it anyway). With ``storage=False`` the
    embeddings' bytes are not looked for at all (where they are, whether the file
    holds them whole): a check of IDs does not need them.
    """
    path = Path(path)
    emb = _dataset(handle, EMBEDDINGS, path)
    ids = _dataset(handle, SEQUENCE_IDS, path)
    if emb.ndim != 2:
        raise ShardError(path, f"'embeddings' must be 2-D (rows, dim), got shape {emb.shape}")
    if emb.dtype.kind != "f" or emb.dtype.itemsize not in (2, 4):  # float32/16, either byte order
        raise ShardError(path, f"'embeddings' has dtype {emb.dtype}; expected float32 or float16")
    if ids.ndim != 1:
        raise ShardError(path, f"'sequence_ids' must be 1-D, got shape {ids.shape}")
    if h5py.check_string_dtype(ids.dtype) is None:
        raise ShardError(path, f"'sequence_ids' holds {ids.dtype}, not strings")
    rows, dim = emb.shape
    if rows != ids.shape[0]:
        raise UnreadableShardError(
            path, f"'embeddings' has {rows} rows but 'sequence_ids' has {ids.shape[0]} IDs"
        )
    if rows > 0 and dim == 0:
        raise ShardError(path, f"'embeddings' has {rows} rows of dimension 0")
    summary = read_report_summary(handle, path)
    if emb.is_virtual and check_sources:
        problems = source_problems(path, (summary or {}).get("sources", []))
        if problems:  # reading on would silently give NaN rows
            raise UnreadableShardError(path, f"virtual output with {len(problems)} lost sources: {problems[0]}")
    return ShardMeta(
        path=path,
        num_sequences=rows,
        embedding_dim=dim,
        dtype=emb.dtype,
        data_offset=_contiguous_offset(emb, path) if storage else None,
        merged_from=summary,
        fingerprint=fingerprint(path),
    )


def read_report_summary(handle: h5py.File, path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON summary of a merged file's report, or None for a plain shard."""
    if REPORT_GROUP not in handle:  # (a plain shard: quicker asked than looked for in vain)
        return None
    group = handle.get(REPORT_GROUP)
    if not isinstance(group, h5py.Group):
        return None
    try:
        summary = json.loads(group["summary"].asstr()[()])
    except (KeyError, OSError, ValueError, TypeError, AttributeError) as err:  # (an int dataset has no asstr)
        raise ShardError(path, f"damaged merge report ({first_line(err)})") from err
    problem = _summary_problem(summary)
    if problem is not None:
        raise ShardError(path, f"damaged merge report ({problem})")
    return summary


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return _is_int(value) and value >= 0  # type: ignore[operator]


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _text(value: object) -> bool:
    return isinstance(value, str)


def _flag(value: object) -> bool:
    return isinstance(value, bool)


def _texts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _records(fields: dict[str, tuple[Callable[[object], bool], str]], *, required: tuple[str, ...] = ()
             ) -> Callable[[object], str | None]:
    """A check of a list of records: each a JSON object whose ``fields`` (where present; the
    ``required`` ones always) pass their checks. It returns what is wrong, or None."""

    def check(value: object) -> str | None:
        if not isinstance(value, list):
            return "is not a list"
        for record in value:
            if not isinstance(record, dict):
                return "holds a record that is not a JSON object"
            for key, (valid, kind) in fields.items():
                if key in required and key not in record:
                    return f"holds a record without its '{key}'"
                if key in record and not valid(record[key]):
                    return f"holds a record whose '{key}' is not {kind}"
        return None

    return check


_COUNT, _TEXT, _FLAG = (_count, "a whole number >= 0"), (_text, "text"), (_flag, "true or false")
_MAYBE_COUNT, _MAYBE_TEXT, _MAYBE_FLAG = ((_optional(check), f"{kind} or null")
                                         for check, kind in (_COUNT, _TEXT, _FLAG))

#: Every field of a report's summary that a reader uses or shows, with what it must be
#: (a file from someone else is data: nothing of another kind reaches a table or a page).
_SUMMARY_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "total_sequences": _COUNT,
    "embedding_dim": _COUNT,
    "partial": _FLAG,
    "format_version": _MAYBE_COUNT,
    "created_by": _MAYBE_TEXT,
    "created_at": _MAYBE_TEXT,
    "chunk_size": _MAYBE_COUNT,
    "layout": (_optional(lambda v: v in ("contiguous", "virtual")), "'contiguous' or 'virtual'"),
    "order": (_optional(lambda v: v in ("shards", "index")), "'shards' or 'index'"),
    "failed_shards": (_texts, "a list of paths"),
    "missing_ids": (_texts, "a list of IDs"),
    "num_expected": _MAYBE_COUNT,
    "num_missing": _COUNT,
    "num_extra": _COUNT,
    "nonfinite_rows": _MAYBE_COUNT,
    "materialized_from": _TEXT,
    "checksums": (lambda v: isinstance(v, dict), "a JSON object"),
}
#: Where a salvaged rank's rows came from (``salvage.Salvage.summary``).
_SALVAGE_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
                   "checkpoints_folder": _TEXT, "shard_problem": _TEXT, "from_checkpoints": _COUNT,
                   "checkpoints_used": _COUNT, "repeats": _COUNT, "kept_from_shard": _COUNT,
                   "dropped_from_shard": _COUNT, "skipped_checkpoints": (_texts, "a list of lines"),
                   "conflicting_ids": _COUNT, "unmarked_checkpoints": _COUNT, "saves_in_progress": _COUNT}


def _salvage(value: object) -> bool:
    fields = {**_SALVAGE_FIELDS, "shard_readable": _FLAG}
    return _records(fields, required=tuple(_SALVAGE_FIELDS))([value]) is None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: object) -> bool:
    return isinstance(value, list) and len(value) <= 16 and all(_number(v) for v in value)


#: A rank's embedding health (``health.RankHealth.to_record``).
_HEALTH_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "rows": _COUNT, "norm_quantiles": (_numbers, "a list of numbers"), "mean": (_number, "a number"),
    "std": (_number, "a number"), "zero_rows": _COUNT, "saturated_rows": _COUNT, "identical_rows": _COUNT}


def _health(value: object) -> bool:
    fields = {**_HEALTH_FIELDS, "dtype": _MAYBE_TEXT, "model_dtypes": (_optional(_texts), "a list of texts or null"),
              "identical_example": (_optional(lambda v: isinstance(v, list) and len(v) == 2 and all(
                  _count(x) for x in v)), "two row numbers or null")}
    return _records(fields, required=tuple(_HEALTH_FIELDS))([value]) is None


_SUMMARY_LISTS: dict[str, Callable[[object], str | None]] = {
    "shards": _records({"path": _TEXT, "num_sequences": _COUNT, "offset": _MAYBE_COUNT, "status": _TEXT,
                        "dtype": _MAYBE_TEXT, "error": _MAYBE_TEXT, "merged": _FLAG, "nonfinite_rows": _MAYBE_COUNT,
                        "salvage": (_salvage, "a record of salvaged rows"),
                        "health": (_health, "a record of its embeddings' health")},
                       required=("path", "num_sequences", "offset", "status")),
    "lineage": _records({"path": _TEXT, "created_at": _MAYBE_TEXT, "total_sequences": _MAYBE_COUNT,
                         "partial": _MAYBE_FLAG, "num_missing": _MAYBE_COUNT,
                         "failed_shards": (_optional(_texts), "a list of paths or null")}, required=("path",)),
    "sources": _records({"path": _TEXT, "size": _COUNT, "mtime_ns": _COUNT}, required=("path", "size", "mtime_ns")),
}
_REQUIRED = ("total_sequences", "embedding_dim", "partial", "shards", "failed_shards")


def _summary_problem(summary: object) -> str | None:
    """What is wrong with the shape of a report's summary (None: nothing)."""
    if not isinstance(summary, dict):
        return "the summary is not a JSON object"
    for key in _REQUIRED:
        if key not in summary:
            return f"'{key}' is not there"
    for key, (valid, kind) in _SUMMARY_FIELDS.items():
        if key in summary and not valid(summary[key]):
            return f"'{key}' is not {kind}"
    for key, check in _SUMMARY_LISTS.items():
        problem = check(summary[key]) if key in summary else None
        if problem is not None:
            return f"'{key}' {problem}"
    return None


def iter_id_blocks(handle: h5py.File, path: str | os.PathLike[str], chunk: int = ID_CHUNK, *,
                   start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield a shard's sequence IDs as stored (those of rows ``start`` to ``stop``, by
    default all), ``chunk`` at a time: UTF-8 bytes, in an object array (variable-length
    strings) or a bytes array (fixed-length ones).

    Such a block can be written as it is into a variable-length string dataset.
    """
    dset = _ids_dataset(handle, path)
    end = dset.shape[0] if stop is None else min(stop, dset.shape[0])
    for first in range(start, end, chunk):
        try:
            block = dset[first : min(first + chunk, end)]
        except OSError as err:
            raise UnreadableShardError(path, f"cannot read 'sequence_ids' ({first_line(err)})") from err
        if block.dtype.kind == "S":  # (a variable-length string ends at its first NUL: only these can hold one)
            held = [i for i, value in enumerate(block.tolist()) if b"\x00" in value]
            if held:
                problem = f"the sequence ID at row {first + held[0]} holds a NUL byte, which no merged file can store"
                raise UnreadableShardError(path, problem)
        yield block


def _ids_dataset(handle: h5py.File, path: str | os.PathLike[str]) -> h5py.Dataset:
    """A shard's ``sequence_ids``, checked to be there and to hold strings."""
    dset = _dataset(handle, SEQUENCE_IDS, Path(path))
    if dset.ndim != 1 or (h5py.check_string_dtype(dset.dtype) is None and dset.dtype.kind != "S"):
        raise ShardError(path, f"'{SEQUENCE_IDS}' holds {dset.dtype} of shape {dset.shape}, not a list of strings")
    return dset


def embeddings_of(handle: h5py.File, path: str | os.PathLike[str]) -> h5py.Dataset:
    """A shard's ``embeddings`` dataset, checked to be there and 2-D (its rows are read by
    the caller: the merge's copy, verify's comparison).

    Raises
    ------
    ShardError
        There is no such dataset (an :class:`UnreadableShardError`), or it is not 2-D.
    """
    emb = _dataset(handle, EMBEDDINGS, Path(path))
    if emb.ndim != 2:
        raise ShardError(path, f"'{EMBEDDINGS}' must be 2-D (rows, dim), got shape {emb.shape}")
    return emb


_SPAN_SLACK = 4  # rows read in one span when it is at most this many times the rows wanted


def read_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``dset[rows]`` for sorted, distinct ``rows``, reading one span when it pays (HDF5's
    point selections are slow)."""
    if not len(rows):
        return dset[0:0]
    low, high = int(rows[0]), int(rows[-1]) + 1
    if high - low <= _SPAN_SLACK * len(rows):
        return dset[low:high][rows - low]
    return dset[rows]


def rows_reader(path: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray]:
    """A reader of some rows of a shard's embeddings: ``read(rows)`` for sorted, distinct row
    numbers gives them as little-endian float32 (the shard opened at each call: it is for few rows).

    >>> from virnucpro_merge.synthetic import write_shard
    >>> shard = write_shard("s.h5", ["a", "b", "c"], np.arange(6, dtype=np.float32).reshape(3, 2))
    >>> rows_reader(shard)(np.array([0, 2])).tolist()
    [[0.0, 1.0], [4.0, 5.0]]
    """

    def read(rows: np.ndarray) -> np.ndarray:
        with open_shard(path) as handle:
            return np.ascontiguousarray(read_rows(embeddings_of(handle, path), rows), dtype="<f4")

    return read


def read_id_rows(handle: h5py.File, path: str | os.PathLike[str], rows: np.ndarray, *, text: bool = False
                 ) -> np.ndarray:
    """The IDs at ``rows`` (sorted, distinct) of a shard: as stored (UTF-8 bytes), or as str
    with ``text``."""
    dset = _ids_dataset(handle, path)
    try:
        return read_rows(dset.asstr("utf-8") if text else dset, rows)  # (UTF-8: fixed-length IDs too)
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as err:
        raise UnreadableShardError(path, f"cannot read '{SEQUENCE_IDS}' ({first_line(err)})") from err


def iter_id_chunks(
    handle: h5py.File, path: str | os.PathLike[str], chunk: int = ID_CHUNK
) -> Iterator[list[str]]:
    """Yield a shard's sequence IDs as lists of str, ``chunk`` at a time."""
    for number, block in enumerate(iter_id_blocks(handle, path, chunk)):
        raw = block.tolist()
        try:
            yield list(map(bytes.decode, raw)) if raw and isinstance(raw[0], bytes) else raw
        except UnicodeDecodeError as err:
            raise _not_utf8(path, number * chunk) from err


def iter_id_byte_chunks(
    handle: h5py.File, path: str | os.PathLike[str], chunk: int = ID_CHUNK, *, start: int = 0, stop: int | None = None
) -> Iterator[list[bytes]]:
    """Yield a shard's sequence IDs (of rows ``start`` to ``stop``, by default all) as lists
    of their UTF-8 bytes, ``chunk`` at a time, checked to be UTF-8 without making a str of
    each (what the ID checks hash and a merge writes)."""
    for number, block in enumerate(iter_id_blocks(handle, path, chunk, start=start, stop=stop)):
        raw = block.tolist()
        if raw and isinstance(raw[0], str):  # (not as h5py reads a shard; as a test may hand it)
            raw = utf8_ids(raw)
        try:
            b"\x00".join(raw).decode("utf-8")  # one C-level pass checks them all
        except UnicodeDecodeError as err:
            raise _not_utf8(path, start + number * chunk) from err
        yield raw


def _not_utf8(path: str | os.PathLike[str], row: int) -> ShardError:
    return ShardError(path, f"a sequence ID near row {row} is not valid UTF-8")


def read_id_bytes(handle: h5py.File, path: str | os.PathLike[str]) -> np.ndarray:
    """All of a shard's IDs as one bytes array (``dtype='S'``, UTF-8), checked to be UTF-8
    without making a str of each: compact and quick to sort, hash and send."""
    blocks = []
    for number, block in enumerate(iter_id_blocks(handle, path)):
        raw = block if block.dtype.kind == "S" else np.array(block.tolist(), dtype=bytes)
        try:
            b"\x00".join(raw.tolist()).decode("utf-8")  # one C-level pass checks them all
        except UnicodeDecodeError as err:
            raise _not_utf8(path, number * ID_CHUNK) from err
        blocks.append(raw)
    return np.concatenate(blocks) if blocks else np.empty(0, dtype="S1")


def get_shard_info(shard_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a shard (or a merged output) without reading its embeddings.

    Parameters
    ----------
    shard_path : path-like
        A shard file or a merged output.

    Returns
    -------
    dict
        ``path``, ``num_sequences``, ``embedding_dim``, ``dtype``,
        ``sequence_ids_sample`` (the first 5 IDs, as str) and ``merged`` (True when
        the file carries a merge report).

    Raises
    ------
    ShardError
        The file is absent, unreadable or not shaped like a shard.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import write_shard
    >>> import numpy as np
    >>> shard = write_shard("shard_0.h5", ["seq1", "seq2"], np.zeros((2, 768), np.float32))
    >>> info = get_shard_info(shard)
    >>> info["num_sequences"], info["embedding_dim"], info["dtype"], info["merged"]
    (2, 768, 'float32', False)
    """
    with open_shard(shard_path) as handle:
        meta = read_shard_meta(handle, shard_path, check_sources=False, storage=False)
        sample = next(iter_id_chunks(handle, shard_path, chunk=5), [])
        merged = REPORT_GROUP in handle
    return {
        "path": str(shard_path),
        "num_sequences": meta.num_sequences,
        "embedding_dim": meta.embedding_dim,
        "dtype": str(meta.dtype),
        "sequence_ids_sample": sample,
        "merged": merged,
    }
