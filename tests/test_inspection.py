"""Per-shard summaries and the missing-ID matrix (virnucpro_merge.inspection)."""

from __future__ import annotations

import doctest
import re
import shutil
import sys

import numpy as np
import pytest

import virnucpro_merge._processes
import virnucpro_merge.expected._ranges
import virnucpro_merge.inspection.run
from virnucpro_merge import MergeError, read_expected_ids, validate_shard_completeness
from virnucpro_merge import ids as ids_module
from virnucpro_merge.expected import write_id_list
from virnucpro_merge.inspection import (
    ABSENT,
    DUPLICATED,
    EMPTY,
    FAILED,
    INCOMPLETE,
    OFF_STRIDE,
    OK,
    format_shard_table,
    format_summary,
    inspect_run,
)
from virnucpro_merge.ranks import rank_paths
from virnucpro_merge.synthetic import make_demo_run, write_shard


@pytest.fixture(params=["one process", "several processes"])
def processes(request, monkeypatch):
    """Run a test as a small run is inspected (here, rank by rank), then as a large one is:
    the shards scanned, and the expected-ID file read in byte ranges, by several processes."""
    if request.param == "several processes":
        monkeypatch.setattr(virnucpro_merge.inspection.run, "_SHARED_FROM", 0)
        monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 3)
        monkeypatch.setattr(virnucpro_merge.expected._ranges, "_LOOKUP_RANGE", 256)
    return request.param


