"""Synthetic multi-GPU runs, seeded and realistic, for the demo, notebooks and tests.

A run folder looks like what the upstream embedding pipeline leaves behind::

    sequences.fasta        the input sequences
    sequence_index.json    {"sequences": [{"sequence_id", "length", "file_path",
                            "byte_offset"}, ...]} in run order
    shard_<rank>.h5        one per worker; rank r embedded index positions
                           r, r + N, r + 2N, ... (stride distribution)

Chosen workers can fail the ways real ones do: a truncated file (died while
writing), no file at all (died before writing), an empty ``(0, 0)`` shard (returned
without embedding anything), a shard holding only the first part of its assignment
(died part-way, after a flush), or a batch written twice (a retried batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import IndexMismatchError
from .expected import iter_expected_ids, iter_index_records
from .ranks import INDEX_NAME, shard_path, stride_positions

__all__ = [
    "DemoRun",
    "make_demo_run",
    "StrideRun",
    "write_stride_run",
    "synthetic_embeddings",
    "write_shard",
    "write_checkpoint",
    "embed_fasta_like_run",
    "FASTA_NAME",
    "EXPECTED_NAME",
]

#: The FASTA file a demo run's index points into (in the run's folder).
FASTA_NAME = "sequences.fasta"
#: The expected-ID text file of a stride run (in the run's folder).
EXPECTED_NAME = "expected_ids.txt"
_BLOCK = 1024  # rows of synthetic embeddings drawn from one seeded generator
_FASTA_WIDTH = 60


def synthetic_embeddings(positions: Sequence[int] | np.ndarray, dim: int, seed: int) -> np.ndarray:
    """A stand-in for the model: a fixed float32 vector per index position.

    The same position always gets the same vector (for a given ``dim`` and
    ``seed``), so a re-run of a missing sequence reproduces its embedding.

    Examples
    --------
    >>> rows = synthetic_embeddings([0, 1, 2], dim=4, seed=0)
    >>> rows.shape, rows.dtype
    ((3, 4), dtype('float32'))
    >>> bool((synthetic_embeddings([2], dim=4, seed=0) == rows[2]).all())  # a row depends on its position only
    True
    """
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty((positions.size, dim), dtype=np.float32)
    blocks = positions // _BLOCK
    for block in np.unique(blocks):
        rows = np.flatnonzero(blocks == block)
        table = np.random.default_rng([seed, int(block)]).standard_normal((_BLOCK, dim), dtype=np.float32)
        out[rows] = table[positions[rows] % _BLOCK]
    return out


def write_shard(
    path: str | os.PathLike[str],
    sequence_ids: Sequence[str],
    embeddings: np.ndarray,
) -> Path:
    """Write a shard exactly as a worker does (``create_dataset(data=...)``).

    An empty ``sequence_ids`` writes the idle worker's ``(0, 0)`` embeddings.

    Examples
    --------
    >>> import h5py, numpy as np
    >>> shard = write_shard("shard_0.h5", ["seq1", "seq2"], np.ones((2, 4), np.float32))
    >>> with h5py.File(shard) as f:
    ...     f["embeddings"].shape, f["sequence_ids"].asstr()[:].tolist()
    ((2, 4), ['seq1', 'seq2'])
    """
    path = Path(path)
    if len(sequence_ids) == 0:
        embeddings = np.empty((0, 0), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=embeddings)
        f.create_dataset(
            "sequence_ids", data=np.array(list(sequence_ids), dtype=object), dtype=h5py.string_dtype()
        )
    return path


def write_checkpoint(path: str | os.PathLike[str], ids: Sequence[str], embeddings: np.ndarray,
                     metadata: Mapping[str, object] | None = None, *, done: bool = True) -> Path:
    """Write a checkpoint as the pipeline's workers do, without torch: the archive
    ``torch.save({...}, path, pickle_protocol=4)`` writes for numpy embeddings (members
    ``<stem>/data.pkl``, ``<stem>/byteorder``, ``<stem>/version``, ...), and, with
    ``done``, the ``.done`` marker beside it. Return the path.

    Examples
    --------
    >>> saved = write_checkpoint("batch_00000.pt", ["seq1"], np.zeros((1, 4), np.float32), {"batch_idx": 0})
    >>> sorted(p.name for p in saved.parent.glob("batch_00000*"))
    ['batch_00000.pt', 'batch_00000.pt.done']
    """
    import pickle
    import zipfile

    path = Path(path)
    payload = {"embeddings": np.ascontiguousarray(embeddings), "sequence_ids": list(ids),
               "metadata": dict(metadata or {})}
    stem = path.stem
    members = {"data.pkl": pickle.dumps(payload, protocol=4), ".format_version": b"1",
               ".storage_alignment": b"64", "byteorder": b"little", "version": b"3\n",
               ".data/serialization_id": str(abs(hash((stem, len(ids))))).zfill(40)[:40].encode()}
    temp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{stem}/{name}", data)
    os.replace(temp, path)
    if done:
        path.with_name(path.name + ".done").touch()
    return path


def embed_fasta_like_run(
    fasta_path: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    shard_path: str | os.PathLike[str],
    dim: int,
    seed: int,
) -> Path:
    """Simulate a re-run worker: embed a FASTA's sequences as the run would have.

    Each sequence gets :func:`synthetic_embeddings` of its position in the run's
    sequence index, so a re-run of missing sequences reproduces exactly the rows
    the failed workers should have written. Rows follow the FASTA's order; a FASTA
    without records gives an idle worker's empty shard.

    Parameters
    ----------
    fasta_path : path-like
        The sequences to embed (e.g. from :func:`~virnucpro_merge.write_missing_fasta`).
    index_path : path-like
        The run's sequence-index JSON, which gives each ID its position.
    shard_path : path-like
        The shard to write.
    dim, seed : int
        The run's embedding dimension and seed (``DemoRun.dim``, ``DemoRun.seed``).

    Returns
    -------
    Path
        ``shard_path``.

    Raises
    ------
    IndexMismatchError
        A sequence of the FASTA is not in the index.

    Examples
    --------
    >>> from virnucpro_merge import get_shard_info
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4)
    >>> shard = embed_fasta_like_run(run.fasta, run.index, "all.h5", dim=4, seed=0)
    >>> get_shard_info(shard)["num_sequences"]
    12
    """
    ids = list(iter_expected_ids(fasta_path))
    wanted = set(ids)
    positions = {
        r["sequence_id"]: i for i, r in enumerate(iter_index_records(index_path)) if r["sequence_id"] in wanted
    }
    unknown = [seq_id for seq_id in ids if seq_id not in positions]
    if unknown:
        msg = f"{index_path}: {len(unknown)} sequences of {fasta_path} are not in it: {unknown[:10]}"
        raise IndexMismatchError(msg)
    rows = [positions[seq_id] for seq_id in ids]
    return write_shard(shard_path, ids, synthetic_embeddings(rows, dim, seed))


@dataclass(frozen=True)
class DemoRun:
    """A synthetic run folder and what went wrong in it."""

    directory: Path
    fasta: Path
    index: Path
    shard_files: list[Path]
    sequence_ids: list[str]
    world_size: int
    dim: int
    seed: int
    truncated: tuple[int, ...] = ()
    absent: tuple[int, ...] = ()
    empty: tuple[int, ...] = ()
    short: Mapping[int, float] = field(default_factory=dict)
    duplicated: tuple[int, ...] = ()

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        """Workers whose shard a merge cannot read (truncated or absent)."""
        return tuple(sorted(self.truncated + self.absent))


def _write_fasta(path: Path, ids: list[str], rng: np.random.Generator, lengths: np.ndarray) -> list[int]:
    """Write random DNA records; return each record's byte offset."""
    offsets = []
    position = 0
    with open(path, "wb") as fh:
        for seq_id, length in zip(ids, lengths, strict=True):
            bases = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, int(length))].tobytes()
            lines = [bases[i : i + _FASTA_WIDTH] for i in range(0, len(bases), _FASTA_WIDTH)]
            record = b">" + seq_id.encode() + b"\n" + b"\n".join(lines) + b"\n"
            offsets.append(position)
            fh.write(record)
            position += len(record)
    return offsets


