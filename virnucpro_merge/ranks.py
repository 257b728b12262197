"""The run's geometry: which worker wrote which file, and which sequences it was given.

A run of ``N`` workers gives worker ``r`` the sequence-index positions
``r, r + N, r + 2N, ...`` (the stride distribution), and worker ``r`` writes
``shard_<r>.h5``. A run folder holds those shards and, by the pipeline's
convention, the run's ``sequence_index.json``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MergeError, ShardError
from .manifest import MANIFEST_NAME, read_manifest
from .readahead import read_first_ids

__all__ = [
    "INDEX_NAME",
    "CHECKPOINTS_NAME",
    "LOGS_NAME",
    "RunFolder",
    "run_folder",
    "checkpoints_of",
    "shard_name",
    "shard_path",
    "rank_of",
    "rank_paths",
    "stride_positions",
    "run_index",
    "index_beside",
    "stride_step",
    "world_size_of",
    "sample_steps",
    "folder_shards",
    "in_rank_order",
    "expand_shard_args",
    "listed",
    "rank_ranges",
]

logger = logging.getLogger("virnucpro_merge")

#: The sequence index the pipeline writes into its run folder.
INDEX_NAME = "sequence_index.json"
#: Its checkpoints folder (``.checkpoints`` beside a run its command line wrote), and its logs folder.
CHECKPOINTS_NAME, LOGS_NAME = "checkpoints", "logs"

_SHARD_NAME = re.compile(r"^shard_(\d+)\.h5$")


def shard_name(rank: int) -> str:
    """The file name worker ``rank`` writes: ``shard_<rank>.h5``."""
    return f"shard_{rank}.h5"


def shard_path(directory: str | os.PathLike[str], rank: int) -> Path:
    """``directory/shard_<rank>.h5``."""
    return Path(directory) / shard_name(rank)


def rank_of(path: str | os.PathLike[str]) -> int | None:
    """The rank in a shard's file name (``shard_07.h5`` -> 7), or None for another name."""
    match = _SHARD_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def rank_paths(directory: str | os.PathLike[str], world_size: int) -> list[Path]:
    """The shard path of every rank, ``directory/shard_<rank>.h5``, absent files included.

    >>> [p.name for p in rank_paths("run", 3)]
    ['shard_0.h5', 'shard_1.h5', 'shard_2.h5']
    """
    return [shard_path(directory, rank) for rank in range(world_size)]


def stride_positions(n_sequences: int, world_size: int, rank: int) -> np.ndarray:
    """Index positions assigned to ``rank``: ``rank, rank + N, rank + 2N, ...``.

    >>> stride_positions(10, 4, 1).tolist()
    [1, 5, 9]
    """
    return np.arange(rank, n_sequences, world_size)


def run_index(directory: str | os.PathLike[str]) -> Path | None:
    """The run folder's sequence index (``sequence_index.json``), if it has one."""
    index = Path(directory) / INDEX_NAME
    return index if index.is_file() else None


@dataclass(frozen=True)
class RunFolder:
    """Where a run folder keeps what the pipeline wrote besides its shards (None: not there).

    The pipeline puts its checkpoints in ``RUN/checkpoints`` when called from Python; its
    command line writes the run into ``<out>/esm_v2`` and the checkpoints into
    ``<out>/.checkpoints``, beside it. The manifest is in the checkpoints folder; the
    workers' logs in ``RUN/logs``.
    """

    folder: Path
    index: Path | None
    checkpoints: Path | None
    manifest: Path | None
    logs: Path | None


def run_folder(folder: str | os.PathLike[str]) -> RunFolder:
    """What a run folder holds besides its shards, where the pipeline puts it.

    >>> found = run_folder("run")  # (nothing there)
    >>> found.index, found.checkpoints, found.manifest, found.logs
    (None, None, None, None)
    """
    folder = Path(folder)
    checkpoints = next((c for c in (folder / CHECKPOINTS_NAME, folder.parent / f".{CHECKPOINTS_NAME}")
                        if c.exists()), None)
    manifest = checkpoints / "manifest.json" if checkpoints is not None else None
    logs = folder / LOGS_NAME
    return RunFolder(folder, run_index(folder), checkpoints,
                     manifest if manifest is not None and manifest.is_file() else None,
                     logs if logs.is_dir() else None)