def test_several_processes_do_share_the_work(tmp_path, monkeypatch, processes):
    """(The fixture's second case does reach the pools.)"""
    from virnucpro_merge import _processes

    made = []
    real = _processes.pool
    monkeypatch.setattr(virnucpro_merge.inspection.run, "pool",
                        lambda n, **kw: made.append(("scan", n)) or real(n, **kw))
    monkeypatch.setattr(__import__("virnucpro_merge.expected._ranges").expected._ranges, "pool",
                        lambda n, **kw: made.append(("read", n)) or real(n, **kw))
    run = make_demo_run(tmp_path / "run", n_sequences=300, world_size=4, dim=2)
    inspect_run(run.directory)
    if processes == "several processes":
        assert ("scan", 3) in made
        assert ("read", 3) in made
    else:
        assert ("scan", 3) not in made


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo run: 2000 sequences, 8 ranks; 3 truncated, 5 absent, 6 short, 7 empty."""
    run = make_demo_run(tmp_path_factory.mktemp("demo"))
    return run, inspect_run(run.shard_files, run.sequence_ids)


def test_demo_summary_matches_the_failures(demo):
    _run, found = demo
    assert [s.rank for s in found.shards] == list(range(8))
    assert [s.expected for s in found.shards] == [250] * 8
    assert [s.present for s in found.shards] == [250, 250, 250, 0, 250, 0, 150, 0]
    assert [s.missing for s in found.shards] == [0, 0, 0, 250, 0, 250, 100, 250]
    assert [s.status for s in found.shards] == [OK, OK, OK, FAILED, OK, ABSENT, INCOMPLETE, EMPTY]
    assert "truncated" in found.shards[3].error
    assert found.shards[5].error == "file does not exist"
    assert found.shards[0].error is None


def test_demo_missing_matrix_is_what_the_failures_imply(demo):
    _run, found = demo
    expected = np.zeros((8, 250), dtype=bool)
    expected[[3, 5, 7], :] = True  # lost shards: whole rows
    expected[6, 150:] = True  # died after 60 % of its 250: the tail
    assert found.missing.dtype == bool
    np.testing.assert_array_equal(found.missing, expected)
    assert found.assigned.all()
    assert found.num_missing == 850


def test_missing_ids_agree_with_validation(demo):
    run, found = demo
    readable = [p for r, p in enumerate(run.shard_files) if r not in run.failed_ranks]
    missing, extra = validate_shard_completeness(readable, run.sequence_ids)
    assert found.missing_ids == sorted(missing)
    assert extra == set()
    # Cell (r, j) is index position r + j * N.
    assert found.missing_ids[:3] == ["seq000003", "seq000005", "seq000007"]
    assert all(int(i[3:]) % 8 in (3, 5, 6, 7) for i in found.missing_ids)


def test_uneven_assignment_is_padded_and_masked(tmp_path, processes):
    # 10 sequences over 4 ranks: ranks 0, 1 get 3; ranks 2, 3 get 2.
    run = make_demo_run(tmp_path, n_sequences=10, world_size=4, dim=4,
                        truncated=(), absent=(3,), empty=(), short={})
    found = inspect_run(run.shard_files, run.sequence_ids)
    assert found.missing.shape == found.assigned.shape == (4, 3)
    assert found.assigned.tolist() == [[True] * 3, [True] * 3, [True, True, False], [True, True, False]]
    assert found.missing.tolist() == [[False] * 3, [False] * 3, [False] * 3, [True, True, False]]
    assert [s.expected for s in found.shards] == [3, 3, 2, 2]
    assert found.missing_ids == ["seq000003", "seq000007"]


def test_more_ranks_than_sequences(tmp_path, processes):
    run = make_demo_run(tmp_path, n_sequences=2, world_size=3, dim=4,
                        truncated=(), absent=(), empty=(), short={})
    found = inspect_run(run.shard_files, run.sequence_ids)
    # rank 2 was assigned nothing and wrote a (0, 0) shard: that is fine.
    assert [(s.expected, s.present, s.status) for s in found.shards] == [(1, 1, OK), (1, 1, OK), (0, 0, OK)]
    assert found.num_missing == 0


def test_duplicates_within_and_across_shards(tmp_path, processes):
    ids = ["a", "b", "c", "d"]
    emb = np.zeros((2, 3), dtype=np.float32)
    write_shard(tmp_path / "shard_0.h5", ["a", "a"], emb)  # a, c expected
    write_shard(tmp_path / "shard_1.h5", ["b", "a"], emb)  # b, d expected; a is rank 0's
    found = inspect_run(rank_paths(tmp_path, 2), ids)
    assert [s.status for s in found.shards] == [DUPLICATED, DUPLICATED]
    assert found.missing_ids == ["c", "d"]


def test_a_directory_or_garbage_file_is_failed_not_raised(tmp_path, processes):
    (tmp_path / "shard_0.h5").mkdir()
    (tmp_path / "shard_1.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "shard_2.h5").write_bytes(b"")
    found = inspect_run(rank_paths(tmp_path, 3), ["x", "y", "z"])
    assert [s.status for s in found.shards] == [FAILED] * 3
    assert "not an HDF5 file" in found.shards[1].error
    assert "0 bytes" in found.shards[2].error
    assert found.missing.all()


def test_no_shards_is_an_error():
    with pytest.raises(ValueError, match="No shard files provided"):
        inspect_run([], ["a"])


def test_counts_and_table(demo):
    _, found = demo
    counts = found.counts()
    assert counts["present"] == [s.present for s in found.shards]
    assert counts["status"][3] == FAILED
    table = format_shard_table(found.shards).splitlines()
    assert len(table) == 1 + 8 + 1
    assert table[4].split() == ["3", "shard_3.h5", "250", "0", "250", "failed"]
    assert table[-1].split() == ["total", "2000", "1150", "850"]
    assert "/" not in "\n".join(table)  # file names only, never the folder


def test_write_id_list_round_trips(tmp_path, demo):
    _, found = demo
    out = write_id_list(found.missing_ids, tmp_path / "rerun.txt")
    assert out == tmp_path / "rerun.txt"
    assert read_expected_ids(out) == found.missing_ids
    assert out.read_bytes().count(b"\n") == 850


def test_rank_paths_include_absent_files(tmp_path):
    paths = rank_paths(tmp_path, 12)
    assert [p.name for p in paths[9:]] == ["shard_9.h5", "shard_10.h5", "shard_11.h5"]
    assert not any(p.exists() for p in paths)


def test_docstring_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (the examples write run/ and m.h5 where they stand, as a user would)
    assert doctest.testmod(virnucpro_merge.inspection.run).failed == 0


# --------------------------------------------------------------------------- the user's own run


@pytest.fixture(scope="module")
def dead_last(tmp_path_factory):
    """A run folder whose *last* worker died before writing (ranks 0-6 have files, 7 none)."""
    return make_demo_run(tmp_path_factory.mktemp("dead_last"), n_sequences=400, world_size=8, dim=4,
                         truncated=(2,), absent=(7,), empty=(), short={})


def test_a_run_folder_with_its_index(dead_last, processes):
    """The folder's shards, its sequence_index.json, and the world size from the IDs."""
    found = inspect_run(dead_last.directory)
    assert found.world_size == 8
    assert found.world_size_from == "the IDs' index positions"
    assert found.shards[7].status == ABSENT
    assert found.shards[7].path.name == "shard_7.h5"
    assert found.shards[2].status == FAILED
    assert found.num_missing == 100
    assert found.expected_from == "sequence_index.json, the run folder's index"