def make_demo_run(
    directory: str | os.PathLike[str],
    n_sequences: int = 2000,
    world_size: int = 8,
    dim: int = 64,
    seed: int = 0,
    *,
    truncated: Sequence[int] = (3,),
    absent: Sequence[int] = (5,),
    empty: Sequence[int] = (7,),
    short: Mapping[int, float] | None = None,
    duplicated: Sequence[int] = (),
    batch_size: int = 32,
) -> DemoRun:
    """Write a seeded synthetic run with chosen worker failures.

    Parameters
    ----------
    directory : path-like
        Folder to write into (created if needed; existing run files are replaced).
    n_sequences, world_size, dim, seed : int
        Size of the run, number of workers, embedding dimension, random seed.
    truncated : sequence of int
        Ranks that died while writing: their file is cut to half its size.
    absent : sequence of int
        Ranks that died before writing: no file.
    empty : sequence of int
        Ranks that wrote a valid but empty ``(0, 0)`` shard.
    short : mapping of int to float, optional
        Rank -> fraction of its assignment it wrote before dying (default
        ``{6: 0.6}``; pass ``{}`` for none).
    duplicated : sequence of int
        Ranks that wrote their first batch twice (a duplicate-ID error).
    batch_size : int
        Rows in the batch that ``duplicated`` ranks repeat.

    Returns
    -------
    DemoRun
        Paths of the run's files (``shard_files`` lists every rank, absent
        ones included) and its sequence IDs in index order.

    Examples
    --------
    >>> run = make_demo_run("run", n_sequences=40, world_size=4, truncated=(1,), absent=(3,), empty=())
    >>> [p.name for p in run.shard_files], run.index.name
    (['shard_0.h5', 'shard_1.h5', 'shard_2.h5', 'shard_3.h5'], 'sequence_index.json')
    >>> len(run.sequence_ids), run.shard_files[3].exists()
    (40, False)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    short = {6: 0.6} if short is None else dict(short)
    rng = np.random.default_rng(seed)

    ids = [f"seq{i:06d}" for i in range(n_sequences)]
    lengths = rng.integers(150, 600, n_sequences)
    fasta = directory / FASTA_NAME
    offsets = _write_fasta(fasta, ids, rng, lengths)
    index = directory / INDEX_NAME
    records = [
        {"sequence_id": i, "length": int(n), "file_path": FASTA_NAME, "byte_offset": o}
        for i, n, o in zip(ids, lengths, offsets, strict=True)
    ]
    index.write_text(json.dumps({"sequences": records}, indent=1) + "\n")

    shard_files = []
    for rank in range(world_size):
        path = shard_path(directory, rank)
        shard_files.append(path)
        path.unlink(missing_ok=True)
        if rank in absent:
            continue
        positions = stride_positions(n_sequences, world_size, rank)
        if rank in empty:
            positions = positions[:0]
        if rank in short:
            positions = positions[: int(len(positions) * short[rank])]
        if rank in duplicated:
            positions = np.concatenate([positions, positions[:batch_size]])
        write_shard(path, [ids[p] for p in positions], synthetic_embeddings(positions, dim, seed))
        if rank in truncated:
            os.truncate(path, path.stat().st_size // 2)

    return DemoRun(
        directory=directory,
        fasta=fasta,
        index=index,
        shard_files=shard_files,
        sequence_ids=ids,
        world_size=world_size,
        dim=dim,
        seed=seed,
        truncated=tuple(truncated),
        absent=tuple(absent),
        empty=tuple(empty),
        short=short,
        duplicated=tuple(duplicated),
    )


@dataclass(frozen=True)
class StrideRun:
    """A large, clean synthetic run (see :func:`write_stride_run`)."""

    directory: Path
    shard_files: list[Path]
    expected_file: Path
    n_sequences: int  # expected IDs (index positions)
    world_size: int
    dim: int
    num_missing: int  # expected IDs left out of the shards
    num_extra: int  # IDs in the shards that are not expected

    @property
    def embedding_bytes(self) -> int:
        """Bytes of float32 embeddings in the shards."""
        return (self.n_sequences - self.num_missing + self.num_extra) * self.dim * 4


def write_stride_run(
    directory: str | os.PathLike[str],
    n_sequences: int,
    world_size: int,
    *,
    dim: int = 64,
    seed: int = 0,
    id_format: str = "seq{:09d}",
    missing_fraction: float = 0.0,
    extra_fraction: float = 0.0,
    zeros: bool = False,
    index: bool = False,
    block: int = 8192,
) -> StrideRun:
    """Write a run of any size block by block, in bounded memory (for benchmarks).

    Worker ``r`` holds the index positions ``r, r + N, ...`` (stride distribution),
    its embeddings contiguous float32 (random per rank, or ``zeros``), its IDs
    ``id_format.format(position)``. A random ``missing_fraction`` of the positions
    is left out of the shards, and ``extra_fraction * n_sequences`` IDs past the
    index are added, spread over the ranks. The expected IDs (every position) go to
    ``EXPECTED_NAME``, one a line, in index order; with ``index``, also to the
    pipeline's ``sequence_index.json`` (records without a FASTA file behind them).

    Examples
    --------
    >>> run = write_stride_run("big", n_sequences=1000, world_size=64, dim=8, missing_fraction=0.01)
    >>> len(run.shard_files), run.expected_file.name, run.num_missing
    (64, 'expected_ids.txt', 10)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dropped = np.zeros(n_sequences, dtype=bool)
    dropped[rng.choice(n_sequences, round(n_sequences * missing_fraction), replace=False)] = True
    num_extra = round(n_sequences * extra_fraction)
    shard_files = []
    for rank in range(world_size):
        positions = stride_positions(n_sequences, world_size, rank)
        extra = n_sequences + np.arange(rank, num_extra, world_size)
        positions = np.concatenate([positions[~dropped[positions]], extra])
        path = shard_path(directory, rank)
        ranked = np.random.default_rng([seed, rank])
        with h5py.File(path, "w") as f:
            emb = f.create_dataset("embeddings", shape=(positions.size, dim if positions.size else 0), dtype="float32")
            for start in range(0, positions.size, block):
                rows = min(block, positions.size - start)
                emb[start : start + rows] = 0 if zeros else ranked.standard_normal((rows, dim), dtype=np.float32)
            ids = np.array([id_format.format(p) for p in positions.tolist()], dtype=object)
            f.create_dataset("sequence_ids", data=ids, dtype=h5py.string_dtype())
        shard_files.append(path)
    expected_file = directory / EXPECTED_NAME
    with open(expected_file, "w", encoding="utf-8") as fh:
        for start in range(0, n_sequences, 2**16):
            fh.write("".join(id_format.format(p) + "\n" for p in range(start, min(start + 2**16, n_sequences))))
    if index:
        with open(directory / INDEX_NAME, "w", encoding="utf-8") as fh:
            fh.write('{"sequences": [\n')
            for start in range(0, n_sequences, 2**16):
                stop = min(start + 2**16, n_sequences)
                fh.write(",\n".join(json.dumps({"sequence_id": id_format.format(p), "length": 300,
                                                "file_path": FASTA_NAME, "byte_offset": 400 * p}, indent=1)
                                     for p in range(start, stop)))
                fh.write(",\n" if stop < n_sequences else "\n")
            fh.write("]}\n")
    return StrideRun(directory, shard_files, expected_file, n_sequences, world_size, dim,
                     int(dropped.sum()), num_extra)
