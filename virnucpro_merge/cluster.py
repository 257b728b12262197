"""Validating very large runs on a Dask cluster, so that no process holds every ID.

A run of 10^8 sequences outgrows one process's memory for the ID check long before
the copy is a problem. Here the check is spread over a ``dask.distributed`` cluster:

1. **scan**: one task per shard (on the workers) reads its metadata and IDs and
   splits them into ``P`` partitions by a hash of the ID that every process
   computes alike (FNV-1a of the UTF-8 bytes);
2. **shuffle**: partition ``p`` of every shard goes to one task, with partition
   ``p`` of the expected IDs (scattered from the client, or read by the task itself
   from an expected-ID file, streamed);
3. **check**: that task finds duplicates exactly (by string, with shard and row),
   and missing and extra IDs, for its partition alone.

The client gathers only shard metadata and the answers (the duplicate, the missing
and extra IDs). The plan is the same as the single-process one, and
:func:`~virnucpro_merge.aggregate_shards` then writes as usual.

Dask is optional: ``pip install 'virnucpro-merge[dask]'``.
"""

from __future__ import annotations

import heapq
import json
import operator
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from .errors import ExpectedIdsError, MergeError, ShardError, UnreadableShardError
from .expected import iter_expected_ids
from .plan import MergePlan, ShardPlan, apply_expected, assemble_plan, failed_shard, shard_plan
from .shards import EMBEDDINGS, ID_CHUNK as _ID_CHUNK, SEQUENCE_IDS, ShardMeta, first_line, open_shard, read_shard_meta
from .sources import source_problems