def checkpoints_of(paths: Sequence[Path], checkpoints: object = None) -> Path | None:
    """The checkpoints folder of these shards: ``checkpoints`` when it is a path, none when
    it is False, and when None, where the pipeline puts it beside the run folder whose
    shards these are (none for shards of several folders).

    Raises
    ------
    MergeError
        ``checkpoints`` names no folder, or one without any ``shard_<rank>`` folder in it
        (a rank's folder given for the checkpoints folder?).

    >>> checkpoints_of([Path("run/shard_0.h5")]), checkpoints_of([Path("run/shard_0.h5")], False)
    (None, None)
    """
    if checkpoints is False:
        return None
    if isinstance(checkpoints, str | os.PathLike):
        if not os.fspath(checkpoints):
            msg = "the checkpoints folder is an empty path"
            raise MergeError(msg)
        given = Path(checkpoints)
        if not given.is_dir():
            msg = f"{given}: {'not a folder' if given.exists() else 'no such folder'} (the checkpoints folder)"
            raise MergeError(msg)
        try:
            ranks = [e for e in given.iterdir() if re.fullmatch(r"shard_[0-9]+", e.name) and e.is_dir()]
        except OSError as err:
            msg = f"{given}: cannot list the checkpoints folder ({err.strerror or err})"
            raise MergeError(msg) from None
        if not ranks:
            msg = f"{given}: no shard_<rank> folder in it: not the pipeline's checkpoints folder"
            raise MergeError(msg)
        return given
    if checkpoints is not None:
        msg = f"checkpoints must be a folder, None or False, not {type(checkpoints).__name__}"
        raise MergeError(msg)
    folders = {Path(os.path.abspath(p)).parent for p in paths}
    return run_folder(Path(paths[0]).parent).checkpoints if len(folders) == 1 else None  # (as the shards were named)


def index_beside(paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The sequence index of the run folder whose shards ``paths`` are (a run folder's
    ``shard_<rank>.h5`` files, given as files), if it has one: None for files of several
    folders, or for some of a folder's shards only (its index would call the others'
    sequences missing).

    >>> index_beside([Path("run/shard_0.h5"), Path("other/shard_1.h5")]) is None
    True
    """
    folders = {Path(p).parent for p in paths}
    if len(folders) != 1:
        return None
    folder = folders.pop()
    try:
        there = {entry.name for entry in folder.iterdir() if rank_of(entry) is not None}
    except OSError:
        return None
    return run_index(folder) if there <= {Path(p).name for p in paths} else None


def stride_step(rank: int, positions: Iterable[int] | np.ndarray) -> int:
    """The greatest common divisor of ``p - rank`` over a rank's index positions ``p``.

    In a stride run of world size ``N`` it is a multiple of ``N`` (0: the rank holds
    no position other than its own rank).
    """
    offsets = np.abs(np.asarray(list(positions) if not isinstance(positions, np.ndarray) else positions,
                                dtype=np.int64) - rank)
    return int(np.gcd.reduce(offsets)) if offsets.size else 0


def world_size_of(steps: Mapping[int, int]) -> int | None:
    """The world size ``N`` of a stride run, from each rank's ``stride_step``.

    Worker ``r`` holds positions ``r, r + N, r + 2N, ...``, so ``p - r`` is a multiple
    of ``N`` for every position ``p`` of rank ``r``. ``N`` is the step that most ranks
    agree on; it must exceed every rank seen. None when the steps cannot tell (no
    rank holds two sequences) or disagree (then the ranks seen are all there is to
    go by).

    >>> world_size_of({0: 8, 1: 8, 6: 8})  # ranks 7 and up hold nothing
    8
    >>> world_size_of({0: 0, 1: 0}) is None
    True
    """
    votes = Counter(step for step in steps.values() if step)
    if not votes:
        return None
    (size, count), = votes.most_common(1)
    if size <= max(steps) or count * 2 <= sum(votes.values()):
        return None
    return size


def sample_steps(paths: Sequence[Path], index_ids: Iterable[str], sample: int = 4) -> dict[int, int]:
    """Rank -> ``stride_step`` of the first ``sample`` IDs of each readable shard named by rank.

    The index is read only as far as those IDs lie (in a stride run, the first
    ``sample`` x N positions); unreadable shards are passed over. The shards are read by
    forked processes where there are many (:func:`~virnucpro_merge.readahead.read_first_ids`).
    """
    ranked = [(rank, path) for path in paths if (rank := rank_of(path)) is not None and path.is_file()]
    wanted: dict[str, int] = {}
    for (rank, _), first in zip(ranked, read_first_ids([path for _, path in ranked], sample), strict=True):
        if not isinstance(first, ShardError):
            wanted.update(dict.fromkeys(first, rank))
    found: dict[int, list[int]] = {}
    left = len(wanted)
    for position, sequence_id in enumerate(index_ids):
        if not left:
            break
        rank = wanted.pop(sequence_id, None)
        if rank is not None:
            found.setdefault(rank, []).append(position)
            left -= 1
    return {rank: stride_step(rank, seen) for rank, seen in found.items()}


def folder_shards(
    directory: str | os.PathLike[str],
    *,
    world_size: int | None = None,
    index_ids: Iterable[str] | None = None,
) -> list[Path]:
    """A run folder's shards in rank order, ranks 0 to N - 1.

    ``N`` is ``world_size`` when given; else it is inferred from the index positions
    of the shards' first IDs (:func:`world_size_of`) when ``index_ids`` (the run's
    IDs in index order) are given, so that dead *last* ranks are found too; else it
    is the highest rank found, plus one. A rank without a file is a worker that
    never wrote one, and is listed all the same (a strict merge then names it; a
    partial one records it as failed).

    Raises
    ------
    MergeError
        The folder holds no ``shard_<N>.h5`` file, or one whose rank is not below
        ``world_size``.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(1,), empty=(), short={})
    >>> folder_shards("run")  # rank 1's file is absent: still listed, so the merge sees a dead worker
    [PosixPath('run/shard_0.h5'), PosixPath('run/shard_1.h5'), PosixPath('run/shard_2.h5')]
    """
    directory = Path(directory)
    found = _rank_files(directory)
    if not found:
        return _ranks_of_checkpoints(directory, world_size)
    return _all_ranks(found, directory, world_size, index_ids)


def _rank_files(directory: Path) -> dict[int, Path]:
    """A folder's ``shard_<rank>.h5`` files by rank (two claiming one rank: refused)."""
    found: dict[int, Path] = {}
    for entry in sorted(directory.iterdir()):
        rank = rank_of(entry)
        if rank is None:
            continue
        if rank in found:  # shard_1.h5 and shard_01.h5: which is rank 1's is not for us to guess
            msg = f"{directory}: {found[rank].name} and {entry.name} both claim rank {rank}"
            raise MergeError(msg)
        found[rank] = entry
    return found


