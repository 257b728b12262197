"""Validating very large runs on a Dask cluster, so that no process holds every ID.

A run of 10^8 sequences outgrows one process's memory for the ID check long before
the copy is a problem. Here the check is spread over a ``dask.distributed`` cluster:

1. **scan**: one task per shard (on the workers) reads its metadata and IDs and
   splits them into ``P`` partitions by a hash of the ID that every process
   computes alike (FNV-1a of the UTF-8 bytes);
2. **shuffle**: partition ``p`` of every shard goes to one task, with partition
   ``p`` of the expected IDs (scattered from the client, or read by the workers
   themselves from an expected-ID file, in byte ranges);
3. **check**: that task finds duplicates exactly (by string, with shard and row),
   and missing and extra IDs, for its partition alone.

The client gathers only plain data: each shard's metadata (or the error reading it
gave) and the findings (the duplicate, the missing and extra IDs).
:func:`~virnucpro_merge.plan.plan_from_scan` turns them into the plan a single
process would make, and :func:`~virnucpro_merge.aggregate_shards` then writes as usual.

Dask is optional: ``pip install 'virnucpro-merge[dask]'``.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import ExpectedIdsError, MergeError, ShardError
from .expected import (
    JSON,
    RANGE_BYTES,
    RangeIds,
    detect_form,
    expected_ranges,
    iter_expected_ids,
    ranges_agree,
    read_expected_ids,
    read_range,
)
from .ids import encode_ids
from .shards import EMBEDDINGS, ShardMeta, first_line, open_shard, read_id_bytes, read_shard_meta
from .sources import source_problems
from .validation import Findings, normalisation_twins

__all__ = ["RANGE_BYTES", "scan_on_cluster", "partition_of", "to_dask", "connect"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_TARGET_CHUNK_BYTES = 64 * 2**20
_CONNECT_SECONDS = 20  # to a running scheduler: then one line, not a hang


def _require_dask() -> None:
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as err:
        msg = "this needs Dask: pip install 'virnucpro-merge[dask]'"
        raise MergeError(msg) from err


def partition_of(ids: Sequence[str] | np.ndarray, parts: int) -> np.ndarray:
    """The partition (0 to ``parts - 1``) of each ID: the same in every process.

    Python's own ``hash`` is salted per process, so it cannot route IDs between
    workers; this is FNV-1a over the UTF-8 bytes, vectorised across the IDs.
    ``ids`` are str, or a bytes array (``dtype='S'``) of their UTF-8.

    Examples
    --------
    >>> parts = partition_of(["seq1", "seq2", "seq3", "seq4"], 2)
    >>> parts.tolist() == partition_of(["seq1", "seq2", "seq3", "seq4"], 2).tolist()  # the same on every worker
    True
    >>> bool(((parts >= 0) & (parts < 2)).all())
    True
    """
    raw = encode_ids(ids)
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
    """What a worker learned of one shard: its metadata or the error reading it gave,
    and its IDs split by partition (IDs as bytes, with their rows)."""

    outcome: ShardMeta | ShardError
    pieces: list[tuple[np.ndarray, ...]] = field(default_factory=list)


def _scan(path: Path, parts: int, storage: bool = True) -> _Scan:
    """Worker task: read one shard's metadata and IDs, split the IDs by partition."""
    try:
        with open_shard(path) as handle:
            meta = read_shard_meta(handle, path, storage=storage)
            ids = read_id_bytes(handle, path)
    except ShardError as err:
        return _Scan(err)
    rows = np.arange(ids.size, dtype=np.int32 if ids.size < 2**31 else np.int64)
    return _Scan(meta, _split(ids, parts, rows))


def _piece(scan: _Scan, p: int) -> tuple[np.ndarray, ...]:
    return scan.pieces[p] if scan.pieces else (np.empty(0, "S1"), np.empty(0, np.int64))


def _outcome(scan: _Scan) -> ShardMeta | ShardError:
    """Worker task: the scan without its IDs, for the client."""
    return scan.outcome


def _as_given(outcome: ShardMeta | ShardError, path: Path) -> ShardMeta | ShardError:
    """A scan made on an absolute path, told again with the path the user gave."""
    if isinstance(outcome, ShardMeta):
        return replace(outcome, path=path)
    return type(outcome)(path, outcome.problem)


@dataclass
class _ExpectedPart:
    """Worker task result: the expected IDs of one byte range (or of the whole file), by partition."""

    pieces: list[np.ndarray]
    count: int
    where: RangeIds | None = None  # the range read, without its IDs (for expected.ranges_agree)
    error: ExpectedIdsError | None = None  # what reading it found wrong (raised by the client, in file order)


