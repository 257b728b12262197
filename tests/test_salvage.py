"""A rank without a usable shard gives the rows its checkpoints hold (salvage.py): the
crashed run of the issue, repeats and conflicts, damaged checkpoints, a mislabelled shard's
rows kept only where shown right, every route, and the scratch folder cleaned away."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro_merge import (
    CheckpointError,
    ConflictingCheckpointsError,
    UnreadableShardError,
    aggregate_shards,
    read_merge_report,
    validate_shard_completeness,
    verify_merged,
)
from virnucpro_merge.checkpoints import rank_checkpoints, read_checkpoint
from virnucpro_merge.synthetic import make_demo_run, synthetic_embeddings, write_checkpoint, write_shard


def _run(tmp_path: Path, n: int = 4000, world: int = 8, **failures):
    failures = {"truncated": (), "absent": (), "empty": (), "short": {}, **failures}
    return make_demo_run(tmp_path / "run", n_sequences=n, world_size=world, dim=16, checkpoint_every=100, **failures)


def _merged(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        return f["sequence_ids"].asstr()[:], f["embeddings"][:]


def _true_rows(run, ids) -> np.ndarray:
    return synthetic_embeddings([int(i[3:]) for i in ids], run.dim, run.seed)


def _assert_every_row_is_its_own(run, merged: Path) -> None:
    ids, rows = _merged(merged)
    assert np.array_equal(rows.view(np.uint32), _true_rows(run, ids).view(np.uint32))


def _checkpointed(run, rank: int) -> list[str]:
    held = []
    for entry in rank_checkpoints(run.directory / "checkpoints" / f"shard_{rank}").files:
        held += read_checkpoint(entry.path).sequence_ids
    return held


def _shard_of(report, rank):
    return next(s for s in report["shards"] if s["path"].endswith(f"shard_{rank}.h5"))


def test_the_crashed_run_keeps_every_row_a_shard_or_an_intact_checkpoint_holds(tmp_path):
    """The issue's run: 8 ranks, 4,000 sequences; 5, 6, 7 died, 5 and 7 after three checkpoints."""
    run = _run(tmp_path, absent=(5, 6, 7))
    shutil.rmtree(run.directory / "checkpoints" / "shard_6")  # (died before its first checkpoint)
    (run.directory / "checkpoints" / "shard_6").mkdir()
    before = aggregate_shards(run.shard_files, tmp_path / "before.h5", run.index, partial=True, checkpoints=False)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    assert read_merge_report(before)["num_missing"] == 1500
    held = set(_checkpointed(run, 5)) | set(_checkpointed(run, 7))
    assert len(held) == 600
    assert report["num_missing"] == 900  # what nothing holds: rank 6's 500, and 200 each of 5 and 7
    assert held.isdisjoint(report["missing_ids"])
    assert report["total_sequences"] == 3100
    assert report["failed_shards"] == [str(run.shard_files[6])]
    five = _shard_of(report, 5)
    assert five["status"] == "salvaged"
    assert five["num_sequences"] == 300
    assert five["salvage"]["checkpoints_used"] == 3
    assert five["salvage"]["shard_problem"] == "file does not exist"
    _assert_every_row_is_its_own(run, merged)
    assert verify_merged(merged).intact
    assert [p.name for p in tmp_path.iterdir() if "salvage" in p.name] == []  # the scratch folder is gone


def _complete_the_checkpoints(run, rank: int) -> None:
    """Add a checkpoint holding the rest of ``rank``'s sequences (as if its last ones had been saved)."""
    held = set(_checkpointed(run, rank))
    rest = [i for i in run.sequence_ids[rank :: run.world_size] if i not in held]
    write_checkpoint(run.directory / "checkpoints" / f"shard_{rank}" / "batch_00009.pt", rest,
                     _true_rows(run, rest))


def test_shards_and_checkpoints_that_cover_the_run_merge_strictly(tmp_path):
    run = _run(tmp_path, absent=(2,))
    _complete_the_checkpoints(run, 2)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    report = read_merge_report(merged)
    assert (report["partial"], report["failed_shards"], report["num_missing"]) == (False, [], 0)
    assert _shard_of(report, 2)["status"] == "salvaged"
    _assert_every_row_is_its_own(run, merged)
    assert verify_merged(merged).intact


