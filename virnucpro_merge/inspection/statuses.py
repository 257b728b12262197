"""The statuses of a rank in an inspection, and the one colour of each (plots and tables alike)."""

from __future__ import annotations

__all__ = ["OK", "INCOMPLETE", "EMPTY", "ABSENT", "FAILED", "DUPLICATED", "OFF_STRIDE", "STATUSES", "STATUS_COLORS"]

# The status of a rank: what its shard holds against what it was assigned. (Not
# the status of a shard in a merge report, plan.ShardStatus: "empty" and "failed"
# mean other things there.)
OK = "ok"  #: Every assigned sequence is there
INCOMPLETE = "incomplete"  #: Readable, but part of the assignment is missing
EMPTY = "empty"  #: Readable, no rows, although sequences were assigned
ABSENT = "absent"  #: No file
FAILED = "failed"  #: A file that cannot be read as a shard (truncated, corrupt)
DUPLICATED = "duplicated"  #: An ID twice in the file, or in an earlier rank's (a merge refuses it)
OFF_STRIDE = "off-stride"  #: Its IDs are not at positions rank + j * N (a run resumed with another N?)

#: Every status, best first (the order plots use for their legend).
STATUSES = (OK, INCOMPLETE, EMPTY, DUPLICATED, OFF_STRIDE, FAILED, ABSENT)

#: One colour per status, for plots and tables alike (Okabe-Ito: safe for colour-blind readers).
STATUS_COLORS = {
    OK: "#009E73",
    INCOMPLETE: "#E69F00",
    EMPTY: "#CC79A7",
    DUPLICATED: "#56B4E9",
    OFF_STRIDE: "#0072B2",
    FAILED: "#D55E00",
    ABSENT: "#000000",
}
