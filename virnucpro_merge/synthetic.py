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

import datetime as _dt
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
    "make_unhealthy_run",
    "StrideRun",
    "write_stride_run",
    "synthetic_embeddings",
    "write_shard",
    "write_checkpoint",
    "write_pipeline_files",
    "embed_fasta_like_run",
    "FASTA_NAME",
    "EXPECTED_NAME",
    "LiveRun",
    "make_live_run",
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
    #: the checkpoints folder, or None for a run written without checkpoints
    checkpoints: Path | None = None
    preempted: tuple[int, ...] = ()
    resumed: tuple[int, ...] = ()

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
    checkpoint_every: int | None = None,
    preempted: Sequence[int] = (),
    resumed: Sequence[int] = (),
    stragglers: Sequence[int] = (),
    model_dtypes: Mapping[int, str] | None = None,
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
    checkpoint_every : int, optional
        Write the rest of a run folder as the pipeline leaves it
        (``checkpoints/shard_<rank>/batch_NNNNN.pt`` of this many sequences each,
        ``checkpoints/manifest.json``, ``logs/worker_<rank>.log``): see
        :func:`write_pipeline_files`. None (the default): shards and index only.
    preempted : sequence of int
        Ranks stopped by SIGTERM part-way (with ``checkpoint_every``): no shard, an
        ``emergency_sigterm`` checkpoint last.
    resumed : sequence of int
        Ranks that died part-way, were resumed from their checkpoints and finished (with
        ``checkpoint_every``): their checkpoints repeat earlier ones, and their shard's IDs
        are in another order than its rows, as the pipeline writes them after a resume.
    stragglers : sequence of int
        Ranks whose checkpoints come three times slower (with ``checkpoint_every``).
    model_dtypes : mapping of int to str, optional
        Rank -> the model dtype its checkpoints' metadata name (with ``checkpoint_every``;
        ``"torch.float16"`` for the ranks not in it).

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
        if rank in absent or rank in preempted:
            continue
        positions = stride_positions(n_sequences, world_size, rank)
        if rank in empty:
            positions = positions[:0]
        if rank in short:
            positions = positions[: int(len(positions) * short[rank])]
        if rank in duplicated:
            positions = np.concatenate([positions, positions[:batch_size]])
        labels = [ids[p] for p in positions]
        if rank in resumed and checkpoint_every:
            labels = _resumed_labels(labels, _died_after(len(positions), checkpoint_every), seed + rank)
        write_shard(path, labels, synthetic_embeddings(positions, dim, seed))
        if rank in truncated:
            os.truncate(path, path.stat().st_size // 2)
    checkpoints = None
    if checkpoint_every:
        checkpoints = write_pipeline_files(directory, ids, world_size, dim, seed, checkpoint_every=checkpoint_every,
                                           died=(*absent, *truncated), preempted=preempted, resumed=resumed,
                                           stragglers=stragglers, model_dtypes=model_dtypes)

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
        checkpoints=checkpoints,
        preempted=tuple(preempted),
        resumed=tuple(resumed),
    )


def make_unhealthy_run(
    directory: str | os.PathLike[str],
    n_sequences: int = 2000,
    world_size: int = 8,
    dim: int = 64,
    seed: int = 0,
    *,
    scaled: Sequence[int] = (2,),
    saturated: Sequence[int] = (4,),
    identical: Sequence[int] = (5,),
    zero: Sequence[int] = (6,),
    rows: int = 16,
) -> DemoRun:
    """A complete run whose GPUs did not all compute the same way: every ID right, some rows wrong.

    - ``scaled`` ranks wrote vectors a thirtieth of the others' size (another model or scale);
    - ``saturated`` ranks ran in float16 and overflowed: their shards hold float16, and
      ``rows`` of their rows hold values clipped at +-65,504;
    - ``identical`` ranks wrote one vector for ``rows`` sequences in a row (a packing bug);
    - ``zero`` ranks wrote ``rows`` all-zero rows (a batch that never ran).

    The other ranks are :func:`make_demo_run`'s healthy shards.

    Examples
    --------
    >>> run = make_unhealthy_run("sick", n_sequences=400, world_size=8, dim=8)
    >>> import h5py
    >>> with h5py.File(run.shard_files[4]) as f:
    ...     f["embeddings"].dtype.name, float(abs(f["embeddings"][:]).max())
    ('float16', 65504.0)
    """
    run = make_demo_run(directory, n_sequences, world_size, dim, seed, truncated=(), absent=(), empty=(), short={})
    for rank, path in enumerate(run.shard_files):
        if rank not in (*scaled, *saturated, *identical, *zero):
            continue
        positions = stride_positions(n_sequences, world_size, rank)
        emb = synthetic_embeddings(positions, dim, seed)
        some = slice(0, min(rows, len(positions)))
        if rank in scaled:
            emb = emb / 30
        if rank in identical:
            emb[some] = emb[0]
        if rank in zero:
            emb[some] = 0
        if rank in saturated:
            emb[some] = np.clip(emb[some] * 1e5, -65504, 65504)
            emb = emb.astype(np.float16)
        write_shard(path, [run.sequence_ids[p] for p in positions], emb)
    return run


