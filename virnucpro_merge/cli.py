"""The ``virnucpro-merge`` command: parse, call the API, map errors to exit codes.

Exit status: 0 success, 1 the data failed validation (duplicates, missing IDs),
2 bad usage or unreadable input, 130 interrupted (SIGINT), 143 terminated
(SIGTERM). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from ._processes import hand_back_large_frees
from ._version import __version__
from .checks import plan_merge
from .errors import MergeError, ValidationError, shown_id, twins_note
from .expected import detect_form, iter_expected_ids, read_expected_ids, read_expected_lookup
from .health import report_flags
from .ids import IdLookup
from .inspection.tables import format_report
from .merge import CHUNK_SIZE, LAYOUTS, ORDERS, OUTPUT_IS_THE_EXPECTED_FILE, aggregate_shards, materialize
from .outputs import check_output_folder, refuse_overwriting
from .plan import failed_summary
from .ranks import (
    checkpoints_of,
    expand_shard_args,
    folder_shards,
    index_beside,
    rank_of,
    run_index,
)
from .report import read_merge_report
from .rerun import checkpointed_missing, write_missing_fasta
from .salvage import scratch_folder
from .shards import get_shard_info, open_shard, read_id_rows
from .synthetic import make_demo_run
from .verdict import COMPLETE, rank_problems, ranks_missing, verdict_line, verdict_of
from .verify import verify_merged

__all__ = ["main", "build_parser"]

PROG = "virnucpro-merge"
logger = logging.getLogger("virnucpro_merge")

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
_INFO_SHARDS = 40  # shards of a merge that `info` lists one a line at most, unless --all
_WATCH_INTERVAL = 60.0  # seconds between two looks of `watch`
_CLEAR = "\x1b[H\x1b[2J"  # a terminal's "home, clear the screen"


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so temp files are removed on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


class _Interrupt:
    """Ctrl-C, remembered: a KeyboardInterrupt raised where Python can only print it
    ("Exception ignored in ...": an h5py object being freed) must still end the command."""

    seen = False

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While a command runs, turn SIGTERM into an exception, and make sure a Ctrl-C is
    never lost (main thread only): an error raised after it is the Ctrl-C's doing (a
    library's own, as nbclient's when the report's kernel is stopped under it), and is
    told as the interruption it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Interrupt.seen = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated), signal.signal(signal.SIGINT, _Interrupt.handle)
    try:
        yield
        if _Interrupt.seen:  # the KeyboardInterrupt was swallowed on the way: the command is not done
            raise KeyboardInterrupt
    except Exception as err:
        if _Interrupt.seen:
            raise KeyboardInterrupt from err
        raise
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


_LONGEST_INTERVAL = 86_400


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= _LONGEST_INTERVAL:
        msg = f"expected a positive number of seconds, at most {_LONGEST_INTERVAL:,} (a day), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a positive whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `virnucpro-merge` command line (also what the docs' CLI page is built from)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Merge, validate and inspect the HDF5 shards of a multi-GPU embedding run."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    noise.add_argument("-v", "--verbose", action="store_true", help="log every shard and chunk")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    shards_help = "shard files, or folders whose shard_<N>.h5 files are taken in numeric order"
    agg = sub.add_parser("aggregate", help="merge shards into one file")
    agg.add_argument("shards", nargs="+", metavar="SHARD_OR_DIR", help=shards_help)
    agg.add_argument("-o", "--output", required=True, type=Path, help="the merged file to write")
    agg.add_argument("--expected", type=Path, metavar="FILE", help="expected IDs: text, FASTA or index JSON")
    agg.add_argument("--chunk-size", type=_positive_int, default=CHUNK_SIZE, metavar="N",
                     help=f"rows copied at a time (default {CHUNK_SIZE})")
    agg.add_argument("--partial", action="store_true",
                     help="skip failed shards and record missing IDs instead of failing")
    agg.add_argument("--fail-on-missing", action="store_true",
                     help="with --partial: write the partial output, then exit 1 if anything is missing "
                          "(for pipelines)")
    agg.add_argument("--layout", choices=LAYOUTS, default="contiguous",
                     help="virtual: copy no embeddings, map the shards in place (default: contiguous)")
    agg.add_argument("--order", choices=ORDERS, default="shards",
                     help="index: rows in the order of --expected (a sequence index or ID list); "
                          "default: shard by shard")
    agg.add_argument("--fail-on-nonfinite", action="store_true",
                     help="fail (exit 1) if any embedding holds NaN or Inf; by default they are counted")
    agg.add_argument("--fail-on-health", action="store_true",
                     help="write the output, then exit 1 if a rank's embeddings stand out (another scale, rows "
                          "at the float16 limit, all-zero or identical rows, another dtype); by default they are "
                          "said as warnings")
    agg.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: when stderr is a terminal)")

    val = sub.add_parser("validate", help="check shards against the expected IDs, writing nothing")
    val.add_argument("shards", nargs="+", metavar="SHARD_OR_DIR", help=shards_help)
    val.add_argument("--expected", type=Path, metavar="FILE",
                     help="expected IDs: text, FASTA or index JSON (required)")
    val.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    val.add_argument("--json", action="store_true",
                     help="print the findings as one JSON object (verdict, counts, ranks to re-run) instead of text")
    for command in (agg, val):
        command.add_argument("--world-size", type=_positive_int, metavar="N",
                             help="the number of workers, for a folder (default: read off the IDs' index "
                                  "positions with --expected, else the highest rank found + 1)")
        dask = command.add_mutually_exclusive_group()
        dask.add_argument("--scheduler", metavar="ADDRESS",
                          help="check IDs on this Dask scheduler's workers (needs the dask extra)")
        dask.add_argument("--workers", type=_positive_int, metavar="N",
                          help="check IDs on a local Dask cluster of N worker processes")

    info = sub.add_parser("info", help="describe a shard or a merged file")
    info.add_argument("path", type=Path, metavar="SHARD_OR_MERGED")
    info.add_argument("--all", action="store_true",
                      help=f"list every shard of a merge (by default, past {_INFO_SHARDS}, those worth a look)")

    mat = sub.add_parser("materialize", help="copy a virtual output's embeddings into a self-contained file")
    mat.add_argument("virtual", type=Path, metavar="VIRTUAL")
    mat.add_argument("-o", "--output", required=True, type=Path, help="the self-contained file to write")
    mat.add_argument("--chunk-size", type=_positive_int, default=CHUNK_SIZE, metavar="N",
                     help=f"rows copied at a time (default {CHUNK_SIZE})")
    mat.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    for command in (agg, mat):
        command.add_argument("--no-fsync", action="store_true",
                             help="do not wait for the output to reach the disk (still written whole or not at "
                                  "all; after a power loss it may be damaged: `verify` tells whether it is intact)")

    ver = sub.add_parser("verify", help="check a merged file against its report and checksums")
    ver.add_argument("merged", type=Path, metavar="MERGED")
    ver.add_argument("--against", nargs="+", metavar="SHARD_OR_DIR",
                     help="also compare every row with the row of the same ID in these shards")

    rerun = sub.add_parser("rerun", help="write the FASTA of the sequences a partial merge lacks")
    rerun.add_argument("merged", type=Path, metavar="MERGED_OR_IDS",
                       help="a (partial) merged file, whose missing IDs are written; or a list of IDs, one a line "
                            "(the re-run list a report writes)")
    rerun.add_argument("--index", required=True, type=Path, metavar="INDEX",
                       help="the run's sequence-index JSON (sequence_id, file_path, byte_offset)")
    rerun.add_argument("-o", "--output", required=True, type=Path, help="the FASTA file to write")
    rerun.add_argument("--fasta-dir", type=Path, metavar="DIR",
                       help="look here first for the FASTA files the index names (moved since the run)")

    rep = sub.add_parser("report", help="write one self-contained HTML report of a run (needs the notebooks extra)")
    rep.add_argument("run", nargs="+", metavar="RUN_DIR_OR_SHARDS",
                     help="the run folder, or its shard files in rank order")
    rep.add_argument("-o", "--output", required=True, type=Path, metavar="REPORT.html", help="the HTML file to write")
    rep.add_argument("--expected", type=Path, metavar="FILE",
                     help="expected IDs (default: the run folder's sequence_index.json, if any)")
    rep.add_argument("--merged", type=Path, metavar="MERGED.h5", help="a merged output to report on as well")
    rep.add_argument("--world-size", type=_positive_int, metavar="N",
                     help="the number of workers (default: read off the IDs' index positions)")
    rep.add_argument("--rerun-list", type=Path, metavar="FILE",
                     help="where to write the missing IDs (default: <REPORT>-rerun.txt beside the report)")
    rep.add_argument("--show-code", action="store_true", help="show the report notebook's code too")
    rep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar of the report notebook's cells (default: when stderr is a terminal)")
    rep.add_argument("--health", action="store_true",
                     help="also read every embedding and say which ranks' stand out (another scale, rows at the "
                          "float16 limit, all-zero or identical rows, another dtype)")
    rep.add_argument("--title", metavar="TEXT", help="the page's title (default: Run report of <the run's folder>)")
    rep.add_argument("--comment", metavar="TEXT", help="a comment shown under the verdict (and in the JSON)")
    rep.add_argument("--fail-on-incomplete", action="store_true",
                     help="exit 1 when the run is not complete (the page and its JSON are written all the same)")

    saved_help = {
        agg: "each shard's rows are checked against those its rank's checkpoints hold, and a rank without a usable "
             "shard gives the rows they hold",
        val: "a rank without a usable shard counts the IDs they hold (its shards' rows are not compared: aggregate "
             "does that)",
        rep: "why each dead worker stopped, and the sequences they hold (not missing: a merge salvages them)",
        rerun: "the missing IDs they hold are said (merge again with them before re-running)",
    }
    for command, what in saved_help.items():
        saved = command.add_mutually_exclusive_group()
        saved.add_argument("--checkpoints", type=Path, metavar="DIR",
                           help=f"the run's checkpoints folder: {what} (default: RUN/checkpoints or "
                                "<out>/.checkpoints beside the shards, if there)")
        saved.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                           help="do not look at the run's checkpoints")

    watch = sub.add_parser("watch", help="follow a run while it runs: each rank's progress, pace, ETA and state "
                                          "(read-only)")
    watch.add_argument("run", type=Path, metavar="RUN", help="the run folder (its checkpoints, manifest, logs, shards)")
    watch.add_argument("--interval", type=_positive_float, default=_WATCH_INTERVAL, metavar="SECONDS",
                       help=f"seconds between two looks (default {_WATCH_INTERVAL:g})")
    watch.add_argument("--once", action="store_true",
                       help="look once and exit: 0 running or complete, 1 a rank stalled, failed or was preempted")
    watch.add_argument("--json", action="store_true",
                       help="print each look as JSON (with --once one object; else one object a line)")
    watch.add_argument("--html", type=Path, metavar="PAGE.html",
                       help="also rewrite this self-contained page at each look (it reloads itself); never inside RUN")
    watch.add_argument("--world-size", type=_positive_int, metavar="N",
                       help="the number of ranks (default: the manifest's, else the highest rank found + 1)")
    watch.add_argument("--now", metavar="TIME",
                       help="judge the run as at this UTC time (ISO, e.g. 2026-01-05T12:00:00), not the clock's: "
                            "for a copy of a run folder looked at later")

    demo = sub.add_parser("demo", help="make a synthetic 8-worker run, merge it and print its merge report")
    demo.add_argument("directory", nargs="?", type=Path, default=Path("demo_run"), metavar="DIR",
                      help="folder for the run (default: ./demo_run)")
    return parser


def _progress(args: argparse.Namespace) -> tuple[bool, contextlib.AbstractContextManager[Any]]:
    """Whether to show a bar, and the context that keeps log lines from breaking it."""
    progress = sys.stderr.isatty() and not args.quiet if args.progress is None else args.progress
    return progress, logging_redirect_tqdm(loggers=[logger]) if progress else contextlib.nullcontext()


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace) -> Iterator[Any]:
    """The Dask client that --scheduler or --workers asks for, or None."""
    if not (args.scheduler or args.workers):
        yield None
        return
    from .cluster import connect

    with connect(args.scheduler, args.workers) as client:
        logger.info("Dask cluster with %d workers; dashboard: %s",
                    len(client.scheduler_info()["workers"]), client.dashboard_link)
        yield client


def _expected_for(args: argparse.Namespace) -> IdLookup | Path | None:
    """The expected IDs: read here, once (a pipe cannot be read twice), into a lookup (no
    Python str an ID), or (on a cluster: --scheduler or --workers) the file, streamed by each
    worker. Read before the cluster's client starts its threads (the shards' first IDs may
    be read by forked processes next)."""
    if args.expected is None:
        return None
    return args.expected if args.scheduler or args.workers else read_expected_lookup(args.expected)


def _shards_for(args: argparse.Namespace, expected: IdLookup | Path | None) -> list[Path]:
    """The shard paths of the command line; a folder's ranks go up to the world size, given or
    read off the IDs' index positions (so that a dead last rank is named too)."""
    index_ids = iter_expected_ids(expected) if isinstance(expected, Path) else None if expected is None else \
        expected.ids()
    return expand_shard_args(args.shards, world_size=args.world_size, index_ids=index_ids)


