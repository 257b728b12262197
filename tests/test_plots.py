"""The figures (virnucpro_merge.inspection.plots), drawn headless with Agg."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from virnucpro_merge.inspection import STATUS_COLORS, inspect_run
from virnucpro_merge.inspection.memory import MIB, MemoryProfile
from virnucpro_merge.inspection.plots import (
    plot_memory_profile,
    plot_missing_heatmap,
    plot_peak_scaling,
    plot_shard_counts,
)
from virnucpro_merge.synthetic import make_demo_run


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    run = make_demo_run(tmp_path_factory.mktemp("demo"), n_sequences=203, world_size=8, dim=4)
    return inspect_run(run.shard_files, run.sequence_ids)


def _profile(peak_mib: float, n: int = 5) -> MemoryProfile:
    rss = (100 + np.r_[0, np.full(n - 2, peak_mib), 0]) * MIB
    return MemoryProfile(times=np.linspace(0, 1, n), rss=rss.astype(np.int64), baseline=100 * MIB,
                         peak=int(rss.max()), elapsed=1.0)


def test_shard_counts_two_bars_per_rank_coloured_by_status(found):
    fig = plot_shard_counts(found.shards)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    bars = ax.patches
    assert len(bars) == 2 * 8
    expected, present = bars[:8], bars[8:]
    assert [b.get_height() for b in expected] == [s.expected for s in found.shards]
    assert [b.get_height() for b in present] == [s.present for s in found.shards]
    assert [to_hex(b.get_facecolor()) for b in present] == [STATUS_COLORS[s.status].lower() for s in found.shards]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[3] == "3\nfailed"
    assert labels[5] == "5\nabsent"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["expected", "present: ok", "present: incomplete", "present: empty",
                      "present: failed", "present: absent", "no rows: its place marked"]


def test_missing_heatmap_shows_the_matrix_and_the_padding(found):
    fig = plot_missing_heatmap(found)
    (ax,) = fig.axes
    (image,) = ax.get_images()
    cells = np.asarray(image.get_array())
    assert cells.shape == (8, 26)  # ceil(203 / 8)
    np.testing.assert_array_equal(cells == 1, found.missing)
    # 203 = 8 * 25 + 3: ranks 3..7 have 25 positions, their 26th cell is padding.
    assert (cells[3:, 25] == 2).all()
    assert (cells[:3, 25] != 2).all()
    assert ax.get_title() == f"Missing sequences: {found.num_missing} of 203"
    assert next(t.get_text() for t in ax.get_yticklabels()) == "rank 0"


def test_memory_profile_one_line_per_call():
    fig = plot_memory_profile({"chunked": _profile(10), "naive": _profile(200)})
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2
    assert lines[1].get_ydata().max() == pytest.approx(200)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "chunked (peak +10 MiB)", "naive (peak +200 MiB)"]


def test_peak_scaling_in_mib():
    fig = plot_peak_scaling([1, 2, 4], {"naive": [MIB, 2 * MIB, 4 * MIB], "chunked": [MIB] * 3})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["naive", "chunked"]
    assert ax.get_lines()[0].get_ydata().tolist() == [1, 2, 4]


def test_draws_on_a_given_axes_and_saves_png(found, tmp_path):
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_shard_counts(found.shards, ax=left) is fig
    assert plot_missing_heatmap(found, ax=right) is fig
    fig.savefig(tmp_path / "both.png", dpi=50)
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_never_show(monkeypatch, found):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() called by the library"))
    plot_shard_counts(found.shards)
    plot_missing_heatmap(found)
    plot_memory_profile({"a": _profile(1)})
    plot_peak_scaling([1], {"a": [1]})


def test_shard_counts_marks_shards_without_rows(found):
    (ax,) = plot_shard_counts(found.shards).axes
    (crosses,) = ax.collections
    xs = crosses.get_offsets()[:, 0]
    assert xs.tolist() == pytest.approx([3.2, 5.2, 7.2])  # failed, absent, empty
    assert [to_hex(c) for c in crosses.get_facecolors()] == [
        STATUS_COLORS[s].lower() for s in ("failed", "absent", "empty")]


def test_shard_counts_many_ranks_only_numbers(tmp_path):
    run = make_demo_run(tmp_path, n_sequences=64, world_size=16, dim=4, short={})
    (ax,) = plot_shard_counts(inspect_run(run.shard_files, run.sequence_ids).shards).axes
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["0", "1", "2"]
    assert len(ax.patches) == 32


# --------------------------------------------------------------------------- at scale


def _fake_run(ranks: int, n: int, seed: int = 0, *, more_dead: int = 0):
    """A run of ``ranks`` workers and ``n`` sequences with every kind of hole, built directly
    (and ``more_dead`` other lost shards)."""
    from pathlib import Path

    from virnucpro_merge.inspection import RunInspection, ShardSummary

    rng = np.random.default_rng(seed)
    width = -(-n // ranks)
    missing = np.zeros((ranks, width), dtype=bool)
    dead, short, lone, *others = rng.choice(ranks, 3 + more_dead, replace=False)
    for lost in (dead, *others):
        missing[lost, : -(-(n - lost) // ranks)] = True
    missing[short, width // 2 : -(-(n - short) // ranks)] = True
    missing[lone, width // 3] = True  # one sequence: must stay visible however binned
    shards = []
    for r in range(ranks):
        expected = -(-(n - r) // ranks)
        holes = int(missing[r].sum())
        status = "absent" if holes == expected else "incomplete" if holes else "ok"
        shards.append(ShardSummary(rank=r, path=Path(f"shard_{r}.h5"), expected=expected,
                                   present=expected - holes, missing=holes, status=status))
    return RunInspection(shards=shards, missing=missing, sequence_ids=range(n)), (dead, short, lone)


def _tick_labels_apart(fig) -> list[str]:
    """Every pair of tick labels, or of legend entries, that overlap as drawn, and every legend
    entry that overlaps the plot (empty: none do)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        for axis, along in ((ax.xaxis, 0), (ax.yaxis, 1)):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = sorted(((t.get_window_extent(renderer), t.get_text()) for t in labels),
                           key=lambda box: box[0].get_points()[0][along])
            clashes += [f"{a} / {b}" for (box_a, a), (box_b, b) in itertools.pairwise(boxes) if box_a.overlaps(box_b)]
        legend = ax.get_legend()
        if legend is not None:
            entries = [(t.get_window_extent(renderer), t.get_text()) for t in legend.get_texts()]
            clashes += [f"legend {a} / {b}" for i, (box_a, a) in enumerate(entries) for box_b, b in entries[i + 1:]
                        if box_a.overlaps(box_b)]
            plot = ax.get_window_extent(renderer)
            clashes += [f"legend {a} / the plot" for box, a in entries if box.overlaps(plot)]
    return clashes


