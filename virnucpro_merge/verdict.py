"""The one line that answers first: is the run complete, and if not, what to re-run.

Every face that judges a run (``validate``, ``aggregate``, the report) says it with
:func:`verdict_line`, from the same few numbers, so that they never word it differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .ranks import rank_of, rank_ranges
from .shards import ABSENT

__all__ = ["COMPLETE", "INCOMPLETE", "NOT_CHECKED", "verdict_of", "verdict_line", "failed_ranks"]

#: The verdicts, as the JSON files and the exit statuses carry them.
COMPLETE, INCOMPLETE, NOT_CHECKED = "complete", "incomplete", "not checked"


def verdict_of(expected: int | None, missing: int, problems: Mapping[str, Sequence[int]]) -> str:
    """``"complete"`` (``COMPLETE``) when every expected sequence is there and no rank has a
    problem, ``"not checked"`` (``NOT_CHECKED``) when no expected IDs were given and no rank
    has one, else ``"incomplete"`` (``INCOMPLETE``).

    >>> verdict_of(100, 0, {}), verdict_of(100, 3, {}), verdict_of(None, 0, {}), verdict_of(None, 0, {"absent": [2]})
    ('complete', 'incomplete', 'not checked', 'incomplete')
    """
    if missing or any(problems.values()):
        return INCOMPLETE
    return NOT_CHECKED if expected is None else COMPLETE


def verdict_line(expected: int | None, missing: int, problems: Mapping[str, Sequence[int]]) -> str:
    """The verdict in one line, with its numbers: how many sequences are missing of how many,
    and the ranks to look at, by what is wrong with them (``problems``: a status -> its ranks).

    Examples
    --------
    >>> print(verdict_line(4000, 0, {}))
    COMPLETE: all 4,000 expected sequences are there
    >>> print(verdict_line(1_000_000, 10_451, {"absent": [17, 333, 1023], "failed": [3]}))
    INCOMPLETE: 10,451 of 1,000,000 sequences missing (1.05%); ranks to re-run: 4 (absent 17, 333, 1023; failed 3)
    >>> print(verdict_line(None, 0, {"failed": [3]}))
    INCOMPLETE: ranks to re-run: 1 (failed 3); no expected IDs, so no sequence is known missing
    """
    named = {status: ranks for status, ranks in problems.items() if ranks}
    ranks = f"ranks to re-run: {sum(map(len, named.values())):,} (" + "; ".join(
        f"{status} {rank_ranges(sorted(ranks), most=6)}" for status, ranks in named.items()) + ")" if named else ""
    verdict = verdict_of(expected, missing, named)
    if verdict == COMPLETE:
        return f"COMPLETE: all {expected:,} expected sequences are there"
    if expected is None:
        return (f"INCOMPLETE: {ranks}; no expected IDs, so no sequence is known missing" if named
                else "NOT CHECKED: no expected IDs were given (every shard is readable)")
    share = f" ({missing / expected:.2%})" if expected else ""
    return f"INCOMPLETE: {missing:,} of {expected:,} sequences missing{share}" + (f"; {ranks}" if ranks else "")


def failed_ranks(shards: Iterable[tuple[int, str, str | None]]) -> dict[str, list[int]]:
    """The ranks of failed shards, ``(position, path, error)`` each, by what is wrong: ``absent``
    (no file) or ``failed`` (the rest). A shard's rank is the one in its name
    (``shard_<rank>.h5``), else its position in the list.

    >>> failed_ranks([(0, "run/shard_6.h5", "file does not exist"), (3, "x.h5", "not an HDF5 file")])
    {'absent': [6], 'failed': [3]}
    """
    found: dict[str, list[int]] = {}
    for position, path, error in shards:
        rank = rank_of(path)
        found.setdefault("absent" if error == ABSENT else "failed", []).append(position if rank is None else rank)
    return found