def test_the_index_or_any_expected_file_by_path(dead_last, tmp_path, processes):
    by_index = inspect_run(dead_last.directory, dead_last.index)
    listed = tmp_path / "ids.txt"
    write_id_list(dead_last.sequence_ids, listed)
    by_list_file = inspect_run(dead_last.directory, listed)
    by_list = inspect_run(dead_last.shard_files[:7], dead_last.sequence_ids)  # today's call, rank 7 left out
    for found in (by_index, by_list_file, by_list):
        assert [s.status for s in found.shards] == [OK, OK, FAILED, OK, OK, OK, OK, ABSENT]
        assert found.missing_ids == by_index.missing_ids


def test_without_the_index_the_folder_says_what_it_can(dead_last, tmp_path):
    import shutil

    folder = tmp_path / "no_index"
    shutil.copytree(dead_last.directory, folder)
    (folder / "sequence_index.json").unlink()
    found = inspect_run(folder)
    assert found.world_size == 7  # nothing tells of rank 7
    assert found.expected_from is None
    assert found.num_missing == 0
    assert [s.present for s in found.shards] == [50, 50, 0, 50, 50, 50, 50]


def test_a_given_world_size(dead_last):
    found = inspect_run(dead_last.directory, world_size=10)
    assert found.world_size == 10
    assert found.world_size_from == "given"
    assert [s.status for s in found.shards][7:] == [ABSENT] * 3
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        inspect_run(dead_last.directory, world_size=0)
    with pytest.raises(ValueError, match="rank 6 is not below the world size 5"):
        inspect_run(dead_last.directory, world_size=5)


def test_a_shard_off_the_stride_has_a_status_of_its_own(tmp_path, processes):
    """A run resumed with another GPU count: rank 1's IDs are at positions 2, 5, 8 (N = 3)."""
    ids = [f"s{i}" for i in range(12)]
    emb = np.zeros((3, 2), np.float32)
    write_shard(tmp_path / "shard_0.h5", [ids[p] for p in (0, 4, 8)], emb)
    write_shard(tmp_path / "shard_1.h5", [ids[p] for p in (1, 3, 11)], emb)
    write_shard(tmp_path / "shard_2.h5", [ids[p] for p in (2, 6, 10)], emb)
    write_shard(tmp_path / "shard_3.h5", [ids[p] for p in (3, 7)], emb[:2])
    found = inspect_run(tmp_path, ids, world_size=4)
    assert [s.status for s in found.shards] == [OK, OFF_STRIDE, OK, DUPLICATED]
    assert found.by_status == {OK: [0, 2], DUPLICATED: [3], OFF_STRIDE: [1]}  # (a value: a property, best first)


@pytest.mark.parametrize(("run", "expected", "words"), [
    ("shard_0.h5", None, "is a file; inspect_run takes a run folder"),
    ("nowhere", None, "does not exist"),
    (42, None, "not int"),
    (["shard_0.h5"], {"a", "b"}, "in index order"),
    (["shard_0.h5"], 7, "not int"),
    (["shard_0.h5"], [b"a"], "must be str, not bytes"),
    (["shard_0.h5"], ["a", None], "must be str, not NoneType"),
    (["shard_0.h5"], ["a", "x\ud83d"], "is not Unicode text"),
])
def test_arguments_of_the_wrong_kind_say_so(tmp_path, monkeypatch, run, expected, words):
    monkeypatch.chdir(tmp_path)
    write_shard(tmp_path / "shard_0.h5", ["a"], np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=words):
        inspect_run(run, expected)


