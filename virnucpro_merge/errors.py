"""The exceptions raised by virnucpro_merge.

Every error is a :class:`MergeError`, itself a :class:`ValueError`, so callers that
catch ``ValueError`` (as the contract promises) catch them all. Messages are one line
and name the file and the problem.
"""

from __future__ import annotations

__all__ = [
    "shown_id",
    "twins_note",
    "MergeError",
    "ShardError",
    "UnreadableShardError",
    "CheckpointError",
    "MislabelledShardError",
    "ExpectedIdsError",
    "IndexMismatchError",
    "OutputError",
    "ValidationError",
    "ConflictingCheckpointsError",
    "DuplicateIdError",
    "MissingIdsError",
    "NonFiniteError",
]


_SHOWN = 80  # characters of an ID shown in a message


def shown_id(sequence_id: str) -> str:
    """An ID as a one-line message shows it: as it is, or quoted (``repr``) when it holds
    a line break or other unprintable character, and cut when it is long.

    >>> print(shown_id("seq000042"), shown_id("two\\nlines"), shown_id("x" * 100)[-6:])
    seq000042 'two\\nlines' xx'...
    """
    if sequence_id.isprintable() and len(sequence_id) <= _SHOWN:
        return sequence_id
    cut = sequence_id if len(sequence_id) <= _SHOWN else sequence_id[:_SHOWN]
    return repr(cut) + ("..." if cut is not sequence_id else "")


class MergeError(ValueError):
    """Base class of every error this package raises on purpose."""


class ShardError(MergeError):
    """A shard file is absent, unreadable, or not shaped like a shard.

    Attributes
    ----------
    path : str
        The offending shard file, as given.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # picklable, so that Dask workers can raise it
        return type(self), (self.path, self.problem)


class UnreadableShardError(ShardError):
    """A shard file is absent, truncated, corrupt or half-written.

    This is what a crashed worker leaves behind; ``partial=True`` merges skip such
    shards and record them, where every other :class:`ShardError` still stops the merge.
    """


class CheckpointError(MergeError):
    """A checkpoint file of the pipeline cannot be used: damaged, not of the format, or
    holding what a checkpoint never holds (code to run is refused, never run).

    Attributes
    ----------
    path : str
        The checkpoint file, as found.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.path, self.problem)


class ExpectedIdsError(MergeError):
    """A file of expected sequence IDs cannot be read or parsed."""


class IndexMismatchError(MergeError):
    """A run's sequence index cannot be followed to the sequences it lists.

    Its FASTA file is absent, unreadable or gzip-compressed, the record at a byte
    offset is not the one the index names (or is of another length), or a sequence
    the merged file lacks is not in the index at all.
    """


class OutputError(MergeError):
    """The output path cannot be written (missing folder, an input shard, ...)."""


class ValidationError(MergeError):
    """The shards are readable but their sequence IDs fail validation."""


class MislabelledShardError(UnreadableShardError, ValidationError):
    """A shard whose rows are not those of its IDs, as its rank's checkpoints show (the
    pipeline writes such shards after a resume: row and ID counts agree, so nothing in the
    shard alone shows it). A strict merge stops; ``partial=True`` leaves the shard out like
    a crashed worker's, so that no row a checkpoint contradicts is written."""


class ConflictingCheckpointsError(ValidationError):
    """Two checkpoints of a rank hold the same sequence ID with different rows, and no shard
    says which is right: a merge that takes rows from checkpoints stops (``partial=True``
    leaves the ID out, for re-run)."""

    def __init__(self, sequence_id: str, first: object, second: object) -> None:
        self.sequence_id = sequence_id
        self.first = str(first)
        self.second = str(second)
        where = "twice in it, with different rows" if self.first == self.second else \
            f"has another row here than in {self.first}"
        super().__init__(f"{self.second}: sequence ID {shown_id(sequence_id)} {where}: which one is right cannot be "
                         "told (re-run it, or merge with --partial to leave it out)")


class DuplicateIdError(ValidationError):
    """The same sequence ID occurs twice, within one shard or across shards."""

    def __init__(self, sequence_id: str, shard: object, first_shard: object) -> None:
        self.sequence_id = sequence_id
        self.shard = str(shard)
        self.first_shard = str(first_shard)
        where = (
            f"twice in {self.shard}"
            if self.shard == self.first_shard
            else f"in {self.shard} (already in {self.first_shard})"
        )
        super().__init__(f"Duplicate sequence ID found: {shown_id(sequence_id)} {where}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.sequence_id, self.shard, self.first_shard)


def twins_note(twins: dict[str, str], most: int = 3) -> str:
    r"""What to say of missing IDs that differ from present ones only by Unicode
    normalisation (NFC/NFD): both shown as code points, for they look alike.

    >>> print(twins_note({"cafe\u0301": "caf\u00e9"}))
    ; 'cafe\u0301' differs from the present 'caf\xe9' only by Unicode normalisation (NFC/NFD): IDs are compared exactly
    """
    if not twins:
        return ""
    pairs = list(twins.items())
    shown = ", ".join(f"{missing[:_SHOWN]!a} differs from the present {present[:_SHOWN]!a}"
                      for missing, present in pairs[:most])
    more = f" (and {len(pairs) - most} more such IDs)" if len(pairs) > most else ""
    return f"; {shown}{more} only by Unicode normalisation (NFC/NFD): IDs are compared exactly"


class MissingIdsError(ValidationError):
    """Some expected sequence IDs are in no shard (``twins``: those of them that differ
    from a present ID only by Unicode normalisation, with that ID)."""

    def __init__(self, missing: list[str], twins: dict[str, str] | None = None) -> None:
        self.missing = missing
        self.twins = twins or {}
        first = [i if len(i) <= _SHOWN else i[:_SHOWN] + "..." for i in missing[:10]]  # a list shows repr()
        super().__init__(f"Missing {len(missing)} expected sequences. First 10 missing IDs: {first}"
                         f"{twins_note(self.twins)}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.missing, self.twins)


class NonFiniteError(ValidationError):
    """Embeddings hold NaN or Inf (``fail_on_nonfinite=True``)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = {path: n for path, n in counts.items() if n}
        shards = ", ".join(f"{path} ({n})" for path, n in self.counts.items())
        super().__init__(
            f"{sum(self.counts.values())} rows of embeddings hold NaN or Inf, in {len(self.counts)} "
            f"shards: {shards}"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.counts,)
