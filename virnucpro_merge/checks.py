"""The checks of a run, in this process or on a Dask cluster: one place picks which.

:func:`plan_merge` and :func:`validate_shard_completeness` read every shard's IDs and
compare them with the expected IDs. Without a ``client`` they do it here (with
:mod:`virnucpro_merge.plan` and :mod:`virnucpro_merge.validation`); with a Dask client
the IDs are read and checked on its workers (:mod:`virnucpro_merge.cluster`), which
hand back plain data, and the answer is the same. This module is the only one above
both routes, so that neither :mod:`~virnucpro_merge.plan` nor
:mod:`~virnucpro_merge.validation` knows of Dask.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from .errors import MergeError, shown_id
from .expected import read_expected_lookup, unstorable_id
from .ids import IdLookup
from .plan import MergePlan, check_ids, draft_plan, plan_from_scan, shard_paths
from .ranks import checkpoints_of
from .salvage import Scratch, scratch_folder
from .shards import iter_id_byte_chunks, open_shard
from .validation import IdIndex

__all__ = ["plan_merge", "validate_shard_completeness", "expected_in_memory"]


#: Why an expected ID given in Python cannot be stored, in words (by the kind ``expected.unstorable_id`` names).
_UNSTORABLE = {
    "type": lambda wrong: f"expected IDs must be str, not {type(wrong).__name__} ({wrong!r})",
    "surrogate": lambda bad: f"expected ID {shown_id(str(bad))} is not Unicode text (it holds half a surrogate pair)",
    "nul": lambda bad: f"expected ID {shown_id(str(bad))} holds a NUL character, which no merged file can store",
}


def expected_in_memory(expected: object) -> Collection[str] | IdLookup:
    """Expected IDs to check here, checked: a collection of str; a file (``os.PathLike``)
    is read into a lookup (:func:`~virnucpro_merge.expected.read_expected_lookup`: no Python
    str an ID; a cluster's workers read it themselves).

    Raises
    ------
    MergeError
        One str (its characters would be taken for IDs), or anything but IDs.
    """
    if isinstance(expected, os.PathLike):
        return read_expected_lookup(expected)
    if isinstance(expected, IdLookup):
        return expected
    if isinstance(expected, str | bytes):
        msg = (f"expected IDs must be a collection of IDs, not the one str {shown_id(str(expected))}"
               " (a file of IDs: pass a pathlib.Path, or read it with read_expected_ids)")
        raise MergeError(msg)
    if not isinstance(expected, Collection) and not hasattr(expected, "__iter__"):
        msg = f"expected IDs must be a collection of str, not {type(expected).__name__}"
        raise MergeError(msg)
    ids = expected if isinstance(expected, Collection) else list(expected)  # (an iterator: read once)
    bad = unstorable_id(ids)  # (one pass: IDs by the million cost a pass each)
    if bad is not None:
        raise MergeError(_UNSTORABLE[bad[0]](bad[1]))
    return ids


def plan_merge(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_sequence_ids: Collection[str] | IdLookup | os.PathLike[str] | None = None,
    *,
    partial: bool = False,
    client: object | None = None,
    keep_ids: bool = False,
    storage: bool = True,
    checkpoints: Path | None = None,
    scratch: Scratch | None = None,
    progress: bool = False,
) -> MergePlan:
    """Read every shard's metadata and IDs and decide what the merge will write.

    Parameters
    ----------
    shard_files : sequence of path-like
        The shards, in merge order.
    expected_sequence_ids : collection of str or path-like, optional
        Every ID the run was given. With a ``client``, also the path
        (``pathlib.Path``) of an expected-ID file, which the workers then read.
    partial : bool
        Record failed shards and missing IDs instead of raising.
    client : dask.distributed.Client, optional
        Read and check the IDs on this cluster's workers, hash-partitioned across
        them; the plan is the same.
    keep_ids : bool
        Keep every row's place in the expected IDs in the plan (``plan.ids``, 4 bytes an ID), for writing
        in index order (not with a ``client``).
    storage : bool
        Look at where each shard keeps its embeddings (a merge copies them); a check
        of IDs alone (``False``) does not need them, and works on shards whose
        embeddings are lost.
    checkpoints : Path, optional
        The run's checkpoints folder: each shard's rows are compared with those its
        rank's checkpoints hold, and a shard they contradict is refused (with
        ``partial``, left out).
    scratch : virnucpro_merge.salvage.Scratch, optional
        With ``checkpoints``: a rank whose shard cannot be used gives the rows its
        checkpoints hold instead, written here (:mod:`virnucpro_merge.salvage`).
    progress : bool
        Show a progress bar of the shards whose IDs are checked (tqdm, on stderr; here,
        not on a cluster).

    Returns
    -------
    MergePlan
        Every shard's status, offset and dimension, and the missing IDs.

    Raises
    ------
    MergeError
        No shards; with ``partial=False``, any unreadable or absent shard or any
        missing expected ID; always, a duplicate ID, a shard of an unsupported
        shape or dtype, or shards of different embedding dimensions.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(2,), empty=(), short={})
    >>> plan = plan_merge(run.shard_files, run.index, partial=True)  # reads IDs, writes nothing
    >>> plan.total_sequences, plan.missing_ids
    (8, ['seq000002', 'seq000005', 'seq000008', 'seq000011'])
    """
    draft = draft_plan(shard_paths(shard_files), partial=partial, storage=storage, checkpoints=checkpoints,
                       scratch=scratch)
    if client is None:
        expected = None if expected_sequence_ids is None else expected_in_memory(expected_sequence_ids)
        return check_ids(draft, expected, partial=partial, keep_ids=keep_ids, progress=progress)
    from .cluster import scan_on_cluster

    given = list(expected_sequence_ids.ids()) if isinstance(expected_sequence_ids, IdLookup) else expected_sequence_ids
    scans, findings = scan_on_cluster([s.source for s in draft.shards if s.usable], given, client=client,
                                      storage=storage)
    return plan_from_scan(draft, scans, findings, partial=partial)


def validate_shard_completeness(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_ids: Collection[str] | os.PathLike[str],
    *,
    client: object | None = None,
    checkpoints: str | os.PathLike[str] | bool | None = None,
) -> tuple[set[str], set[str]]:
    """Compare the IDs in some shards with the IDs a run should have produced.

    Reads sequence IDs only, never the shards' embeddings. Empty and ``(0, 0)`` shards
    are fine. A rank whose shard is absent or unreadable counts the IDs its checkpoints
    hold (what a merge would salvage from them: :mod:`virnucpro_merge.salvage`).

    Parameters
    ----------
    shard_files : sequence of path-like
        The shard files to read.
    expected_ids : collection of str
        Every sequence ID the run was given. With a ``client``, also the path
        (``pathlib.Path``) of an expected-ID file, which the workers then read.
    client : dask.distributed.Client, optional
        Scan the shards on this cluster's workers and check the IDs
        hash-partitioned across them, so that no process holds them all.
    checkpoints : path-like, optional
        The pipeline's checkpoints folder. None (the default): where the pipeline
        puts it beside the shards' run folder, if there; False: never. (Only IDs are
        compared here: a shard whose rows its checkpoints contradict is the merge's
        to refuse.)

    Returns
    -------
    missing_ids, extra_ids : set of str
        Expected IDs found in no shard (nor checkpoint), and IDs found but not expected.

    Raises
    ------
    ShardError
        A shard is absent or unreadable (and its rank's checkpoints hold nothing), or
        not shaped like a shard.
    CheckpointError
        A checkpoint that would stand in for a shard is damaged.

    Examples
    --------
    >>> validate_shard_completeness([], {"a"})
    ({'a'}, set())
    """
    paths = shard_paths(shard_files, allow_empty=True)
    saved = checkpoints_of(paths, checkpoints) if paths else None
    with scratch_folder() as scratch:
        shards = draft_plan(paths, storage=False, checkpoints=saved, scratch=scratch).shards if paths else []
        if client is not None:
            from .cluster import scan_on_cluster

            scans, findings = scan_on_cluster([s.source for s in shards], expected_ids, client=client,
                                              storage=False)
            for scan in scans:
                if isinstance(scan, Exception):
                    raise scan
            return set(findings.missing), set(findings.extra)
        index = IdIndex(expected_in_memory(expected_ids))
        for shard in shards:
            with open_shard(shard.source) as handle:
                index.add_shard(shard.source, iter_id_byte_chunks(handle, shard.origin), shard.origin)
        return set(index.missing()), set(index.extra)
