"""The one vocabulary of statuses, with the words and the colour of each.

Three things have a status, and each has its own set of words:

- a **rank** of a run, in an inspection (``inspect_run``, the report's per-rank table):
  what its shard holds against what it was assigned (:data:`STATUSES`);
- a **shard** in a merge (:class:`ShardStatus`, the ``status`` of a merge report's
  shards): what the merge did with it;
- a **rank of a run in progress**, as ``watch`` sees it (:data:`RUN_STATES`): what its
  worker is doing now.

The two share words ("ok", "empty", "failed") whose meanings differ: an *empty rank* was
assigned sequences and holds none; an *empty shard* is a valid file without rows. Each
word's meaning is said beside it here, and every table and plot takes its colours from
here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["OK", "INCOMPLETE", "EMPTY", "ABSENT", "FAILED", "DUPLICATED", "OFF_STRIDE", "STATUSES", "STATUS_COLORS",
           "ShardStatus", "SHARD_COLORS", "unfinished", "RUNNING", "WAITING", "FINISHED", "STALLED", "PREEMPTED",
           "RUN_STATES", "RUN_STATE_COLORS", "STOPPED_STATES"]

# The status of a rank: what its shard holds against what it was assigned.
OK = "ok"  #: Every assigned sequence is there
INCOMPLETE = "incomplete"  #: Readable, but part of the assignment is missing
EMPTY = "empty"  #: Readable, no rows, although sequences were assigned
ABSENT = "absent"  #: No file
FAILED = "failed"  #: A file that cannot be read as a shard (truncated, corrupt)
DUPLICATED = "duplicated"  #: An ID twice in the file, or in an earlier rank's (a merge refuses it)
OFF_STRIDE = "off-stride"  #: Its IDs are not at positions rank + j * N (a run resumed with another N?)

#: Every status of a rank, best first (the order plots use for their legend).
STATUSES = (OK, INCOMPLETE, EMPTY, DUPLICATED, OFF_STRIDE, FAILED, ABSENT)

#: One colour per status of a rank, for plots and tables alike (Okabe-Ito: safe for colour-blind readers).
STATUS_COLORS = {
    OK: "#009E73",
    INCOMPLETE: "#E69F00",
    EMPTY: "#CC79A7",
    DUPLICATED: "#56B4E9",
    OFF_STRIDE: "#0072B2",
    FAILED: "#D55E00",
    ABSENT: "#000000",
}


class ShardStatus(StrEnum):
    """What a merge does with one input shard (the ``status`` of a merge report's shards)."""

    OK = "ok"  #: rows to copy
    EMPTY = "empty"  #: a valid shard without rows
    FAILED = "failed"  #: absent or unreadable: skipped by a partial merge, its reason in ``error``
    #: unusable (why in ``error``), but its rank's checkpoints gave rows (``salvage`` says which)
    SALVAGED = "salvaged"


def unfinished(status: str, expected_known: bool) -> bool:
    """Whether a merge records a shard of this status among its failed shards: left out, or
    salvaged when no expected IDs say whether its rank's checkpoints hold all it was given.

    >>> unfinished(ShardStatus.SALVAGED, expected_known=True), unfinished(ShardStatus.SALVAGED, expected_known=False)
    (False, True)
    """
    return status == ShardStatus.FAILED or (status == ShardStatus.SALVAGED and not expected_known)


#: The colour of each status of a shard in a merge (an empty shard is fine: grey, not a rank's pink).
SHARD_COLORS: dict[str, str] = {ShardStatus.OK: STATUS_COLORS[OK], ShardStatus.EMPTY: "#999999",
                                 ShardStatus.FAILED: STATUS_COLORS[FAILED],
                                 ShardStatus.SALVAGED: STATUS_COLORS[INCOMPLETE]}


# The state of a rank of a run in progress (``watch``): what its worker is doing now. ``failed``
# is the word above (:data:`FAILED`): here, the worker stopped on an error (its log or the manifest
# says which).
RUNNING = "running"  #: Checkpoints keep coming at its usual pace
WAITING = "waiting"  #: No checkpoint yet, and none overdue (a worker starting)
FINISHED = "finished"  #: Its shard is written and readable
STALLED = "stalled"  #: No checkpoint for several times its usual interval, and nothing says why
PREEMPTED = "preempted"  #: Stopped by SIGTERM (its last checkpoint an emergency one)

#: Every state of a rank in progress, the ones that need a look last (the order of legends).
RUN_STATES = (FINISHED, RUNNING, WAITING, PREEMPTED, STALLED, FAILED)
#: The states of a rank that will not finish by itself: ``watch --once`` exits 1 on any.
STOPPED_STATES = (STALLED, FAILED, PREEMPTED)

#: One colour per state of a rank in progress (Okabe-Ito, as :data:`STATUS_COLORS`).
RUN_STATE_COLORS = {
    FINISHED: STATUS_COLORS[OK],
    RUNNING: "#56B4E9",
    WAITING: "#999999",
    PREEMPTED: "#CC79A7",
    STALLED: STATUS_COLORS[INCOMPLETE],
    FAILED: STATUS_COLORS[FAILED],
}
