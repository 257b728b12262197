"""Watching a run while it runs (inspection/progress.py, ``virnucpro-merge watch``), on synthetic live runs
driven by their own clock: no test sleeps."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge.cli import main
from virnucpro_merge.errors import MergeError
from virnucpro_merge.inspection import ProgressReader, RankProgress, RunProgress, read_progress
from virnucpro_merge.inspection.tables import format_progress, progress_page
from virnucpro_merge.statuses import FAILED, FINISHED, PREEMPTED, RUNNING, STALLED, WAITING
from virnucpro_merge.synthetic import LiveRun, make_live_run, write_shard
from virnucpro_merge.timeline import RankTimeline

#: How far an ETA may be from the truth: a tenth of the time left, and a minute.
ETA_TOLERANCE = 0.10
ETA_SLACK_SECONDS = 60.0


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``, with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[os.path.relpath(path, folder)] = (stat.st_size if name in files else 0, stat.st_mtime_ns)
    return found


def _watch_json(live: LiveRun, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, dict]:
    """``watch --once --json`` at the live run's clock, asserting that it leaves the run folder as it was."""
    before = _snapshot(live.directory)
    status = main(["watch", str(live.directory), "--once", "--json", "--now", live.moment().isoformat(), *more])
    assert _snapshot(live.directory) == before, "watch changed the run folder"
    return status, json.loads(capsys.readouterr().out)


@pytest.fixture
def live(tmp_path: Path) -> LiveRun:
    """8 ranks of 1,000 sequences, 50 a checkpoint: rank 2 a straggler, 5 stalls, 6 dies, 7 is preempted."""
    return make_live_run(tmp_path / "run", n_sequences=8000, world_size=8, checkpoint_every=50)


def _eta_error(live: LiveRun, rank: int, eta: str, now: float) -> float:
    """How far an ETA is from when the rank truly finishes, as a share of the time it had left."""
    said = _dt.datetime.fromisoformat(eta.replace("Z", "+00:00"))
    truth = live.moment(live.finish_times[rank])
    left = max(live.finish_times[rank] - now, 1.0)
    return max(0.0, abs((said - truth).total_seconds()) - ETA_SLACK_SECONDS) / left


def test_watch_once_json_follows_a_live_run(live, capsys):
    """At several moments: what is done, the ETAs within their tolerance of the truth, each rank
    named stalled, failed or preempted once it is, the exit status -- and the folder untouched."""
    interval = 300 * 1.625  # (rank 5's pace: 300 s a checkpoint, times 1 + 5/8)
    moments = {
        "start": 0.0,
        "all running": 3000.0,
        "5 overdue": live.stop_times[5] + 3.5 * interval,
        "6 died": live.stop_times[6] + 1.0,
        "7 preempted": live.stop_times[7] + 1.0,
        "most done": live.finish_times[4] + 1.0,
    }
    seen = {}
    for name, moment in sorted(moments.items(), key=lambda item: item[1]):
        live.advance_to(moment)
        status, found = _watch_json(live, capsys)
        seen[name] = found
        truth = sum(live.done_at(rank, moment) for rank in range(8))
        assert found["done"] == truth, name
        assert found["total"] == 8000
        states = {r["rank"]: r["state"] for r in found["ranks"]}
        for rank in range(8):
            if states[rank] == RUNNING and found["ranks"][rank]["eta"] is not None and rank in live.finish_times:
                assert _eta_error(live, rank, found["ranks"][rank]["eta"], moment) <= ETA_TOLERANCE, (name, rank)
        assert status == (1 if found["stopped"] else 0) == found["exit_status"]
    assert {r["state"] for r in seen["start"]["ranks"]} == {WAITING}
    assert seen["start"]["eta"] is None
    assert seen["all running"]["stopped"] == []
    assert {r["state"] for r in seen["all running"]["ranks"]} == {RUNNING}
    assert seen["all running"]["stragglers"] == [2]
    assert seen["all running"]["slowest"][0] == 2
    assert seen["5 overdue"]["ranks"][5]["state"] == STALLED
    assert "no checkpoint for" in seen["5 overdue"]["ranks"][5]["cause"]
    died = seen["6 died"]["ranks"][6]
    assert died["state"] == FAILED
    assert died["cause"].startswith("RuntimeError: CUDA error: an illegal memory access")
    assert died["in_progress"] == 1  # (the save it began, left as .tmp)
    assert seen["7 preempted"]["ranks"][7]["state"] == PREEMPTED
    assert seen["7 preempted"]["stopped"] == [5, 6, 7]
    last = seen["most done"]
    assert [r["rank"] for r in last["ranks"] if r["state"] == FINISHED] == [0, 1, 3, 4]
    assert last["counts"] == {"finished": 4, "running": 1, "waiting": 0, "preempted": 1, "stalled": 1, "failed": 1}
    assert _eta_error(live, 2, last["eta"], moments["most done"]) <= ETA_TOLERANCE  # (the run's: its last rank's)