def _all_ranks(found: Mapping[int, Path], directory: Path, world_size: int | None,
               index_ids: Iterable[str] | None) -> list[Path]:
    """The shards ``found`` (rank -> file of ``directory``) at their ranks, 0 to N - 1, the
    others absent files beside them; N as :func:`folder_shards` says."""
    size = max(found) + 1
    if world_size is not None:
        if world_size < size:
            msg = f"{found[max(found)]}: rank {max(found)} is not below the world size {world_size}"
            raise MergeError(msg)
        size = world_size
    elif index_ids is not None:
        inferred = world_size_of(sample_steps([found[rank] for rank in sorted(found)], index_ids))
        if inferred is not None and inferred > size:
            dead = [shard_name(r) for r in range(size, inferred)]
            logger.info("World size %d, from the IDs' index positions: no %s", inferred, listed(dead))
            size = inferred
    return [found.get(rank, shard_path(directory, rank)) for rank in range(size)]


def _ranks_of_checkpoints(directory: Path, world_size: int | None) -> list[Path]:
    """The shards of a run folder none of whose workers wrote one (a lost node), when its
    checkpoints are there: ranks 0 to N - 1, N the world size given, else the manifest's, else
    the highest rank with a checkpoint folder, plus one."""
    saved = run_folder(directory).checkpoints
    ranks = [int(m.group(1)) for entry in (saved.iterdir() if saved is not None and saved.is_dir() else ())
             if (m := re.fullmatch(r"shard_(\d+)", entry.name)) and entry.is_dir()]
    if not ranks:
        msg = f"{directory}: no shard_<N>.h5 files in this folder"
        raise MergeError(msg)
    manifest = read_manifest(saved / MANIFEST_NAME) if saved is not None and (saved / MANIFEST_NAME).is_file() \
        else None
    size = world_size or (manifest.world_size if manifest is not None else None) or max(ranks) + 1
    logger.info("%s: no shard_<N>.h5 file; %d ranks, from its checkpoints in %s", directory, size, saved)
    return [shard_path(directory, rank) for rank in range(size)]