def test_an_expected_id_longer_than_a_kilobyte(tmp_path, processes):
    """Very long IDs are kept as bytes objects, not in a fixed-width array, whichever way
    the expected file is read."""
    ids = ["a", "b", "x" * 1100, "é" * 700]
    write_shard(tmp_path / "shard_0.h5", ids[:3], np.zeros((3, 2), np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    for expected in (ids, tmp_path / "ids.txt"):
        found = inspect_run([tmp_path / "shard_0.h5"], expected)
        assert found.missing_ids == ["é" * 700]
        assert found.num_extra == 0
        assert found.sequence_ids[2] == "x" * 1100


def test_inspections_in_two_threads_at_once(tmp_path, monkeypatch):
    """Each inspection's scanning processes get its own lookup (nothing shared in between)."""
    import threading

    monkeypatch.setattr(virnucpro_merge.inspection.run, "_SHARED_FROM", 0)
    monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 2)
    runs = [make_demo_run(tmp_path / name, n_sequences=400, world_size=4, dim=2, truncated=(), absent=(k,),
                          empty=(), short={}) for k, name in enumerate("ab")]
    found: dict[int, list] = {0: [], 1: []}

    def inspect(k):
        for _ in range(8):
            found[k].append([s.status for s in inspect_run(runs[k].shard_files, runs[k].sequence_ids).shards])

    threads = [threading.Thread(target=inspect, args=(k,)) for k in (0, 1)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often: a window between them is hit
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
    assert found[0] == [[ABSENT, OK, OK, OK]] * 8
    assert found[1] == [[OK, ABSENT, OK, OK]] * 8


@pytest.mark.parametrize("ids", [["aa", "bb", "cc", "dd"],  # expected IDs that share a hash
                                 ["a", "bb", "ccc", "dddd"]])  # one hash each; zz has that of bb
def test_exact_though_two_ids_share_a_hash(tmp_path, monkeypatch, processes, ids):
    """Hashes only point the way: every match is checked against the ID's bytes."""
    write_shard(tmp_path / "shard_0.h5", [ids[0], ids[2], "zz"], np.zeros((3, 2), np.float32))  # zz: not expected
    write_shard(tmp_path / "shard_1.h5", [ids[1]], np.zeros((1, 2), np.float32))
    monkeypatch.setattr(ids_module, "_id_hash", len)  # every ID collides with those of its length
    found = inspect_run(rank_paths(tmp_path, 2), ids)
    assert found.missing_ids == [ids[3]]
    assert found.num_extra == 1
    assert [s.status for s in found.shards] == [OK, INCOMPLETE]


def test_how_it_shows_in_a_notebook(demo):
    _, found = demo
    html = found._repr_html_()
    assert "world size: 8" in html
    assert html.count("<tr>") == 1 + 8
    assert "#D55E00" in html  # the failed rank, in the plots' colour
    assert "/" not in html.replace("</", "")  # file names, not folders
    assert repr(found) == "<RunInspection: 8 ranks, 2,000 sequences expected, 1,150 rows present, 850 missing>"


def test_to_frame(demo):
    pytest.importorskip("pandas")
    _, found = demo
    frame = found.to_frame()
    assert list(frame.index) == list(range(8))
    assert list(frame.columns) == ["shard", "expected", "present", "missing", "checkpointed", "status", "problem"]
    assert frame.loc[3, "status"] == FAILED
    assert frame.loc[3, "problem"].startswith("truncated HDF5 file")
    assert frame.loc[0, "problem"] == ""  # (not NaN: a column of text)
    assert frame.loc[6, "problem"] == "holds 150 of its 250 sequences: 100 missing (its worker died part-way?)"
    assert frame.loc[7, "problem"] == "holds no row of its 250 sequences"
    assert frame["missing"].sum() == 850


def test_a_merge_report_shows_itself(tmp_path, demo):
    from virnucpro_merge import aggregate_shards, read_merge_report

    run, _ = demo
    report = read_merge_report(aggregate_shards(run.shard_files, tmp_path / "m.h5", run.sequence_ids, partial=True))
    assert isinstance(report, dict)
    html = report._repr_html_()
    assert "truncated HDF5 file" in html
    assert "partial: True" in html


def test_shard_files_in_shell_order_are_placed_at_their_ranks(tmp_path):
    """``report run/shard_*.h5``: the shell lists shard_10 before shard_2; a lost rank's
    file is not listed at all."""
    from virnucpro_merge.synthetic import write_stride_run

    run = write_stride_run(tmp_path / "run", 320, 16, dim=2, index=True)
    run.shard_files[6].unlink()
    shell_order = sorted(p for p in run.shard_files if p.exists())  # lexical: shard_0, shard_1, shard_10, ...
    assert shell_order[2].name == "shard_10.h5"
    found = inspect_run(shell_order, run.directory / "sequence_index.json")
    assert [s.status for s in found.shards] == ["ok"] * 6 + ["absent"] + ["ok"] * 9
    assert found.world_size == 16


# --------------------------------------------------------------------------- values from a file reach HTML escaped

MARKUP = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def _forged(tmp_path, demo):
    """A partial merge whose report carries markup in every text field it shows, its checksums
    made anew (as someone handing over a crafted file would)."""
    from tests.helpers import edit_summary
    from virnucpro_merge import aggregate_shards

    run, _ = demo
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.sequence_ids, partial=True)

    def inject(summary):
        for shard in summary["shards"]:
            shard.update(path=f"{MARKUP}/{MARKUP}.h5", status=MARKUP, error=MARKUP, dtype=MARKUP)
        summary.update(failed_shards=[s["path"] for s in summary["shards"]], created_by=MARKUP, created_at=MARKUP,
                       materialized_from=MARKUP,
                       lineage=[{"path": f"x/{MARKUP}", "created_at": MARKUP, "total_sequences": 5, "partial": True,
                                 "num_missing": 1, "failed_shards": [MARKUP]}])

    edit_summary(merged, inject)
    return merged


def test_markup_in_every_field_of_a_merge_report_is_escaped(tmp_path, demo):
    from virnucpro_merge import read_merge_report
    from virnucpro_merge.inspection.tables import format_report, report_html

    report = read_merge_report(_forged(tmp_path, demo))
    page = report_html(report)
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;" in page  # shown, as text
    assert MARKUP in format_report(report)  # (text is text)


def test_the_tables_escape_what_they_are_given_whatever_its_kind():
    """One escaping path: even a value that skipped the file's checks (a dict given in Python) is
    shown as text, a lineage entry's counts and flags included."""
    from virnucpro_merge.inspection.tables import report_html

    report = {"total_sequences": 1, "embedding_dim": 4, "partial": MARKUP, "missing_ids": [MARKUP],
              "failed_shards": [], "num_expected": 2, "num_missing": 1, "num_extra": MARKUP,
              "shards": [{"path": "a.h5", "num_sequences": MARKUP, "offset": MARKUP, "status": MARKUP,
                          "error": MARKUP, "nonfinite_rows": MARKUP}],
              "lineage": [{"path": MARKUP, "total_sequences": MARKUP, "partial": MARKUP}]}
    page = report_html(report)
    assert "<script" not in page
    assert "<img" not in page


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("lineage", [{"path": "m.h5", "total_sequences": MARKUP}], "'lineage' holds a record whose 'total_sequences'"),
    ("lineage", [{"path": "m.h5", "partial": MARKUP}], "'lineage' holds a record whose 'partial'"),
    ("num_expected", MARKUP, "'num_expected' is not a whole number"),
    ("nonfinite_rows", MARKUP, "'nonfinite_rows' is not a whole number"),
    ("shards", [{"path": "a", "num_sequences": 1, "offset": 0, "status": "ok", "nonfinite_rows": MARKUP}],
     "'shards' holds a record whose 'nonfinite_rows'"),
    ("sources", [{"path": MARKUP}], "'sources' holds a record without its 'size'"),
    ("layout", MARKUP, "'layout' is not 'contiguous' or 'virtual'"),
])
def test_a_value_of_the_wrong_kind_is_a_damaged_report(tmp_path, demo, field, value, problem):
    """What a report shows as a count or a flag must be one: a file that says otherwise is damaged."""
    from tests.helpers import edit_summary
    from virnucpro_merge import aggregate_shards, read_merge_report, verify_merged

    run, _ = demo
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.sequence_ids, partial=True)
    edit_summary(merged, lambda summary: summary.update({field: value}))
    with pytest.raises(MergeError, match=re.escape(problem)):
        read_merge_report(merged)
    found = verify_merged(merged)
    assert not found.intact
    assert problem in found.problems[0]


