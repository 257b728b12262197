"""The report page's figures for hovering (virnucpro_merge.inspection.interactive)."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

pytest.importorskip("bokeh", reason="the notebooks extra is not installed")

from bokeh.models import FixedTicker, HoverTool

from virnucpro_merge.inspection import RunInspection, ShardSummary, inspect_run
from virnucpro_merge.inspection.interactive import (
    PAGE_FIGURE_MIME,
    embed_page_figures,
    for_page,
    interactive_counts,
    interactive_missing,
)
from virnucpro_merge.synthetic import make_demo_run


def _run(ranks: int, width: int, holes: dict[int, slice], *, scattered: dict[int, float] | None = None,
         seed: int = 0) -> RunInspection:
    """An inspection of ``ranks`` ranks of ``width`` positions each, missing ``holes`` (and, in
    the ranks of ``scattered``, that share of positions at random)."""
    missing = np.zeros((ranks, width), dtype=bool)
    for rank, where in holes.items():
        missing[rank, where] = True
    rng = np.random.default_rng(seed)
    for rank, share in (scattered or {}).items():
        missing[rank] = rng.random(width) < share
    shards = []
    for r in range(ranks):
        lost = int(missing[r].sum())
        status = "absent" if lost == width else "incomplete" if lost else "ok"
        shards.append(ShardSummary(rank=r, path=Path(f"shard_{r}.h5"), expected=width, present=width - lost,
                                   missing=lost, status=status, error="file does not exist" if lost == width else None))
    return RunInspection(shards=shards, missing=missing, sequence_ids=range(ranks * width))


def _tooltips(fig) -> str:
    return " ".join(tool.tooltips for tool in fig.select(HoverTool))


def _runs_of(fig) -> list[tuple]:
    """The stretches a heatmap draws, missing or present: (rank, first, last, missing there, missing?)."""
    runs = []
    for renderer in fig.renderers:
        data = renderer.data_source.data
        if "hole" in data:
            runs += zip(data["label"], data["first"], data["last"], data["count"], data["hole"], strict=True)
    return sorted(runs, key=lambda run: (int(run[0]), run[1]))


def test_counts_past_64_ranks_name_each_problem_rank_and_sum_up_the_rest():
    found = _run(1024, 10, {17: slice(None), 200: slice(4, None), 1023: slice(None)})
    fig = interactive_counts(found)
    assert isinstance(fig.xaxis.ticker, FixedTicker)
    assert list(fig.xaxis.major_label_overrides.values()) == ["1,021 ranks ok", "17", "200", "1023"]
    assert fig.title.text == "Rows per rank against its assignment: the 3 of 1,024 ranks with a problem"
    legend = [item.label.value for item in fig.legend[0].items]
    assert legend == ["ok (1,021)", "incomplete (1)", "absent (2)", "no rows: its place marked"]
    tips = _tooltips(fig)
    assert all(field in tips for field in ("@label", "@status", "@problem", "@missing{0,0}"))
    assert "{safe}" not in tips  # (a file's words shown as text, never as HTML)
    assert "max-width" in tips  # (a long problem wraps, the tooltip stays on the page)


def test_counts_of_a_few_ranks_draw_every_rank():
    found = _run(8, 10, {3: slice(None)})
    fig = interactive_counts(found)
    columns = next(r for r in fig.renderers if getattr(r.glyph, "fill_alpha", 1) == 0)
    assert columns.data_source.data["label"] == [str(r) for r in range(8)]
    problem = columns.data_source.data["problem"][3]
    assert "file does not exist" in problem


def test_the_missing_rows_hold_each_stretch_with_its_positions():
    found = _run(1024, 100, {5: slice(40, None), 9: slice(None), 700: slice(10, 12)})
    fig = interactive_missing(found)
    assert list(fig.yaxis.major_label_overrides.values()) == ["rank 5", "rank 9", "rank 700"]
    assert _runs_of(fig) == [("5", 0, 39, 0, False), ("5", 40, 99, 60, True), ("9", 0, 99, 100, True),
                             ("700", 0, 9, 0, False), ("700", 10, 11, 2, True), ("700", 12, 99, 0, False)]
    assert "the other 1,021 miss none" in fig.title.text
    assert len(fig.select(HoverTool)) == 1  # (the stretches do not overlap: one tooltip at a time)


def test_scattered_holes_are_drawn_in_blocks_and_still_counted_whole():
    found = _run(8, 200_000, {}, scattered={2: 0.3, 5: 0.001})
    fig = interactive_missing(found)
    runs = _runs_of(fig)
    holes = [run for run in runs if run[4]]
    assert len(holes) <= 10_000
    assert sum(run[3] for run in runs) == int(found.missing.sum())  # (a block says how many of it are missing)
    assert "each stretch: blocks of" in fig.xaxis.axis_label
    assert any(run[0] == "5" for run in holes)  # (a rank with a few holes keeps them in sight)
    for rank in range(8):  # each rank's stretches tile its assignment, end to end
        mine = [run for run in runs if run[0] == str(rank)]
        assert mine[0][1] == 0
        assert mine[-1][2] == 200_000 - 1
        assert all(a[2] + 1 == b[1] for a, b in itertools.pairwise(mine))


def test_a_page_figure_cannot_break_out_of_its_script():
    """A problem is data: text that closes a script element stays inside the figure's JSON."""
    evil = "</script><script>alert(1)</script><!--"
    found = _run(4, 10, {1: slice(None)})
    object.__setattr__(found.shards[1], "error", evil)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    shown, metadata = for_page(interactive_counts(found))._repr_mimebundle_()
    nb.cells[0].outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data=shown, metadata=metadata)]
    head = embed_page_figures(nb)
    (output,) = nb.cells[0].outputs  # the static picture of the same cell is dropped
    html = output["data"]["text/html"]
    assert evil not in html
    assert "alert(1)" in html  # (still there, as text the figure shows)
    assert html.count("<script") == 2
    assert 'role="img" aria-label="Rows per rank against its assignment, 4 ranks (interactive: hover' in html
    item = re.search(r'<script type="application/json" id="virnucpro-figure-1-item">(.*?)</script>', html, re.S)
    assert json.loads(item.group(1)) == json.loads(json.dumps(shown[PAGE_FIGURE_MIME]))
    assert head.startswith("<script")
    assert "Bokeh" in head