def test_without_expected_ids_nothing_shows_a_salvaged_rank_whole(tmp_path):
    run = _run(tmp_path, absent=(2,))
    _complete_the_checkpoints(run, 2)
    with pytest.raises(UnreadableShardError, match=r"shard_2\.h5: file does not exist"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5")
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", partial=True)
    report = read_merge_report(merged)
    assert report["partial"] is True
    assert report["failed_shards"] == [str(run.shard_files[2])]  # salvaged, but not known complete
    assert _shard_of(report, 2)["status"] == "salvaged"
    assert verify_merged(merged).intact


def test_a_strict_merge_still_fails_for_what_nothing_holds(tmp_path):
    run = _run(tmp_path, absent=(2,))
    with pytest.raises(ValueError, match=r"Missing 200 expected sequences"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    assert not (tmp_path / "o.h5").exists()
    assert [p.name for p in tmp_path.iterdir() if "salvage" in p.name] == []


def test_a_repeated_checkpoint_counts_once(tmp_path):
    run = _run(tmp_path, absent=(3,))
    folder = run.directory / "checkpoints" / "shard_3"
    shutil.copy(folder / "batch_00000.pt", folder / "batch_00007.pt")  # (a resume repeats earlier checkpoints)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    three = _shard_of(read_merge_report(merged), 3)
    assert (three["num_sequences"], three["salvage"]["repeats"]) == (300, 100)
    _assert_every_row_is_its_own(run, merged)


def _conflicting(run, rank: int) -> tuple[Path, Path, str]:
    folder = run.directory / "checkpoints" / f"shard_{rank}"
    first = read_checkpoint(folder / "batch_00000.pt")
    rows = first.embeddings.copy()
    rows[0, 0] = np.nextafter(rows[0, 0], np.inf)
    again = write_checkpoint(folder / "batch_00007.pt", first.sequence_ids[:1], rows[:1])
    return folder / "batch_00000.pt", again, first.sequence_ids[0]


def test_the_same_id_with_another_row_stops_a_strict_merge_naming_both_files(tmp_path):
    run = _run(tmp_path, absent=(3,))
    _complete_the_checkpoints(run, 3)
    first, again, sequence_id = _conflicting(run, 3)
    with pytest.raises(ConflictingCheckpointsError) as err:
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    assert str(err.value).startswith(f"{again}: sequence ID {sequence_id} has another row here than in {first}")
    command = [sys.executable, "-m", "virnucpro_merge", "aggregate", str(run.directory), "--expected",
               str(run.index), "-o", str(tmp_path / "o.h5")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "has another row here than in" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_partial_merge_leaves_a_conflicting_id_out_for_re_run(tmp_path, caplog):
    run = _run(tmp_path, absent=(3,))
    first, again, sequence_id = _conflicting(run, 3)
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    assert sequence_id in report["missing_ids"]
    assert _shard_of(report, 3)["num_sequences"] == 299
    assert str(first) in caplog.text
    assert str(again) in caplog.text
    _assert_every_row_is_its_own(run, merged)
    assert verify_merged(merged).intact


def test_a_damaged_checkpoint_stops_a_strict_merge_and_is_skipped_and_listed_by_a_partial_one(tmp_path):
    run = _run(tmp_path, absent=(3,))
    _complete_the_checkpoints(run, 3)
    damaged = run.directory / "checkpoints" / "shard_3" / "batch_00001.pt"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"^{damaged}: "):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    three = _shard_of(report, 3)
    assert len(three["salvage"]["skipped_checkpoints"]) == 1
    assert three["salvage"]["skipped_checkpoints"][0].startswith(str(damaged))
    assert report["num_missing"] == 100  # that checkpoint's sequences
    _assert_every_row_is_its_own(run, merged)


def test_a_checkpoint_of_another_dimension_is_not_salvaged(tmp_path):
    run = _run(tmp_path, absent=(3,))
    other = write_checkpoint(run.directory / "checkpoints" / "shard_3" / "batch_00008.pt", ["seqX"],
                             np.ones((1, 5), np.float32))
    with pytest.raises(CheckpointError, match="rows of dimension 5, the run's 16"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    assert str(other) in _shard_of(read_merge_report(merged), 3)["salvage"]["skipped_checkpoints"][0]


def test_a_checkpoint_of_another_run_brings_extra_ids(tmp_path, caplog):
    run = _run(tmp_path, absent=(3,))
    write_checkpoint(run.directory / "checkpoints" / "shard_3" / "batch_00008.pt", ["elsewhere1", "elsewhere2"],
                     np.ones((2, 16), np.float32))
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    assert read_merge_report(merged)["num_extra"] == 2
    assert "extra sequences" in caplog.text


def test_a_duplicate_between_a_shard_and_another_ranks_checkpoints_names_the_checkpoints(tmp_path):
    run = _run(tmp_path, absent=(3,))
    with h5py.File(run.shard_files[0]) as f:
        taken = f["sequence_ids"].asstr()[0]
    write_checkpoint(run.directory / "checkpoints" / "shard_3" / "batch_00008.pt", [taken],
                     _true_rows(run, [taken]))
    with pytest.raises(ValueError, match=f"Duplicate sequence ID found: {taken}") as err:
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    assert "checkpoints/shard_3" in str(err.value)
    assert "salvage" not in str(err.value)


def test_a_mislabelled_shard_gives_its_checkpoint_rows_and_the_rows_shown_right(tmp_path):
    run = _run(tmp_path, resumed=(2, 4))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    assert (report["partial"], report["num_missing"], report["total_sequences"]) == (False, 0, 4000)
    two = _shard_of(report, 2)
    assert two["status"] == "salvaged"
    assert two["salvage"]["shard_problem"].startswith("its IDs do not match its rows")
    assert two["salvage"]["kept_from_shard"] == 500 - len(set(_checkpointed(run, 2)))
    _assert_every_row_is_its_own(run, merged)


def test_a_mislabelled_shard_whose_disorder_reaches_other_rows_keeps_none_of_them(tmp_path):
    run = _run(tmp_path, resumed=(2,))
    held = set(_checkpointed(run, 2))
    with h5py.File(run.shard_files[2]) as f:
        ids = f["sequence_ids"].asstr()[:].tolist()
        rows = f["embeddings"][:]
    inside = next(k for k, i in enumerate(ids) if i in held)
    outside = next(k for k, i in enumerate(ids) if i not in held)
    rows[[inside, outside]] = rows[[outside, inside]]  # a row of a checkpointed ID swapped with another's
    write_shard(run.shard_files[2], ids, rows)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    two = _shard_of(report, 2)
    assert two["salvage"]["kept_from_shard"] == 0
    assert two["salvage"]["dropped_from_shard"] == 500 - len(held)
    assert report["num_missing"] == 500 - len(held)
    assert set(report["missing_ids"]) == set(ids) - held
    _assert_every_row_is_its_own(run, merged)  # (no contradicted row, and no unproven one)


@pytest.mark.parametrize("route", [{"order": "index"}, {"chunk_size": 7}])
def test_every_copying_route_salvages_alike(tmp_path, route):
    run = _run(tmp_path, n=800, world=4, absent=(1,), resumed=(2,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", list(run.sequence_ids), partial=True, **route)
    report = read_merge_report(merged)
    assert report["num_missing"] == 200 - len(set(_checkpointed(run, 1)))
    _assert_every_row_is_its_own(run, merged)
    assert verify_merged(merged).intact


def test_a_virtual_merge_takes_no_rows_from_checkpoints_and_says_so(tmp_path, caplog):
    run = _run(tmp_path, n=800, world=4, absent=(1,))
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True, layout="virtual")
    assert read_merge_report(merged)["num_missing"] == 200
    assert "takes no rows from checkpoints" in caplog.text


def test_validation_counts_what_checkpoints_hold(tmp_path):
    run = _run(tmp_path, n=800, world=4, absent=(1,))
    missing, _ = validate_shard_completeness(run.shard_files, run.index, checkpoints=None)
    assert len(missing) == 200 - len(set(_checkpointed(run, 1)))
    with pytest.raises(UnreadableShardError, match=r"shard_1\.h5: file does not exist"):
        validate_shard_completeness(run.shard_files, run.index, checkpoints=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virnucpro_merge", *args], capture_output=True, text=True,
                          check=False)


def test_validate_on_the_command_line_counts_what_checkpoints_hold(tmp_path):
    run = _run(tmp_path, n=800, world=4, absent=(1,))
    _complete_the_checkpoints(run, 1)
    found = _cli("validate", str(run.directory), "--expected", str(run.index))
    assert found.returncode == 0, found.stderr
    assert "missing: 0" in found.stdout
    assert "Salvaged rank 1: 200 rows from" in found.stderr
    ignored = _cli("validate", str(run.directory), "--expected", str(run.index), "--no-checkpoints")
    assert ignored.returncode == 1  # (incomplete)
    assert "missing: 200" in ignored.stdout
    elsewhere = _cli("validate", str(run.directory), "--expected", str(run.index), "--checkpoints",
                     str(tmp_path / "nowhere"))
    assert elsewhere.returncode == 2
    assert "nowhere" in elsewhere.stderr
    assert "Traceback" not in elsewhere.stderr


def test_rerun_says_which_missing_sequences_checkpoints_hold(tmp_path):
    run = _run(tmp_path, n=800, world=4, absent=(1,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True, checkpoints=False)
    done = _cli("rerun", str(merged), "--index", str(run.index), "-o", str(tmp_path / "re.fa"))
    assert done.returncode == 0
    held = len(set(_checkpointed(run, 1)))
    assert f"{held} of these sequences are held by checkpoints in {run.directory / 'checkpoints'}" in done.stderr
    quiet = _cli("rerun", str(merged), "--index", str(run.index), "-o", str(tmp_path / "re.fa"), "--no-checkpoints")
    assert "held by checkpoints" not in quiet.stderr
    salvaged = aggregate_shards(run.shard_files, tmp_path / "s.h5", run.index, partial=True)
    again = _cli("rerun", str(salvaged), "--index", str(run.index), "-o", str(tmp_path / "re2.fa"))
    assert "held by checkpoints" not in again.stderr
    assert again.stderr.startswith(f"Wrote the {200 - held} sequences missing")


def test_an_inspection_counts_checkpointed_sequences_as_salvageable(tmp_path):
    from virnucpro_merge.inspection import inspect_run
    from virnucpro_merge.inspection.tables import format_summary

    run = _run(tmp_path, n=800, world=4, absent=(1,), truncated=(3,))
    found = inspect_run(run.directory)
    held = {1: len(set(_checkpointed(run, 1))), 3: len(set(_checkpointed(run, 3)))}
    assert [s.checkpointed for s in found.shards] == [0, held[1], 0, held[3]]
    assert found.num_missing == 400 - held[1] - held[3]
    assert set(found.missing_ids).isdisjoint(_checkpointed(run, 1))
    assert f"held only by checkpoints (a merge salvages them, not counted missing): {held[1] + held[3]}, of ranks " \
           "1, 3" in format_summary(found)
    assert inspect_run(run.directory, checkpoints=False).num_missing == 400


def test_a_shard_cut_short_or_empty_gains_the_rows_its_checkpoints_hold(tmp_path):
    run = _run(tmp_path, short={6: 0.6}, empty=(7,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    six, seven = _shard_of(report, 6), _shard_of(report, 7)
    held6, held7 = set(_checkpointed(run, 6)), set(_checkpointed(run, 7))
    assert six["status"] == seven["status"] == "salvaged"
    assert six["num_sequences"] == len(held6 | set(run.sequence_ids[6::8][:300]))
    assert six["salvage"]["kept_from_shard"] == six["num_sequences"] - len(held6)
    assert seven["num_sequences"] == len(held7)
    assert report["num_missing"] == 500 - six["num_sequences"] + 500 - seven["num_sequences"]
    _assert_every_row_is_its_own(run, merged)
    missing, _ = validate_shard_completeness(run.shard_files, run.index)
    assert sorted(missing) == report["missing_ids"]  # (the check of IDs alone counts them alike)


def test_checkpoints_of_another_computation_take_no_row_of_a_mislabelled_rank(tmp_path, caplog):
    run = _run(tmp_path, resumed=(2,))
    other = make_demo_run(tmp_path / "other", n_sequences=4000, world_size=8, dim=16, seed=1, truncated=(),
                          absent=(), empty=(), short={}, checkpoint_every=100)
    shutil.rmtree(run.directory / "checkpoints" / "shard_2")
    shutil.copytree(other.directory / "checkpoints" / "shard_2", run.directory / "checkpoints" / "shard_2")
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    assert _shard_of(report, 2)["status"] == "failed"
    assert report["num_missing"] == 500
    assert "are not among its rows" in caplog.text
    _assert_every_row_is_its_own(run, merged)  # (seed 0's rows only: none of seed 1's)


def test_a_duplicate_in_a_shard_whose_rows_are_kept_is_still_an_error(tmp_path):
    run = _run(tmp_path, resumed=(2,), duplicated=(2,))
    with pytest.raises(ValueError, match="Duplicate sequence ID found"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)


def test_an_empty_checkpoint_is_passed_over(tmp_path):
    run = _run(tmp_path, absent=(3,))
    write_checkpoint(run.directory / "checkpoints" / "shard_3" / "batch_00000.pt", [], np.empty((0, 0), np.float32))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    assert _shard_of(read_merge_report(merged), 3)["num_sequences"] == 200  # batches 1 and 2
    _assert_every_row_is_its_own(run, merged)


def test_a_run_every_worker_of_which_died_merges_from_the_command_line(tmp_path):
    run = _run(tmp_path, absent=tuple(range(8)))
    stale = run.directory / "checkpoints" / "shard_0"
    for path in sorted(stale.glob("*.pt")):  # (rank 0's checkpoints of another dimension: the others decide)
        write_checkpoint(path, read_checkpoint(path).sequence_ids, np.ones((len(read_checkpoint(path).sequence_ids), 8),
                                                                           np.float32))
    done = _cli("aggregate", str(run.directory), "--expected", str(run.index), "--partial", "-o",
                str(tmp_path / "o.h5"))
    assert done.returncode == 0, done.stderr
    report = read_merge_report(tmp_path / "o.h5")
    assert report["embedding_dim"] == 16
    assert _shard_of(report, 0)["status"] == "failed"
    assert "its rank's checkpoints gave no row (" in _shard_of(report, 0)["error"]
    assert [s["status"] for s in report["shards"]][1:] == ["salvaged"] * 7
    _assert_every_row_is_its_own(run, tmp_path / "o.h5")


def test_a_strict_merge_without_expected_ids_says_how_checkpoints_would_help(tmp_path):
    run = _run(tmp_path, absent=(2,))
    with pytest.raises(UnreadableShardError, match=r"checkpoints hold rows: a merge with the expected IDs takes"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5")


def test_one_checkpoint_holding_an_id_twice_with_different_rows_says_so(tmp_path):
    run = _run(tmp_path, absent=(3,))
    _complete_the_checkpoints(run, 3)
    path = run.directory / "checkpoints" / "shard_3" / "batch_00000.pt"
    first = read_checkpoint(path)
    rows = np.concatenate([first.embeddings, first.embeddings[:1] + 1])
    write_checkpoint(path, [*first.sequence_ids, first.sequence_ids[0]], rows)
    with pytest.raises(ConflictingCheckpointsError, match=f"{first.sequence_ids[0]} twice in it, with different rows"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)


def test_no_room_for_the_salvaged_rows_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import os as os_module

    from virnucpro_merge import OutputError

    run = _run(tmp_path, absent=(3, 5))
    real = os_module.statvfs

    class Full:
        def __init__(self, stats):
            self.f_frsize, self.f_bavail = stats.f_frsize, 10

    monkeypatch.setattr("virnucpro_merge.outputs.os.statvfs", lambda path: Full(real(path)))
    with pytest.raises(OutputError, match="not enough free space"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_output_folder_that_is_not_there_is_named_not_the_scratch_folder(tmp_path):
    from virnucpro_merge import OutputError

    run = _run(tmp_path, absent=(3,))
    with pytest.raises(OutputError, match=r"output folder .*nowhere does not exist$"):
        aggregate_shards(run.shard_files, tmp_path / "nowhere" / "o.h5", run.index, partial=True)


def test_verify_against_the_run_folder_passes_over_a_mislabelled_shard(tmp_path):
    run = _run(tmp_path, n=800, world=4, resumed=(2,))
    first = aggregate_shards(run.shard_files, tmp_path / "first.h5", run.index, partial=True)
    again = aggregate_shards([first], tmp_path / "again.h5", run.index)  # (a merge of a merge: the re-run loop)
    found = verify_merged(again, [run.directory])
    assert found.intact, found.problems
    assert "shard_2.h5 (its IDs do not match its rows, as its checkpoints show)" in found.summary()
