"""The rest of a run folder: where the pipeline keeps it (ranks.run_folder), its manifest and
worker logs (virnucpro_merge.manifest), each rank's checkpoint files (checkpoints.rank_checkpoints)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from virnucpro_merge import manifest as manifest_module
from virnucpro_merge.checkpoints import rank_checkpoints
from virnucpro_merge.manifest import read_log_tail, read_manifest
from virnucpro_merge.ranks import run_folder
from virnucpro_merge.synthetic import write_checkpoint

#: A manifest as the pipeline leaves it (docs: UPSTREAM-RUN-FOLDER.md): rank 5 failed after
#: retries and was moved to rank 7; rank 6 was preempted (still in_progress).
UPSTREAM = {
    "version": "2.0", "world_size": 8, "created_at": "2026-01-05T10:00:00+00:00", "input_fingerprint": "",
    "model_config_hash": "", "global_checkpoints": [],
    "shards": {
        "5": {"status": "failed", "original_rank": 5, "assigned_rank": 7, "last_checkpoint_batch": 2,
              "total_sequences": 256, "last_checkpoint_time": "2026-01-05T10:20:00+00:00", "retry_count": 1,
              "error": "exhausted 3 retries for transient", "failed_at": "2026-01-05T10:21:00+00:00",
              "checkpoints": [{"batch_idx": 0, "num_sequences": 86, "file": "batch_00000.pt",
                               "timestamp": "2026-01-05T10:10:00+00:00", "sequence_range": ""}]},
        "6": {"status": "in_progress", "original_rank": 6, "assigned_rank": 6, "last_checkpoint_batch": -1,
              "total_sequences": 0, "last_checkpoint_time": None, "retry_count": 0, "error": None,
              "checkpoints": []},
    },
}


def test_the_manifest_says_what_each_rank_claims(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(UPSTREAM))
    found = read_manifest(path)
    assert found.problem is None
    assert found.world_size == 8
    five, six = found.ranks[5], found.ranks[6]
    assert (five.status, five.error, five.retry_count, five.assigned_rank) == (
        "failed", "exhausted 3 retries for transient", 1, 7)
    assert five.last_checkpoint_batch == 2
    assert five.failed_at == "2026-01-05T10:21:00+00:00"
    assert (six.status, six.error, six.last_checkpoint_time) == ("in_progress", None, None)


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"world_size": 8, "shards": {"5": {"status": "fai', "damaged manifest (Unterminated string"),
    (b"\xff\xfe not text", "damaged manifest ("),
    (b"[1, 2]", "damaged manifest (no 'shards' object)"),
    (b'{"shards": [1]}', "damaged manifest (no 'shards' object)"),
    (b"", "damaged manifest (Expecting value"),
    (b"[" * 100_000 + b"]" * 100_000, "damaged manifest ("),
], ids=["truncated", "not UTF-8", "a list", "shards a list", "empty", "deeply nested"])
def test_a_damaged_manifest_is_said_and_read_as_none(tmp_path, content, problem):
    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    found = read_manifest(path)
    assert found.ranks == {}
    assert found.problem.startswith(f"{path}: {problem}")
    assert found.problem.endswith("the files are read instead")


def test_values_of_the_wrong_kind_are_no_claim(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"world_size": "8", "shards": {"3": {"status": 7, "error": ["x"], "retry_count": True},
                                                             "x": {"status": "failed"}, "4": "complete"}}))
    found = read_manifest(path)
    assert found.world_size is None
    assert list(found.ranks) == [3]
    assert (found.ranks[3].status, found.ranks[3].error, found.ranks[3].retry_count) == (None, None, None)


def test_a_huge_manifest_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "_MAX_MANIFEST", 100)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(UPSTREAM))
    assert "is not read" in read_manifest(path).problem


# --------------------------------------------------------------------------- worker logs

LOG = """2026-01-05 10:00:00,001 - Worker 6 - virnucpro.pipeline - INFO - Worker 6 logging initialized
2026-01-05 10:10:00,002 - Worker 6 - virnucpro.pipeline - ERROR - Batch 3 failed: CUDA out of memory
Traceback (most recent call last):
  File "gpu_worker.py", line 10, in run
