"""A run over time from its checkpoints (timeline.py) and its picture (plot_timeline), readable
at 8 ranks and at 1,024."""

from __future__ import annotations

import os
import shutil

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text

matplotlib.use("Agg")

from virnucpro_merge.checkpoints import read_checkpoint
from virnucpro_merge.errors import MergeError
from virnucpro_merge.inspection import inspect_run
from virnucpro_merge.inspection.plots import plot_timeline
from virnucpro_merge.synthetic import make_demo_run, write_checkpoint
from virnucpro_merge.timeline import Timeline, read_timeline


def _run(tmp_path, world=8, n=4000, **failures):
    failures = {"truncated": (), "absent": (), "empty": (), "short": {}, **failures}
    return make_demo_run(tmp_path / "run", n_sequences=n, world_size=world, dim=4, checkpoint_every=50, **failures)


def test_each_rank_s_sequences_over_time_and_the_stragglers(tmp_path):
    run = _run(tmp_path, stragglers=(2,), absent=(5,))
    timeline = read_timeline(run.checkpoints, 8)
    zero = timeline.ranks[0]
    assert zero.done.tolist() == list(range(50, 451, 50))
    assert np.all(np.diff(zero.times) == np.timedelta64(300, "s"))  # rank 0 of 8: 300 s a checkpoint
    assert zero.rate == pytest.approx(600.0)  # 50 sequences every 5 minutes
    assert timeline.stragglers == [2]
    assert timeline.ranks[5].done[-1] == 300  # (died after three fifths)
    assert "stragglers (under 50% of the median pace): rank 2 (" in timeline.describe()


def test_a_repeated_checkpoint_is_counted_once_and_a_damaged_one_is_counted_apart(tmp_path):
    run = _run(tmp_path, world=2, n=400)
    folder = run.checkpoints / "shard_0"
    shutil.copy(folder / "batch_00000.pt", folder / "batch_00009.pt")
    (folder / "batch_00001.pt").write_bytes(b"not a zip")
    rank = read_timeline(run.checkpoints, 2).ranks[0]
    assert rank.done.tolist() == [50, 100, 100]  # batches 0 and 2, then 0 again: nothing new
    assert rank.damaged == 1


def test_without_a_timestamp_the_file_time_stands_in(tmp_path):
    folder = tmp_path / "checkpoints" / "shard_0"
    first = write_checkpoint(folder / "batch_00000.pt", ["a"], np.zeros((1, 2), np.float32), {})
    second = write_checkpoint(folder / "batch_00001.pt", ["b"], np.zeros((1, 2), np.float32), {"timestamp": "soon"})
    os.utime(first, (1_700_000_000, 1_700_000_000))
    os.utime(second, (1_700_003_600, 1_700_003_600))
    rank = read_timeline(tmp_path / "checkpoints", 1).ranks[0]
    assert rank.rate == pytest.approx(1.0)  # one sequence in the hour between the two files
    assert str(rank.times[0]).startswith("2023-11-14T22:13:20")


def test_only_ids_and_metadata_are_read(tmp_path):
    run = _run(tmp_path, world=2, n=400)
    path = sorted((run.checkpoints / "shard_0").glob("*.pt"))[0]
    light, whole = read_checkpoint(path, rows=False), read_checkpoint(path)
    assert light.sequence_ids == whole.sequence_ids
    assert light.metadata == whole.metadata
    assert light.embeddings.shape == whole.embeddings.shape


def _labels_overlap(fig) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts]  # (the words, not the leader)
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]


@pytest.mark.parametrize(("world", "stopped", "slow"), [
    (8, (5, 6, 7), (2,)),
    pytest.param(1024, tuple(range(100, 1024, 97)), (3, 500, 501, 900), marks=pytest.mark.slow),
])
def test_the_picture_names_the_stragglers_and_the_stopped_without_overlap(tmp_path, world, stopped, slow):
    run = _run(tmp_path, world=world, n=world * 120, absent=stopped, stragglers=slow)
    found = inspect_run(run.directory)
    fig = found.plot_timeline()
    named = sorted(t.get_text() for t in fig.axes[0].texts)
    assert len(named) <= 10
    assert {f"rank {r}" for r in slow} <= set(named)
    assert any(f"rank {r}" in named for r in stopped)
    assert _labels_overlap(fig) == []
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert f"kept pace ({world - len(stopped) - len(slow):,})" in legend
    assert "did not finish" in legend
    fig.savefig(tmp_path / "timeline.png")


def test_a_run_without_checkpoints_says_so(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=4, dim=4)
    found = inspect_run(run.directory)
    assert found.checkpoints is None
    with pytest.raises(MergeError, match="found no checkpoints folder"):
        found.plot_timeline()
    fig = plot_timeline(Timeline())
    assert fig.axes[0].texts[0].get_text() == "no checkpoint to draw"


def test_the_rows_per_rank_picture_shows_what_only_checkpoints_hold_hatched(tmp_path):
    run = _run(tmp_path, absent=(5,), short={6: 0.6})
    found = inspect_run(run.directory)
    fig = found.plot_counts()
    hatched = {round(p.get_x() + p.get_width() / 2): (p.get_y(), p.get_height())
               for p in fig.axes[0].patches if p.get_hatch() and p.get_height()}
    assert hatched == {round(s.rank + 0.2): (s.present, s.checkpointed) for s in found.shards if s.checkpointed}
    assert {5, 6} == {s.rank for s in found.shards if s.checkpointed}
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "only in its checkpoints\n(a merge salvages them)" in legend