def _index_hint(args: argparse.Namespace) -> str | None:
    """The sequence index of a run folder on the command line, when --expected is not given."""
    if args.expected is not None:
        return None
    files = [Path(arg) for arg in args.shards if not Path(arg).is_dir()]
    indexes = [index for arg in args.shards if Path(arg).is_dir() and (index := run_index(arg)) is not None]
    if files and (beside := index_beside(files)) is not None:
        indexes.append(beside)
    return str(indexes[0]) if indexes else None


def _own_problem(error: str | None, salvage: dict[str, Any] | None) -> str | None:
    """What is wrong with a shard's own file: its error, but none where its rank was salvaged
    from a file that could be read (cut short, empty, mislabelled: its missing sequences say)."""
    return None if salvage is not None and salvage.get("shard_readable") else error


def _problems(shards: Sequence[tuple[str, str | None, int]], missing: list[str],
              expected: IdLookup | Path | None, given: Path | None) -> dict[str, list[int]]:
    """The ranks to re-run (:func:`~virnucpro_merge.verdict.rank_problems`); the missing IDs are
    placed at their ranks by their positions in the expected IDs only when those are the run's
    sequence index (``given``, a JSON file: in index order, as the ranks were given them)
    and no input named as a rank's shard stands at another place (a merged file beside re-run
    shards: their places are not their ranks). A text list is not placed: its order is not known
    to be the index's all the way (one ID repeated shifts every position after it)."""
    if not missing:
        return rank_problems(shards, {} if given is not None else None)
    at_their_ranks = all(rank_of(path) in (None, place) for place, (path, _, _) in enumerate(shards))
    if given is None or not given.is_file() or expected is None or not at_their_ranks or \
            detect_form(given)[0] != "json":
        return rank_problems(shards, None)
    placed = iter_expected_ids(expected) if isinstance(expected, Path) else expected
    return rank_problems(shards, ranks_missing(missing, placed, len(shards)))