RuntimeError: CUDA error: an illegal memory access was encountered
2026-01-05 10:10:01,000 - Worker 6 - virnucpro.pipeline - INFO - shutting down
"""


def test_the_last_error_of_a_log_and_its_line(tmp_path):
    path = tmp_path / "worker_6.log"
    path.write_text(LOG)
    tail = read_log_tail(path)
    assert tail.last_error == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert tail.line == 5
    assert not tail.not_utf8


def test_an_error_line_of_the_pipelines_format(tmp_path):
    path = tmp_path / "worker_6.log"
    path.write_text(LOG.splitlines(keepends=True)[0] + LOG.splitlines(keepends=True)[1])
    tail = read_log_tail(path)
    assert tail.last_error == "Batch 3 failed: CUDA out of memory"
    assert tail.line == 2


def test_a_log_that_is_not_utf8_is_read_and_said(tmp_path):
    path = tmp_path / "worker_6.log"
    path.write_bytes(b"\xff\xfe garbage\n" + LOG.encode())
    tail = read_log_tail(path)
    assert tail.not_utf8
    assert tail.last_error.startswith("RuntimeError: CUDA error")
    assert tail.line == 6


def test_a_huge_log_is_read_from_its_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "_TAIL", 4096)
    monkeypatch.setattr(manifest_module, "_COUNT_LINES_UP_TO", 10_000)
    path = tmp_path / "worker_6.log"
    path.write_text("2026-01-05 10:00:00,001 - Worker 6 - x - INFO - a line of progress\n" * 5000 + LOG)
    read = []
    real_open = open

    def counting_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        real_read = handle.read

        def read_counted(size=-1):
            data = real_read(size)
            read.append(len(data))
            return data

        handle.read = read_counted
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    tail = read_log_tail(path)
    assert tail.last_error.startswith("RuntimeError: CUDA error")
    assert tail.line is None  # (too large to count its lines)
    assert sum(read) <= 4096


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["no log", "a folder"])
def test_no_log_is_no_tail(tmp_path, make):
    make(tmp_path / "worker_1.log")
    assert read_log_tail(tmp_path / "worker_1.log") is None


def test_a_log_without_an_error(tmp_path):
    path = tmp_path / "worker_0.log"
    path.write_text(LOG.splitlines(keepends=True)[0])
    tail = read_log_tail(path)
    assert tail.last_error is None


# --------------------------------------------------------------------------- where the pipeline keeps it


def test_a_run_folder_from_python(tmp_path):
    run = tmp_path / "output"
    (run / "checkpoints" / "shard_0").mkdir(parents=True)
    (run / "checkpoints" / "manifest.json").write_text(json.dumps(UPSTREAM))
    (run / "logs").mkdir()
    (run / "sequence_index.json").write_text('{"sequences": []}')
    found = run_folder(run)
    assert found.checkpoints == run / "checkpoints"
    assert found.manifest == run / "checkpoints" / "manifest.json"
    assert found.logs == run / "logs"
    assert found.index == run / "sequence_index.json"


def test_a_run_folder_of_the_pipelines_command_line(tmp_path):
    """Its command line writes the run into <out>/esm_v2, the checkpoints into <out>/.checkpoints."""
    run = tmp_path / "out" / "esm_v2"
    run.mkdir(parents=True)
    (tmp_path / "out" / ".checkpoints").mkdir()
    found = run_folder(run)
    assert found.checkpoints == tmp_path / "out" / ".checkpoints"
    assert found.manifest is None
    assert found.logs is None


def test_a_ranks_checkpoints_told_apart(tmp_path):
    folder = tmp_path / "shard_5"
    for batch, done in ((0, True), (1, True), (2, False)):
        write_checkpoint(folder / f"batch_{batch:05d}.pt", [f"s{batch}"], np.zeros((1, 2), np.float32), done=done)
    (folder / "batch_00003.tmp").write_bytes(b"PK")
    (folder / "notes.txt").write_text("not a checkpoint")
    found = rank_checkpoints(folder)
    assert [(f.batch, f.done) for f in found.files] == [(0, True), (1, True), (2, False)]
    assert [p.name for p in found.temps] == ["batch_00003.tmp"]
    assert found.problem is None


def test_a_checkpoint_folder_that_is_a_file(tmp_path):
    (tmp_path / "shard_5").write_text("oops")
    found = rank_checkpoints(tmp_path / "shard_5")
    assert found.files == []
    assert found.problem == f"{tmp_path / 'shard_5'}: a file where the checkpoint folder should be"


def test_no_checkpoint_folder_holds_nothing(tmp_path):
    found = rank_checkpoints(tmp_path / "shard_9")
    assert (found.files, found.temps, found.problem) == ([], [], None)


# --------------------------------------------------------------------------- found by a review


@pytest.mark.parametrize("make", [lambda p: __import__("os").mkfifo(p), lambda p: p.symlink_to("/dev/zero")],
                         ids=["a FIFO", "a device"])
def test_a_manifest_that_is_not_a_file_is_said_at_once(tmp_path, make):
    path = tmp_path / "manifest.json"
    make(path)
    found = read_manifest(path)
    assert "not a regular file" in found.problem
    assert read_log_tail(path) is not None  # (a log there is not read either, nor waited on)


def test_only_ranks_written_as_the_pipeline_writes_them(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"shards": {"²": {}, "01": {"status": "failed"}, "1": {"status": "complete"},
                                           "9" * 5000: {}, "-1": {}, "3": {"status": "failed"}}}))
    found = read_manifest(path)
    assert sorted(found.ranks) == [1, 3]
    assert found.ranks[1].status == "complete"


@pytest.mark.parametrize(("text", "error", "line"), [
    ("progress 10%\rprogress 20%\rprogress 30%\nRuntimeError: out of memory\n", "RuntimeError: out of memory", 2),
    ("a\x0cb\nc\u2028d\nValueError: bad\n", "ValueError: bad", 3),
    ("ok\nKeyboardInterrupt\n", "KeyboardInterrupt", 2),
    ("ok\nRuntimeError: no newline at the end", "RuntimeError: no newline at the end", 2),
], ids=["carriage returns", "form feed and line separator", "a bare exception", "no final newline"])
def test_the_line_of_the_last_error_is_counted_as_lines_are(tmp_path, text, error, line):
    path = tmp_path / "worker_0.log"
    path.write_bytes(text.encode())
    tail = read_log_tail(path)
    assert (tail.last_error, tail.line) == (error, line)


@pytest.mark.parametrize("tail", [14, 15, 16, 19, 20])
def test_a_tail_that_starts_anywhere_counts_lines_right(tmp_path, monkeypatch, tail):
    monkeypatch.setattr(manifest_module, "_TAIL", tail)
    path = tmp_path / "worker_0.log"
    path.write_text("aaaa\nbbbb\nValueError: x\n")  # 24 bytes: the error is line 3 (its 14), tails around it
    found = read_log_tail(path)
    assert (found.last_error, found.line) == ("ValueError: x", 3)


# --------------------------------------------------------------------------- the synthetic run folder


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """The issue's crashed run: 8 ranks, 4,000 sequences; rank 5 died, 6 was preempted, 7 died and was resumed."""
    from virnucpro_merge.synthetic import make_demo_run

    return make_demo_run(tmp_path_factory.mktemp("crashed") / "run", n_sequences=4000, world_size=8, dim=8,
                         truncated=(), absent=(5,), empty=(), short={}, checkpoint_every=86, preempted=(6,),
                         resumed=(7,))


