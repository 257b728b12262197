"""Check, any time later, that a merged file still holds what its merge wrote.

:func:`verify_merged` reads the file once: the report against the datasets (row
counts, the shards' offsets, the dimension, the missing IDs sorted and absent from
``sequence_ids``, every ID once), then every block of rows and of IDs against the
checksum the merge recorded (:mod:`virnucpro_merge.checksums`). With ``against``,
every row is also compared, bit for bit, with the row of the same ID in the shards.

A virtual output's embeddings are its shards' own rows: they are checked by the
sources' fingerprints (size and modification time) only (``against`` would compare
them with themselves). A file merged before checksums existed, or with checksums of a
kind this version does not know, gets the structure checks only, and says so.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._files import file_key
from .checksums import ALGORITHM, ID_TABLE, ROW_TABLE, ids_crc, nonfinite_rows, read_checksums, rows_checksum
from .crosscheck import rows_against_checkpoints
from .errors import MergeError, ShardError, UnreadableShardError, shown_id
from .ids import SortedHashes, as_bytes, id_hashes, utf8_ids
from .ranks import checkpoints_of, folder_shards, listed
from .report import report_problems
from .shards import (
    CORRUPT,
    EMBEDDINGS,
    EMPTY_FILE,
    ID_CHUNK,
    REPORT_GROUP,
    SEQUENCE_IDS,
    TRUNCATED,
    embeddings_of,
    first_line,
    iter_id_chunks,
    open_shard,
    read_report_summary,
    read_rows,
)
from .sources import source_problems
from .statuses import ShardStatus
from .validation import IdIndex

__all__ = ["Verification", "verify_merged"]

logger = logging.getLogger("virnucpro_merge")

_BLOCK_BYTES = 8 * 2**20  # rows read at a time where no checksum table says how many
_SALVAGED = "salvaged"  # why a shard was not compared: its rank's rows came from checkpoints


def _mislabelled(shard: Path, checkpoints: Path) -> bool:
    """Whether the shard's checkpoints show that its IDs do not match its rows (a shard that
    cannot be read is left to the comparison to say so)."""
    try:
        return rows_against_checkpoints(shard, checkpoints) is not None
    except ShardError:
        return False


def _why(shard: dict[str, Any]) -> str:
    """Why a recorded shard is not compared: salvaged, or its error."""
    return _SALVAGED if shard["status"] == ShardStatus.SALVAGED else shard.get("error") or ShardStatus.FAILED


@dataclass
class Verification:
    """What :func:`verify_merged` found: ``problems`` (one line each, the first the
    worst), what was checked (``checked``) and what could not be (``notes``)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the row ranges (start, stop) whose embeddings do not match their checksum
    bad_rows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No problem found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.intact

    def _repr_html_(self) -> str:
        from .inspection.tables import verification_html  # the viewing wing draws; it needs no extra

        return verification_html(self)

    def summary(self) -> str:
        """One line: the first problem (and how many more), or what was found intact."""
        if self.problems:
            others = len(self.problems) - 1
            more = f" (and {_count(others, 'more problem')})" if others else ""
            return self.problems[0] + more
        notes = "; ".join(self.notes)
        return f"{self.path}: intact ({', '.join(self.checked)})" + (f"; {notes}" if notes else "")


