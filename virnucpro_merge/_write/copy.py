"""Moving a shard's rows into the output, ``chunk_size`` rows at a time.

Two ways, chosen per shard:

- **raw bytes**: a contiguous, uncompressed little-endian float32 shard holds its
  embeddings as one run of bytes at a known file offset, exactly as the output's
  contiguous dataset stores them. Those bytes are copied file to file by the kernel
  (``os.copy_file_range``; ``pread``/``pwrite`` where that is unavailable), with no
  trip through Python memory.
- **h5py**: anything else (float16, chunked or compressed shards) is read with
  ``read_direct`` into one reused float32 buffer (float16 cast exactly by numpy)
  and written into place with ``pwrite``.

Either way the output's embeddings are written as bytes at their offset in the
file, never by HDF5 itself: the space is reserved up front (:func:`reserve`) and
each written span is sent on to the disk at once (:class:`Written`), so that the
final fsync has little left to do (:mod:`.sysio`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..checksums import Checksums, IdSink, extremes_of, nonfinite_rows, row_sums
from ..errors import UnreadableShardError
from ..health import RankHealth, RankTally
from ..plan import ShardPlan
from ..shards import embeddings_of, first_line, iter_id_blocks, open_shard, rows_reader
from . import sysio

__all__ = [
    "OUTPUT_DTYPE",
    "raw_copyable",
    "read_raw_rows",
    "nonfinite_rows",
    "scan_rows",
    "finish_tally",
    "copy_embeddings_h5py",
    "copy_ids",
    "count_nonfinite_raw",
    "raw_copy_in_background",
    "RawCopy",
    "RowWriter",
    "BlockWriter",
]

#: The dtype of the output's embeddings: little-endian float32.
OUTPUT_DTYPE = np.dtype("<f4")
_WINDOW_BYTES = 4 * 2**20


def raw_copyable(shard: ShardPlan) -> bool:
    """Whether the shard's embedding bytes are already in the output's layout."""
    return shard.data_offset is not None and shard.dtype == OUTPUT_DTYPE


def _chunks(total: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, chunk_size):
        yield start, min(start + chunk_size, total)


def scan_rows(block: np.ndarray, start: int, checksums: Checksums, tally: RankTally | None = None) -> int:
    """The one pass over rows about to be (or being) written at output row ``start``:
    their checksum recorded, their rank's health summed up (``tally``), and how many of
    them hold NaN or Inf."""
    sums = row_sums(block)
    checksums.add_rows(start, block, sums)
    extremes = extremes_of(block)
    nonfinite = nonfinite_rows(block, extremes)
    if tally is not None:
        tally.add(block, sums, nonfinite, extremes=extremes)
    return nonfinite


def finish_tally(shard: ShardPlan, tally: RankTally | None) -> RankHealth | None:
    """The shard's health from its tally, its identical rows confirmed by reading them back."""
    if tally is None:
        return None
    return tally.health or tally.finish(rows_reader(shard.source), shard.dtype.name if shard.dtype else None,
                                        shard.model_dtypes)


def copy_embeddings_h5py(shard: ShardPlan, write: Callable[[np.ndarray, int], object], buffer: np.ndarray,
                         checksums: Checksums, tally: RankTally | None = None) -> int:
    """Copy one shard's embeddings through ``buffer`` (``chunk_size`` rows).

    ``write(rows, start)`` puts rows at output row ``start``. Returns the number
    of rows holding NaN or Inf.
    """
    nonfinite = 0
    with open_shard(shard.source) as handle:
        emb = embeddings_of(handle, shard.source)
        for chunk_start, chunk_end in _chunks(shard.num_sequences, buffer.shape[0]):
            rows = chunk_end - chunk_start
            try:
                if emb.dtype == buffer.dtype:
                    emb.read_direct(buffer, np.s_[chunk_start:chunk_end], np.s_[0:rows])
                else:  # float16 -> float32: numpy's cast is exact
                    buffer[:rows] = emb[chunk_start:chunk_end]
            except OSError as err:
                raise UnreadableShardError(
                    shard.origin, f"cannot read rows {chunk_start}-{chunk_end} ({first_line(err)})"
                ) from err
            nonfinite += scan_rows(buffer[:rows], shard.offset + chunk_start, checksums, tally)
            write(buffer[:rows], shard.offset + chunk_start)
    finish_tally(shard, tally)
    return nonfinite