def _rows_of(run, rank):
    """Every checkpointed ID of a rank with its row (a repeat must repeat the row)."""
    from virnucpro_merge.checkpoints import read_checkpoint

    rows: dict[str, bytes] = {}
    for found in rank_checkpoints(run.checkpoints / f"shard_{rank}").files:
        checkpoint = read_checkpoint(found.path)
        for sequence_id, row in zip(checkpoint.sequence_ids, checkpoint.embeddings, strict=True):
            assert rows.setdefault(sequence_id, row.tobytes()) == row.tobytes()
    return rows


def test_the_synthetic_run_folder_is_the_pipelines(crashed):
    from tests.helpers import read_datasets
    from virnucpro_merge.ranks import stride_positions
    from virnucpro_merge.synthetic import synthetic_embeddings

    folder = run_folder(crashed.directory)
    assert folder.checkpoints == crashed.checkpoints
    assert folder.manifest is not None
    claims = read_manifest(folder.manifest).ranks
    assert [claims[r].status for r in range(8)] == ["complete"] * 5 + ["failed", "in_progress", "complete"]
    for rank in range(8):
        assigned = [crashed.sequence_ids[p] for p in stride_positions(4000, 8, rank)]
        rows = _rows_of(crashed, rank)
        assert set(rows) <= set(assigned)
        want = synthetic_embeddings(stride_positions(4000, 8, rank), 8, crashed.seed)
        by_id = dict(zip(assigned, want, strict=True))
        assert all(by_id[i].tobytes() == row for i, row in rows.items())  # checkpoint rows are the run's rows
        if rank < 5:  # complete: the last sequences (the final flush) are in the shard only
            assert 0 < len(rows) < len(assigned)
            assert assigned[-1] not in rows
    assert len(_rows_of(crashed, 5)) == len(_rows_of(crashed, 6)) == 3 * 86  # "after three checkpoints"
    dead = rank_checkpoints(crashed.checkpoints / "shard_5")
    assert [f.done for f in dead.files][-1] is False
    assert [t.name for t in dead.temps] == ["batch_00003.tmp"]
    assert read_log_tail(folder.logs / "worker_5.log").last_error.startswith("RuntimeError: CUDA error")
    embeddings, ids = read_datasets(crashed.shard_files[7])  # resumed: its IDs are in another order than its rows
    assigned = [crashed.sequence_ids[p] for p in stride_positions(4000, 8, 7)]
    assert sorted(ids) == sorted(assigned)
    assert ids != assigned
    want = dict(zip(assigned, synthetic_embeddings(stride_positions(4000, 8, 7), 8, crashed.seed), strict=True))
    wrong = sum(want[i].tobytes() != row.tobytes() for i, row in zip(ids, embeddings, strict=True))
    assert wrong > 200
    assert all(want[i].tobytes() == row.tobytes() for i, row in list(zip(ids, embeddings, strict=True))[300:])


