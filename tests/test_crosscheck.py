"""A shard whose IDs do not match its rows (the pipeline's resume bug): found by comparing
with the rank's checkpoints, refused by a strict merge, left out of a partial one."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import virnucpro_merge._processes
from virnucpro_merge import aggregate_shards, read_merge_report
from virnucpro_merge.checkpoints import rank_checkpoints, read_checkpoint
from virnucpro_merge.crosscheck import rows_against_checkpoints
from virnucpro_merge.errors import MergeError, MislabelledShardError
from virnucpro_merge.ranks import checkpoints_of
from virnucpro_merge.synthetic import make_demo_run, write_checkpoint


def _run(tmp_path: Path, **failures):
    failures = {"truncated": (), "absent": (), "empty": (), "short": {}, **failures}
    return make_demo_run(tmp_path / "run", n_sequences=800, world_size=4, dim=8, checkpoint_every=50, **failures)


def _checkpointed_rows(run) -> dict[str, np.ndarray]:
    rows = {}
    for rank in range(run.world_size):
        for entry in rank_checkpoints(run.directory / "checkpoints" / f"shard_{rank}").files:
            checkpoint = read_checkpoint(entry.path)
            rows.update(zip(checkpoint.sequence_ids, checkpoint.embeddings, strict=True))
    return rows


def _contradicted(merged: Path, rows: dict[str, np.ndarray]) -> list[str]:
    with h5py.File(merged) as f:
        ids = f["sequence_ids"].asstr()[:]
        emb = f["embeddings"][:]
    return [i for i, row in zip(ids, emb, strict=True) if i in rows and row.tobytes() != rows[i].tobytes()]


def test_a_resumed_shard_is_refused_by_a_strict_merge_naming_rank_count_and_first_id(tmp_path):
    run = _run(tmp_path, resumed=(2,))
    with pytest.raises(MislabelledShardError) as err:
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    line = str(err.value)
    assert line.startswith(f"{run.shard_files[2]}: its IDs do not match its rows: ")
    assert "rank 2's checkpoints" in line
    assert "(first: seq" in line
    assert "\n" not in line
    assert not (tmp_path / "o.h5").exists()


def test_a_partial_merge_writes_no_contradicted_row(tmp_path):
    run = _run(tmp_path, resumed=(2,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
    report = read_merge_report(merged)
    assert report["shards"][2]["status"] == "salvaged"  # (its rows: test_salvage.py)
    assert _contradicted(merged, _checkpointed_rows(run)) == []


def test_a_partial_merge_that_cannot_salvage_leaves_the_contradicted_shard_out(tmp_path):
    run = _run(tmp_path, resumed=(2,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True, layout="virtual")
    report = read_merge_report(merged)
    assert report["failed_shards"] == [str(run.shard_files[2])]
    assert report["num_missing"] == 200  # rank 2's sequences: to be re-run
    assert _contradicted(merged, _checkpointed_rows(run)) == []


def test_without_the_checkpoints_the_same_merge_writes_contradicted_rows(tmp_path):
    """What the check prevents: the shard alone looks sound."""
    run = _run(tmp_path, resumed=(2,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, checkpoints=False)
    assert len(_contradicted(merged, _checkpointed_rows(run))) > 0


@pytest.mark.parametrize("route", [{"order": "index"}, {"layout": "virtual"}])
def test_every_merge_route_checks(tmp_path, route):
    run = _run(tmp_path, resumed=(1,))
    expected = list(run.sequence_ids)
    with pytest.raises(MislabelledShardError, match="rank 1's checkpoints"):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", expected, **route)


def test_a_run_whose_shards_agree_with_their_checkpoints_merges_strictly(tmp_path, caplog):
    run = _run(tmp_path)
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
    assert read_merge_report(merged)["total_sequences"] == 800
    assert all(rows_against_checkpoints(p, run.directory / "checkpoints") is None for p in run.shard_files)


def test_a_checkpoint_that_cannot_vouch_is_passed_over_and_named(tmp_path, caplog):
    run = _run(tmp_path)
    folder = run.directory / "checkpoints" / "shard_0"
    damaged = sorted(folder.glob("batch_*.pt"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-40])
    with h5py.File(run.shard_files[0]) as f:
        first = f["sequence_ids"].asstr()[0]
    other = write_checkpoint(folder / "batch_00090.pt", [first], np.ones((1, 3), np.float32))
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        assert rows_against_checkpoints(run.shard_files[0], run.directory / "checkpoints") is None
    assert str(damaged) in caplog.text
    assert f"{other}: rows of dimension 3, the shard's 8" in caplog.text


def test_one_differing_row_is_enough_and_nan_equals_the_same_nan(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows[0, 0] = np.nan
    with h5py.File(folder / "shard_0.h5", "w") as f:
        f["embeddings"] = rows
        f["sequence_ids"] = np.array(["a", "b", "c", "d"], dtype=h5py.string_dtype())
    changed = rows.copy()
    changed[3, 2] = np.nextafter(changed[3, 2], np.inf)
    write_checkpoint(folder / "checkpoints" / "shard_0" / "batch_00000.pt", ["d", "a", "x"],
                     np.stack([changed[3], rows[0], rows[1]]))
    found = rows_against_checkpoints(folder / "shard_0.h5", folder / "checkpoints")
    assert (found.rank, found.checked, found.differing, found.first_id) == (0, 2, 1, "d")


def test_the_checkpoints_folder_chosen(tmp_path):
    run = _run(tmp_path)
    assert checkpoints_of(run.shard_files) == run.directory / "checkpoints"
    assert checkpoints_of(run.shard_files, False) is None
    assert checkpoints_of([*run.shard_files, tmp_path / "other" / "shard_9.h5"]) is None
    with pytest.raises(MergeError, match="no such folder"):
        checkpoints_of(run.shard_files, tmp_path / "nowhere")
    with pytest.raises(MergeError, match="not a folder"):
        checkpoints_of(run.shard_files, run.index)


def test_the_command_line_exits_1_for_a_contradicted_shard_and_2_for_no_folder(tmp_path):
    run = _run(tmp_path, resumed=(3,))
    base = [sys.executable, "-m", "virnucpro_merge", "aggregate", str(run.directory), "-o", str(tmp_path / "o.h5")]
    refused = subprocess.run(base, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "shard_3.h5: its IDs do not match its rows" in refused.stderr
    assert "Traceback" not in refused.stderr
    nowhere = subprocess.run([*base, "--checkpoints", str(tmp_path / "x")], capture_output=True, text=True,
                             check=False)
    assert nowhere.returncode == 2
    assert subprocess.run([*base, "--no-checkpoints"], capture_output=True, check=False).returncode == 0


def _one_shard(folder: Path, rows: np.ndarray, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "shard_0.h5", "w") as f:
        f["embeddings"] = rows
        f["sequence_ids"] = np.array(names, dtype=h5py.string_dtype())
    return folder / "shard_0.h5"


def test_an_id_recomputed_after_a_resume_agrees_if_it_matches_any_of_its_checkpoints(tmp_path, caplog):
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    shard = _one_shard(tmp_path / "run", rows, ["a", "b", "c"])
    older = rows.copy()
    older[1, 0] = np.nextafter(older[1, 0], np.inf)  # the first computation, one bit away
    saved = tmp_path / "run" / "checkpoints" / "shard_0"
    write_checkpoint(saved / "batch_00000.pt", ["a", "b"], older[:2])
    write_checkpoint(saved / "batch_00001.pt", ["a", "b", "c"], rows)
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        assert rows_against_checkpoints(shard, tmp_path / "run" / "checkpoints") is None
    assert "1 IDs are held with different rows by different checkpoints of rank 0" in caplog.text


def test_narrower_checkpoints_are_compared_in_their_dtype(tmp_path):
    rows = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float16).astype(np.float32)
    shard = _one_shard(tmp_path / "run", rows, ["a", "b", "c", "d"])
    write_checkpoint(tmp_path / "run" / "checkpoints" / "shard_0" / "batch_00000.pt", ["a", "b", "c", "d"],
                     rows.astype(np.float16))
    assert rows_against_checkpoints(shard, tmp_path / "run" / "checkpoints") is None
    write_checkpoint(tmp_path / "run" / "checkpoints" / "shard_0" / "batch_00000.pt", ["b", "a", "c", "d"],
                     rows.astype(np.float16))
    assert rows_against_checkpoints(shard, tmp_path / "run" / "checkpoints").differing == 2


def test_an_idle_shard_and_an_unlistable_rank_folder_are_not_compared(tmp_path, caplog):
    idle = tmp_path / "run"
    idle.mkdir()
    with h5py.File(idle / "shard_0.h5", "w") as f:
        f["embeddings"] = np.zeros((0, 0), np.float32)
        f["sequence_ids"] = np.array([], dtype=h5py.string_dtype())
    write_checkpoint(idle / "checkpoints" / "shard_0" / "batch_00000.pt", ["a"], np.ones((1, 3), np.float32))
    (idle / "checkpoints" / "shard_1").write_bytes(b"")
    shard = _one_shard(tmp_path / "other", np.ones((1, 3), np.float32), ["a"])
    shard = shard.rename(shard.with_name("shard_1.h5"))
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        assert rows_against_checkpoints(idle / "shard_0.h5", idle / "checkpoints") is None
        assert caplog.text == ""
        assert rows_against_checkpoints(shard, idle / "checkpoints") is None
    assert "a file where the checkpoint folder should be" in caplog.text


def test_a_checkpoints_folder_named_wrongly_is_refused_and_one_folder_spelled_twice_is_one(tmp_path, monkeypatch):
    run = _run(tmp_path)
    with pytest.raises(MergeError, match="empty path"):
        checkpoints_of(run.shard_files, "")
    with pytest.raises(MergeError, match="no shard_<rank> folder in it"):
        checkpoints_of(run.shard_files, run.directory / "checkpoints" / "shard_2")
    monkeypatch.chdir(tmp_path)
    mixed = [Path("run") / "shard_0.h5", (tmp_path / "run" / "shard_1.h5").resolve()]
    assert checkpoints_of(mixed).resolve() == (run.directory / "checkpoints").resolve()


def test_comparisons_shared_out_to_processes_say_the_same_and_their_warnings_are_told_here(tmp_path, monkeypatch,
                                                                                             caplog):
    from virnucpro_merge import crosscheck

    run = _run(tmp_path, resumed=(1,))
    damaged = sorted((run.directory / "checkpoints" / "shard_2").glob("batch_*.pt"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-40])
    here = crosscheck.compare_many(run.shard_files, run.directory / "checkpoints")
    monkeypatch.setattr(crosscheck, "_SHARED_FROM", 0)
    monkeypatch.setattr(virnucpro_merge._processes, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="virnucpro_merge"):
        there = crosscheck.compare_many(run.shard_files, run.directory / "checkpoints")
    assert there == here
    assert there[run.shard_files[1]].disagreement is not None
    assert f"Not compared with its shard: {damaged}" in caplog.text
    with pytest.raises(MislabelledShardError):
        aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index)
