"""Is any GPU's output different? Each rank's embeddings summed up by the merge, and the ranks flagged."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import edit_summary
from virnucpro_merge import MergeError, aggregate_shards, read_merge_report
from virnucpro_merge.checksums import nonfinite_rows, row_sums
from virnucpro_merge.cli import main
from virnucpro_merge.health import RankHealth, RankTally, judge, report_flags, tally_rows
from virnucpro_merge.synthetic import make_demo_run, make_unhealthy_run


@pytest.fixture(scope="module")
def sick(tmp_path_factory):
    return make_unhealthy_run(tmp_path_factory.mktemp("sick") / "run", n_sequences=800, world_size=8, dim=16)


def _kinds(flags) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for flag in flags:
        found.setdefault(flag.rank, []).append(flag.kind)
    return found


@pytest.mark.parametrize("order", ["shards", "index"])
def test_each_failure_kind_is_flagged_and_nothing_else(sick, tmp_path, order):
    merged = aggregate_shards(sick.shard_files, tmp_path / "m.h5", sick.index, order=order)
    report = read_merge_report(merged)
    assert _kinds(report_flags(report)) == {2: ["scale"], 4: ["saturated", "dtype"], 5: ["identical"], 6: ["zero"]}
    healths = [RankHealth.from_record(s["health"]) for s in report["shards"]]
    assert healths[5].identical_rows == 16
    assert healths[5].identical_example == (0, 1)  # (row numbers in the shard, whatever the output's order)
    assert healths[6].zero_rows == 16
    assert healths[4].saturated_rows == 16
    assert healths[4].dtype == "float16"
    assert healths[0].rows == 100


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_the_two_orders_sum_up_the_same(sick, tmp_path, chunk_size):
    """(chunk_size 1: a block a row, each rank's tally given a hundred blocks and more.)"""
    by_shard = read_merge_report(aggregate_shards(sick.shard_files, tmp_path / "a.h5", sick.index))
    by_index = read_merge_report(aggregate_shards(sick.shard_files, tmp_path / "b.h5", sick.index, order="index",
                                                  **({"chunk_size": chunk_size} if chunk_size else {})))
    for a, b in zip(by_shard["shards"], by_index["shards"], strict=True):
        assert a["health"]["norm_quantiles"] == pytest.approx(b["health"]["norm_quantiles"])
        assert a["health"]["mean"] == pytest.approx(b["health"]["mean"], abs=1e-9)
        assert {k: v for k, v in a["health"].items() if k not in ("norm_quantiles", "mean", "std")} == \
            {k: v for k, v in b["health"].items() if k not in ("norm_quantiles", "mean", "std")}


@pytest.mark.parametrize("seed", range(5))
def test_no_false_alarm_on_a_healthy_run_of_1024_ranks(seed):
    """1,024 healthy ranks of 100 rows each (the sampling noise of a real run): no flag, whatever the seed."""
    world = 1024
    rows = np.random.default_rng(seed).normal(1.0, 1.0 + seed, size=(world, 100, 32)).astype(np.float32)
    ranks = [(r, tally_rows(rows[r], dtype="float32")) for r in range(world)]
    assert judge(ranks) == []
    ranks[17] = (17, tally_rows(0.5 * rows[17]))
    assert [(f.rank, f.kind) for f in judge(ranks)] == [(17, "scale")]  # (and half the scale is seen)


def test_a_healthy_merge_says_nothing(tmp_path, caplog):
    run = make_demo_run(tmp_path / "run", n_sequences=6400, world_size=64, dim=8, truncated=(), absent=(), empty=(),
                        short={})
    assert main(["aggregate", str(run.directory), "--expected", str(run.index), "-o", str(tmp_path / "m.h5"),
                 "--fail-on-health"]) == 0
    assert "Embedding health" not in caplog.text
    assert report_flags(read_merge_report(tmp_path / "m.h5")) == []


def test_fail_on_health_writes_then_exits_1_and_the_flags_name_ids(sick, tmp_path, capsys):
    out = tmp_path / "m.h5"
    assert main(["aggregate", str(sick.directory), "--expected", str(sick.index), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Embedding health: rank 5: 16 rows identical to another row under a different ID, first seq000005 and " \
           "seq000013: a packing bug?" in err
    assert "rank 2: median norm" in err
    out.unlink()
    assert main(["aggregate", str(sick.directory), "--expected", str(sick.index), "-o", str(out),
                 "--fail-on-health"]) == 1
    assert out.exists()  # (written, then the exit says it)
    assert "written, but 5 embedding health flags (the first: rank 2: median norm" in capsys.readouterr().err


def test_nan_rows_are_counted_apart_and_inf_is_not_saturation():
    rows = np.ones((6, 4), np.float32)
    rows[0, 1] = np.nan
    rows[1, 2] = np.inf
    rows[2, 3] = 65504.0
    health = tally_rows(rows)
    assert health.saturated_rows == 1
    assert health.rows == 6
    assert health.zero_rows == 0
    assert np.isfinite(health.norm_quantiles).all()


@pytest.mark.parametrize(("value", "problem"), [
    ({"rows": 1}, "'shards' holds a record whose 'health' is not a record of its embeddings' health"),
    ({**tally_rows(np.ones((2, 2), np.float32)).to_record(), "mean": "<b>x</b>"}, "whose 'health'"),
    ({**tally_rows(np.ones((2, 2), np.float32)).to_record(), "identical_example": [1]}, "whose 'health'"),
])
def test_a_health_record_of_the_wrong_kind_is_a_damaged_report(sick, tmp_path, value, problem):
    merged = aggregate_shards(sick.shard_files, tmp_path / "m.h5", sick.index)

    def damage(summary):
        summary["shards"][0]["health"] = value

    edit_summary(merged, damage)
    with pytest.raises(MergeError, match=problem):
        read_merge_report(merged)


def test_info_says_the_flags_of_a_merged_file(sick, tmp_path, capsys):
    merged = aggregate_shards(sick.shard_files, tmp_path / "m.h5", sick.index)
    assert main(["info", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "embedding health: 5 flags" in out
    assert "  rank 6: 16 all-zero rows: a batch that never ran?" in out


def test_the_largest_float32_values_give_finite_numbers(tmp_path):
    """A row of 3.4e38 (float32's largest) squares past float32: the numbers kept stay finite, the
    report stays readable."""
    rows = np.array([[0.0, -0.0, 1e-45, 3.4028235e38], [np.pi, -np.e, 1 / 3, 7.5]], dtype=np.float32)
    health = tally_rows(rows)
    assert np.isfinite([*health.norm_quantiles, health.mean, health.std]).all()
    from virnucpro_merge.synthetic import write_shard

    shard = write_shard(tmp_path / "shard_0.h5", ["x", "y"], rows)
    report = read_merge_report(aggregate_shards([shard], tmp_path / "m.h5"))
    assert report["shards"][0]["health"]["saturated_rows"] == 1


def test_nan_beside_huge_values_keeps_the_numbers_finite():
    rows = np.array([[np.nan, 1.0], [3e38, 3e38], [1.0, 2.0]], dtype=np.float32)
    health = tally_rows(rows)
    assert np.isfinite([*health.norm_quantiles, health.mean, health.std]).all()


def test_a_shard_read_alone_has_the_health_a_merge_kept(tmp_path):
    """Norms are taken on the same rows (by row number) however the rows are blocked or ordered."""
    from virnucpro_merge.health import read_health

    run = make_unhealthy_run(tmp_path / "run", n_sequences=8 * 3000, world_size=8, dim=8)
    report = read_merge_report(aggregate_shards(run.shard_files, tmp_path / "m.h5", run.index, chunk_size=700,
                                                order="index"))
    for shard, record in zip(run.shard_files, report["shards"], strict=True):
        alone = read_health(shard, block_rows=333).to_record()
        assert alone["norm_quantiles"] == pytest.approx(record["health"]["norm_quantiles"], rel=1e-6)
        assert {k: alone[k] for k in ("rows", "zero_rows", "saturated_rows", "identical_rows", "dtype")} == \
            {k: record["health"][k] for k in ("rows", "zero_rows", "saturated_rows", "identical_rows", "dtype")}


def test_inspect_run_reads_the_same_health_and_flags(sick, tmp_path):
    from virnucpro_merge.inspection import RunInspection, inspect_run

    assert all(s.health is None for s in inspect_run(sick.directory).shards)  # (off by default: embeddings unread)
    found = inspect_run(sick.directory, health=True)
    assert _kinds(found.health_flags) == {2: ["scale"], 4: ["saturated", "dtype"], 5: ["identical"], 6: ["zero"]}
    merged = aggregate_shards(sick.shard_files, tmp_path / "m.h5", sick.index)
    seen = RunInspection.from_merged(merged)
    assert [str(f) for f in seen.health_flags] == [str(f) for f in found.health_flags]
    frame = found.to_frame()
    assert frame.loc[6, "zero_rows"] == 16
    assert frame.loc[6, "health"] == "16 all-zero rows: a batch that never ran?"
    assert frame.loc[0, "health"] == ""
    assert frame.loc[0, "median_norm"] == pytest.approx(found.shards[0].health.median_norm)
    assert "health" not in inspect_run(sick.directory).to_frame().columns


@pytest.mark.parametrize("world", [8, 1024])
def test_the_health_picture_names_the_flagged_ranks_without_overlap(world):
    """At 8 and at 1,024 ranks: the flagged ranks in the legend (and, past 16, named above the plot);
    no tick label, legend entry or name overlaps."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    from tests.test_plots import _tick_labels_apart
    from virnucpro_merge.inspection import RunInspection, ShardSummary

    rng = np.random.default_rng(1)
    odd = {2: "scale", world - 3: "zero"}
    shards = []
    for r in range(world):
        rows = rng.normal(size=(64, 8)).astype(np.float32)
        if odd.get(r) == "scale":
            rows *= 0.02
        if odd.get(r) == "zero":
            rows[:3] = 0
        shards.append(ShardSummary(rank=r, path=Path(f"shard_{r}.h5"), expected=64, present=64, missing=0,
                                   status="ok", health=tally_rows(rows, dtype="float32")))
    found = RunInspection(shards=shards, missing=np.zeros((world, 64), bool), sequence_ids=range(64 * world))
    fig = found.plot_health()
    assert _tick_labels_apart(fig) == []
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "another scale: 2" in legend
    assert f"all-zero rows: {world - 3}" in legend
    assert ax.get_title() == f"Row norms per rank: 2 of {world:,} ranks stand out"
    if world > 16:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        names = [t for t in ax.texts]
        assert sorted(t.get_text() for t in names) == sorted(["2", str(world - 3)])
        boxes = [t.get_window_extent(renderer) for t in names]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_the_rank_table_shows_health_when_read_and_puts_those_ranks_first(sick, tmp_path):
    from virnucpro_merge.inspection import inspect_run
    from virnucpro_merge.inspection.tables import inspection_html

    page = inspection_html(inspect_run(sick.directory, health=True))
    assert ">health</th>" in page
    assert "16 all-zero rows: a batch that never ran?" in page
    assert ">health</th>" not in inspection_html(inspect_run(sick.directory))
    big = make_unhealthy_run(tmp_path / "big", n_sequences=64 * 40, world_size=64, dim=8, scaled=(40,), saturated=(),
                             identical=(), zero=())
    folded = inspection_html(inspect_run(big.directory, health=True))  # (past 20 ranks: those worth a look first)
    head = folded[: folded.index("<details>")]
    assert "median norm" in head
    assert head.count("<tr>") == 2  # (its header, and rank 40: the only one that stands out)


def test_the_interactive_row_norms_say_each_rank_on_hover(sick):
    pytest.importorskip("bokeh")
    from bokeh.models import HoverTool

    from virnucpro_merge.inspection import inspect_run, interactive_health

    fig = interactive_health(inspect_run(sick.directory, health=True))
    assert fig.title.text == "Row norms per rank: 4 of 8 ranks stand out"
    columns = next(r for r in fig.renderers if getattr(r.glyph, "fill_alpha", 1) == 0).data_source.data
    assert columns["health"][6] == "16 all-zero rows: a batch that never ran?"
    assert columns["health"][0] == "nothing stands out"
    assert columns["zero"][6] == 16
    assert columns["dtype"][4] == "float16"
    assert fig.y_scale.__class__.__name__ == "LogScale"  # (rank 2 is 30 times smaller)
    assert "@health" in fig.select_one(HoverTool).tooltips
    assert "not checked" in interactive_health(inspect_run(sick.directory)).title.text


def test_the_interactive_row_norms_on_a_log_axis_start_above_zero(sick):
    """Ranks whose 5 % row norms are 0 (more than 5 % of their rows all zero) and whose medians are
    far apart: the log axis starts below the least positive norm, never at 0 (which a log axis
    cannot show), and no norm is drawn below its start."""
    pytest.importorskip("bokeh")
    from dataclasses import replace

    from virnucpro_merge.inspection import inspect_run, interactive_health

    found = inspect_run(sick.directory, health=True)
    def quantiles(rank: int) -> tuple[float, ...]:  # (the odd ranks 30 times larger, their 25 % norm 0 too)
        scale = 30.0 ** (rank % 2)
        return 0.0, 0.0 if rank % 2 else 1.0, 2.0 * scale, 3.0 * scale, 4.0 * scale

    shards = [replace(s, health=replace(s.health, norm_quantiles=quantiles(s.rank))) if s.health is not None else s
              for s in found.shards]
    fig = interactive_health(replace(found, shards=shards))
    assert fig.y_scale.__class__.__name__ == "LogScale"
    assert fig.y_range.start == pytest.approx(0.8)  # (below the least positive norm: rank 0's 25 %, 1.0)
    columns = next(r for r in fig.renderers if getattr(r.glyph, "fill_alpha", 1) == 0).data_source.data
    drawn = [v for name in ("q05", "q25", "q50", "q75", "q95") for v in columns[name]]
    assert min(drawn) >= fig.y_range.start


@pytest.fixture(scope="module")
def mixed_models(tmp_path_factory):
    """A healthy run with checkpoints, whose rank 3 says its model ran in float32, the others float16."""
    return make_demo_run(tmp_path_factory.mktemp("models") / "run", n_sequences=800, world_size=8, dim=8,
                         truncated=(), absent=(), empty=(), short={}, checkpoint_every=25,
                         model_dtypes={3: "torch.float32"})


def test_a_rank_whose_checkpoints_name_another_model_dtype_is_flagged_by_the_merge(mixed_models, tmp_path):
    merged = aggregate_shards(mixed_models.shard_files, tmp_path / "m.h5",
                              checkpoints=mixed_models.directory / "checkpoints")
    report = read_merge_report(merged)
    assert [RankHealth.from_record(s["health"]).model_dtypes for s in report["shards"]] == \
        [("torch.float16",)] * 3 + [("torch.float32",)] + [("torch.float16",)] * 4
    assert [str(f) for f in report_flags(report)] == [
        "rank 3: its checkpoints say its model ran in torch.float32, 7 other ranks' in torch.float16: "
        "check its precision"]
    plain = read_merge_report(aggregate_shards(mixed_models.shard_files, tmp_path / "p.h5", checkpoints=False))
    assert report_flags(plain) == []  # (without checkpoints the model is not known)


def test_inspect_run_reads_the_model_dtype_from_the_checkpoints(mixed_models):
    from virnucpro_merge.inspection import inspect_run

    found = inspect_run(mixed_models.directory, health=True)
    assert [(f.rank, f.kind) for f in found.health_flags] == [(3, "dtype")]
    assert found.shards[3].health.model_dtypes == ("torch.float32",)
    assert [(f.rank, f.kind) for f in inspect_run(mixed_models.directory, health=True, checkpoints=False)
            .health_flags] == []


def test_a_rank_naming_two_model_dtypes_is_flagged_for_the_unusual_one():
    healthy = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    ranks = [(r, tally_rows(healthy, dtype="float32")) for r in range(6)]
    ranks = [(r, RankHealth(**{**h.__dict__, "model_dtypes": ("torch.float16",)})) for r, h in ranks]
    ranks[2] = (2, RankHealth(**{**ranks[2][1].__dict__, "model_dtypes": ("torch.bfloat16", "torch.float16")}))
    assert [str(f) for f in judge(ranks)] == [
        "rank 2: its checkpoints say its model ran in torch.bfloat16, 5 other ranks' in torch.float16: "
        "check its precision"]


def test_a_model_dtype_from_someone_elses_checkpoint_is_shown_cut_and_quoted():
    healthy = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    base = tally_rows(healthy, dtype="float32")
    ranks = [(r, RankHealth(**{**base.__dict__, "model_dtypes": ("torch.float16",)})) for r in range(5)]
    odd = "<b>\n" + "x" * 5000
    ranks.append((5, RankHealth(**{**base.__dict__, "model_dtypes": (odd,)})))
    [flag] = judge(ranks)
    assert "\n" not in flag.words
    assert len(flag.words) < 300
    assert flag.words.startswith("rank 5: its checkpoints say its model ran in '<b>\\nxxx")


def _tally_in_blocks(rows: np.ndarray, numbers: np.ndarray, blocks: int) -> RankTally:
    tally = RankTally()
    for part in np.array_split(numbers, blocks):
        part = np.sort(part)
        block = rows[part]
        tally.add(block, row_sums(block), nonfinite_rows(block), rows=part)
    return tally


def test_a_tally_of_many_small_blocks_in_any_order_is_the_tally_of_the_whole():
    """What an index-order merge gives each rank's tally: a few rows a block, in any order."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((5000, 6)).astype(np.float32)
    rows[[10, 4000, 4321]] = rows[77]  # four identical rows
    rows[[5, 6]] = 0
    whole = tally_rows(rows)
    found = _tally_in_blocks(rows, rng.permutation(rows.shape[0]), 700).finish(lambda r: rows[r])
    assert (found.identical_rows, found.identical_example, found.zero_rows, found.rows) == (4, (10, 77), 2, 5000)
    assert (found.identical_rows, found.identical_example, found.zero_rows) == \
        (whole.identical_rows, whole.identical_example, whole.zero_rows)
    assert found.norm_quantiles == pytest.approx(whole.norm_quantiles)
    assert (found.mean, found.std) == pytest.approx((whole.mean, whole.std))


def test_a_tally_of_many_blocks_keeps_few_arrays():
    """An index-order merge of 10^7 rows over 256 ranks gave each tally about 1,000 blocks: kept
    one by one, their arrays' headers alone were 91 MB; joined, the rows' sums and numbers
    are what is kept (12 bytes a row)."""
    import tracemalloc

    rows = np.random.default_rng(4).standard_normal((40_000, 4)).astype(np.float32)
    tracemalloc.start()
    try:
        tally = _tally_in_blocks(rows, np.arange(rows.shape[0]), 20_000)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.rows == 40_000
    assert kept < 2 * 2**20, f"{kept / 2**20:.1f} MB kept for 40,000 rows"