def test_a_notebook_without_page_figures_needs_no_script():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    assert embed_page_figures(nb) == ""
    assert len(nb.cells[0].outputs) == 1  # (a static picture alone stays)


def test_the_figures_of_a_real_run(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=400, world_size=8, dim=4, truncated=(), absent=(5,),
                        empty=(), short={2: 0.5})
    found = inspect_run(run.directory)
    counts, holes = interactive_counts(found), interactive_missing(found)
    assert counts.title.text == "Rows per rank against its assignment, 8 ranks"
    assert holes.title.text == f"Missing sequences: {found.num_missing:,} of 400"
    assert [t for t in holes.yaxis.major_label_overrides.values()] == [f"rank {r}" for r in range(8)]


def _held_and_saved(fig) -> dict[str, tuple[float, float]]:
    columns = next(r for r in fig.renderers if getattr(r.glyph, "fill_alpha", 1) == 0).data_source.data
    return {label: (held, saved) for label, held, saved in zip(columns["label"], columns["held"], columns["saved"],
                                                                 strict=True)}


def test_what_only_checkpoints_hold_is_on_top_of_the_bar_never_in_it():
    """A lost rank whose checkpoints hold 60 % of its assignment: no solid bar (its file holds nothing), a
    hatched one to 0.6 on top, a cross on the axis; never above 1."""
    found = _run(8, 10, {3: slice(6, None)})
    object.__setattr__(found.shards[3], "present", 0)
    object.__setattr__(found.shards[3], "checkpointed", 6)
    object.__setattr__(found.shards[3], "status", "failed")
    fig = interactive_counts(found)
    assert _held_and_saved(fig)["3"] == (0.0, 0.6)
    assert _held_and_saved(fig)["0"] == (1.0, 1.0)
    hatched = [r for r in fig.renderers if getattr(r.glyph, "hatch_pattern", None) == "/"]
    assert len(hatched) == 1
    crosses = next(r for r in fig.renderers if getattr(r.glyph, "marker", None) == "x").data_source.data
    assert list(crosses["x"]) == [3]


def test_a_rank_with_nothing_assigned_is_not_crossed_and_one_ok_rank_is_one(tmp_path):
    found = _run(65, 1, {r: slice(None) for r in range(1, 65)})
    fig = interactive_counts(found)
    assert fig.xaxis.major_label_overrides[0] == "1 rank ok"
    tiny = inspect_run(make_demo_run(tmp_path / "tiny", n_sequences=5, world_size=8, dim=2, truncated=(), absent=(),
                                     empty=(), short={}).directory)
    assert not any(r for r in interactive_counts(tiny).renderers if getattr(r.glyph, "marker", None) == "x")


def test_without_expected_ids_the_holes_say_not_checked(tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=4, dim=2, truncated=(), absent=(1,), empty=(),
                        short={})
    run.index.unlink()
    found = inspect_run(run.directory)
    holes = interactive_missing(found)
    assert holes.title.text == "Missing sequences: not checked (no expected IDs)"
    assert "completeness was not checked" in holes.center[-1].text
    assert "no expected IDs" in _tooltips(interactive_counts(found))


def test_a_bokeh_that_does_not_import_leaves_the_pictures_static(monkeypatch, caplog):
    from virnucpro_merge.inspection.interactive import bokeh_available

    assert bokeh_available()
    monkeypatch.setitem(sys.modules, "bokeh.plotting", None)  # (there, but broken: its import fails)
    assert not bokeh_available()
    assert "Bokeh is there but does not import" in caplog.text


def test_a_large_run_missing_nothing_says_so_in_one_line():
    """1,024 ranks, nothing missing: one line, not a tall grey box (static and interactive alike)."""
    import matplotlib

    matplotlib.use("Agg")
    from virnucpro_merge.inspection import plot_missing_heatmap

    found = _run(1024, 10, {})
    holes = interactive_missing(found)
    assert holes.height <= 160
    assert holes.center[-1].text == "Nothing is missing: each of the 1,024 ranks holds its whole assignment."
    fig = plot_missing_heatmap(found)
    assert fig.get_size_inches()[1] <= 2.0
    assert "Nothing is missing" in fig.axes[0].texts[0].get_text()
    assert interactive_missing(_run(8, 10, {})).height > 160  # (a few ranks: their rows, all grey)
