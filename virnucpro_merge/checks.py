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

from .errors import MergeError, MislabelledShardError, UnreadableShardError, shown_id
from .expected import not_text, read_expected_ids
from .plan import (
    MergePlan,
    check_ids,
    draft_plan,
    plan_from_scan,
    refuse_contradicted,
    refuse_repeated_paths,
    shard_paths,
    up_to_first_absent,
)
from .shards import iter_id_chunks, open_shard, read_shard_meta
from .validation import IdIndex, as_id_set

__all__ = ["plan_merge", "validate_shard_completeness", "expected_in_memory"]


def expected_in_memory(expected: object) -> Collection[str]:
    """Expected IDs to check here, checked: a collection of str; a file (``os.PathLike``)
    is read (a cluster's workers read it themselves).

    Raises
    ------
    MergeError
        One str (its characters would be taken for IDs), or anything but IDs.
    """
    if isinstance(expected, os.PathLike):
        return read_expected_ids(expected)
    if isinstance(expected, str | bytes):
        msg = (f"expected IDs must be a collection of IDs, not the one str {shown_id(str(expected))}"
               " (a file of IDs: pass a pathlib.Path, or read it with read_expected_ids)")
        raise MergeError(msg)
    if not isinstance(expected, Collection) and not hasattr(expected, "__iter__"):
        msg = f"expected IDs must be a collection of str, not {type(expected).__name__}"
        raise MergeError(msg)
    ids = expected if isinstance(expected, Collection) else list(expected)  # (an iterator: read once)
    if not all(isinstance(i, str) for i in ids):
        wrong = next(i for i in ids if not isinstance(i, str))
        msg = f"expected IDs must be str, not {type(wrong).__name__} ({wrong!r})"
        raise MergeError(msg)
    if (bad := not_text(ids)) is not None:
        msg = f"expected ID {shown_id(bad)} is not Unicode text (it holds half a surrogate pair)"
        raise MergeError(msg)
    return ids


def plan_merge(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_sequence_ids: Collection[str] | os.PathLike[str] | None = None,
    *,
    partial: bool = False,
    client: object | None = None,
    keep_ids: bool = False,
    storage: bool = True,
    checkpoints: Path | None = None,
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
        Keep the IDs' hashes in the plan (``plan.ids``, 8 bytes an ID), for writing
        in index order (not with a ``client``).
    storage : bool
        Look at where each shard keeps its embeddings (a merge copies them); a check
        of IDs alone (``False``) does not need them, and works on shards whose
        embeddings are lost.
    checkpoints : Path, optional
        The run's checkpoints folder: each shard's rows are compared with those its
        rank's checkpoints hold, and a shard they contradict is refused (with
        ``partial``, left out).

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
    paths = shard_paths(shard_files)
    if client is None:
        expected = None if expected_sequence_ids is None else as_id_set(expected_in_memory(expected_sequence_ids))
        draft = draft_plan(paths, partial=partial, storage=storage, checkpoints=checkpoints)
        return check_ids(draft, expected, partial=partial, keep_ids=keep_ids)
    from .cluster import scan_on_cluster

    if not partial:
        paths = up_to_first_absent(paths)
    refuse_repeated_paths(paths)
    contradicted = _contradicted(paths, checkpoints, partial=partial) if checkpoints is not None else {}
    scanned = [p for p in paths if p not in contradicted]
    scans, findings = scan_on_cluster(scanned, expected_sequence_ids, client=client, storage=storage)
    by_path = dict(zip(scanned, scans, strict=True))
    return plan_from_scan([contradicted.get(p) or by_path[p] for p in paths], findings, partial=partial)


def _contradicted(paths: list[Path], checkpoints: Path, *, partial: bool) -> dict[Path, MislabelledShardError]:
    """The shards that their checkpoints contradict (with ``partial``: the others raise),
    each with its error: left out of the cluster's scan, so their IDs count as missing.
    A shard that cannot be read is left for the scan to find."""
    found = {}
    for path in paths:
        try:
            refuse_contradicted(path, checkpoints)
        except MislabelledShardError as err:
            if not partial:
                raise
            found[path] = err
        except UnreadableShardError:
            pass
    return found


def validate_shard_completeness(
    shard_files: Sequence[str | os.PathLike[str]],
    expected_ids: Collection[str] | os.PathLike[str],
    *,
    client: object | None = None,
) -> tuple[set[str], set[str]]:
    """Compare the IDs in some shards with the IDs a run should have produced.

    Reads sequence IDs only, never embeddings. Empty and ``(0, 0)`` shards are fine.

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

    Returns
    -------
    missing_ids, extra_ids : set of str
        Expected IDs found in no shard, and IDs found but not expected.

    Raises
    ------
    ShardError
        A shard is absent, unreadable or not shaped like a shard.

    Examples
    --------
    >>> validate_shard_completeness([], {"a"})
    ({'a'}, set())
    """
    paths = shard_paths(shard_files, allow_empty=True)
    if client is not None:
        from .cluster import scan_on_cluster

        scans, findings = scan_on_cluster(paths, expected_ids, client=client, storage=False)
        for scan in scans:
            if isinstance(scan, Exception):
                raise scan
        return set(findings.missing), set(findings.extra)
    index = IdIndex(as_id_set(expected_in_memory(expected_ids)))
    for path in paths:
        with open_shard(path) as handle:
            read_shard_meta(handle, path, storage=False)
            index.add_shard(path, iter_id_chunks(handle, path))
    return set(index.missing()), set(index.extra)