def in_rank_order(paths: Sequence[Path]) -> list[Path]:
    """Shard files placed at the ranks that wrote them, when they are all of one folder's
    ``shard_<rank>.h5`` files (what a shell's ``shard_*.h5`` gives, ``shard_10`` before
    ``shard_2``): the ranks between them are absent files beside them. Other lists (a few
    of a folder's shards, named on purpose) are taken as given (their order is their ranks).

    >>> in_rank_order([Path("run/shard_10.h5"), Path("run/shard_2.h5"), Path("run/shard_0.h5")])[:3]
    [PosixPath('run/shard_0.h5'), PosixPath('run/shard_1.h5'), PosixPath('run/shard_2.h5')]
    """
    found = _a_folders_all(paths)
    return list(paths) if found is None else [found.get(rank, shard_path(Path(paths[0]).parent, rank))
                                              for rank in range(max(found) + 1)]


def _a_folders_all(paths: Sequence[Path]) -> dict[int, Path] | None:
    """The files at their ranks, when they are all of one folder's ``shard_<rank>.h5`` files
    (a shell's ``shard_*.h5``), no rank named twice; else None (a few of them named on
    purpose, or other files: their order is their ranks, and no file beside them is taken)."""
    ranks = [rank_of(p) for p in paths]
    if not paths or None in ranks or len(set(ranks)) != len(ranks) or len({Path(p).parent for p in paths}) != 1:
        return None
    found = {rank: Path(path) for rank, path in zip(ranks, paths, strict=True) if rank is not None}
    folder = Path(paths[0]).parent
    try:
        beside = {entry for entry in folder.iterdir() if rank_of(entry) is not None}
    except OSError:  # (no such folder: no file in it is left out)
        beside = set()
    return found if beside <= set(found.values()) else None


def rank_ranges(ranks: Sequence[int], most: int = 12) -> str:
    """Ranks as runs: ``0-3, 7, 9-12`` (at most ``most`` runs, then ``and N more ranks``).

    >>> rank_ranges([0, 1, 2, 3, 7, 9, 10])
    '0-3, 7, 9-10'
    """
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:most]]
    rest = sum(b - a + 1 for a, b in runs[most:])
    return ", ".join(shown) + (f" and {rest:,} more ranks" if rest else "")


def listed(names: Sequence[str], most: int = 5) -> str:
    """``a, b, c`` -- or ``a, b, c, d, e and 12 more`` past ``most`` names."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def expand_shard_args(
    args: Iterable[str | os.PathLike[str]],
    *,
    world_size: int | None = None,
    index_ids: Iterable[str] | None = None,
) -> list[Path]:
    """Turn command-line arguments into shard paths.

    A directory stands for its ``shard_<rank>.h5`` files in numeric rank order
    (``shard_2`` before ``shard_10``), as :func:`folder_shards` lists them (with
    ``world_size`` and ``index_ids``). Files stand for themselves, one a rank in the order
    given; but all of a folder's ``shard_<rank>.h5`` files (what a shell's ``shard_*.h5``
    gives, ``shard_10`` before ``shard_2``) stand for the folder, placed at their ranks, the
    ranks between and after them absent. A path that does not exist is a dead worker's shard
    when named as a shard file (``.h5``, ``.hdf5``), else a mistyped folder.

    Raises
    ------
    MergeError
        A path that does not exist and is not named as a shard file; see :func:`folder_shards`.

    Examples
    --------
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=12, world_size=3, dim=4,
    ...                     truncated=(), absent=(), empty=(), short={})
    >>> expand_shard_args(["run/"])
    [PosixPath('run/shard_0.h5'), PosixPath('run/shard_1.h5'), PosixPath('run/shard_2.h5')]
    >>> expand_shard_args(["run/shard_2.h5", "run/shard_0.h5", "run/shard_1.h5"])  # the folder's all
    [PosixPath('run/shard_0.h5'), PosixPath('run/shard_1.h5'), PosixPath('run/shard_2.h5')]
    >>> expand_shard_args(["run/shard_2.h5", "run/shard_0.h5"])  # two of them: as given
    [PosixPath('run/shard_2.h5'), PosixPath('run/shard_0.h5')]
    >>> expand_shard_args(["runn"])
    Traceback (most recent call last):
    ...
    virnucpro_merge.errors.MergeError: runn: no such run folder or shard file
    """
    paths: list[Path] = []
    folders = False
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            folders = True
            paths.extend(folder_shards(path, world_size=world_size, index_ids=index_ids))
        elif path.exists() or path.suffix.lower() in _SHARD_SUFFIXES:
            paths.append(path)
        else:
            msg = f"{path}: no such run folder or shard file"
            raise MergeError(msg)
    found = None if folders else _a_folders_all(paths)
    return paths if found is None else _all_ranks(found, paths[0].parent, world_size, index_ids)


_SHARD_SUFFIXES = (".h5", ".hdf5", ".hdf")  # (a path that does not exist, named so: a dead worker's shard)