def _id_namer(merged: Path) -> Callable[[int], str]:
    """The ID of a row of a merged file (read when asked: a flag names few)."""

    def named(row: int) -> str:
        with open_shard(merged) as handle:
            return shown_id(read_id_rows(handle, merged, np.array([row]), text=True)[0])

    return named


def _cmd_aggregate(args: argparse.Namespace) -> int:
    if args.fail_on_missing and not args.partial:
        msg = "--fail-on-missing goes with --partial (a strict merge fails on anything missing anyway)"
        raise MergeError(msg)
    check_output_folder(Path(args.output))  # (before the expected IDs and the shards are read: said at once)
    if args.expected is not None:  # before it is read: a pipe could not be read twice
        refuse_overwriting(args.output, [args.expected], OUTPUT_IS_THE_EXPECTED_FILE)
    if args.order == "index" and args.expected is None:
        msg = "--order index needs --expected (the run's sequence index, or IDs in index order)"
        raise MergeError(msg)
    hint = _index_hint(args)
    if hint is not None:
        logger.info("hint: %s is this run's sequence index; with --expected %s the merge also checks "
                    "that no sequence is missing", hint, hint)
    progress, redirect = _progress(args)
    with redirect:
        expected = _expected_for(args)
        shards = _shards_for(args, expected)
        with _dask_client(args) as client:
            output = aggregate_shards(
                shards,
                args.output,
                expected,
                chunk_size=args.chunk_size,
                partial=args.partial,
                progress=progress,
                fail_on_nonfinite=args.fail_on_nonfinite,
                layout=args.layout,
                order=args.order,
                client=client,
                durable=not args.no_fsync,
                checkpoints=args.checkpoints,
            )
    report = read_merge_report(output)
    problems = _problems([(s["path"], _own_problem(s.get("error"), s.get("salvage")), s["num_sequences"])
                          for s in report["shards"]], report["missing_ids"], expected, args.expected)
    line = verdict_line(report.get("num_expected"), report["num_missing"], problems)
    flags = report_flags(report, _id_namer(output))
    for flag in flags:
        logger.warning("Embedding health: %s", flag)
    if flags and args.fail_on_health:
        print(f"{PROG}: error: {output}: written, but {len(flags):,} embedding health "
              f"flag{'' if len(flags) == 1 else 's'} (the first: {flags[0]})", file=sys.stderr)
        return EXIT_INVALID
    if not report["partial"] or verdict_of(report.get("num_expected"), report["num_missing"], problems) == COMPLETE:
        logger.info("%s", line)  # (a dead worker none of whose sequences is missing: nothing to fail on)
        return EXIT_OK
    if args.fail_on_missing:
        print(f"{PROG}: error: {output}: written, but {line}", file=sys.stderr)
        return EXIT_INVALID
    logger.warning("Partial merge: %s", line)
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.expected is None:
        hint = _index_hint(args)
        msg = "validate needs --expected FILE" + (f" (this run's sequence index is {hint})" if hint else "")
        raise MergeError(msg)
    progress, redirect = _progress(args)
    with redirect:
        expected = _expected_for(args)
        shards = _shards_for(args, expected)
        with _dask_client(args) as client, scratch_folder() as scratch:
            try:
                plan = plan_merge(shards, expected, partial=True, client=client, storage=False,
                                  checkpoints=checkpoints_of(shards, args.checkpoints), scratch=scratch,
                                  progress=progress)
            except ValidationError as err:  # (a duplicate: the verdict first all the same, and the JSON)
                line = f"INVALID: {err}"
                print(json.dumps({"verdict": "invalid", "line": line, "exit_status": EXIT_INVALID}, indent=1)
                      if args.json else line)
                raise
    failed = _problems([(str(s.path), _own_problem(s.error, None if s.salvage is None else s.salvage.summary()),
                         s.num_sequences) for s in plan.shards], plan.missing_ids, expected, args.expected)
    line = verdict_line(plan.num_expected, len(plan.missing_ids), failed)
    status = EXIT_OK if verdict_of(plan.num_expected, len(plan.missing_ids), failed) == COMPLETE else EXIT_INVALID
    if args.json:
        print(json.dumps({
            "verdict": verdict_of(plan.num_expected, len(plan.missing_ids), failed), "line": line,
            "exit_status": status, "shards": len(shards), "sequences": plan.total_sequences,
            "expected": plan.num_expected, "missing": len(plan.missing_ids), "missing_ids_first": plan.missing_ids[:10],
            "extra": plan.num_extra, "ranks_to_rerun": failed,
            "failed": [{"path": str(s.path), "error": s.error} for s in plan.unfinished_shards],
            "salvaged": [{"path": str(s.path), "rows": s.num_sequences, "checkpoints": str(s.salvage.folder)}
                         for s in plan.shards if s.salvage is not None and s.salvage.file is not None],
        }, indent=1))
        return status
    print(line)
    print(f"{len(shards)} shards, {plan.total_sequences} sequences, {plan.num_expected} expected IDs")
    for summary in failed_summary(plan):  # (a run of absent ranks in one line)
        print(f"failed: {summary}")
    print(f"missing: {len(plan.missing_ids)}" + (f" (first 10: {plan.missing_ids[:10]})" if plan.missing_ids else "")
          + twins_note(plan.missing_twins))
    print(f"extra: {plan.num_extra}")
    return status