SCALES = [(8, 2_000), (64, 10**6), (256, 10**6), (1024, 10**7), (1024, 10**8)]


@pytest.mark.parametrize(("ranks", "n"), SCALES, ids=[f"{r}x{n:.0e}" for r, n in SCALES])
def test_heatmap_reads_at_any_scale(ranks, n):
    found, (dead, short, lone) = _fake_run(ranks, n)
    fig = plot_missing_heatmap(found)
    assert _tick_labels_apart(fig) == []
    width, height = fig.get_size_inches()
    assert width <= 20
    assert height <= 14
    (ax,) = fig.axes
    (image,) = ax.get_images()
    cells = np.asarray(image.get_array(), dtype=float)
    rows, columns = cells.shape
    assert columns <= 1600, "more columns than pixels"
    if ranks > 64:  # past 64 ranks, the ranks that miss any, one row each, each named
        shown = sorted(int(r) for r in (dead, short, lone))
        assert rows == len(shown)
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"rank {r}" for r in shown]
        row_of = shown.index
    else:
        row_of = lambda r: r * rows // ranks  # noqa: E731
    column_of = lambda j: j * columns // found.missing.shape[1]  # noqa: E731
    assert cells[row_of(dead)].min() > 0, "a lost shard's row is drawn as missing all along"
    assert cells[row_of(lone), column_of(found.missing.shape[1] // 3)] > 0, "a single missing sequence is seen"
    present = next(r for r in range(ranks) if r not in (dead, short, lone))
    if ranks <= 64:
        assert cells[row_of(present)].max() in (0, 2) or row_of(present) in {row_of(dead), row_of(short), row_of(lone)}


@pytest.mark.parametrize("ranks", [8, 64, 256, 1024])
def test_counts_chart_reads_at_any_scale(ranks):
    found, (dead, _, _) = _fake_run(ranks, 10**6)
    fig = plot_shard_counts(found)
    assert _tick_labels_apart(fig) == []
    width, height = fig.get_size_inches()
    assert width <= 20
    assert height <= 14
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    if ranks > 16:  # one bar a rank; the lost ranks are named
        assert f"absent (1): {dead}" in legend
    if ranks > 64:  # past 64, the three with a problem, each named under its bar; the ok ones summed up
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert labels[0] == f"{ranks - 3:,}\nranks ok"
        assert sorted(map(int, labels[1:])) == sorted(s.rank for s in found.shards if s.status != "ok")


@pytest.mark.parametrize("problems", [3, 64, 65, 300])
def test_at_1024_ranks_nothing_overlaps_however_many_have_a_problem(problems):
    """Up to 64 ranks with a problem, one bar and one row each; past it, every rank again
    (the legend names a few and counts the rest): no tick label or legend entry overlaps."""
    found, _ = _fake_run(1024, 10**6, more_dead=problems - 3)
    counts, heatmap = plot_shard_counts(found), plot_missing_heatmap(found)
    assert _tick_labels_apart(counts) == []
    assert _tick_labels_apart(heatmap) == []
    bars = len(counts.axes[0].patches)
    assert bars == (1 + problems if problems <= 64 else 1024)
    (image,) = heatmap.axes[0].get_images()
    assert image.get_array().shape[0] == (problems if problems <= 64 else min(1024, image.get_array().shape[0]))


def test_the_tick_check_sees_an_overlap():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(50), [f"label {i}" for i in range(50)])
    assert _tick_labels_apart(fig)


# --------------------------------------------------------------------------- trust what it says (issue 20)


def test_the_share_present_is_what_its_label_says():
    """Past 16 ranks a bar is (assigned - missing) / assigned: a rank holding half of its assignment,
    its last batch written twice, draws 0.5, not rows / assigned = 1."""
    from pathlib import Path

    from virnucpro_merge.inspection import RunInspection, ShardSummary

    ranks, n = 32, 32 * 10
    missing = np.zeros((ranks, 10), dtype=bool)
    missing[7, 5:] = True  # rank 7 lost half of its sequences...
    shards = [ShardSummary(rank=r, path=Path(f"shard_{r}.h5"), expected=10, present=10,
                           missing=int(missing[r].sum()), status="incomplete" if r == 7 else "ok")
              for r in range(ranks)]  # ... and holds 10 rows all the same (5 of them twice)
    fig = plot_shard_counts(RunInspection(shards=shards, missing=missing, sequence_ids=range(n)))
    heights = [bar.get_height() for bar in fig.axes[0].patches[:ranks]]
    assert heights[7] == 0.5
    assert heights[0] == 1.0
    assert fig.axes[0].get_ylabel() == "share of its assignment present"


def test_a_run_without_expected_ids_draws_without_a_warning(tmp_path):
    """No expected IDs: the heatmap says completeness was not checked (no 'identical xlims' warning)."""
    import warnings

    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=20, dim=4, short={})
    run.index.unlink()
    found = inspect_run(run.directory)
    assert found.expected_from is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heatmap = plot_missing_heatmap(found)
        counts = plot_shard_counts(found)
        for fig in (heatmap, counts):
            fig.savefig(tmp_path / "f.png")
    assert heatmap.axes[0].get_title() == "Missing sequences: not checked"