def count_nonfinite_raw(shard: ShardPlan, chunk_size: int, checksums: Checksums,
                        stop: threading.Event | None = None, tally: RankTally | None = None) -> int:
    """Rows holding NaN or Inf in a raw-copied shard, read in windows of raw bytes (each
    window's checksum recorded too).

    Runs on a thread of its own beside the kernel's copy of the same bytes (see
    :func:`raw_copy_in_background`). One window of at most ``chunk_size`` rows (and
    about 4 MiB) is read at a time, into one reused buffer; ``stop`` ends it early.
    """
    assert shard.data_offset is not None
    dim = shard.embedding_dim
    row_bytes = dim * OUTPUT_DTYPE.itemsize
    window = np.empty((max(1, min(chunk_size, _WINDOW_BYTES // row_bytes)), dim), OUTPUT_DTYPE)
    nonfinite = 0
    with open(shard.source, "rb") as src:
        for chunk_start, chunk_end in _chunks(shard.num_sequences, window.shape[0]):
            if stop is not None and stop.is_set():
                break
            rows = window[: chunk_end - chunk_start]
            read_raw_rows(src.fileno(), shard, chunk_start, rows)
            nonfinite += scan_rows(rows, shard.offset + chunk_start, checksums, tally)
        else:  # (not stopped: summed up here, on the scan's thread, beside the copy of the next shard)
            finish_tally(shard, tally)
    return nonfinite


def read_raw_rows(fd: int, shard: ShardPlan, first: int, rows: np.ndarray) -> None:
    """Read a raw-copyable shard's rows from ``first`` on into ``rows`` (C-contiguous float32)
    from its open file ``fd``, as the bytes its contiguous dataset stores; one that ends
    early is truncated."""
    assert shard.data_offset is not None
    got = os.preadv(fd, [rows.data.cast("B")], shard.data_offset + first * shard.embedding_dim * OUTPUT_DTYPE.itemsize)
    if got < rows.nbytes:
        raise UnreadableShardError(shard.origin, "truncated: the embeddings end early")


def copy_ids(shard: ShardPlan, ids_out: IdSink, chunk_size: int) -> None:
    """Copy one shard's sequence IDs, as stored (UTF-8 bytes), into place."""
    start = shard.offset
    with open_shard(shard.source) as handle:
        for block in iter_id_blocks(handle, shard.source, chunk_size):
            ids_out[start : start + block.size] = block
            start += block.size


class RowWriter:
    """Writes rows into the output's contiguous embeddings, as raw bytes at their offset.

    ``written(start, stop)`` is told of each span of rows written.
    """

    def __init__(self, output: Path, data_offset: int, row_bytes: int, written: Callable[[int, int], object]):
        self.fd = os.open(output, os.O_WRONLY)
        self.data_offset, self.row_bytes, self.written = data_offset, row_bytes, written

    def __call__(self, block: np.ndarray, start: int) -> None:
        """Write ``block`` (C-contiguous float32 rows) at output row ``start``."""
        sysio.write_block(self.fd, block, self.data_offset + start * self.row_bytes)
        self.written(start, start + block.shape[0])

    def close(self) -> None:
        os.close(self.fd)


class BlockWriter(RowWriter):
    """A :class:`RowWriter` that writes on a second thread, one block at a time.

    The caller gathers the next block meanwhile (and must not refill a block until
    the next call to :meth:`write` has returned).
    """

    def __init__(self, output: Path, data_offset: int, row_bytes: int, written: Callable[[int, int], object]):
        super().__init__(output, data_offset, row_bytes, written)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="virnucpro-write")
        self.pending: Future[None] | None = None

    def write(self, block: np.ndarray, start: int) -> None:
        self.wait()
        self.pending = self.pool.submit(self, block, start)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the last write (unless failing already), then let go of the thread and file."""
        try:
            self.pool.shutdown(wait=True)
        finally:
            super().close()


def _copy_embeddings_raw(
    shard: ShardPlan,
    dst: int,
    dst_data_offset: int,
    chunk_size: int,
    on_written: Callable[[int, int], object],
    stop: threading.Event,
) -> None:
    """Copy one raw-copyable shard's embedding bytes into the output file ``dst``."""
    assert shard.data_offset is not None
    row_bytes = shard.embedding_dim * OUTPUT_DTYPE.itemsize
    with open(shard.source, "rb") as src_file:
        src = src_file.fileno()
        for chunk_start, chunk_end in _chunks(shard.num_sequences, chunk_size):
            if stop.is_set():
                return
            src_offset = shard.data_offset + chunk_start * row_bytes
            dst_offset = dst_data_offset + (shard.offset + chunk_start) * row_bytes
            remaining = (chunk_end - chunk_start) * row_bytes
            while remaining:
                copied = sysio.copy_bytes(src, dst, remaining, src_offset, dst_offset)
                if copied == 0:
                    raise UnreadableShardError(shard.origin, "truncated: the embeddings end early")
                src_offset, dst_offset, remaining = src_offset + copied, dst_offset + copied, remaining - copied
            on_written(shard.offset + chunk_start, shard.offset + chunk_end)


def _copy_all_raw(
    shards: Sequence[ShardPlan],
    output: Path,
    dst_data_offset: int,
    chunk_size: int,
    on_written: Callable[[int, int], object],
    stop: threading.Event,
) -> None:
    fd = os.open(output, os.O_WRONLY)
    try:
        for shard in shards:
            _copy_embeddings_raw(shard, fd, dst_data_offset, chunk_size, on_written, stop)
    finally:
        os.close(fd)


class RawCopy:
    """The raw copy running in the background (:func:`raw_copy_in_background`)."""

    def __init__(self, stop: threading.Event, scan: Future[dict[str, int]] | None) -> None:
        self._stop, self._scan = stop, scan

    def stop(self) -> None:
        """Throw the copy away: stop copying and scanning."""
        self._stop.set()

    def nonfinite(self) -> dict[str, int]:
        """Wait for the scan; the rows holding NaN or Inf, per shard path."""
        return {} if self._scan is None else self._scan.result()


def _scan_all_raw(shards: Sequence[ShardPlan], chunk_size: int, checksums: Checksums,
                  stop: threading.Event, tallies: Mapping[str, RankTally]) -> dict[str, int]:
    return {str(s.path): count_nonfinite_raw(s, chunk_size, checksums, stop, tallies.get(str(s.path)))
            for s in shards}


@contextmanager
def raw_copy_in_background(
    shards: Sequence[ShardPlan],
    output: Path,
    dst_data_offset: int | None,
    chunk_size: int,
    on_written: Callable[[int, int], object],
    checksums: Checksums,
    tallies: Mapping[str, RankTally] | None = None,
) -> Iterator[RawCopy]:
    """Copy raw-copyable shards on one thread, and scan them (NaN rows, checksums, each
    shard's health in ``tallies``, by path) on another, while the body runs.

    The scan reads the shards, not the output, so it can start at once: with the
    GIL let go in ``zlib``, numpy and ``preadv``, it overlaps the body's Python work
    (checking the IDs) and, in a durable merge, the wait for the disk. The body must
    not do HDF5 I/O on the output's ``embeddings`` (the bytes being written); IDs and
    the report are fine. A failure on any side stops all; the body may also throw
    the copy away with :meth:`RawCopy.stop`.
    """
    stop = threading.Event()
    if not shards:
        yield RawCopy(stop, None)
        return
    assert dst_data_offset is not None
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="virnucpro-copy") as pool:
        copy = pool.submit(_copy_all_raw, shards, output, dst_data_offset, chunk_size, on_written, stop)
        scan = pool.submit(_scan_all_raw, shards, chunk_size, checksums, stop, tallies or {})
        try:
            yield RawCopy(stop, scan)
        except BaseException:
            stop.set()
            raise
        if stop.is_set():  # the body threw the copy away: how it ended no longer matters
            copy.exception()
            scan.exception()
            return
        copy.result()
        scan.result()