def _cmd_materialize(args: argparse.Namespace) -> int:
    progress, redirect = _progress(args)
    with redirect:
        materialize(args.virtual, args.output, chunk_size=args.chunk_size, progress=progress,
                    durable=not args.no_fsync)
    return EXIT_OK


def _cmd_rerun(args: argparse.Namespace) -> int:
    write_missing_fasta(args.merged, args.index, args.output, fasta_dir=args.fasta_dir)  # (it says what it wrote)
    held = checkpointed_missing(args.merged, args.checkpoints)
    if held:
        logger.warning("%s of these sequences are held by checkpoints in %s: merge again (aggregate reads the run's "
                       "checkpoints) to take their rows in, and re-run only the rest", f"{held[0]:,}", held[1])
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    missing = [name for name in ("nbformat", "nbclient", "nbconvert", "ipykernel", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if missing:
        msg = f"report needs the notebooks extra ({', '.join(missing)}): pip install 'virnucpro-merge[notebooks]'"
        raise MergeError(msg)
    from .inspection.runreport import data_files, write_run_report

    if len(args.run) == 1 and not Path(args.run[0]).exists():
        msg = f"{args.run[0]}: no such run folder or shard file"
        raise MergeError(msg)
    folder = Path(args.run[0]) if len(args.run) == 1 and Path(args.run[0]).is_dir() else None
    run: Path | list[Path] = folder if folder is not None else expand_shard_args(args.run, world_size=args.world_size)
    progress, redirect = _progress(args)
    with redirect:
        output = write_run_report(run, args.output, expected=args.expected, merged=args.merged,
                                  world_size=args.world_size, rerun_list=args.rerun_list, show_code=args.show_code,
                                  checkpoints=args.checkpoints, title=args.title, comment=args.comment,
                                  progress=progress, health=args.health)
    if args.expected is None:
        index = index_beside(run if isinstance(run, list) else folder_shards(run, world_size=args.world_size))
        if index is not None:
            logger.info("Expected IDs: %s, the run folder's sequence index", index)
    logger.info("Wrote %s", output)  # (and the report said what became of its re-run list)
    summary, _ = data_files(output)
    if args.fail_on_incomplete:
        if not summary.exists():
            msg = f"{output}: written, but the report gave no verdict (no re-run list was asked for)"
            raise MergeError(msg)
        if json.loads(summary.read_text(encoding="utf-8"))["verdict"] != COMPLETE:
            return EXIT_INVALID
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    found = verify_merged(args.merged, args.against)  # (it takes run folders as they are)
    if not found.intact:
        print(f"{PROG}: error: {found.summary()}", file=sys.stderr)
        return EXIT_INVALID
    print(found.summary())
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    info = get_shard_info(args.path)
    print(f"path: {info['path']}")
    print(f"sequences: {info['num_sequences']}")
    print(f"embedding dimension: {info['embedding_dim']}")
    print(f"dtype: {info['dtype']}")
    print(f"first IDs: {', '.join(info['sequence_ids_sample'])}")
    if info["merged"]:
        report = read_merge_report(args.path)
        print()
        print(format_report(report, most=None if args.all else _INFO_SHARDS))
        if report.get("source_problems"):
            return EXIT_INVALID
    return EXIT_OK


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` would be written inside ``folder`` (or under it)."""
    return path.resolve().parent.is_relative_to(folder.resolve())


def _show_progress(args: argparse.Namespace, found: Any, clear: bool) -> None:
    """Print one look of `watch`: text (the screen cleared first in a terminal) or JSON."""
    if args.json:
        print(json.dumps(found.to_dict(), indent=1 if args.once else None), flush=True)
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print((_CLEAR if clear else "") + found.describe(width=width), flush=True)


def _write_page(path: Path, found: Any, interval: float) -> None:
    from .inspection.tables import progress_page
    from .outputs import atomic_output

    page = progress_page(found, refresh=interval).encode("utf-8")
    with atomic_output(path, len(page), durable=False) as pending:  # (a page a minute: no fsync)
        pending.path.write_bytes(page)


def _refuse_a_page_in_the_run(page: Path, run: Path) -> None:
    """A watch writes nothing in the run: its folder, nor the checkpoints and logs found beside it."""
    if not run.is_dir():
        return  # (the reader says what is wrong with it)
    from .ranks import run_folder

    places = run_folder(run.resolve())  # (the pipeline's checkpoints and logs may sit beside it)
    for folder in (run, places.checkpoints, places.logs):
        if folder is not None and _inside(page, folder):
            msg = f"{page}: inside the run's folder {folder}: watch writes nothing there (put it elsewhere)"
            raise MergeError(msg)


def _cmd_watch(args: argparse.Namespace) -> int:
    from .inspection.progress import ProgressReader

    if args.html is not None:
        _refuse_a_page_in_the_run(args.html, args.run)
    reader = ProgressReader(args.run, world_size=args.world_size)
    clear = sys.stdout.isatty() and not args.once and not args.json
    try:
        while True:
            found = reader.read(args.now)
            _show_progress(args, found, clear)
            if args.html is not None:
                _write_page(args.html, found, args.interval)
            if args.once:
                return found.exit_status
            if found.complete:  # (nothing more will change: the watch ends by itself)
                logger.info("the run is complete: every rank wrote its shard")
                return EXIT_OK
            time.sleep(args.interval)
    except KeyboardInterrupt:
        _Interrupt.seen = False  # (Ctrl-C is how a watch ends: not an interruption of anything)
        logger.info("stopped watching %s", args.run)
        return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    run = make_demo_run(args.directory)
    print(f"Synthetic run in {run.directory}: {len(run.sequence_ids)} sequences over {run.world_size} workers")
    print(f"  truncated shard: ranks {list(run.truncated)}; no file: ranks {list(run.absent)}; "
          f"empty (0, 0) shard: ranks {list(run.empty)}; died part-way: ranks {sorted(run.short)}")
    output = run.directory / "embeddings.h5"
    aggregate_shards(run.shard_files, output, read_expected_ids(run.index), partial=True)
    print(f"Merged with --partial into {output}\n")
    print(format_report(read_merge_report(output)))
    return EXIT_OK


COMMANDS = {
    "aggregate": _cmd_aggregate,
    "validate": _cmd_validate,
    "info": _cmd_info,
    "materialize": _cmd_materialize,
    "verify": _cmd_verify,
    "rerun": _cmd_rerun,
    "report": _cmd_report,
    "watch": _cmd_watch,
    "demo": _cmd_demo,
}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Show the package's log on stderr for the length of one command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit finds no broken pipe either."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    hand_back_large_frees()
    try:
        with _logging_to_stderr(args), _signals_unwind():
            return COMMANDS[args.command](args)
    except ValidationError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except MergeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `virnucpro-merge info m.h5 | head -1`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except OSError as err:
        print(f"{PROG}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the output was left as it was", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenProcessPool:  # (a process sharing the work was killed: out of memory, say; or by a Ctrl-C)
        if _Interrupt.seen:
            print(f"{PROG}: interrupted; the output was left as it was", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{PROG}: error: a process sharing the work ended before its part was done (killed? out of "
              "memory?); the output was left as it was", file=sys.stderr)
        return EXIT_USAGE
    except _Terminated:
        print(f"{PROG}: terminated; the output was left as it was", file=sys.stderr)
        return EXIT_TERMINATED