def verify_merged(path: str | os.PathLike[str], against: Sequence[str | os.PathLike[str]] | None = None
                  ) -> Verification:
    """Check a merged file against its own report and checksums (and its shards).

    Parameters
    ----------
    path : path-like
        A file written by :func:`aggregate_shards` or :func:`materialize`.
    against : sequence of path-like, optional
        Shards, or run folders standing for their shards, to compare every row with
        (each merged row against the row of the same ID); an unreadable one is
        skipped, and named in ``notes``.

    Returns
    -------
    Verification
        True when intact; else ``problems``, the first naming the first bad row
        range (and how many blocks are bad).

    Raises
    ------
    MergeError
        The file does not exist, is not HDF5, or is not a merged output; or none of
        ``against`` exists.

    Examples
    --------
    >>> from virnucpro_merge import aggregate_shards
    >>> from virnucpro_merge.synthetic import make_demo_run
    >>> run = make_demo_run("run", n_sequences=40, world_size=4, absent=(), truncated=(), empty=(), short={})
    >>> merged = aggregate_shards(run.shard_files, "embeddings.h5")
    >>> verify_merged(merged).intact
    True
    >>> verify_merged(merged, against=run.shard_files).checked
    ['structure', '40 IDs checksummed', '4 blocks of rows checksummed', '40 rows compared with 4 shards']
    """
    path = Path(path)
    compared = None if against is None else _shards_to_compare(against)
    found = Verification(path)
    opened = False
    try:
        with open_shard(path) as handle:
            opened = True
            _check(path, handle, found, compared)
    except UnreadableShardError as err:
        if err.path != str(path) or not err.problem.startswith((TRUNCATED, CORRUPT, EMPTY_FILE)):
            raise
        cause = first_line(err.__cause__) if err.__cause__ is not None else err.problem
        damage = EMPTY_FILE if err.problem.startswith(EMPTY_FILE) else \
            f"HDF5 cannot {'read' if opened else 'open'} it ({cause})"
        found.problems.append(f"{path}: damaged: {damage}")  # (what a crash or a disk leaves of a file)
    return found


def _check(path: Path, handle: h5py.File, found: Verification, compared: list[Path] | None) -> None:
    try:
        report = read_report_summary(handle, path)
    except ShardError as err:  # the report's own bytes are damaged
        found.problems.append(f"{path}: damaged: {err.problem}")
        return
    if report is None:
        msg = f"{path}: not a merged output (no '{REPORT_GROUP}' in it): nothing to verify it against"
        raise MergeError(msg)
    _Checker(path, handle, report, found).run(compared)


def _shards_to_compare(against: object) -> list[Path]:
    """``against`` as shard paths, a folder standing for its shards; refused when none of
    them exists (a mistyped folder would otherwise compare nothing, and say intact)."""
    if isinstance(against, str | bytes | os.PathLike) or not isinstance(against, Sequence | np.ndarray):
        msg = f"against must be a list of shard files or run folders, not {type(against).__name__}"
        raise MergeError(msg)
    paths: list[Path] = []
    for item in against:
        given = Path(item)
        paths.extend(folder_shards(given) if given.is_dir() else [given])
    if not any(p.exists() for p in paths):
        msg = f"{listed([str(Path(p)) for p in against]) or 'nothing'}: no shard to compare the merged rows with"
        raise MergeError(msg)
    return paths