def test_a_stall_is_not_called_before_its_time(live, capsys):
    """Just under three usual intervals without a checkpoint: still running."""
    live.advance_to(live.stop_times[5] + 2.5 * 300 * 1.625)
    _, found = _watch_json(live, capsys)
    assert found["ranks"][5]["state"] == RUNNING


def test_a_run_that_completes_exits_0_and_the_watch_ends_by_itself(tmp_path, capsys, monkeypatch):
    live = make_live_run(tmp_path / "run", n_sequences=400, world_size=4, checkpoint_every=20, stragglers=(),
                         stalls=(), dies=(), preempted=())
    live.advance_to(live.end)
    status, found = _watch_json(live, capsys)
    assert (status, found["complete"], found["done"]) == (0, True, 400)
    monkeypatch.setattr("time.sleep", lambda _: pytest.fail("a complete run is not watched on"))
    assert main(["watch", str(live.directory), "--interval", "1"]) == 0
    assert "the run is complete" in capsys.readouterr().out


def test_ctrl_c_ends_a_watch_cleanly(live, capsys, monkeypatch):
    live.advance_to(1800)

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", interrupt)
    assert main(["watch", str(live.directory), "--now", live.moment().isoformat()]) == 0
    out, err = capsys.readouterr()
    assert "8 ranks" in out
    assert "stopped watching" in err
    assert "Traceback" not in err


def test_the_loop_prints_one_json_object_a_line(live, capsys, monkeypatch):
    live.advance_to(1800)
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    assert main(["watch", str(live.directory), "--json", "--interval", "7", "--now", live.moment().isoformat()]) == 0
    lines = capsys.readouterr().out.splitlines()
    truth = sum(live.done_at(rank, 1800) for rank in range(8))
    assert len(lines) == 2
    assert all(json.loads(line)["done"] == truth for line in lines)
    assert sleeps == [7.0, 7.0]


def test_the_html_page_is_written_atomically_outside_the_run(live, tmp_path, capsys):
    live.advance_to(live.stop_times[6] + 1)
    page = tmp_path / "watch.html"
    status, _ = _watch_json(live, capsys, "--html", str(page), "--interval", "30")
    assert status == 1
    text = page.read_text(encoding="utf-8")
    assert '<meta http-equiv="refresh" content="30">' in text
    assert "RuntimeError: CUDA error" in text
    assert "<script" not in text
    assert "http" not in text.replace("http-equiv", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "watch.html"]  # (no temp file left)


@pytest.mark.parametrize(("argv", "words"), [
    (["watch", "{run}/nothere", "--once"], "nothere: does not exist"),
    (["watch", "{run}/sequence_index.json", "--once"], "is not a folder"),
    (["watch", "{run}/logs", "--once"], "not a run folder"),
    (["watch", "{run}", "--once", "--html", "{run}/page.html"], "inside the run's folder"),
    (["watch", "{run}", "--once", "--now", "yesterday"], "not a time: 'yesterday'"),
])
def test_bad_usage_is_one_line_and_exit_2(live, argv, words, capsys):
    status = main([arg.format(run=live.directory) for arg in argv])
    err = capsys.readouterr().err
    assert status == 2
    assert words in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (live.directory / "page.html").exists()


@pytest.mark.parametrize("interval", ["0", "-3", "soon", "inf", "nan", "1e10"])
def test_an_interval_must_be_a_positive_number(live, interval, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["watch", str(live.directory), "--interval", interval])
    assert exited.value.code == 2


