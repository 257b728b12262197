"""Shards read ahead, in forked processes: their metadata (:func:`read_metas`), and their
IDs while this process checks them (:class:`ReadAhead`).

Reading a shard's IDs with h5py costs about a millisecond a shard, and holds the GIL
while it runs: at 1,024 shards, seconds on the thread that checks the IDs, seconds the
merge's copy and scan threads wait for the GIL. A :class:`ReadAhead` hands the reading,
the UTF-8 check and the hashing to forked processes, a few pieces ahead of the shard
being checked, and gives each shard's IDs back here in order, as they would have been
read here: the same chunks (:class:`~virnucpro_merge.ids.HashedIds`, their hashes
worked out), the same errors, raised when that shard's IDs are asked for.

Its processes are forked when it is made (:func:`read_ahead`): make it before starting
threads (a fork copies a lock another thread holds, held). With few IDs, one core, or no
fork to be had, the IDs are read here, as they are asked for.

A merge of many shards first reads each one's metadata (about a millisecond a shard
with h5py, before the copy can start): :func:`read_metas` shares that out too.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._processes import pool, pool_size
from .errors import ShardError
from .ids import FoundIds, HashedIds, IdLookup
from .shards import ID_CHUNK, ShardMeta, iter_id_byte_chunks, iter_id_chunks, open_shard, read_shard_meta

__all__ = ["ReadAhead", "read_ahead", "ShardIds", "read_metas", "read_first_ids", "FROM_ROWS", "FROM_SHARDS",
           "BYTES_AN_ID", "PIECE_ROWS"]

logger = logging.getLogger("virnucpro_merge")

#: IDs a task reads at most (small shards share one; a large one is read in pieces).
PIECE_ROWS = ID_CHUNK
#: The fewest IDs read ahead (below that, forking costs more than it saves).
FROM_ROWS = 2**17
#: The fewest shards whose metadata is read by forked processes (and whose IDs are, whatever
#: the embeddings copied beside them).
FROM_SHARDS = 64
#: Bytes of embeddings copied meanwhile an ID, at most, for the IDs of fewer shards to be read ahead.
BYTES_AN_ID = 1024
_IN_FLIGHT = 2  # tasks handed out per process (each about 4 MB of IDs when back)
_METAS_A_TASK = 16


@dataclass(frozen=True)
class ShardIds:
    """A shard's IDs to read: the file read (``source``), the name its errors give
    (``name``), and its rows (``rows``: from the shard's metadata)."""

    source: Path
    name: Path
    rows: int


@dataclass(frozen=True)
class _Piece:
    number: int  # the shard's, in the order given
    shard: ShardIds
    start: int
    stop: int | None  # (None: to the end of the shard, however many rows it has by now)


@dataclass(frozen=True)
class _LookUp:
    """What the IDs read are looked up in, and whether their bytes are wanted as well."""

    lookup: IdLookup
    ids: bool


_Read = list[HashedIds] | list[FoundIds] | ShardError
_worker_look_up: _LookUp | None = None  # (a worker's: what it was forked with)


def _use(look_up: _LookUp | None) -> None:
    global _worker_look_up  # (a forked worker's own, set once as it starts)
    _worker_look_up = look_up


def _read(pieces: Sequence[_Piece], look_up: _LookUp | None = None) -> list[_Read]:
    """Each piece's ID chunks, or the error reading it gave (in a worker, or here), looked
    up as ``look_up`` says (in a worker: as it was forked to)."""
    look_up = look_up or _worker_look_up
    found: list[_Read] = []
    for piece in pieces:
        try:
            with open_shard(piece.shard.source) as handle:
                chunks = [HashedIds(chunk) for chunk in iter_id_byte_chunks(
                    handle, piece.shard.name, start=piece.start, stop=piece.stop)]
        except ShardError as err:
            found.append(err)
            continue
        if look_up is None:
            found.append(chunks)
        elif look_up.ids:
            for chunk in chunks:
                look_up.lookup.look_up(chunk)
            found.append(chunks)
        else:
            found.append([look_up.lookup.found_ids(chunk) for chunk in chunks])
    return found


def _tasks(shards: Sequence[ShardIds]) -> list[list[_Piece]]:
    """The shards' rows in pieces of at most :data:`PIECE_ROWS`, in tasks of about as many
    (a shard of no rows has one piece: its file is still opened and checked)."""
    tasks: list[list[_Piece]] = [[]]
    rows = 0
    for number, shard in enumerate(shards):
        for start in range(0, max(shard.rows, 1), PIECE_ROWS):
            piece = _Piece(number, shard, start, start + PIECE_ROWS if start + PIECE_ROWS < shard.rows else None)
            if rows >= PIECE_ROWS:
                tasks.append([])
                rows = 0
            tasks[-1].append(piece)
            rows += max(min(shard.rows - start, PIECE_ROWS), 1)
    return [t for t in tasks if t]


class ReadAhead:
    """The IDs of shards, read ahead by ``executor``'s processes (or here, where None).

    Ask for them in the order given: :meth:`chunks` of the shard numbered ``n`` (its place
    in that order) skips what is left of the shards before it.
    """

    def __init__(self, shards: Sequence[ShardIds], executor: ProcessPoolExecutor | None, in_flight: int = 1,
                 look_up: _LookUp | None = None) -> None:
        self._tasks = iter(_tasks(shards))
        self._executor, self._look_up = executor, look_up
        self._pending: deque[tuple[list[_Piece], Future[list[_Read]] | None]] = deque()
        self._ready: deque[tuple[_Piece, _Read]] = deque()
        for _ in range(in_flight):  # (the first tasks handed out now: the processes fork here)
            self._hand_out()

    def _hand_out(self) -> None:
        task = next(self._tasks, None)
        if task is not None:
            future = self._executor.submit(_read, task) if self._executor is not None else None
            self._pending.append((task, future))

    def _next(self) -> tuple[_Piece, _Read] | None:
        if not self._ready:
            if not self._pending:
                return None
            task, future = self._pending.popleft()
            self._hand_out()
            self._ready.extend(zip(task, self._result(task, future), strict=True))
        return self._ready[0]

    def _result(self, task: list[_Piece], future: Future[list[_Read]] | None) -> list[_Read]:
        if future is None:
            return _read(task, self._look_up)
        try:
            return future.result()
        except BrokenProcessPool:  # (a worker killed, by the OOM killer say): read here from now on
            logger.debug("A process reading IDs ahead died: reading them here")
            self._executor = None
            self._pending = deque((t, None) for t, _ in self._pending)
            return _read(task, self._look_up)

    def chunks(self, number: int) -> Iterator[HashedIds | FoundIds]:
        """The ID chunks of the shard numbered ``number``, in row order; its error, if reading
        it gave one (raised when it comes, after the chunks before it)."""
        while (head := self._next()) is not None and head[0].number <= number:
            piece, read = self._ready.popleft()
            if piece.number < number:
                continue  # (what is left of a shard given up on)
            if isinstance(read, ShardError):
                raise read
            yield from read


@contextmanager
def read_ahead(shards: Sequence[ShardIds], lookup: IdLookup | None = None, *, ids: bool = True, copied: int = 0
               ) -> Iterator[ReadAhead]:
    """A :class:`ReadAhead` of ``shards``, with forked processes where they pay: when there
    are two cores or more and :data:`FROM_ROWS` IDs or more, one a core
    (:func:`~virnucpro_merge._processes.pool_size`) for a check, and two where this process
    copies ``copied`` bytes of embeddings meanwhile (a merge: the copy and its scan take
    the others), unless the IDs weigh little beside those: fewer than :data:`FROM_SHARDS`
    shards with more than :data:`BYTES_AN_ID` an ID. (Measured: 8 shards of 62,500 rows of
    1,280 floats merged in 1.6 s with the IDs read here, 2.4-2.9 s with forked readers,
    whose work slowed the copy; 1,024 shards of 1,000 rows, 3.6 s against 4.0 s; 8 shards
    of 250,000 rows of 64, 2.3 s against 2.6 s.)

    With ``lookup``, the IDs are looked up in it where they are read (a forked process has it
    without a copy, unless it holds bytes objects: then here): as
    :class:`~virnucpro_merge.ids.HashedIds` whose ``positions`` in it cost nothing here
    (:meth:`~virnucpro_merge.ids.IdLookup.look_up`), or, where their bytes are not wanted
    (``ids=False``: a check that writes nothing), as :class:`~virnucpro_merge.ids.FoundIds`.
    """
    rows = sum(s.rows for s in shards)
    weighty = len(shards) >= FROM_SHARDS or copied <= rows * BYTES_AN_ID
    workers = 1 if rows < FROM_ROWS or not weighty else min(pool_size(), 2) if copied else pool_size()
    look_up = None if lookup is None or not lookup.shared_without_copy else _LookUp(lookup, ids)
    with pool(workers, initializer=_use, initargs=(look_up,)) as executor:
        yield ReadAhead(shards, executor, _IN_FLIGHT * workers if executor is not None else 1, look_up)


def read_metas(paths: Sequence[Path], *, storage: bool = True, meanwhile: Callable[[], object] | None = None
               ) -> list[ShardMeta | ShardError]:
    """Each shard's metadata (:func:`~virnucpro_merge.shards.read_shard_meta`), or the error
    reading it gave, in order: by forked processes, one a core, from :data:`FROM_SHARDS`
    shards (call it before starting threads), else here. ``meanwhile()`` is called once the
    processes are at work (and not at all without them): what this process has to do
    anyway, done while it waits.

    >>> import numpy as np
    >>> from virnucpro_merge.synthetic import write_shard
    >>> found = read_metas([write_shard("s.h5", ["a"], np.ones((1, 2), np.float32)), Path("none.h5")])
    >>> found[0].num_sequences, str(found[1])
    (1, 'none.h5: file does not exist')
    """
    return _each_shard(functools.partial(_meta, storage=storage), paths, meanwhile)


def read_first_ids(paths: Sequence[Path], count: int) -> list[list[str] | ShardError]:
    """The first ``count`` IDs of each shard (fewer where it holds fewer), or the error
    reading them gave, in order: shared out as :func:`read_metas` shares the metadata
    (opening a shard costs about half a millisecond: at 1,024 shards, 0.6-1.1 s here).

    >>> import numpy as np
    >>> from virnucpro_merge.synthetic import write_shard
    >>> found = read_first_ids([write_shard("s.h5", ["a", "b", "c"], np.ones((3, 2), np.float32)), Path("x.h5")], 2)
    >>> found[0], str(found[1])
    (['a', 'b'], 'x.h5: file does not exist')
    """
    return _each_shard(functools.partial(_first_ids, count=count), paths)


_Found = TypeVar("_Found")


def _each_shard(read: Callable[[Path], _Found], paths: Sequence[Path],
                meanwhile: Callable[[], object] | None = None) -> list[_Found]:
    """``read(path)`` of each path, in order: by forked processes, one a core, from
    :data:`FROM_SHARDS` paths, else here; ``meanwhile()`` done while they work."""
    workers = pool_size(-(-len(paths) // _METAS_A_TASK)) if len(paths) >= FROM_SHARDS else 1
    with pool(workers) as executor:
        if executor is None:
            return [read(path) for path in paths]
        found = executor.map(read, paths, chunksize=_METAS_A_TASK)
        if meanwhile is not None:
            meanwhile()
        return list(found)


def _first_ids(path: Path, *, count: int) -> list[str] | ShardError:
    try:
        with open_shard(path) as handle:
            return next(iter_id_chunks(handle, path, chunk=count), [])
    except ShardError as err:
        return err


def _meta(path: Path, *, storage: bool) -> ShardMeta | ShardError:
    try:
        with open_shard(path) as handle:
            return read_shard_meta(handle, path, storage=storage)
    except ShardError as err:
        return err