def _read_expected_part(path: Path, shown: str, form: str | None, start: int, end: int, parts: int,
                        why: str = "") -> _ExpectedPart:
    """Worker task: the expected IDs in bytes ``[start, end)`` (form None: the whole file)."""
    try:
        if form is None:
            ids, where = list(iter_expected_ids(path, shown_as=shown)), None
        else:
            found = read_range(path, form, start, end, shown_as=shown, why=why)
            ids, where = found.ids, replace(found, ids=[])
    except ExpectedIdsError as err:  # data, not a task failure: the workers log no traceback
        return _ExpectedPart([np.empty(0, "S1")] * parts, 0, error=err)
    return _ExpectedPart([piece for piece, in _split(encode_ids(ids), parts)], len(ids), where)


def _summary(part: _ExpectedPart) -> tuple[int, RangeIds | None, ExpectedIdsError | None]:
    return part.count, part.where, part.error


def _gathered(client: Any, tasks: list[Any]) -> list[tuple[int, RangeIds | None, ExpectedIdsError | None]]:
    summaries = client.gather([client.submit(_summary, task, pure=False) for task in tasks])
    errors = [error for _, _, error in summaries if error is not None]
    if errors:
        raise errors[0]  # the first in the file
    return summaries


def _expected_pieces(client: Any, expected: object, parts: int, range_bytes: int) -> list[Any]:
    """Partition ``p`` of the expected IDs for each ``p``: futures, or None without expected IDs.

    A file is read by the workers: in byte ranges where it can be (the answer, or the
    error, is the one :func:`~virnucpro_merge.read_expected_ids` gives), from start to
    end in one task where not (gzip). What the workers cannot open (a pipe) is read here.
    """
    if expected is None:
        return [None] * parts
    if isinstance(expected, os.PathLike) and not Path(expected).is_file():
        expected = read_expected_ids(expected)  # a pipe (or an error: absent, a folder...)
    if not isinstance(expected, os.PathLike):  # IDs in memory here: partition and send them
        return client.scatter([piece for piece, in _split(encode_ids(list(expected)), parts)])  # type: ignore[call-overload]
    return _file_on_workers(client, expected, parts, range_bytes)


def _file_on_workers(client: Any, expected: os.PathLike[str], parts: int, range_bytes: int) -> list[Any]:
    """Partition ``p`` of the IDs of an expected-ID file, for each ``p``, as futures: the file
    read by the workers, in byte ranges where it can be (a JSON index's ranges checked, and
    read again in one task where they do not agree), from start to end in one task where not."""
    shown, path = str(expected), Path(expected).resolve()  # workers may run elsewhere: absolute paths
    form, _, why = detect_form(path, shown_as=shown)
    no_ids = f"{shown}: no sequence IDs in this file" + (f"; {why}" if why else "")
    if form is None:
        raise ExpectedIdsError(no_ids)
    ranges = expected_ranges(path, range_bytes)
    whole = [(path, shown, None, 0, 0, parts)]  # (one task, from start to end)
    tasks = [client.submit(_read_expected_part, *task, pure=False) for task in
             (whole if ranges is None else [(path, shown, form, a, b, parts, why) for a, b in ranges])]
    summaries = _gathered(client, tasks)
    if form == JSON and ranges is not None and not ranges_agree([w for _, w, _ in summaries if w is not None]):
        tasks = [client.submit(_read_expected_part, *whole[0], pure=False)]
        summaries = _gathered(client, tasks)
    if not sum(count for count, _, _ in summaries):
        raise ExpectedIdsError(no_ids)
    return [client.submit(_concat, [client.submit(_part_piece, task, p, pure=False) for task in tasks], pure=False)
            for p in range(parts)]


def _part_piece(part: _ExpectedPart, p: int) -> np.ndarray:
    return part.pieces[p]


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.empty(0, "S1")


@dataclass
class _Verdict:
    """One partition's answer."""

    duplicate: tuple[int, int, str, int] | None  # (shard, row) of the repeat, the ID, its first shard
    missing: np.ndarray  # sorted, as bytes
    extra: np.ndarray
    num_expected: int


def _check(pieces: list[tuple[np.ndarray, ...]], expected: np.ndarray | None) -> _Verdict:
    """Worker task: exact duplicate, missing and extra checks for one partition (vectorised)."""
    ids = _concat([piece_ids for piece_ids, _ in pieces])
    shard = np.repeat(np.arange(len(pieces), dtype=np.int32), [len(piece_ids) for piece_ids, _ in pieces])
    row = np.concatenate([rows for _, rows in pieces]) if pieces else np.empty(0, np.int64)
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