def test_markup_in_shard_names_and_errors_of_an_inspection_is_escaped(tmp_path):
    from virnucpro_merge.inspection.tables import inspection_html

    folder = tmp_path / "<i>run"
    folder.mkdir()
    write_shard(folder / "<b>0.h5", ["a", "b"], np.zeros((2, 4), np.float32))
    (folder / "<script>1.h5").write_bytes(b"<script>not hdf5</script>")
    found = inspect_run([folder / "<b>0.h5", folder / "<script>1.h5"], ["a", "b", "c"])
    page = inspection_html(found)
    assert not any(tag in page for tag in ("<script", "<b>", "<i>"))
    assert "&lt;script&gt;1.h5" in page


def test_a_shard_list_of_one_folder_finds_its_index(tmp_path):
    """Shard files of one run folder (a shell's shard_*.h5) bring its sequence index along, as the folder does."""
    run = make_demo_run(tmp_path / "run", n_sequences=30, world_size=3, dim=4, truncated=(), absent=(2,),
                        empty=(), short={})
    by_files = inspect_run([p for p in run.shard_files if p.exists()])
    assert by_files.expected_from == "sequence_index.json, the run folder's index"
    assert by_files.num_missing == 10 == inspect_run(run.directory).num_missing
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run.shard_files[0], elsewhere / "shard_0.h5")
    lone = inspect_run([elsewhere / "shard_0.h5"])
    assert lone.expected_from is None
    assert "completeness NOT checked: no expected IDs" in format_summary(lone)


