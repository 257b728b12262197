"""Inspect a run's shards as plain data: what each worker wrote, and where the holes are.

A run of ``N`` workers gives worker ``r`` the sequence-index positions
``r, r + N, r + 2N, ...`` (the stride distribution). Knowing the index (the run's
sequence IDs in order) and the shard files, :func:`inspect_run` works out, reading
sequence IDs only and never embeddings:

- a :class:`ShardSummary` per rank: rows expected from the stride assignment, rows
  present in the file, and a status;
- the missing-ID matrix: ranks x positions within each rank's assignment, True where
  that sequence is in no shard at all.

The matrix is rectangular, ``(N, ceil(n / N))``; when ``n`` is not a multiple of
``N`` the last ranks have one sequence fewer, and their last cell is padding:
``False`` in ``missing`` and ``False`` in the ``assigned`` mask that comes with it.
Cell ``(r, j)`` stands for index position ``r + j * N``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ShardError
from ..ranks import stride_positions
from ..shards import iter_id_chunks, open_shard, read_shard_meta

__all__ = [
    "OK",
    "INCOMPLETE",
    "EMPTY",
    "ABSENT",
    "FAILED",
    "DUPLICATED",
    "STATUSES",
    "ShardSummary",
    "RunInspection",
    "inspect_run",
]

# The status of a rank: what its shard holds against what it was assigned. (Not
# the status of a shard in a merge report, plan.ShardStatus: "empty" and "failed"
# mean other things there.)
OK = "ok"  # every assigned sequence is there
INCOMPLETE = "incomplete"  # readable, but part of the assignment is missing
EMPTY = "empty"  # readable, no rows, although sequences were assigned
ABSENT = "absent"  # no file
FAILED = "failed"  # a file that cannot be read as a shard (truncated, corrupt)
DUPLICATED = "duplicated"  # an ID twice in the file, or in an earlier rank's (a merge refuses it)

#: Every status, best first (the order plots use for their legend).
STATUSES = (OK, INCOMPLETE, EMPTY, DUPLICATED, FAILED, ABSENT)


@dataclass(frozen=True)
class ShardSummary:
    """What one worker's shard holds compared with what it was assigned.

    Attributes
    ----------
    rank : int
        The worker's rank (its position in the list of shard files).
    path : Path
        The shard file, as given.
    expected : int
        Sequences the stride distribution assigned to this rank.
    present : int
        Rows in the file (0 when it is absent or unreadable).
    missing : int
        Sequences of this rank's assignment found in no shard.
    status : str
        ``absent`` (no file), ``failed`` (unreadable), ``duplicated`` (an ID it
        holds is repeated in it or was already in a lower rank's shard: a merge
        refuses this), ``empty`` (no rows although sequences were assigned),
        ``incomplete`` (part of the assignment is in no shard) or ``ok``, the
        first that applies.
    error : str or None
        Why the file could not be read (``failed`` and ``absent`` only).
    """

    rank: int
    path: Path
    expected: int
    present: int
    missing: int
    status: str
    error: str | None = None


@dataclass(frozen=True)
class RunInspection:
    """The per-shard summary and the missing-ID matrix of one run.

    Attributes
    ----------
    shards : list of ShardSummary
        One per rank, in rank order.
    missing : numpy.ndarray
        bool ``(world_size, ceil(n / world_size))``: True where the sequence at
        index position ``rank + j * world_size`` is in no shard.
    assigned : numpy.ndarray
        bool, same shape: True where the cell stands for a real index position,
        False for the padding at the end of shorter assignments.
    sequence_ids : list of str
        The run's sequence IDs in index order.
    """

    shards: list[ShardSummary]
    missing: np.ndarray
    assigned: np.ndarray
    sequence_ids: list[str]

    @property
    def world_size(self) -> int:
        """Number of workers (ranks)."""
        return len(self.shards)

    @property
    def num_missing(self) -> int:
        """Number of expected sequences found in no shard."""
        return int(self.missing.sum())

    @property
    def missing_ids(self) -> list[str]:
        """The IDs of the missing sequences, sorted."""
        ranks, columns = np.nonzero(self.missing)
        positions = ranks + columns * self.world_size
        return sorted(self.sequence_ids[p] for p in positions.tolist())

    def counts(self) -> dict[str, list]:
        """The summary as columns (``rank``, ``expected``, ``present``, ``missing``, ``status``)."""
        return {
            "rank": [s.rank for s in self.shards],
            "expected": [s.expected for s in self.shards],
            "present": [s.present for s in self.shards],
            "missing": [s.missing for s in self.shards],
            "status": [s.status for s in self.shards],
        }


def _read_ids(path: Path) -> list[str]:
    """Every sequence ID in one shard (raises ShardError when it cannot be read)."""
    with open_shard(path) as handle:
        read_shard_meta(handle, path)
        ids: list[str] = []
        for chunk in iter_id_chunks(handle, path):
            ids.extend(chunk)
    return ids


def inspect_run(
    shard_files: Sequence[str | os.PathLike[str]], sequence_ids: Sequence[str]
) -> RunInspection:
    """Compare each rank's shard with its stride assignment; locate every missing ID.

    Reads sequence IDs only, never embeddings. Unlike a merge, this never raises
    for a bad shard: an absent or unreadable file is reported in its summary.

    Parameters
    ----------
    shard_files : sequence of path-like
        One path per rank, in rank order, including ranks whose file is absent
        (see :func:`virnucpro_merge.ranks.rank_paths`); the world size is
        ``len(shard_files)``.
    sequence_ids : sequence of str
        The run's sequence IDs in index (run) order, e.g. from
        :func:`virnucpro_merge.read_expected_ids` on the sequence-index JSON.

    Returns
    -------
    RunInspection
        The per-rank summaries and the missing-ID matrix.

    Raises
    ------
    ValueError
        No shard files.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> run = make_demo_run(tmp.name, n_sequences=10, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> found = inspect_run(run.shard_files, run.sequence_ids)
    >>> [(s.rank, s.expected, s.present, s.status) for s in found.shards]
    [(0, 4, 4, 'ok'), (1, 3, 3, 'ok'), (2, 3, 0, 'absent')]
    >>> found.missing_ids
    ['seq000002', 'seq000005', 'seq000008']
    >>> found.missing.astype(int)
    array([[0, 0, 0, 0],
           [0, 0, 0, 0],
           [1, 1, 1, 0]])
    >>> tmp.cleanup()
    """
    if not shard_files:
        msg = "No shard files provided"
        raise ValueError(msg)
    paths = [Path(p) for p in shard_files]
    world_size = len(paths)
    n = len(sequence_ids)
    width = -(-n // world_size)  # ceil

    found: set[str] = set()
    reads: list[tuple[int, str, str | None]] = []  # (rows present, status, error)
    for path in paths:
        if not path.exists():
            reads.append((0, ABSENT, "file does not exist"))
            continue
        try:
            ids = _read_ids(path)
        except ShardError as err:
            reads.append((0, FAILED, err.problem))
            continue
        unique = set(ids)
        repeats = len(unique) != len(ids) or not found.isdisjoint(unique)
        found |= unique
        reads.append((len(ids), DUPLICATED if repeats else OK, None))

    missing = np.zeros((world_size, width), dtype=bool)
    assigned = np.zeros((world_size, width), dtype=bool)
    shards = []
    for rank, (path, (present, status, error)) in enumerate(zip(paths, reads, strict=True)):
        positions = stride_positions(n, world_size, rank)
        assigned[rank, : positions.size] = True
        holes = np.array([sequence_ids[p] not in found for p in positions.tolist()], dtype=bool)
        missing[rank, : positions.size] = holes
        n_missing = int(holes.sum())
        if status == OK and n_missing:
            status = EMPTY if present == 0 else INCOMPLETE
        shards.append(
            ShardSummary(
                rank=rank,
                path=path,
                expected=int(positions.size),
                present=present,
                missing=n_missing,
                status=status,
                error=error,
            )
        )
    return RunInspection(shards=shards, missing=missing, assigned=assigned, sequence_ids=list(sequence_ids))
