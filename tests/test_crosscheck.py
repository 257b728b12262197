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


def test_a_partial_merge_leaves_the_contradicted_shard_out(tmp_path):
    run = _run(tmp_path, resumed=(2,))
    merged = aggregate_shards(run.shard_files, tmp_path / "o.h5", run.index, partial=True)
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