__all__ = ["plan_on_cluster", "validate_on_cluster", "partition_of", "to_dask", "connect"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_TARGET_CHUNK_BYTES = 64 * 2**20


def _require_dask():
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as err:
        raise MergeError("this needs Dask: pip install 'virnucpro-merge[dask]'") from err


def _as_bytes(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """IDs as a fixed-width bytes array (UTF-8): compact, quick to pickle and to sort.

    Byte order of UTF-8 is code point order, so bytes sort as the strings do.
    """
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        return ids
    return np.array([i.encode() for i in ids], dtype=bytes) if len(ids) else np.empty(0, dtype="S1")


def partition_of(ids: Sequence[str] | np.ndarray, parts: int) -> np.ndarray:
    """The partition (``0 .. parts-1``) of each ID: the same in every process.

    Python's own ``hash`` is salted per process, so it cannot route IDs between
    workers; this is FNV-1a over the UTF-8 bytes, vectorised across the IDs.
    ``ids`` are str, or a bytes array (``dtype='S'``) of their UTF-8.
    """
    raw = _as_bytes(ids)
    if not raw.size:
        return np.empty(0, dtype=np.int64)
    width = raw.dtype.itemsize
    table = raw.view(np.uint8).reshape(raw.size, width)
    lengths = np.char.str_len(raw).astype(np.uint64)
    state = np.full(raw.size, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            live = lengths > column  # bytes past an ID's end are padding
            state = np.where(live, (state ^ table[:, column]) * _FNV_PRIME, state)
        state = (state ^ lengths) * _FNV_PRIME
    return (state % np.uint64(parts)).astype(np.int64)


def _split(ids: np.ndarray, parts: int, *extra: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """``ids`` (and arrays that go with them) cut into their partitions, order kept."""
    owner = partition_of(ids, parts)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(parts + 1))
    return [tuple(a[order[bounds[p] : bounds[p + 1]]] for a in (ids, *extra)) for p in range(parts)]


@dataclass
class _Scan:
    """What a worker learned of one shard: its metadata, or why it cannot be read."""

    path: Path
    meta: ShardMeta | None = None
    unreadable: UnreadableShardError | None = None
    fatal: ShardError | None = None
    pieces: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (IDs as bytes, rows)


def _read_id_bytes(handle: h5py.File, path: Path) -> np.ndarray:
    """A shard's IDs as UTF-8 bytes, checked to be valid UTF-8 (without making str of them)."""
    dset = handle[SEQUENCE_IDS]
    blocks = []
    for start in range(0, dset.shape[0], _ID_CHUNK):
        try:
            raw = dset[start : start + _ID_CHUNK]
        except OSError as err:
            raise UnreadableShardError(path, f"cannot read 'sequence_ids' ({first_line(err)})") from err
        raw = raw if raw.dtype.kind == "S" else np.array(raw.tolist(), dtype=bytes)
        try:
            b"\x00".join(raw.tolist()).decode("utf-8")  # one C-level pass checks them all
        except UnicodeDecodeError as err:
            raise ShardError(path, f"a sequence ID near row {start} is not valid UTF-8") from err
        blocks.append(raw)
    return np.concatenate(blocks) if blocks else np.empty(0, dtype="S1")


def _scan(path: Path, parts: int) -> _Scan:
    """Worker task: read one shard's metadata and IDs, split the IDs by partition."""
    scan = _Scan(path)
    try:
        with open_shard(path) as handle:
            scan.meta = read_shard_meta(handle, path)
            ids = _read_id_bytes(handle, path)
    except UnreadableShardError as err:
        return _Scan(path, unreadable=err)
    except ShardError as err:
        return _Scan(path, fatal=err)
    rows = np.arange(ids.size, dtype=np.int32 if ids.size < 2**31 else np.int64)
    scan.pieces = _split(ids, parts, rows)
    return scan


def _piece(scan: _Scan, p: int) -> tuple[np.ndarray, np.ndarray]:
    return scan.pieces[p] if scan.pieces else (np.empty(0, "S1"), np.empty(0, np.int64))


_RANGE_BYTES = 32 * 2**20  # an expected-ID file is read in ranges of about this size
_JSON_ID = re.compile(rb'"sequence_id"\s*:\s*("(?:[^"\\]|\\.)*")')


def _expected_form(path: Path) -> str:
    """How to read an expected-ID file: 'text', 'fasta' or 'json' (as ``read_expected_ids`` tells)."""
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return "gzip"
        fh.seek(0)
        for line in fh:
            stripped = line.lstrip(b"\xef\xbb\xbf").strip()
            if stripped:
                return "json" if stripped.startswith(b"{") else "fasta" if stripped.startswith(b">") else "text"
    raise ExpectedIdsError(f"{path}: no sequence IDs in this file")


def _range_lines(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The lines of a file that start in bytes ``[start, end)``."""
    with open(path, "rb") as fh:
        fh.seek(max(start - 1, 0))
        if start > 0:
            fh.readline()  # the line under way at ``start`` belongs to the range before
        while fh.tell() < end:
            line = fh.readline()
            if not line:
                return
            yield line


def _range_ids(path: Path, start: int, end: int, form: str) -> Iterator[str]:
    for line in _range_lines(path, start, end):
        if start == 0:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if form == "json":  # the index's records, found by key (the file is not parsed whole)
            yield from (json.loads(m) for m in _JSON_ID.findall(line))
            continue
        text = line.decode("utf-8").strip()
        if form == "fasta":
            if text.startswith(">") and text[1:].split(maxsplit=1):
                yield text[1:].split(maxsplit=1)[0]
        elif text and not text.startswith("#"):
            yield text


def _scan_expected(path: Path, start: int, end: int, form: str, parts: int) -> list[np.ndarray]:
    """Worker task: the expected IDs in one byte range of a file, split by partition."""
    try:
        ids = list(iter_expected_ids(path)) if form == "gzip" else list(_range_ids(path, start, end, form))
    except UnicodeDecodeError as err:
        raise ExpectedIdsError(f"{path}: not UTF-8 text") from err
    return [piece for piece, in _split(_as_bytes(ids), parts)]


def _expected_pieces(client, expected, parts: int, range_bytes: int = _RANGE_BYTES) -> list:
    """Partition ``p`` of the expected IDs for each ``p``: futures, or None without expected IDs."""
    if expected is None:
        return [None] * parts
    if not isinstance(expected, os.PathLike):  # IDs in memory here: partition and send them
        return client.scatter([piece for piece, in _split(_as_bytes(list(expected)), parts)])
    path = Path(expected).resolve()
    if not path.is_file():
        raise ExpectedIdsError(f"{expected}: expected-ID file does not exist")
    form, size = _expected_form(path), path.stat().st_size
    bounds = [0, size] if form == "gzip" else list(range(0, size, range_bytes)) + [size]
    scans = [client.submit(_scan_expected, path, a, b, form, parts, pure=False) for a, b in zip(bounds, bounds[1:])]
    return [client.submit(_concat, [client.submit(operator.getitem, scan, p, pure=False) for scan in scans],
                          pure=False) for p in range(parts)]


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.empty(0, "S1")


@dataclass
class _Verdict:
    """One partition's answer."""

    duplicate: tuple[int, int, str, int] | None  # (shard, row) of the repeat, the ID, its first shard
    missing: np.ndarray  # sorted, as bytes
    extra: np.ndarray
    num_expected: int


def _check(pieces: list[tuple[np.ndarray, np.ndarray]], expected: np.ndarray | None) -> _Verdict:
    """Worker task: exact duplicate, missing and extra checks for one partition (vectorised)."""
    ids = _concat([piece_ids for piece_ids, _ in pieces])
    shard = np.concatenate([np.full(len(piece_ids), k, np.int32) for k, (piece_ids, _) in enumerate(pieces)] or [[]])
    row = np.concatenate([rows for _, rows in pieces] or [[]])
    order = np.argsort(ids, kind="stable")  # equal IDs stay in (shard, row) order
    ordered = ids[order]
    repeat = ordered[1:] == ordered[:-1]
    duplicate = None
    if repeat.any():
        second = order[1:][repeat].min()  # the earliest second sighting, in shard order
        first = np.flatnonzero(ids == ids[second])[0]
        duplicate = (int(shard[second]), int(row[second]), ids[second].decode(), int(shard[first]))
    present = ordered[np.concatenate(([True], ~repeat))] if ordered.size else ordered
    if expected is None:
        return _Verdict(duplicate, np.empty(0, "S1"), np.empty(0, "S1"), 0)
    wanted = np.unique(expected)
    return _Verdict(
        duplicate,
        np.setdiff1d(wanted, present, assume_unique=True),
        np.setdiff1d(present, wanted, assume_unique=True),
        int(wanted.size),
    )


def _default_parts(client) -> int:
    """Partitions: several per worker, so each check task holds a small share of the IDs."""
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    return 8 * workers


def _run(shard_files: Sequence[Path], expected, client, parts: int | None, range_bytes: int = _RANGE_BYTES):
    """Scan on the workers, shuffle by partition, check; return (scans, verdicts)."""
    _require_dask()
    parts = parts or _default_parts(client)
    # Workers may run elsewhere: give them absolute paths (of a shared filesystem).
    scans = client.map(_scan, [Path(p).resolve() for p in shard_files], parts=parts, pure=False)
    expected_pieces = _expected_pieces(client, expected, parts, range_bytes)
    metadata = [client.submit(_strip, scan, pure=False) for scan in scans]
    verdicts = [
        client.submit(_check, [client.submit(_piece, scan, p, pure=False) for scan in scans], expected_pieces[p],
                      pure=False)
        for p in range(parts)
    ]
    del scans, expected_pieces  # held by no one here, each shard's IDs go once its pieces are taken
    return [_as_given(m, path) for m, path in zip(client.gather(metadata), shard_files)], client.gather(verdicts)


def _as_given(scan: _Scan, path: Path) -> _Scan:
    """A scan made on an absolute path, told again with the path the user gave."""
    path = Path(path)
    scan.path = path
    if scan.meta is not None:
        scan.meta = replace(scan.meta, path=path)
    if scan.unreadable is not None:
        scan.unreadable = type(scan.unreadable)(path, scan.unreadable.problem)
    if scan.fatal is not None:
        scan.fatal = type(scan.fatal)(path, scan.fatal.problem)
    return scan


def _strip(scan: _Scan) -> _Scan:
    """Worker task: the scan without its IDs, for the client."""
    return _Scan(scan.path, scan.meta, scan.unreadable, scan.fatal)


def _combine(verdicts: Iterable[_Verdict], scans: list[_Scan]):
    verdicts = list(verdicts)
    duplicates = [v.duplicate for v in verdicts if v.duplicate is not None]
    duplicate = None
    if duplicates:
        shard, _, sequence_id, first = min(duplicates)
        duplicate = (sequence_id, scans[shard].path, scans[first].path)
    missing = [i.decode() for i in heapq.merge(*(v.missing.tolist() for v in verdicts))]
    extra = [i.decode() for i in heapq.merge(*(v.extra.tolist() for v in verdicts))]
    return duplicate, missing, extra, sum(v.num_expected for v in verdicts)


def plan_on_cluster(
    shard_files: Sequence[Path],
    expected: Collection[str] | os.PathLike | None,
    *,
    partial: bool,
    client,
    parts: int | None = None,
    range_bytes: int = _RANGE_BYTES,
) -> MergePlan:
    """:func:`~virnucpro_merge.plan.plan_merge` with the ID work done by a Dask cluster.

    ``expected`` may be a collection of IDs (partitioned by the client) or the
    path of an expected-ID file (``os.PathLike``), which the workers read in byte
    ranges of ``range_bytes`` and shuffle like the shards' IDs, so that not even the
    client holds every expected ID. (A JSON index is scanned for its
    ``"sequence_id"`` entries line by line rather than parsed; a gzipped file is
    read by one task.)
    """
    scans, verdicts = _run(shard_files, expected, client, parts, range_bytes)
    shards: list[ShardPlan] = []
    for scan in scans:
        if scan.fatal is not None:
            raise scan.fatal
        shards.append(failed_shard(scan.unreadable, partial=partial) if scan.unreadable else shard_plan(scan.meta))
    duplicate, missing, extra, num_expected = _combine(verdicts, scans)
    plan = assemble_plan(shards, duplicate=duplicate)
    if expected is not None:
        apply_expected(plan, num_expected=num_expected, missing=missing, extra=extra, partial=partial)
    return plan


def validate_on_cluster(
    shard_files: Sequence[str | os.PathLike[str]],
    expected: Collection[str] | os.PathLike,
    *,
    client,
    parts: int | None = None,
    range_bytes: int = _RANGE_BYTES,
) -> tuple[set[str], set[str]]:
    """:func:`~virnucpro_merge.validate_shard_completeness` on a Dask cluster."""
    scans, verdicts = _run([Path(p) for p in shard_files], expected, client, parts, range_bytes)
    for scan in scans:
        if scan.unreadable or scan.fatal:
            raise scan.unreadable or scan.fatal
    _, missing, extra, _ = _combine(verdicts, scans)
    return set(missing), set(extra)


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[object]:
    """``with connect(...) as client``: a Dask client, closed (with its cluster) on exit.

    With ``scheduler``, a client of that running scheduler; otherwise a new local
    cluster of ``workers`` processes (default 2), one thread each.
    """
    _require_dask()
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


class _Rows:
    """A picklable, lazily opened view of a merged file's embeddings, for dask.array."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, shape, dtype, 2

    def __getitem__(self, key):
        with h5py.File(self.path, "r") as f:
            return f[EMBEDDINGS][key]


def to_dask(path: str | os.PathLike[str], rows_per_chunk: int | None = None):
    """A ``dask.array`` over a merged (or virtual) output's embeddings, chunked by rows.

    Each chunk opens the file itself, so the array works on any worker that sees
    the file. A virtual output whose sources are missing or changed is refused.
    """
    _require_dask()
    import dask.array as da

    path = Path(path).resolve()  # the chunks may be read by workers elsewhere
    with open_shard(path) as handle:
        meta = read_shard_meta(handle, path, check_sources=False)
    if meta.merged_from and meta.merged_from.get("layout") == "virtual":
        problems = source_problems(path, meta.merged_from.get("sources", []))
        if problems:
            raise MergeError(problems[0])
    shape = (meta.num_sequences, meta.embedding_dim)
    rows = rows_per_chunk or max(1, _TARGET_CHUNK_BYTES // max(1, meta.embedding_dim * meta.dtype.itemsize))
    return da.from_array(_Rows(path, shape, meta.dtype), chunks=(rows, shape[1] or 1), asarray=True, fancy=False)