def test_a_merge_seen_rank_by_rank_agrees_with_its_shards(tmp_path, demo):
    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.errors import MergeError
    from virnucpro_merge.inspection import RunInspection

    run, found = demo
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.index, partial=True)
    seen = RunInspection.from_merged(merged)
    assert np.array_equal(seen.missing, found.missing)
    assert seen.missing_ids == found.missing_ids
    assert [(s.status, s.present, s.missing) for s in seen.shards] == [(s.status, s.present, s.missing)
                                                                       for s in found.shards]
    again = aggregate_shards([merged], tmp_path / "again.h5", run.index, partial=True)  # (a merge of a merge)
    with pytest.raises(MergeError, match="give world_size"):
        RunInspection.from_merged(again, run.index)
    assert np.array_equal(RunInspection.from_merged(again, run.index, world_size=8).missing, found.missing)
    for wrong in (0, -2, True, 2.5):  # (as inspect_run refuses them, in one line: 0 was taken for "not given")
        with pytest.raises(MergeError, match=f"world_size must be a positive integer, got {wrong!r}"):
            RunInspection.from_merged(merged, world_size=wrong)
    with pytest.raises(MergeError, match="it recorded rank 7, which is not below the world size 5"):
        RunInspection.from_merged(merged, world_size=5)  # (ranks 5-7 were dropped, rank 4 blamed for their IDs)


def test_a_merge_that_checked_no_ids_is_seen_by_what_it_holds(tmp_path, demo):
    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.inspection import RunInspection

    run, found = demo
    blind = aggregate_shards(run.shard_files, tmp_path / "blind.h5", partial=True)  # (no expected IDs)
    seen = RunInspection.from_merged(blind, run.index)
    assert np.array_equal(seen.missing, found.missing)
    assert seen.num_missing == found.num_missing == 850


def test_inspect_run_shows_progress_when_asked(demo, capsys):
    from virnucpro_merge.inspection import inspect_run

    run, found = demo
    again = inspect_run(run.shard_files, run.sequence_ids, progress=True)
    assert "Reading the shards' IDs" in capsys.readouterr().err
    assert again.missing_ids == found.missing_ids


def test_a_few_of_a_folders_shards_named_are_those_alone(tmp_path):
    """Shard files at their ranks only when they are all of the folder's (a shell's glob): a
    few named on purpose had the folder's other files read too (as the merge did, for a
    moment, merging them)."""
    from virnucpro_merge.ranks import in_rank_order

    run = make_demo_run(tmp_path / "run", n_sequences=60, world_size=4, dim=4, truncated=(), absent=(1,), empty=(),
                        short={})
    named = [run.shard_files[2], run.shard_files[0]]
    assert in_rank_order(named) == named
    assert [s.path for s in inspect_run(named, run.sequence_ids).shards] == named
    every = [p for p in run.shard_files if p.exists()][::-1]  # (the glob: rank 1 died)
    assert in_rank_order(every) == list(run.shard_files)