def _default_parts(client: Any) -> int:
    """Partitions: several per worker, so each check task holds a small share of the IDs."""
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    return 8 * workers


def scan_on_cluster(
    shard_files: Sequence[Path],
    expected: Collection[str] | os.PathLike[str] | None,
    *,
    client: Any,
    parts: int | None = None,
    range_bytes: int | None = None,
    storage: bool = True,
) -> tuple[list[ShardMeta | ShardError], Findings]:
    """Read the shards and check their IDs on the workers; return plain data.

    Parameters
    ----------
    shard_files : sequence of Path
        The shards, in merge order (paths the workers can open: made absolute here).
    expected : collection of str or path-like, optional
        The expected IDs: partitioned here and sent, or (``os.PathLike``) a file the
        workers read in byte ranges of ``range_bytes`` (default :data:`RANGE_BYTES`).
    client : dask.distributed.Client
        The cluster to run on.
    parts : int, optional
        Partitions of the IDs (default: 8 per worker).
    storage : bool
        Look at where each shard keeps its embeddings (for a merge; not for a check).

    Returns
    -------
    scans : list of ShardMeta or ShardError
        Each shard's metadata, or the error reading it gave, named as given.
    findings : Findings
        The first duplicate in shard order, the missing and extra IDs.
    """
    _require_dask()
    parts = parts or _default_parts(client)
    scans = client.map(_scan, [Path(p).resolve() for p in shard_files], parts=parts, storage=storage, pure=False)
    expected_pieces = _expected_pieces(client, expected, parts, range_bytes or RANGE_BYTES)
    outcomes = [client.submit(_outcome, scan, pure=False) for scan in scans]
    verdicts = [
        client.submit(_check, [client.submit(_piece, scan, p, pure=False) for scan in scans], expected_pieces[p],
                      pure=False)
        for p in range(parts)
    ]
    del scans, expected_pieces  # held by no one here, each shard's IDs go once its pieces are taken
    paths = [Path(p) for p in shard_files]
    found = [_as_given(outcome, path) for outcome, path in zip(client.gather(outcomes), paths, strict=True)]
    return found, _combine(client.gather(verdicts), paths, expected is not None)


def _combine(verdicts: list[_Verdict], paths: list[Path], expected_given: bool) -> Findings:
    duplicates = [v.duplicate for v in verdicts if v.duplicate is not None]
    duplicate = None
    if duplicates:
        shard, _, sequence_id, first = min(duplicates)
        duplicate = (sequence_id, paths[shard], paths[first])
    missing = [i.decode() for i in heapq.merge(*(v.missing.tolist() for v in verdicts))]
    extra = [i.decode() for i in heapq.merge(*(v.extra.tolist() for v in verdicts))]
    return Findings(
        duplicate=duplicate,
        missing=missing,
        extra=extra,
        num_expected=sum(v.num_expected for v in verdicts) if expected_given else None,
        twins=normalisation_twins(missing, extra),  # (the expected IDs are the workers': not looked at)
    )


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """``with connect(...) as client``: a Dask client, closed (with its cluster) on exit.

    With ``scheduler``, a client of that running scheduler; otherwise a new local
    cluster of ``workers`` processes (default 2), one thread each.

    Examples
    --------
    >>> with connect(workers=1) as client:  # a local cluster of one worker process
    ...     len(client.scheduler_info()["workers"])
    1
    """
    _require_dask()
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=_CONNECT_SECONDS)
        except (OSError, ValueError, TypeError) as err:  # a bad address, nobody there, a timeout
            msg = f"{scheduler}: cannot connect to a Dask scheduler there ({first_line(err) or type(err).__name__})"
            raise MergeError(msg) from err
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


class _Rows:
    """A picklable, lazily opened view of a merged file's embeddings, for dask.array."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, shape, dtype, 2

    def __getitem__(self, key: Any) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return f[EMBEDDINGS][key]


def to_dask(path: str | os.PathLike[str], rows_per_chunk: int | None = None) -> Any:
    """A ``dask.array`` over a merged (or virtual) output's embeddings, chunked by rows.

    Each chunk opens the file itself, so the array works on any worker that sees
    the file. A virtual output whose sources are missing or changed is refused.

    Examples
    --------
    >>> import h5py
    >>> from virnucpro_merge import aggregate_shards
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(), empty=(), short={})
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5")
    >>> rows = to_dask(merged, rows_per_chunk=5)
    >>> rows.shape, rows.chunks[0]
    ((12, 4), (5, 5, 2))
    >>> with h5py.File(merged) as f:
    ...     bool((rows.compute() == f["embeddings"][:]).all())
    True
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
