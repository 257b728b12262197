"""The one line that answers first: is the run complete, and if not, what to re-run.

Every face that judges a run (``validate``, ``aggregate``, the report) says it with
:func:`verdict_line`, from the same few numbers, so that they never word it differently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from .ids import IdLookup, utf8_ids
from .ranks import rank_of, rank_ranges
from .shards import ABSENT
from .statuses import ABSENT as ABSENT_STATUS
from .statuses import DUPLICATED, EMPTY, FAILED, STATUSES
from .statuses import INCOMPLETE as INCOMPLETE_RANK

__all__ = ["COMPLETE", "INCOMPLETE", "INVALID", "NOT_CHECKED", "verdict_of", "verdict_line", "ranks_named",
           "ranks_missing", "rank_problems"]

#: The verdicts, as the JSON files and the exit statuses carry them.
COMPLETE, INCOMPLETE, INVALID, NOT_CHECKED = "complete", "incomplete", "invalid", "not checked"


def verdict_of(expected: int | None, missing: int, problems: Mapping[str, Sequence[int]]) -> str:
    """``"invalid"`` (``INVALID``) when a rank repeats sequence IDs (``problems`` names it
    ``duplicated``: a merge refuses the run, ``--partial`` too), else ``"complete"``
    (``COMPLETE``) when every expected sequence is there (a dead worker's included, when its
    checkpoints held them), ``"not checked"`` (``NOT_CHECKED``) when no expected IDs were given
    and no rank has a problem, else ``"incomplete"`` (``INCOMPLETE``).

    >>> verdict_of(100, 0, {}), verdict_of(100, 3, {}), verdict_of(None, 0, {}), verdict_of(None, 0, {"absent": [2]})
    ('complete', 'incomplete', 'not checked', 'incomplete')
    >>> verdict_of(100, 0, {"absent": [2]})  # (rank 2's sequences are all there all the same)
    'complete'
    >>> verdict_of(100, 0, {"duplicated": [5]})
    'invalid'
    """
    if problems.get(DUPLICATED):
        return INVALID
    if expected is not None:
        return INCOMPLETE if missing else COMPLETE
    return INCOMPLETE if any(problems.values()) else NOT_CHECKED


def verdict_line(expected: int | None, missing: int, problems: Mapping[str, Sequence[int]]) -> str:
    """The verdict in one line, with its numbers: how many sequences are missing of how many,
    and the ranks to look at, by what is wrong with them (``problems``: a status -> its ranks).

    Examples
    --------
    >>> print(verdict_line(4000, 0, {}))
    COMPLETE: all 4,000 expected sequences are there
    >>> print(verdict_line(1_000_000, 10_451, {"absent": [17, 333, 1023], "failed": [3]}))
    INCOMPLETE: 10,451 of 1,000,000 sequences missing (1.05%); ranks to re-run: 4 (failed 3; absent 17, 333, 1023)
    >>> print(verdict_line(None, 0, {"failed": [3]}))
    INCOMPLETE: ranks to re-run: 1 (failed 3); no expected IDs, so no sequence is known missing
    >>> print(*verdict_line(4000, 10, {"duplicated": [7], "absent": [2]}).split("; "), sep="\\n")
    INVALID: sequence IDs repeated (rank 7), which a merge refuses
    10 of 4,000 sequences missing (0.25%)
    ranks to re-run: 1 (absent 2)
    >>> print(verdict_line(4000, 0, {"duplicated": [7, 8]}))
    INVALID: sequence IDs repeated (ranks 7-8), which a merge refuses
    """
    named = {status: problems[status] for status in _in_order(problems) if problems[status] and status != DUPLICATED}
    ranks = f"ranks to re-run: {sum(map(len, named.values())):,} (" + "; ".join(
        f"{status} {rank_ranges(sorted(ranks), most=6)}" for status, ranks in named.items()) + ")" if named else ""
    verdict = verdict_of(expected, missing, problems)
    counted = "" if expected is None else \
        f"{missing:,} of {expected:,} sequences missing" + (f" ({missing / expected:.2%})" if expected else "")
    if verdict == INVALID:
        return "; ".join([f"INVALID: sequence IDs repeated ({ranks_named(problems[DUPLICATED])}), which a merge "
                          "refuses", *([counted] if missing else []), *([ranks] if ranks else [])])
    if verdict == COMPLETE:
        return f"COMPLETE: all {expected:,} expected sequences are there"
    if expected is None:
        return (f"INCOMPLETE: {ranks}; no expected IDs, so no sequence is known missing" if named
                else "NOT CHECKED: no expected IDs were given (every shard is readable)")
    return f"INCOMPLETE: {counted}" + (f"; {ranks}" if ranks else "")


def ranks_named(ranks: Sequence[int]) -> str:
    """``rank 7``, ``ranks 7-8, 10``: ranks in a sentence.

    >>> ranks_named([7]), ranks_named([10, 7, 8])
    ('rank 7', 'ranks 7-8, 10')
    """
    return f"rank{'s' if len(ranks) > 1 else ''} {rank_ranges(sorted(ranks), most=6)}"


def ranks_missing(missing: Collection[str], expected_in_order: Iterable[str] | IdLookup, world_size: int
                  ) -> dict[int, int]:
    """How many of ``missing`` each rank was given: rank ``r`` of ``world_size`` is given the
    index positions ``r, r + N, ...`` of ``expected_in_order`` (read once; the missing IDs
    alone are held; in a lookup, they are looked up: at 10^7 IDs, reading every one took
    4.6 s to place 10,000).

    >>> ranks_missing({"c", "f"}, "abcdef", 3)
    {2: 2}
    >>> ranks_missing({"c", "f"}, IdLookup.from_ids(list("abcdef")), 3)
    {2: 2}
    """
    if isinstance(expected_in_order, IdLookup):
        at, _, _ = expected_in_order.positions(utf8_ids(missing))
        return {rank: int(count) for rank, count in enumerate(np.bincount(at % world_size, minlength=world_size))
                if count}
    wanted, found = set(missing), Counter[int]()
    if wanted:
        for position, sequence_id in enumerate(expected_in_order):
            if sequence_id in wanted:
                found[position % world_size] += 1
    return dict(found)


def rank_problems(shards: Sequence[tuple[str, str | None, int]], missing: Mapping[int, int] | None
                  ) -> dict[str, list[int]]:
    """The ranks to re-run, by what is wrong with them, in the words of
    ``statuses.STATUSES``: ``absent`` (no file), ``failed`` (a file that
    cannot be used), else, where sequences it was given are missing, ``empty`` (no row) or
    ``incomplete``; a rank none of whose sequences is missing is not to re-run, whatever its
    file. ``shards``: each rank's ``(path, problem of its file or None, rows)``, in rank order
    (a shard's rank is the one in its name, else its place); ``missing``: a rank -> how many of
    its sequences are missing (:func:`ranks_missing`), or None where that is not known (then
    every absent or failed file is to re-run).

    >>> rank_problems([("run/shard_0.h5", None, 4), ("run/shard_1.h5", None, 2), ("run/shard_2.h5",
    ...                "file does not exist", 0), ("run/shard_3.h5", "not an HDF5 file", 0)], {1: 2, 2: 4, 3: 4})
    {'incomplete': [1], 'failed': [3], 'absent': [2]}
    """
    found: dict[str, list[int]] = {}
    for position, (path, problem, rows) in enumerate(shards):
        rank = rank_of(path)
        rank = position if rank is None else rank
        lacking = True if missing is None else bool(missing.get(rank))
        status = None if not lacking else ABSENT_STATUS if problem == ABSENT else FAILED if problem is not None \
            else None if missing is None else EMPTY if not rows else INCOMPLETE_RANK
        if status is not None:
            found.setdefault(status, []).append(rank)
    return {status: sorted(found[status]) for status in _in_order(found)}


def _in_order(problems: Iterable[str]) -> list[str]:
    """Statuses in the order every face lists them (``statuses.STATUSES``: a report's table's)."""
    return sorted(problems, key=lambda status: STATUSES.index(status) if status in STATUSES else len(STATUSES))