class _Checker:
    """One verification: the open file, its report, and what was found so far."""

    broken_table = False  # a checksum table that is there but unusable (already a problem)

    def __init__(self, path: Path, handle: h5py.File, report: dict[str, Any], found: Verification) -> None:
        self.path, self.handle, self.report, self.found = path, handle, report, found
        self.total, self.dim = report["total_sequences"], report["embedding_dim"]
        group = handle[REPORT_GROUP]
        recorded = report.get("checksums")
        self.recorded: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        version = group.attrs.get("format_version", 1)
        self.format = int(version) if isinstance(version, int | np.integer) else 0
        try:
            self.missing = _read_missing(group, path)
        except MergeError as err:
            found.problems.append(str(err))
            self.missing = []
        try:
            tables = read_checksums(group)
        except (OSError, ValueError, TypeError) as err:
            self.problem(f"damaged merge report (its checksum tables cannot be read: {first_line(err)})")
            self.broken_table, tables = True, (None, None)
        self.row_sums, self.id_sums = (self._table(name, table) for name, table in
                                       zip((ROW_TABLE, ID_TABLE), tables, strict=True))

    def _table(self, name: str, table: np.ndarray | None) -> np.ndarray | None:
        """A checksum table as read; one that is not ``(n, 3)`` integers is a damaged report."""
        if table is None or (table.ndim == 2 and table.shape[1] == 3 and table.dtype.kind in "iu"):
            return table
        self.problem(f"damaged merge report ('{name}' has shape {table.shape} and type {table.dtype})")
        self.broken_table = True
        return None

    def problem(self, text: str) -> None:
        self.found.problems.append(f"{self.path}: {text}")

    def run(self, against: list[Path] | None) -> None:
        emb, ids = self.handle.get(EMBEDDINGS), self.handle.get(SEQUENCE_IDS)
        if not isinstance(emb, h5py.Dataset) or not isinstance(ids, h5py.Dataset):
            self.problem(f"damaged: no '{EMBEDDINGS}' or '{SEQUENCE_IDS}' dataset")
            return
        if not self.check_structure(emb, ids):
            return
        index = self.check_ids(ids)
        self.check_rows(emb, compared=against is not None)
        if against is not None and self.report.get("layout") != "virtual":
            self.compare(emb, ids, index, against)

    # ------------------------------------------------------------------ structure
    def check_structure(self, emb: h5py.Dataset, ids: h5py.Dataset) -> bool:
        """The report by itself, then its counts against the datasets; False where reading on
        makes no sense."""
        for problem in report_problems(self.handle[REPORT_GROUP], self.report, self.missing):
            self.problem(problem)
        mismatch = self._datasets_problem(emb, ids)
        if mismatch is not None:
            self.problem(mismatch)
            return False
        rows = sum(s["num_sequences"] for s in self.report["shards"] if s["status"] != ShardStatus.FAILED)
        if rows != self.total:
            self.problem(f"the report's shards hold {rows} rows, the file {self.total}")
        if self.format == 1 and isinstance(self.report.get("checksums"), dict):
            self.found.notes.append("merged by an earlier version (report format 1): its report is cross-checked, "
                                    "not checksummed")
        self.found.checked.append("structure")
        return True

    def _datasets_problem(self, emb: h5py.Dataset, ids: h5py.Dataset) -> str | None:
        """How the datasets disagree with the report's shape and layout (None: they do not)."""
        total, dim, layout = self.total, self.dim, self.report.get("layout")
        if emb.ndim != 2 or emb.shape[0] != total or (total and emb.shape[1] != dim):
            return f"'{EMBEDDINGS}' has shape {emb.shape}, the report says ({total}, {dim})"
        if ids.shape != (total,):
            return f"'{SEQUENCE_IDS}' has shape {ids.shape}, the report says ({total},)"
        if not (h5py.check_string_dtype(ids.dtype) or ids.dtype.kind == "S"):
            return f"'{SEQUENCE_IDS}' holds {ids.dtype}, not strings"
        if emb.is_virtual != (layout == "virtual"):
            kind = "virtual" if emb.is_virtual else "contiguous"
            return f"the report says layout {layout!r}, the embeddings are {kind}"
        return None

    # ------------------------------------------------------------------ IDs
    def _id_blocks(self, ids: h5py.Dataset) -> Iterator[tuple[int, int, int | None]]:
        """``(start, stop, recorded CRC or None)`` of each block of IDs to read."""
        if self.id_sums is not None and _covers(self.id_sums, self.total):
            for start, stop, crc in self.id_sums.tolist():
                yield start, stop, crc
            return
        if self.id_sums is not None:
            self.problem("the ID checksums do not cover every row once (damaged report)")
        for start in range(0, self.total, ID_CHUNK):
            yield start, min(start + ID_CHUNK, self.total), None

    def check_ids(self, ids: h5py.Dataset) -> IdIndex:
        """Every ID block against its checksum; the IDs unique; no missing ID among them."""
        bad: list[tuple[int, int]] = []
        missing = set(self.missing)
        present: list[str] = []

        def chunks() -> Iterator[list[str]]:
            for start, stop, crc in self._id_blocks(ids):
                try:
                    block = ids[start:stop]
                except (OSError, ValueError, TypeError) as err:
                    unreadable = f"the IDs of rows {start}-{stop - 1} cannot be read ({first_line(err)})"
                    raise _Unreadable(unreadable) from err
                chunk = [i.decode("utf-8", "surrogateescape") if isinstance(i, bytes) else i for i in block.tolist()]
                if crc is not None and ids_crc(chunk) != crc:  # (the same CRC as of the stored bytes)
                    bad.append((start, stop))
                if missing and not missing.isdisjoint(chunk):
                    present.extend(sorted(missing.intersection(chunk))[:1])
                yield chunk

        index = IdIndex()
        try:
            index.add_shard(self.path, chunks())
        except _Unreadable as err:
            self.problem(str(err))
            return index
        if bad:
            self.problem(f"the IDs of rows {bad[0][0]}-{bad[0][1] - 1} do not match the checksum the merge recorded "
                         f"({len(bad)} of {len(self.id_sums) if self.id_sums is not None else 0} ID blocks bad)")
        duplicate = index.find_duplicate()
        if duplicate is not None:
            self.problem(f"the ID {shown_id(duplicate[0])} is in it twice")
        if present:
            self.problem(f"the report lists {shown_id(present[0])} as missing, but it is in '{SEQUENCE_IDS}'")
        self.found.checked.append(f"{self.total:,} IDs" + (" checksummed" if self.id_sums is not None else ""))
        return index

    # ------------------------------------------------------------------ rows
    def check_rows(self, emb: h5py.Dataset, *, compared: bool) -> None:
        """Every block of rows against its checksum (contiguous outputs), or the sources'
        fingerprints (virtual ones)."""
        if self.report.get("layout") == "virtual":
            self._check_sources()
        elif self._rows_checkable(compared):
            self._checksum_rows(emb)

    def _check_sources(self) -> None:
        """A virtual output: its rows are its shards', checked by their fingerprints."""
        for problem in source_problems(self.path, self.report.get("sources", [])):
            self.found.problems.append(problem)
        sources = len(self.report.get("sources", []))
        self.found.checked.append(f"the {_count(sources, 'source')}' fingerprints" if sources != 1
                                  else "the source's fingerprint")
        self.found.notes.append("its rows are its shards' own rows: only their fingerprints can be checked")

    def _rows_checkable(self, compared: bool) -> bool:
        """Whether the rows have checksums this version can check; where not, why is said
        (a problem, or a note for a file of an earlier version)."""
        hint = "" if compared else " (compare them with --against)"
        algorithm = self.recorded.get("algorithm", ALGORITHM)
        if self.row_sums is None and self.broken_table:
            return False  # (a problem already)
        if self.row_sums is None and self.recorded.get("embeddings"):
            self.problem(f"the report says its rows were checksummed, but '{ROW_TABLE}' is gone (damaged report)")
        elif self.row_sums is None:
            self.found.notes.append("merged before checksums existed: its rows cannot be checked" + hint)
        elif algorithm != ALGORITHM and self.format == 1:
            self.found.notes.append(f"its rows' checksums are of a kind this version does not know ({algorithm!r}): "
                                    "they cannot be checked" + hint)
        elif algorithm != ALGORITHM:
            pass  # (a problem already: this version wrote the file, and it names no checksum it knows)
        elif not _covers(self.row_sums, self.total):
            self.problem("the row checksums do not cover every row once (damaged report)")
        else:
            return True
        return False

    def _checksum_rows(self, emb: h5py.Dataset) -> None:
        """Every block of rows read back and checksummed; the rows holding NaN or Inf counted."""
        assert self.row_sums is not None
        widest = int((self.row_sums[:, 1] - self.row_sums[:, 0]).max(initial=0))
        buffer = np.empty((widest, self.dim), "<f4")
        bad: list[tuple[int, int]] = []
        nonfinite = 0
        for start, stop, crc in self.row_sums.tolist():
            rows = buffer[: stop - start]
            try:
                emb.read_direct(rows, np.s_[start:stop], np.s_[0 : stop - start])
            except OSError as err:
                self.problem(f"rows {start}-{stop - 1} cannot be read ({first_line(err)})")
                return
            if rows_checksum(rows) != crc:
                bad.append((start, stop))
            nonfinite += nonfinite_rows(rows)
        self.found.bad_rows = bad
        if bad:
            first, count = bad[0], len(bad)
            self.found.problems.insert(0, f"{self.path}: rows {first[0]}-{first[1] - 1} do not match the checksum "
                                          f"the merge recorded ({count} of {len(self.row_sums)} blocks bad)")
        recorded = self.report.get("nonfinite_rows")
        if not bad and isinstance(recorded, int) and recorded != nonfinite:
            self.problem(f"{nonfinite} rows hold NaN or Inf, the report says {recorded}")
        self.found.checked.append(f"{_count(len(self.row_sums), 'block')} of rows checksummed")

    # ------------------------------------------------------------------ against the shards
    def compare(self, emb: h5py.Dataset, ids: h5py.Dataset, index: IdIndex, shards: list[Path]) -> None:
        """Each row of each shard against the merged row of the same ID, bit for bit."""
        hashes = index.row_hashes()
        order = np.argsort(hashes, kind="stable")
        ordered = SortedHashes(hashes[order])
        compared, used, stopped = 0, 0, False
        skipped: list[str] = []
        failed = self._recorded_failed(shards)
        saved = checkpoints_of(shards)
        for shard in shards:
            if self._passed_over(shard, failed, saved, skipped):
                continue
            try:
                with open_shard(shard) as handle:
                    compared += self._compare_shard(emb, ids, shard, handle, ordered, order)
                used += 1
            except ShardError as err:
                skipped.append(f"{Path(err.path).name} ({err.problem})")
            if self.found.problems:
                stopped = shard != shards[-1]
                break
        self._say_compared(compared, used, stopped, skipped)

    def _passed_over(self, shard: Path, failed: dict[Path, str], saved: Path | None, skipped: list[str]) -> bool:
        """Whether ``shard`` is not compared (its rank's rows taken from its checkpoints, its IDs
        not matching its rows, or failed in the merge), with why: in ``skipped``, or a note."""
        if failed.get(shard) == _SALVAGED:
            skipped.append(f"{shard.name} (its rank's rows were taken from its checkpoints)")
        elif shard not in failed and saved is not None and _mislabelled(shard, saved):
            skipped.append(f"{shard.name} (its IDs do not match its rows, as its checkpoints show)")
        elif shard in failed and shard.exists():  # a dead worker's shard, there since: the merge never had its rows
            self.found.notes.append(f"{shard}: the merge recorded it as failed ({failed[shard]}); it is "
                                    "there now, but its rows are not in this file: not compared "
                                    "(merge again to take them in)")
        elif shard in failed:
            skipped.append(f"{shard.name} (failed in the merge too)")
        else:
            return False
        return True

    def _say_compared(self, compared: int, used: int, stopped: bool, skipped: list[str]) -> None:
        """What the comparison with the shards checked (``compared`` rows of ``used`` shards), and
        what it could not."""
        self.found.checked.append(f"{_count(compared, 'row')} compared with {_count(used, 'shard')}"
                                  + (" (then stopped: something is wrong already)" if stopped else ""))
        if compared < self.total and not self.found.problems:
            salvaged = sum(s["num_sequences"] for s in self.report["shards"] if s["status"] == ShardStatus.SALVAGED)
            self.found.notes.append(f"{self.total - compared:,} rows are in none of the shards compared with"
                                    + (f" (the salvaged ranks' rows: {salvaged:,})" if salvaged else ""))
        if skipped:
            self.found.notes.append(f"not compared: {listed(skipped)}")

    def _recorded_failed(self, shards: list[Path]) -> dict[Path, str]:
        """The shards of ``shards`` that the merge recorded as failed (or salvaged), with why: the
        same file, or the same folder and name (the merge may have named it from another folder)."""
        recorded = [s for s in self.report["shards"] if s["status"] in (ShardStatus.FAILED, ShardStatus.SALVAGED)]
        by_key = {file_key(s["path"]): _why(s) for s in recorded}
        tails = Counter(Path(s["path"]).parts[-2:] for s in self.report["shards"])  # (a tail two shards share: no)
        by_tail = {tail: _why(s) for s in recorded
                   if tails[tail := Path(s["path"]).parts[-2:]] == 1 and not os.path.lexists(s["path"])}
        found = {}
        for shard in shards:
            why = by_key.get(file_key(shard), by_tail.get(Path(os.path.abspath(shard)).parts[-2:]))
            if why is not None:
                found[shard] = why
        return found

    def _compare_shard(self, emb: h5py.Dataset, ids: h5py.Dataset, shard: Path, handle: h5py.File,
                       ordered: SortedHashes, order: np.ndarray) -> int:
        source = embeddings_of(handle, shard)
        step = max(1, _BLOCK_BYTES // max(1, source.shape[1] * 4))
        done = 0
        for chunk in iter_id_chunks(handle, shard, step):
            rows = _merged_rows(utf8_ids(chunk), ids, ordered, order)
            lost = np.flatnonzero(rows < 0)
            if lost.size:
                self.problem(f"{shown_id(chunk[int(lost[0])])} of {shard} is not in it")
                return done
            mine = source[done : done + len(chunk)].astype("<f4")
            theirs = _read_rows(emb, rows)
            same = (mine.view(np.uint32) == theirs.view(np.uint32)).all(axis=1)
            if not same.all():
                first = int(np.flatnonzero(~same)[0])
                self.problem(f"row {int(rows[first])} ({shown_id(chunk[first])}) differs from row {done + first} of "
                             f"{shard} ({int((~same).sum())} of this block's {len(chunk)} rows differ)")
                return done + len(chunk)  # (this block's rows were compared: some differ)
            done += len(chunk)
        return done


class _Unreadable(Exception):
    """A part of the file that HDF5 cannot read back."""


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def _read_missing(group: h5py.Group, path: Path) -> list[str]:
    try:
        return group["missing_ids"].asstr()[:].tolist() if "missing_ids" in group else []
    except (OSError, ValueError, TypeError) as err:
        msg = f"{path}: damaged merge report ({first_line(err)})"
        raise MergeError(msg) from err


def _covers(table: np.ndarray, total: int) -> bool:
    """Whether the ``(start, stop, crc)`` rows of ``table`` tile ``0 .. total`` exactly (sorted)."""
    if table.size == 0:
        return total == 0
    starts, stops = table[:, 0], table[:, 1]
    return bool(starts[0] == 0 and stops[-1] == total and np.all(stops[:-1] == starts[1:]) and np.all(stops > starts))


def _merged_rows(wanted: list[bytes], ids: h5py.Dataset, ordered: SortedHashes, order: np.ndarray) -> np.ndarray:
    """The merged file's row of each of the IDs ``wanted`` (their UTF-8 bytes), or -1 where it
    holds none: found by hash among the merged IDs' (``ordered``, rows ``order``), each match
    checked by the ID's bytes (a hash only suggests), the IDs that share a hash told apart."""
    hashes = id_hashes(wanted)
    where, found = ordered.find(hashes)
    rows = np.where(found, order[where], -1)
    stored = _read_ids(ids, rows[found])
    at = np.flatnonzero(found)
    for i in [int(at[k]) for k, held in enumerate(stored) if held != wanted[at[k]]]:  # (a collision: rare)
        sharing = order[where[i] : int(np.searchsorted(ordered.ordered, hashes[i], side="right"))]
        rows[i] = next((int(row) for row, held in zip(sharing.tolist(), _read_ids(ids, sharing), strict=True)
                        if held == wanted[i]), -1)
    return rows


def _read_ids(ids: h5py.Dataset, rows: np.ndarray) -> list[bytes]:
    """The merged IDs at ``rows`` (in any order, repeats allowed), as their UTF-8 bytes."""
    if not rows.size:
        return []
    distinct, back = np.unique(rows, return_inverse=True)
    held = read_rows(ids, distinct)
    return [as_bytes(held[k]) for k in back.tolist()]


def _read_rows(emb: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``emb[rows]`` as float32, for rows in any order (one span where they run on)."""
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size and np.all(np.diff(rows) == 1):
        return emb[int(rows[0]) : int(rows[-1]) + 1].astype("<f4", copy=False)
    sort = np.argsort(rows)
    out = np.empty((rows.size, emb.shape[1]), "<f4")
    out[sort] = emb[rows[sort]]
    return out