def test_files_being_written_are_work_in_progress_not_damage(live):
    live.advance_to(1800)
    folder = live.directory / "checkpoints" / "shard_1"
    (folder / "batch_00099.pt").write_bytes(b"PK\x03\x04 half a zip")  # (renamed, not marked, not whole yet?)
    (folder / "batch_00100.tmp").write_bytes(b"PK")
    shard = live.directory / "shard_3.h5"
    write_shard(shard, ["a", "b"], np.zeros((2, 4), np.float32))
    os.truncate(shard, shard.stat().st_size // 2)  # (a shard its worker is still writing)
    found = read_progress(live.directory, now=live.moment())
    assert found.ranks[1].state == RUNNING
    assert found.ranks[1].in_progress == 2
    assert found.ranks[1].done == live.done_at(1, 1800)
    assert found.ranks[3].state == RUNNING
    assert found.ranks[3].done == live.done_at(3, 1800)
    assert found.stopped == []


def test_a_refresh_reads_only_the_files_that_changed(live):
    live.advance_to(1800)
    reader = ProgressReader(live.directory)
    first = reader.read(now=live.moment())
    assert reader.files_read >= 8 * 3  # (every checkpoint, once)
    again = reader.read(now=live.moment())
    assert reader.files_read == 0
    assert again.to_dict() == first.to_dict()
    nxt = next(e for e in live.events if e.time > 1800)
    live.advance_to(nxt.time)
    later = reader.read(now=live.moment())
    assert reader.files_read == 2  # (the new checkpoint, and the manifest)
    assert later.done == first.done + 50


def test_a_rank_the_manifest_says_failed_is_failed_with_its_error_when_its_log_says_nothing(live):
    live.advance_to(live.stop_times[6] + 1)
    (live.directory / "logs" / "worker_6.log").write_text("nothing of interest\n")
    found = read_progress(live.directory, now=live.moment())
    assert found.ranks[6].state == FAILED
    assert found.ranks[6].cause == "CUDA error: an illegal memory access was encountered (the manifest says)"


def test_without_a_manifest_a_dead_worker_is_told_by_its_log_once_overdue(live):
    live.advance_to(live.stop_times[6] + 1)
    (live.directory / "checkpoints" / "manifest.json").unlink()
    assert read_progress(live.directory, now=live.moment()).ranks[6].state == RUNNING  # (not overdue yet)
    later = live.moment(live.stop_times[6] + 3600)
    found = read_progress(live.directory, now=later)
    assert found.ranks[6].state == FAILED
    assert found.ranks[6].cause.startswith("RuntimeError: CUDA error")
    assert found.world_size == 8  # (from the checkpoint folders)


def test_untrusted_text_is_escaped_in_html_and_kept_on_one_line_in_a_terminal(live):
    live.advance_to(live.stop_times[6] + 1)
    (live.directory / "logs" / "worker_6.log").write_text(
        "RuntimeError: </script><b>bold</b><script>alert(1)</script>\x1b[2J\n")
    found = read_progress(live.directory, now=live.moment())
    page = progress_page(found, refresh=10)
    assert "</script><b>" not in page
    assert "<b>bold" not in page
    assert "alert(1)</script>" not in page
    assert "&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    text = format_progress(found)
    assert "\x1b" not in text
    assert "\\x1b[2J" in text


def _fake_run(world_size: int, stopped: dict[int, str]) -> RunProgress:
    """A run of ``world_size`` ranks, without files: all running at one pace but ``stopped``."""
    now = np.datetime64("2026-01-05T12:00:00", "ms")
    empty = RankTimeline(0, np.array([], dtype="datetime64[ms]"), np.array([], dtype=np.int64))
    ranks = [RankProgress(r, stopped.get(r, RUNNING), 100, 300, None if r in stopped else 100.0 + r % 7,
                          None if r in stopped else now + np.timedelta64(3600 + 10 * (r % 97), "s"), now, 3, 0,
                          "it stopped" if r in stopped else None, empty) for r in range(world_size)]
    return RunProgress(Path("big"), now, ranks, 300 * world_size)


def test_at_1024_ranks_the_terminal_shows_a_summary_and_the_ranks_worth_a_look():
    found = _fake_run(1024, {5: STALLED, 6: FAILED, 700: PREEMPTED})
    text = format_progress(found)
    lines = text.splitlines()
    assert len(lines) < 30
    table = lines[lines.index("") + 2 :]
    shown = [int(line.split()[0]) for line in table if line.split()[0].isdigit()]
    assert {5, 6, 700} <= set(shown)
    assert len(shown) == 12
    assert lines[-1].startswith("... and 1,012 more ranks: running 0-4, 7-")
    assert "will not finish by themselves: ranks 5-6, 700" in text


def test_to_frame_has_a_row_a_rank(live):
    pytest.importorskip("pandas")
    live.advance_to(live.stop_times[6] + 1)
    frame = read_progress(live.directory, now=live.moment()).to_frame()
    assert list(frame.columns) == ["state", "done", "assigned", "rate", "eta", "last_checkpoint", "checkpoints",
                                   "in_progress", "cause"]
    assert frame.index.name == "rank"
    assert len(frame) == 8
    assert frame.loc[6, "state"] == FAILED
    assert frame.loc[0, "cause"] == ""
    assert str(frame["eta"].dtype).startswith("datetime64")


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(MergeError, match="not a run folder"):
        read_progress(tmp_path)


def test_a_checkpoint_folder_that_did_not_change_is_not_listed_again(live, monkeypatch):
    from virnucpro_merge.inspection import progress

    live.advance_to(1800)
    folders = sorted((live.directory / "checkpoints").glob("shard_*"))
    for folder in folders:  # (changed long ago: settled)
        os.utime(folder, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    reader = ProgressReader(live.directory)
    reader.read(now=live.moment())
    listed = []
    real = progress._list_rank
    monkeypatch.setattr(progress, "_list_rank", lambda folder: listed.append(Path(folder).name) or real(folder))
    reader.read(now=live.moment())
    assert listed == []
    nxt = next(e for e in live.events if e.time > 1800)
    live.advance_to(nxt.time)  # (a checkpoint of one rank: its folder changes, and only it is listed)
    found = reader.read(now=live.moment())
    assert listed == [f"shard_{nxt.rank}"]
    assert found.done == sum(live.done_at(rank, nxt.time) for rank in range(8))


@pytest.mark.parametrize("world_size", [8, 1024])
def test_the_progress_figure_has_no_overlapping_labels(world_size):
    pytest.importorskip("matplotlib")
    from tests.test_plots import _tick_labels_apart

    found = _fake_run(world_size, {5: STALLED, 6: FAILED, 7: PREEMPTED})
    fig = found.plot_progress()
    assert _tick_labels_apart(fig) == []
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert labels[0] == "0"
    assert len(labels) == (8 if world_size == 8 else len(labels))
    assert len(labels) <= 12
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:1] == [f"running ({world_size - 3:,})"]
    assert {"stalled (1)", "failed (1)", "preempted (1)"} <= set(legend)


def test_the_manifest_is_parsed_again_only_when_a_status_changes(live, monkeypatch):
    from virnucpro_merge.inspection import progress

    parsed = []
    real = progress.read_manifest
    monkeypatch.setattr(progress, "read_manifest", lambda path: parsed.append(path) or real(path))
    live.advance_to(1800)
    reader = ProgressReader(live.directory)
    reader.read(now=live.moment())
    assert len(parsed) == 1  # (the first look: the world size)
    live.advance_to(live.stop_times[6] - 1)  # (many checkpoints, the manifest rewritten: no failure yet)
    reader.read(now=live.moment())
    assert len(parsed) == 1
    live.advance_to(live.stop_times[6] + 1)  # (rank 6 dies: "failed" in the manifest)
    assert reader.read(now=live.moment()).ranks[6].state == FAILED
    assert len(parsed) == 2
    live.advance_to(live.stop_times[6] + 600)  # (more checkpoints; the same failure)
    assert reader.read(now=live.moment()).ranks[6].state == FAILED
    assert len(parsed) == 2


def test_a_cause_is_cut_to_fit_the_terminal(live):
    live.advance_to(live.stop_times[6] + 1)
    found = read_progress(live.directory, now=live.moment())
    for width in (120, 160):
        rows = [line for line in found.describe(width=width).splitlines() if line.startswith("   6  failed")]
        assert len(rows) == 1
        assert len(rows[0]) <= width
        assert rows[0].endswith("...")
    assert found.describe().splitlines()[-2].startswith("   6  failed")


def test_a_failure_and_a_retry_between_two_looks_are_both_seen(live, monkeypatch):
    """One rank fails as a failed one is retried: as many failures as before, other ranks."""
    import json

    from virnucpro_merge.inspection import progress

    parsed = []
    real = progress.read_manifest
    monkeypatch.setattr(progress, "read_manifest", lambda path: parsed.append(path) or real(path))
    live.advance_to(live.stop_times[6] + 1)
    reader = ProgressReader(live.directory)
    assert reader.read(now=live.moment()).ranks[6].state == FAILED
    path = live.directory / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    shards = manifest["shards"]
    assert shards["6"]["status"] == "failed"
    assert shards["3"]["status"] != "failed"
    shards["6"]["status"], shards["3"]["status"] = shards["3"]["status"], "failed"
    shards["3"]["error"] = "exhausted 3 retries for transient"
    path.write_text(json.dumps(manifest))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    found = reader.read(now=live.moment())
    assert len(parsed) == 2  # (the statuses changed, not their count of failures)
    assert found.ranks[3].state == FAILED
    assert "exhausted 3 retries" in found.ranks[3].cause


def test_shards_holding_fewer_sequences_than_the_index_are_not_a_complete_run(tmp_path):
    """No checkpoints and no manifest: the world size is the files', and two ranks' shards are not the run."""
    whole = make_live_run(tmp_path / "whole", n_sequences=200, world_size=4, checkpoint_every=20, stalls=(), dies=(),
                          preempted=(), stragglers=())
    whole.advance_to(whole.end)
    part = tmp_path / "part"
    part.mkdir()
    for name in ("shard_0.h5", "shard_1.h5", "sequence_index.json"):
        (part / name).write_bytes((whole.directory / name).read_bytes())
    found = read_progress(part)
    assert found.done == 100
    assert not found.complete
    assert any("100 of the index's 200 sequences" in note for note in found.notes)
    assert read_progress(whole.directory).complete


def test_a_run_given_as_dot_is_named_by_its_folder(live, monkeypatch):
    live.advance_to(1800)
    monkeypatch.chdir(live.directory)
    found = read_progress(".", now=live.moment())
    assert found.run.name == live.directory.name
    assert found.world_size == 8


def test_a_manifest_read_half_written_is_read_again_whole(live):
    live.advance_to(live.stop_times[6] + 1)
    path = live.directory / "checkpoints" / "manifest.json"
    whole = path.read_bytes()
    reader = ProgressReader(live.directory)
    path.write_bytes(whole[:-20])  # (caught mid-write: its statuses all there, its end not)
    assert any("manifest" in note for note in reader.read(now=live.moment()).notes)
    path.write_bytes(whole)
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    found = reader.read(now=live.moment())
    assert not any("manifest" in note for note in found.notes)
    assert found.ranks[6].state == FAILED


def test_a_world_size_no_run_has_is_not_believed(live, capsys):
    live.advance_to(1800)
    path = live.directory / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    for wrong in (10**9, -3):
        manifest["world_size"] = wrong
        path.write_text(json.dumps(manifest))
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
        assert read_progress(live.directory, now=live.moment()).world_size == 8  # (the files')
    assert main(["watch", str(live.directory), "--once", "--world-size", str(10**9)]) == 2
    assert "world size" in capsys.readouterr().err


def test_one_checkpoint_and_no_pace_anywhere_still_stalls(tmp_path):
    one = make_live_run(tmp_path / "one", n_sequences=300, world_size=1, checkpoint_every=50, stalls=(0,), dies=(),
                        preempted=(), stragglers=())
    one.advance_to(one.stop_times[0])
    for extra in sorted((one.directory / "checkpoints" / "shard_0").glob("batch_*"))[2:]:
        extra.unlink()  # (one checkpoint and its marker left)
    last = read_progress(one.directory, now=one.moment()).ranks[0].last_checkpoint
    soon = read_progress(one.directory, now=last + np.timedelta64(10, "m")).ranks[0]
    late = read_progress(one.directory, now=last + np.timedelta64(30, "D")).ranks[0]
    assert soon.state == RUNNING
    assert late.state == STALLED


def test_a_run_just_started_is_watched_not_refused(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert main(["watch", str(tmp_path / "run"), "--once", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["world_size"] == 0


def test_a_huge_total_in_a_damaged_index_is_not_believed(live):
    live.advance_to(1800)
    (live.directory / "sequence_index.json").write_text('{"total_sequences": 99999999999999999999, "sequences": []}')
    found = read_progress(live.directory, now=live.moment())
    assert found.total is None or found.total < 10**12


def test_a_cause_from_the_manifest_is_cut(live):
    live.advance_to(live.stop_times[6] + 1)
    path = live.directory / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"]["6"]["error"] = "x" * 10_000
    path.write_text(json.dumps(manifest))
    (live.directory / "logs").rename(live.directory / "logs-gone")  # (the manifest's word alone)
    found = read_progress(live.directory, now=live.moment())
    assert found.ranks[6].state == FAILED
    assert len(found.ranks[6].cause) < 400


def test_no_page_is_written_into_the_checkpoints_folder_beside_the_run(live, tmp_path, capsys):
    """The CLI's layout: ``<out>/.checkpoints`` beside the run folder ``<out>/esm_v2``."""
    import shutil

    live.advance_to(1800)
    out = tmp_path / "out"
    shutil.copytree(live.directory / "checkpoints", out / ".checkpoints")
    shutil.copytree(live.directory / "logs", out / "esm_v2" / "logs")
    shutil.copy(live.directory / "sequence_index.json", out / "esm_v2")
    assert main(["watch", str(out / "esm_v2"), "--once", "--html", str(out / ".checkpoints" / "p.html")]) == 2
    assert "inside the run's folder" in capsys.readouterr().err
    assert not (out / ".checkpoints" / "p.html").exists()