# --------------------------------------------------------------------------- why each worker stopped


def test_the_inspection_says_why_each_worker_stopped(crashed):
    from virnucpro_merge.inspection import format_summary, inspect_run

    found = inspect_run(crashed.directory)
    assert sorted(found.stops) == [5, 6]  # (7 was resumed and finished)
    assert found.stops[5].startswith("rank 5: failed: RuntimeError: CUDA error: an illegal memory access was "
                                     "encountered (logs/worker_5.log line 8) after 258 sequences in 3 checkpoints")
    assert found.stops[6].startswith("rank 6: stopped by SIGTERM (preempted) after 258 sequences in 3 checkpoints")
    assert found.stops[6] in format_summary(found).splitlines()
    assert inspect_run(crashed.directory, checkpoints=False).stops == {}


def test_where_the_manifest_and_the_files_disagree_the_files_win(crashed, tmp_path):
    import shutil

    from virnucpro_merge.inspection import inspect_run

    run = tmp_path / "run"
    shutil.copytree(crashed.directory, run)
    manifest = run / "checkpoints" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["shards"]["6"]["status"] = "complete"  # (a lost update, say)
    manifest.write_text(json.dumps(data))
    (run / "checkpoints" / "shard_5" / "batch_00001.pt").write_bytes(b"PK\x03\x04 damaged")
    found = inspect_run(run)
    assert found.stops[6].endswith("; the manifest says complete, but its shard is absent: the files win")
    assert "after 172 sequences in 2 checkpoints" in found.stops[5]
    assert "; 1 damaged checkpoint" in found.stops[5]
    manifest.write_text("{")
    found = inspect_run(run)
    assert found.notes == [f"{manifest}: damaged manifest (Expecting property name enclosed in double quotes: "
                           "line 1 column 2 (char 1)): the files are read instead"]
    assert found.stops[6].startswith("rank 6: stopped by SIGTERM (preempted)")