#: When the synthetic runs start, and how long a rank takes for a checkpoint's worth (s).
_START = _dt.datetime(2026, 1, 5, 10, 0, 0, tzinfo=_dt.UTC)
_CHECKPOINT_SECONDS = 300


def _died_after(assigned: int, every: int) -> int:
    """How many of its sequences a rank that dies part-way checkpoints: three fifths, in whole
    checkpoints (at least one where it has two)."""
    return max(min(1, assigned // every - 1), int(assigned * 0.6) // every) * every


def _resumed_labels(labels: list[str], resumed: int, seed: int) -> list[str]:
    """The IDs a resumed worker writes beside its rows: those of the rows taken from its
    checkpoints in another order (the pipeline writes a set's order there), the others in
    place."""
    shuffled = labels[:resumed]
    np.random.default_rng(seed).shuffle(shuffled)
    return shuffled + labels[resumed:]


def _iso(seconds: float) -> str:
    return (_START + _dt.timedelta(seconds=seconds)).isoformat()


def write_pipeline_files(
    directory: str | os.PathLike[str],
    ids: Sequence[str],
    world_size: int,
    dim: int,
    seed: int,
    *,
    checkpoint_every: int,
    died: Sequence[int] = (),
    preempted: Sequence[int] = (),
    resumed: Sequence[int] = (),
    stragglers: Sequence[int] = (),
    model_dtypes: Mapping[int, str] | None = None,
) -> Path:
    """Write what the pipeline leaves in a run folder besides its shards, as it does: each
    rank's checkpoints, the manifest and the workers' logs. Return the checkpoints folder.

    Rank ``r`` embeds its stride assignment in order and saves a checkpoint of
    ``checkpoint_every`` sequences at a time, except its last sequences (the final flush,
    never checkpointed). A rank in ``died`` stops after three fifths (its last checkpoint
    renamed but never marked ``.done``, a save in progress left as ``.tmp``), its log ending
    in a CUDA error; one in ``preempted`` likewise, after an ``emergency_sigterm`` checkpoint
    (the manifest still says ``in_progress``); one in ``resumed`` dies so too, is resumed,
    repeats its checkpoints and finishes. Rank ``r`` takes ``300 * (1 + r / N)`` seconds a
    checkpoint (the higher ranks are the slower), and a rank in ``stragglers`` three times
    that (a slow GPU). The rows are those of the shards
    (:func:`synthetic_embeddings`). Each checkpoint's metadata names the model dtype
    ``model_dtypes`` gives its rank, else ``"torch.float16"``.

    Examples
    --------
    >>> ids = [f"seq{i}" for i in range(40)]
    >>> folder = write_pipeline_files("run", ids, 2, 4, 0, checkpoint_every=5, died=(1,))
    >>> sorted(p.name for p in (folder / "shard_1").iterdir())[-3:]
    ['batch_00000.pt.done', 'batch_00001.pt', 'batch_00002.tmp']
    >>> sorted(p.name for p in Path("run", "logs").iterdir())
    ['worker_0.log', 'worker_1.log']
    """
    directory = Path(directory)
    checkpoints = directory / "checkpoints"
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shards: dict[str, dict[str, object]] = {}
    for rank in range(world_size):
        positions = stride_positions(len(ids), world_size, rank)
        folder = checkpoints / f"shard_{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        batches = _rank_batches(positions, checkpoint_every, stops=rank in died or rank in preempted or rank in resumed,
                                resumed=rank in resumed)
        pace = _CHECKPOINT_SECONDS * (1 + rank / world_size) * (3 if rank in stragglers else 1)
        records = _write_checkpoints(folder, ids, batches, dim, seed, pace, died=rank in died,
                                     preempted=rank in preempted,
                                     model_dtype=(model_dtypes or {}).get(rank, "torch.float16"))
        if rank in died:
            (folder / f"batch_{len(batches):05d}.tmp").write_bytes(b"PK\x03\x04")  # (a save in progress)
        shards[str(rank)] = _manifest_entry(rank, records, died=rank in died, preempted=rank in preempted,
                                            resumed=rank in resumed, finished_at=_iso(pace * (len(batches) + 1)))
        _write_log(logs / f"worker_{rank}.log", rank, records, died=rank in died, preempted=rank in preempted)
    manifest = {"version": "2.0", "world_size": world_size, "created_at": _iso(0), "input_fingerprint": "",
                "model_config_hash": "", "global_checkpoints": [], "shards": shards}
    (checkpoints / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return checkpoints


def _rank_batches(positions: np.ndarray, every: int, *, stops: bool, resumed: bool) -> list[np.ndarray]:
    """The index positions of each checkpoint a rank saves (``every`` at a time), in order: all
    but its final flush, or, where it ``stops``, those before it died; a ``resumed`` one then
    saves its last again and goes on to its final flush."""
    flush = (-(-positions.size // every) - 1) * every  # (where its final flush starts)
    upto = _died_after(positions.size, every) if stops else max(0, flush)
    batches = [positions[i : i + every] for i in range(0, upto, every)]
    if resumed:
        batches += batches[-1:]  # (resumed: its checkpoints repeat earlier ones)
        batches += [positions[i : i + every] for i in range(upto, max(upto, flush), every)]
    return batches


def _write_checkpoints(folder: Path, ids: Sequence[str], batches: list[np.ndarray], dim: int, seed: int,
                       pace: float, *, died: bool, preempted: bool, model_dtype: str) -> list[dict[str, object]]:
    """Write a rank's checkpoints of ``batches`` into ``folder``, one each ``pace`` seconds (the last
    of a rank that ``died`` never marked done, that of a ``preempted`` one an emergency); return
    the manifest's record of each."""
    records = []
    for number, batch in enumerate(batches):
        last = number == len(batches) - 1
        trigger = "emergency_sigterm" if preempted and last else "sequence_threshold"
        metadata = {"batch_idx": number, "num_sequences": int(batch.size),
                    "timestamp": _iso(pace * (number + 1))[:-6],  # (UTC, without its zone, as the pipeline)
                    "trigger_reason": trigger, "model_dtype": model_dtype, "packing_enabled": True}
        write_checkpoint(folder / f"batch_{number:05d}.pt", [ids[p] for p in batch],
                         synthetic_embeddings(batch, dim, seed), metadata, done=not (died and last))
        records.append({"batch_idx": number, "num_sequences": int(batch.size), "file": f"batch_{number:05d}.pt",
                        "timestamp": _iso(pace * (number + 1)), "sequence_range": ""})
    return records


def _manifest_entry(rank: int, records: list[dict[str, object]], *, died: bool, preempted: bool, resumed: bool,
                    finished_at: str) -> dict[str, object]:
    """What the pipeline's manifest says of one rank (its updates all kept)."""
    entry: dict[str, object] = {
        "status": "failed" if died else "in_progress" if preempted else "complete", "original_rank": rank,
        "assigned_rank": rank, "last_checkpoint_batch": len(records) - 1,
        "total_sequences": sum(int(r["num_sequences"]) for r in records),  # type: ignore[call-overload]
        "last_checkpoint_time": records[-1]["timestamp"] if records else None,
        "retry_count": 1 if died or resumed else 0, "error": None, "checkpoints": records}
    if died or resumed:  # (error and failed_at stay after a later success)
        entry.update(error="CUDA error: an illegal memory access was encountered", failed_at=finished_at)
    if not died and not preempted:
        entry["completed_at"] = finished_at
    return entry


def _log_line(rank: int, at: str, level: str, message: str) -> str:
    """One line of a worker's log, in the pipeline's format."""
    when = at.replace("T", " ")[:19] + ",000"
    return f"{when} - Worker {rank} - virnucpro.pipeline - {level} - {message}"


#: How a worker's log ends when it died (after its ERROR line).
_DEATH = ['Traceback (most recent call last):', '  File "virnucpro/pipeline/gpu_worker.py", line 212, in run_worker',
          "RuntimeError: CUDA error: an illegal memory access was encountered"]


def _write_log(path: Path, rank: int, records: list[dict[str, object]], *, died: bool, preempted: bool) -> None:
    """A worker's log, in the pipeline's format, ending as the worker did."""
    def line(at: str, level: str, message: str) -> str:
        return _log_line(rank, at, level, message)

    lines = [line(_iso(0), "INFO", f"Worker {rank} logging initialized: {path}")]
    lines += [line(str(r["timestamp"]), "INFO", f"Checkpoint {r['batch_idx']}: {r['num_sequences']} sequences")
              for r in records]
    end = str(records[-1]["timestamp"]) if records else _iso(1)
    if died:
        lines += [line(end, "ERROR", "Worker failed during inference"), *_DEATH]
    elif preempted:
        lines.append(line(end, "WARNING", "Received SIGTERM: emergency checkpoint written, exiting"))
    else:
        lines.append(line(end, "INFO", "Shard written"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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


# --------------------------------------------------------------------------- a run being written

#: What becomes of a rank of a live run: it finishes, or it stops part-way one of three ways.
_FINISHES, _STALLS, _DIES, _PREEMPTED = "finishes", "stalls", "dies", "preempted"
#: The share of its checkpoints a rank that stops writes first (each way at another moment).
_STOP_SHARE = {_STALLS: 0.4, _DIES: 0.5, _PREEMPTED: 0.6}


@dataclass(frozen=True)
class _Event:
    """One thing a worker of a live run does at a moment (seconds from the start)."""

    time: float
    rank: int
    kind: str  # "checkpoint", "shard", "dies" or "preempted"
    number: int = 0  # the checkpoint's batch number
    first: int = 0  # its sequences: the rank's positions[first:last]
    last: int = 0


@dataclass
class LiveRun:
    """A synthetic run that is being written, driven by a seeded clock (:func:`make_live_run`).

    :meth:`advance_to` writes every file the run holds at that moment (seconds since its
    start, ``START``), with the checkpoints' timestamps and the files' modification times
    taken from the clock, never from the machine's: a test watches a run of hours in
    milliseconds, without sleeping.
    """

    directory: Path
    world_size: int
    sequence_ids: list[str]
    dim: int
    seed: int
    checkpoint_every: int
    #: what becomes of each rank (``finishes``, ``stalls``, ``dies``, ``preempted``)
    fates: dict[int, str]
    #: when each rank that finishes writes its shard (seconds from the start)
    finish_times: dict[int, float]
    #: when each rank that stops does (its last checkpoint, its death, its SIGTERM)
    stop_times: dict[int, float]
    events: list[_Event] = field(repr=False, default_factory=list)
    clock: float = 0.0
    _applied: int = field(default=0, repr=False)
    _records: dict[int, list[dict[str, object]]] = field(default_factory=dict, repr=False)

    #: The moment the run starts (UTC).
    START = _START

    def moment(self, seconds: float | None = None) -> _dt.datetime:
        """The moment (UTC) ``seconds`` after the start (default: the clock's)."""
        return self.START + _dt.timedelta(seconds=self.clock if seconds is None else seconds)

    @property
    def end(self) -> float:
        """When the last rank that finishes writes its shard (seconds from the start)."""
        return max(self.finish_times.values(), default=0.0)

    def assigned(self, rank: int) -> int:
        """How many sequences rank ``rank`` was given."""
        return len(range(rank, len(self.sequence_ids), self.world_size))

    def done_at(self, rank: int, seconds: float) -> int:
        """The sequences rank ``rank`` has checkpointed (or, once finished, written) by then: the truth
        (a dead rank's last checkpoint, renamed into place but never marked, counted: it is whole)."""
        if self.finish_times.get(rank, float("inf")) <= seconds:
            return self.assigned(rank)
        return max((e.last for e in self.events if e.rank == rank and e.time <= seconds and e.kind != "shard"),
                   default=0)

    def advance_to(self, seconds: float) -> list[Path]:
        """Write what the run's workers write up to ``seconds`` after the start; return those files.

        Examples
        --------
        >>> live = make_live_run("live", n_sequences=400, world_size=4, checkpoint_every=20)
        >>> written = live.advance_to(700)
        >>> sorted(p.name for p in (live.directory / "checkpoints" / "shard_0").iterdir())
        ['batch_00000.pt', 'batch_00000.pt.done', 'batch_00001.pt', 'batch_00001.pt.done']
        """
        if seconds < self.clock:
            msg = f"a live run goes forward only: it is at {self.clock:g} s, not {seconds:g} s"
            raise ValueError(msg)
        written: list[Path] = []
        while self._applied < len(self.events) and self.events[self._applied].time <= seconds:
            written += self._apply(self.events[self._applied])
            self._applied += 1
        if written:
            written.append(self._write_manifest(seconds))
        self.clock = seconds
        return written

    def _positions(self, rank: int) -> np.ndarray:
        return stride_positions(len(self.sequence_ids), self.world_size, rank)

    def _apply(self, event: _Event) -> list[Path]:
        folder = self.directory / "checkpoints" / f"shard_{event.rank}"
        log = self.directory / "logs" / f"worker_{event.rank}.log"
        at = _iso(event.time)
        if event.kind == "shard":
            positions = self._positions(event.rank)
            shard = write_shard(shard_path(self.directory, event.rank), [self.sequence_ids[p] for p in positions],
                                synthetic_embeddings(positions, self.dim, self.seed))
            return [shard, self._log(log, event, at, "INFO", "Shard written")]
        positions = self._positions(event.rank)[event.first : event.last]
        trigger = "emergency_sigterm" if event.kind == "preempted" else "sequence_threshold"
        metadata = {"batch_idx": event.number, "num_sequences": int(positions.size), "timestamp": at[:-6],
                    "trigger_reason": trigger, "model_dtype": "torch.float16", "packing_enabled": True}
        name = f"batch_{event.number:05d}"
        saved = write_checkpoint(folder / f"{name}.pt", [self.sequence_ids[p] for p in positions],
                                 synthetic_embeddings(positions, self.dim, self.seed), metadata,
                                 done=event.kind != "dies")
        written = [saved, saved.with_name(saved.name + ".done")] if event.kind != "dies" else [saved]
        if event.kind == "dies":  # killed between the rename and the marker, with a save begun
            temp = folder / f"batch_{event.number + 1:05d}.tmp"
            temp.write_bytes(b"PK\x03\x04")
            written += [temp, self._log(log, event, at, "ERROR", "Worker failed during inference", *_DEATH)]
        elif event.kind == "preempted":
            written.append(self._log(log, event, at, "WARNING", "Received SIGTERM: emergency checkpoint written, "
                                                                 "exiting"))
        else:
            written.append(self._log(log, event, at, "INFO", f"Checkpoint {event.number}: {positions.size} sequences"))
        self._records.setdefault(event.rank, []).append(
            {"batch_idx": event.number, "num_sequences": int(positions.size), "file": f"{name}.pt", "timestamp": at,
             "sequence_range": ""})
        for path in written:
            _set_mtime(path, event.time)
        return written

    def _log(self, path: Path, event: _Event, at: str, level: str, message: str, *more: str) -> Path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n".join([_log_line(event.rank, at, level, message), *more]) + "\n")
        _set_mtime(path, event.time)
        return path

    def _write_manifest(self, seconds: float) -> Path:
        shards = {}
        for rank in range(self.world_size):
            records = self._records.get(rank, [])
            fate = self.fates[rank]
            died = fate == _DIES and self.stop_times[rank] <= seconds
            finished = self.finish_times.get(rank, float("inf")) <= seconds
            entry = _manifest_entry(rank, records, died=died, preempted=not finished, resumed=False,
                                    finished_at=_iso(self.stop_times.get(rank, self.finish_times.get(rank, 0.0))))
            shards[str(rank)] = entry
        manifest = {"version": "2.0", "world_size": self.world_size, "created_at": _iso(0), "input_fingerprint": "",
                    "model_config_hash": "", "global_checkpoints": [], "shards": shards}
        path = self.directory / "checkpoints" / "manifest.json"
        temp = path.with_suffix(".json.tmp")
        temp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(temp, path)
        _set_mtime(path, seconds)
        return path


def _set_mtime(path: Path, seconds: float) -> None:
    """Give a file of a live run the clock's time as its modification time."""
    moment = int((_START + _dt.timedelta(seconds=seconds)).timestamp() * 1e9)
    os.utime(path, ns=(moment, moment))


def _rank_events(rank: int, assigned: int, every: int, pace: float, fate: str, rng: np.random.Generator
                 ) -> tuple[list[_Event], float]:
    """What rank ``rank`` does, and when it finishes or stops (seconds from the start)."""
    full = max(0, -(-assigned // every) - 1)  # (its last sequences are never checkpointed: the final flush)
    times = np.cumsum(pace * rng.uniform(0.95, 1.05, full + 1))
    if fate == _FINISHES:
        events = [_Event(float(times[k]), rank, "checkpoint", k, k * every, (k + 1) * every) for k in range(full)]
        last = float(times[full - 1]) if full else 0.0
        finish = last + pace * (assigned - full * every) / every
        return [*events, _Event(finish, rank, "shard")], finish
    kept = max(1, int(full * _STOP_SHARE[fate])) if full else 0
    events = [_Event(float(times[k]), rank, "checkpoint", k, k * every, (k + 1) * every) for k in range(kept)]
    stop = float(times[kept - 1]) if kept else 0.0
    if fate == _DIES:
        stop = float(times[kept])
        events.append(_Event(stop, rank, "dies", kept, kept * every, min(assigned, (kept + 1) * every)))
    elif fate == _PREEMPTED:
        stop = float(times[kept - 1]) + pace / 2  # (an emergency checkpoint of the half batch done)
        events.append(_Event(stop, rank, "preempted", kept, kept * every, min(assigned, kept * every + every // 2)))
    return events, stop


def make_live_run(
    directory: str | os.PathLike[str],
    n_sequences: int = 4000,
    world_size: int = 8,
    *,
    checkpoint_every: int = 50,
    dim: int = 4,
    seed: int = 0,
    seconds_per_checkpoint: float = 300.0,
    stragglers: Sequence[int] = (2,),
    stalls: Sequence[int] = (5,),
    dies: Sequence[int] = (6,),
    preempted: Sequence[int] = (7,),
) -> LiveRun:
    """A seeded synthetic run to watch while it is written (:class:`LiveRun`, at its start).

    Every rank embeds its stride assignment and checkpoints ``checkpoint_every`` sequences at
    a time, as the pipeline does (its last ones never: the final flush), then writes its
    shard. Rank ``r`` takes ``seconds_per_checkpoint * (1 + r / N)`` seconds a checkpoint
    (each within 5 % of it, seeded), three times that in ``stragglers``. A rank in ``stalls``
    hangs after two fifths of its checkpoints (nothing more is written, nothing says why);
    one in ``dies`` dies at half way (a checkpoint renamed but never marked, a save left as
    ``.tmp``, a CUDA error in its log, ``failed`` in the manifest); one in ``preempted`` is
    stopped by SIGTERM at three fifths (an ``emergency_sigterm`` checkpoint). Nothing is
    written until :meth:`LiveRun.advance_to` but the sequence index, the empty checkpoint
    folders, the logs' first lines and the manifest.

    Examples
    --------
    >>> live = make_live_run("live", n_sequences=400, world_size=4, checkpoint_every=20, stalls=(1,), dies=(),
    ...                      preempted=(), stragglers=())
    >>> live.fates[1], round(live.stop_times[1]), round(live.end)
    ('stalls', 390, 2646)
    >>> _ = live.advance_to(live.end)
    >>> sorted(p.name for p in live.directory.glob("shard_*.h5"))
    ['shard_0.h5', 'shard_2.h5', 'shard_3.h5']
    """
    directory = Path(directory)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    ids = [f"seq{i:06d}" for i in range(n_sequences)]
    records = [{"sequence_id": i, "length": 300, "file_path": FASTA_NAME, "byte_offset": 400 * n}
               for n, i in enumerate(ids)]
    (directory / INDEX_NAME).write_text(json.dumps({"version": "1.0", "created": _iso(0)[:-6], "fasta_mtimes": {},
                                                    "total_sequences": n_sequences, "total_tokens": 300 * n_sequences,
                                                    "sequences": records}) + "\n")
    fates = {r: _STALLS if r in stalls else _DIES if r in dies else _PREEMPTED if r in preempted else _FINISHES
             for r in range(world_size)}
    events: list[_Event] = []
    finish_times: dict[int, float] = {}
    stop_times: dict[int, float] = {}
    for rank in range(world_size):
        pace = seconds_per_checkpoint * (1 + rank / world_size) * (3 if rank in stragglers else 1)
        assigned = len(range(rank, n_sequences, world_size))
        found, when = _rank_events(rank, assigned, checkpoint_every, pace, fates[rank],
                                   np.random.default_rng([seed, rank]))
        events += found
        (finish_times if fates[rank] == _FINISHES else stop_times)[rank] = when
        (directory / "checkpoints" / f"shard_{rank}").mkdir(parents=True, exist_ok=True)
        log = directory / "logs" / f"worker_{rank}.log"
        log.write_text(_log_line(rank, _iso(0), "INFO", f"Worker {rank} logging initialized: {log.name}") + "\n")
        _set_mtime(log, 0)
    events.sort(key=lambda e: (e.time, e.rank))
    live = LiveRun(directory, world_size, ids, dim, seed, checkpoint_every, fates, finish_times, stop_times, events)
    live._write_manifest(0)
    return live