@pytest.mark.parametrize("ranks", [32, 1024])
def test_what_only_checkpoints_hold_is_drawn_once_on_top(ranks):
    """A lost rank whose checkpoints hold half its assignment: its file's bar is 0, what its checkpoints
    hold sits on top (0.5), nothing reaches past 1, and its place is crossed (past 16 and past 64 ranks)."""
    from dataclasses import replace

    from virnucpro_merge.inspection import RunInspection

    found, (dead, _, _) = _fake_run(ranks, 10**5)
    shards = list(found.shards)
    half = shards[dead].expected // 2
    shards[dead] = replace(shards[dead], status="failed", present=0, missing=shards[dead].expected - half,
                           checkpointed=half)
    fig = plot_shard_counts(RunInspection(shards=shards, missing=found.missing, sequence_ids=found.sequence_ids))
    ax = fig.axes[0]
    tops = [bar.get_y() + bar.get_height() for bar in ax.patches]
    assert max(tops) <= 1.0 + 1e-9
    saved = [bar for bar in ax.containers[-1] if bar.get_height() > 0]  # (the last bars drawn: the checkpoints')
    assert len(saved) == 1
    assert saved[0].get_height() == pytest.approx(half / shards[dead].expected)
    assert saved[0].get_y() == 0.0  # (on top of its file's bar, which is nothing)
    crossed = [c for c in ax.collections if len(c.get_offsets())]
    assert crossed
    assert "only in its checkpoints" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
