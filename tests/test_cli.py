"""The command line, run in-process through ``main([...])``: exit codes, files, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import read_datasets
from virnucpro_merge import read_merge_report
from virnucpro_merge.cli import main


@pytest.fixture
def run_dir(tmp_path, make_shard):
    """Ranks 0 to 10 in a folder (numeric order matters: 2 before 10), IDs r<rank>_<i>."""
    for rank in reversed(range(11)):
        make_shard(f"shard_{rank}", [f"r{rank}_{i}" for i in range(3)])
    return tmp_path


ALL_IDS = [f"r{rank}_{i}" for rank in range(11) for i in range(3)]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("virnucpro-merge: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


class TestAggregate:
    def test_folder_in_numeric_order(self, run_dir, capsys):
        out = run_dir / "merged.h5"
        assert main(["aggregate", str(run_dir), "-o", str(out), "--no-progress"]) == 0
        assert read_datasets(out)[1] == ALL_IDS
        assert f"Aggregation complete: {out}, 33 sequences" in capsys.readouterr().err

    def test_a_rank_without_a_file_is_a_dead_worker(self, run_dir, capsys):
        (run_dir / "shard_4.h5").unlink()
        out = run_dir / "merged.h5"
        assert main(["aggregate", str(run_dir), "-o", str(out)]) == 2
        assert f"{run_dir / 'shard_4.h5'}: file does not exist" in one_error_line(capsys.readouterr().err)
        assert main(["-q", "aggregate", str(run_dir), "-o", str(out), "--partial"]) == 0
        assert read_merge_report(out)["failed_shards"] == [str(run_dir / "shard_4.h5")]

    @pytest.mark.parametrize("form", ["txt", "fasta", "json"])
    def test_expected_forms(self, run_dir, form, capsys):
        path = run_dir / f"expected.{form}"
        if form == "txt":
            path.write_text("# ids\n" + "\n".join([*ALL_IDS, "lost"]) + "\n")
        elif form == "fasta":
            path.write_text("".join(f">{i} desc\nACGT\n" for i in [*ALL_IDS, "lost"]))
        else:
            path.write_text(json.dumps({"sequences": [{"sequence_id": i} for i in [*ALL_IDS, "lost"]]}))
        out = run_dir / "merged.h5"
        code = main(["aggregate", str(run_dir), "-o", str(out), "--expected", str(path)])
        assert code == 1
        line = one_error_line(capsys.readouterr().err)
        assert "Missing 1 expected sequences" in line
        assert "['lost']" in line
        assert not out.exists()

    def test_duplicate_exits_1(self, run_dir, make_shard, capsys):
        make_shard("shard_3", ["r0_1"])
        assert main(["aggregate", str(run_dir), "-o", str(run_dir / "m.h5")]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert "Duplicate sequence ID found: r0_1" in line
        assert "shard_3.h5" in line

    def test_unreadable_shard_exits_2(self, run_dir, capsys):
        (run_dir / "shard_1.h5").write_bytes(b"")
        assert main(["aggregate", str(run_dir), "-o", str(run_dir / "m.h5")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "shard_1.h5" in line
        assert "empty file" in line

    def test_partial_merge(self, run_dir, capsys):
        (run_dir / "shard_1.h5").write_bytes(b"")
        expected = run_dir / "ids.txt"
        expected.write_text("\n".join(ALL_IDS))
        out = run_dir / "m.h5"
        assert main(["aggregate", str(run_dir), "-o", str(out), "--expected", str(expected), "--partial"]) == 0
        report = read_merge_report(out)
        assert report["partial"] is True
        assert report["num_missing"] == 3
        assert ("Partial merge: INCOMPLETE: 3 of 33 sequences missing (9.09%); ranks to re-run: 1 (failed 1)"
                in capsys.readouterr().err)

    def test_fail_on_missing_writes_then_exits_1(self, run_dir, capsys):
        (run_dir / "shard_1.h5").write_bytes(b"")
        expected = run_dir / "ids.txt"
        expected.write_text("\n".join(ALL_IDS))
        out = run_dir / "m.h5"
        command = ["aggregate", str(run_dir), "-o", str(out), "--expected", str(expected), "--partial",
                   "--fail-on-missing"]
        assert main(command) == 1
        assert read_merge_report(out)["num_missing"] == 3  # (written all the same)
        assert one_error_line(capsys.readouterr().err).endswith("m.h5: written, but INCOMPLETE: 3 of 33 sequences "
                                                                "missing (9.09%); ranks to re-run: 1 (failed 1)")
        (run_dir / "shard_1.h5").unlink()
        expected.write_text("\n".join(i for i in ALL_IDS if i not in read_merge_report(out)["missing_ids"]))
        assert main([*command[:1], *(str(p) for p in sorted(run_dir.glob("shard_*.h5"))), *command[2:]]) == 0
        assert main(command) == 0, "rank 1 absent, but none of the expected sequences missing: nothing to fail on"
        assert "written, but COMPLETE" not in capsys.readouterr().err
        assert main(["aggregate", str(run_dir), "-o", str(out), "--fail-on-missing"]) == 2

    def test_chunk_size_and_progress(self, run_dir, capsys):
        out = run_dir / "m.h5"
        assert main(["aggregate", str(run_dir), "-o", str(out), "--chunk-size", "2", "--progress"]) == 0
        assert "33/33" in capsys.readouterr().err
        assert read_merge_report(out)["chunk_size"] == 2

    def test_quiet(self, run_dir, capsys):
        assert main(["-q", "aggregate", str(run_dir), "-o", str(run_dir / "m.h5")]) == 0
        assert capsys.readouterr().err == ""

    @pytest.mark.parametrize(
        "argv",
        [
            ["aggregate", "x.h5"],  # no -o
            ["aggregate", "x.h5", "-o", "m.h5", "--chunk-size", "0"],
            ["frobnicate"],
        ],
    )
    def test_bad_usage_exits_2(self, argv, capsys):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2

    def test_validate_without_expected_exits_2(self, capsys):
        assert main(["validate", "x.h5"]) == 2
        assert one_error_line(capsys.readouterr().err) == "virnucpro-merge: error: validate needs --expected FILE"

    def test_missing_expected_file_exits_2(self, run_dir, capsys):
        assert main(["aggregate", str(run_dir), "-o", str(run_dir / "m.h5"), "--expected", "nope.txt"]) == 2
        assert "nope.txt: expected-ID file does not exist" in one_error_line(capsys.readouterr().err)


class TestValidate:
    def test_complete(self, run_dir, capsys):
        (run_dir / "ids.txt").write_text("\n".join(ALL_IDS))
        assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 0
        out = capsys.readouterr().out
        assert out.startswith("COMPLETE: all 33 expected sequences are there\n")
        assert "11 shards, 33 sequences, 33 expected IDs" in out
        assert "missing: 0" in out
        assert not list(run_dir.glob("*.partial"))
        assert not (run_dir / "embeddings.h5").exists()

    def test_json_says_the_same(self, run_dir, capsys):
        (run_dir / "shard_2.h5").write_bytes(b"junk")
        (run_dir / "ids.txt").write_text("\n".join([*ALL_IDS, "x9"]))
        assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt"), "--json"]) == 1
        found = json.loads(capsys.readouterr().out)
        assert (found["verdict"], found["exit_status"], found["missing"], found["expected"]) == ("incomplete", 1, 4, 34)
        assert found["ranks_to_rerun"] == {"failed": [2]}
        assert found["failed"] == [{"path": str(run_dir / "shard_2.h5"), "error": "not an HDF5 file"}]
        assert found["line"].startswith("INCOMPLETE: 4 of 34 sequences missing")
        (run_dir / "shard_2.h5").unlink()
        assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt"), "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["ranks_to_rerun"] == {"absent": [2]}

    def test_missing_exits_1(self, run_dir, capsys):
        (run_dir / "ids.txt").write_text("\n".join([*ALL_IDS, "x9", "x1"]))
        assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 1
        assert "missing: 2 (first 10: ['x1', 'x9'])" in capsys.readouterr().out

    def test_failed_shard_exits_1_and_lists_everything(self, run_dir, capsys):
        """A dead worker is an incomplete run (1), not a usage error (2): what a workflow engine acts on."""
        (run_dir / "shard_2.h5").write_bytes(b"junk")
        (run_dir / "ids.txt").write_text("\n".join(ALL_IDS))
        assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 1
        out = capsys.readouterr().out
        assert out.startswith("INCOMPLETE: 3 of 33 sequences missing (9.09%); ranks to re-run: 1 (failed 2)\n")
        assert "shard_2.h5: not an HDF5 file" in out
        assert "missing: 3" in out


class TestInfo:
    def test_shard(self, run_dir, capsys):
        assert main(["info", str(run_dir / "shard_10.h5")]) == 0
        out = capsys.readouterr().out
        assert "sequences: 3" in out
        assert "embedding dimension: 8" in out
        assert "r10_0, r10_1, r10_2" in out

    def test_merged_shows_report(self, run_dir, capsys):
        out = run_dir / "m.h5"
        main(["-q", "aggregate", str(run_dir), "-o", str(out)])
        assert main(["info", str(out)]) == 0
        text = capsys.readouterr().out
        assert "shard_10.h5" in text
        assert "partial: False" in text

    def test_unreadable(self, tmp_path, capsys):
        assert main(["info", str(tmp_path / "none.h5")]) == 2
        assert "none.h5: file does not exist" in one_error_line(capsys.readouterr().err)


def test_demo(tmp_path, capsys):
    assert main(["-q", "demo", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "shard_3.h5  failed" in out
    assert "shard_5.h5  failed" in out
    assert "shard_7.h5  empty" in out
    report = read_merge_report(tmp_path / "run" / "embeddings.h5")
    assert report["partial"] is True
    assert f"missing sequences: {report['num_missing']} of 2000 expected" in out
    assert report["num_missing"] == 850  # ranks 3, 5, 7 whole (3 x 250) and 40% of rank 6's 250


def test_python_dash_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "virnucpro_merge", "info", str(tmp_path / "x.h5")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"virnucpro-merge: error: {tmp_path / 'x.h5'}: file does not exist"


def test_rerun(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["-q", "demo", str(run_dir)]) == 0
    capsys.readouterr()
    fasta = tmp_path / "missing.fasta"
    assert main(["rerun", str(run_dir / "embeddings.h5"), "--index", str(run_dir / "sequence_index.json"),
                 "-o", str(fasta)]) == 0
    err = capsys.readouterr().err
    assert "Wrote the 850 sequences missing from" in err
    assert err.count("Wrote") == 1  # said once
    headers = [line for line in fasta.read_text().splitlines() if line.startswith(">")]
    assert len(headers) == 850
    assert headers[0] == ">seq000003"
    (run_dir / "sequences.fasta").write_bytes(b"\n" + (run_dir / "sequences.fasta").read_bytes())
    assert main(["rerun", str(run_dir / "embeddings.h5"), "--index", str(run_dir / "sequence_index.json"),
                 "-o", str(tmp_path / "again.fasta")]) == 2
    assert "should start the record of seq000003" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("summary", ["[]", "{}", "5", '"text"', "missing_ids as a number"])
@pytest.mark.parametrize("command", ["info", "aggregate", "rerun"])
def test_a_damaged_report_is_one_line(tmp_path, make_shard, capsys, summary, command):
    """A report that is valid JSON of the wrong shape: one line naming the file, exit 2."""
    import h5py

    from virnucpro_merge import aggregate_shards

    merged = aggregate_shards([make_shard("shard_0", ["a", "b"])], tmp_path / "m.h5")
    with h5py.File(merged, "r+") as f:
        group = f["merge_report"]
        if summary == "missing_ids as a number":
            data = json.loads(group["summary"].asstr()[()]) | {"missing_ids": 5}
            del group["missing_ids"]
            summary = json.dumps(data)
        del group["summary"]
        group.create_dataset("summary", data=summary, dtype=h5py.string_dtype())
    argv = {"info": ["info", str(merged)], "aggregate": ["aggregate", str(merged), "-o", str(tmp_path / "o.h5")],
            "rerun": ["rerun", str(merged), "--index", str(tmp_path / "i.json"),
                      "-o", str(tmp_path / "x.fa")]}
    assert main(argv[command]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"virnucpro-merge: error: {merged}: damaged merge report (")


def test_the_output_cannot_be_the_expected_file(tmp_path, make_shard, capsys):
    from virnucpro_merge import aggregate_shards

    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    shard = make_shard("shard_0", ["a"])
    assert main(["aggregate", str(shard), "-o", str(ids), "--expected", str(ids)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"virnucpro-merge: error: {ids}: the output path is the expected-ID file")
    with pytest.raises(ValueError, match="the output path is the expected-ID file"):
        aggregate_shards([shard], ids, ids)
    assert ids.read_text() == "a\n"


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`virnucpro-merge info m.h5 | head -1`: no 'Broken pipe' error, exit 0."""
    import numpy as np

    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.synthetic import write_shard

    long = "x" * 200  # the report prints a line a shard: ~100 KB in all, more than a pipe holds
    shards = [write_shard(tmp_path / f"s{long}{i}.h5", [f"id{i}"], np.zeros((1, 2), "f4")) for i in range(500)]
    merged = aggregate_shards(shards, tmp_path / "m.h5")
    done = subprocess.run(f"{sys.executable} -m virnucpro_merge info {merged} | head -1; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert done.stdout == f"path: {merged}\n"
    assert done.stderr == ""
    assert done.returncode == 0


@pytest.mark.parametrize("form", ["text", "fasta", "index"])
def test_expected_ids_from_a_pipe_are_read_whole(run_dir, tmp_path, form):
    """``--expected /dev/stdin``: the first 4 KiB (where the form is told) are not lost."""
    padding = [f"pad{i:05d}" for i in range(2000)]  # ~20 KB: the IDs that matter come first and last
    wanted = [ALL_IDS[0], *padding, *ALL_IDS[1:]]
    if form == "text":
        data = "\n".join(wanted) + "\n"
    elif form == "fasta":
        data = "".join(f">{i} desc\nACGT\n" for i in wanted)
    else:
        data = json.dumps({"sequences": [{"sequence_id": i, "length": 4} for i in wanted]})
    command = [sys.executable, "-m", "virnucpro_merge", "validate", str(run_dir), "--expected", "/dev/stdin"]
    done = subprocess.run(command, input=data, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[1] == f"11 shards, 33 sequences, {len(wanted)} expected IDs"
    assert done.stdout.splitlines()[2].startswith("missing: 2000 (first 10: ['pad00000', ")
    assert done.returncode == 1


def test_a_ctrl_c_swallowed_on_the_way_still_ends_the_command(monkeypatch, capsys, tmp_path):
    """A KeyboardInterrupt raised where Python can only print it (an h5py object's
    destructor) was lost, and `verify` went on to say 'intact', exit 0."""
    import signal

    from virnucpro_merge import cli

    def swallowing(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the signal arrives here
        except KeyboardInterrupt:
            pass  # as an "Exception ignored in ..." destructor would
        print("intact")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "info", swallowing)
    shard = tmp_path / "s.h5"
    shard.write_bytes(b"")
    assert cli.main(["info", str(shard)]) == 130
    assert "interrupted" in capsys.readouterr().err


def _killed() -> None:
    os.kill(os.getpid(), 9)  # (SIGKILL: what the OOM killer sends)


def test_a_worker_killed_is_one_line(monkeypatch, capsys, tmp_path):
    """A process sharing the work killed (the OOM killer, say) was a BrokenProcessPool traceback."""
    if not sys.platform.startswith("linux"):
        pytest.skip("pools are forked on Linux only")
    from virnucpro_merge import cli
    from virnucpro_merge._processes import pool

    def sharing(args):
        with pool(2) as workers:
            return workers.submit(_killed).result()

    monkeypatch.setitem(cli.COMMANDS, "info", sharing)
    assert cli.main(["info", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["virnucpro-merge: error: a process sharing the work ended before its part was done "
                                "(killed? out of memory?); the output was left as it was"]


def test_info_on_a_merge_in_index_order(tmp_path, capsys):
    """Its shards have no offset (None): the text table shows none, as the HTML one does (one owner of the rows)."""
    from virnucpro_merge import aggregate_shards, read_merge_report
    from virnucpro_merge.inspection.tables import report_html
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=30, world_size=3, dim=4, truncated=(), absent=(1,), empty=(),
                        short={})
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", run.sequence_ids, partial=True, order="index")
    assert main(["info", str(merged)]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["shard", "status", "rows", "offset", "NaN/Inf", "rows", "problem"]
    assert table[1].split() == ["shard_0.h5", "ok", "10", "0"]  # (no offset: rows go in index order)
    assert table[2].split()[:3] == ["shard_1.h5", "failed", "0"]
    html = report_html(read_merge_report(merged))
    assert html.count("<tr>") == 4


def test_info_on_a_merge_of_many_shards_lists_those_worth_a_look(tmp_path, capsys):
    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=1000, world_size=100, dim=4, truncated=(), absent=(7, 70),
                        empty=(), short={})
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", partial=True)
    assert main(["info", str(merged)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("shard "):].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in table[1:-1]] == ["shard_7.h5", "shard_70.h5"]
    assert table[-1] == "... and 98 more shards, ok otherwise (--all lists every one)"
    assert "980 sequences of dimension 4 from 98 of 100 shards" in out
    assert main(["info", str(merged), "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 100


def test_validate_on_a_duplicate_says_invalid_first_and_in_json(tmp_path, capsys):
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=80, world_size=4, dim=4, truncated=(), absent=(), empty=(),
                        short={}, duplicated=(2,))
    assert main(["validate", str(run.directory), "--expected", str(run.index)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("INVALID: Duplicate sequence ID found: ")
    assert "Duplicate sequence ID found" in one_error_line(captured.err)
    assert main(["validate", str(run.directory), "--expected", str(run.index), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert (found["verdict"], found["exit_status"]) == ("invalid", 1)


def test_a_rank_whose_sequences_are_all_there_is_not_to_re_run(tmp_path, capsys):
    """A dead worker whose checkpoints hold all it was given: the run is complete, in every face."""
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=800, world_size=4, dim=4, truncated=(), absent=(), empty=(),
                        short={1: 0.5})
    assert main(["validate", str(run.directory), "--expected", str(run.index), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ranks_to_rerun"] == {"incomplete": [1]}  # (from the index)
    lost = set(run.sequence_ids[1::4][100:])
    (tmp_path / "ids.txt").write_text("\n".join(i for i in run.sequence_ids if i not in lost))
    assert main(["validate", str(run.directory), "--expected", str(tmp_path / "ids.txt")]) == 0
    assert capsys.readouterr().out.startswith("COMPLETE: ")


def test_info_on_a_clean_merge_of_many_shards_says_so_in_a_line(tmp_path, capsys):
    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=500, world_size=50, dim=4, truncated=(), absent=(), empty=(),
                        short={})
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5")
    assert main(["info", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "every one of the 50 shards is ok (--all lists them)" in out
    assert "shard       status" not in out


def test_validate_shows_progress_when_asked(run_dir, capsys):
    (run_dir / "ids.txt").write_text("\n".join(ALL_IDS))
    assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt"), "--progress"]) == 0
    assert "Checking the IDs" in capsys.readouterr().err
    assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 0  # (not a terminal)
    assert "Checking the IDs" not in capsys.readouterr().err


def test_on_a_terminal_the_bar_shows_unless_quiet(run_dir, capsys, monkeypatch):
    (run_dir / "ids.txt").write_text("\n".join(ALL_IDS))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 0
    assert "Checking the IDs" in capsys.readouterr().err
    assert main(["-q", "validate", str(run_dir), "--expected", str(run_dir / "ids.txt")]) == 0
    assert "Checking the IDs" not in capsys.readouterr().err


def test_a_shells_glob_of_shard_files_is_judged_as_the_folder_is(tmp_path, capsys):
    """``shard_*.h5`` lists shard_10 before shard_2 and leaves out the dead workers' files: the
    files were taken as ranks 0, 1, 2, ... in that order, the world size their count, and the
    ranks to re-run were wrong (764 of a 1,024-rank run with 7)."""
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=600, world_size=12, dim=4, truncated=(3,), absent=(5, 11),
                        empty=(), short={7: 0.5})
    globbed = sorted(str(p) for p in run.directory.glob("shard_*.h5"))
    assert globbed[2].endswith("shard_10.h5")
    said = {}
    for name, shards in (("folder", [str(run.directory)]), ("glob", globbed)):
        assert main(["validate", *shards, "--expected", str(run.index), "--json"]) == 1
        said[name] = json.loads(capsys.readouterr().out)
    assert said["glob"]["line"] == said["folder"]["line"]
    assert said["glob"]["ranks_to_rerun"] == said["folder"]["ranks_to_rerun"] == \
        {"incomplete": [7], "absent": [5, 11], "failed": [3]}
    assert said["glob"]["shards"] == 12
    # a few of the folder's shards, named on purpose: those alone, as given (not the folder's others)
    for named in ([globbed[5]], [globbed[5], globbed[0]]):  # (shard_4; shard_4 and shard_0)
        assert main(["validate", *named, "--expected", str(run.index), "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["shards"] == len(named)


@pytest.mark.parametrize("command", [["validate"], ["aggregate", "--partial", "-o", "out.h5"]])
def test_a_mistyped_run_folder_is_said_to_be_no_run(tmp_path, capsys, command, monkeypatch):
    """Not one dead worker: validate said 'all missing' (exit 1), a partial merge wrote a file of
    no sequence (exit 0)."""
    from virnucpro_merge.synthetic import make_demo_run

    run = make_demo_run(tmp_path / "run", n_sequences=40, world_size=2, dim=4, truncated=(), absent=(), empty=(),
                        short={})
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "runn", *command[1:], "--expected", str(run.index)]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == "virnucpro-merge: error: runn: no such run folder or shard file"
    assert not (tmp_path / "out.h5").exists()


def test_missing_ids_are_placed_at_ranks_only_by_the_index_and_shards_at_their_ranks(tmp_path, capsys):
    """The ranks that lack sequences are named from the IDs' places in the run's sequence
    index, never from a text list (one ID repeated in it shifts every place after it: a
    wrong rank named with confidence), nor for inputs that are not the ranks' shards at
    their ranks (a merged file beside a re-run shard: 'incomplete 0, 0')."""
    import numpy as np

    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.synthetic import make_demo_run, write_shard

    run = make_demo_run(tmp_path / "run", n_sequences=600, world_size=12, dim=4, truncated=(3,), absent=(5, 11),
                        empty=(8,), short={7: 0.5})
    listed = tmp_path / "ids.txt"
    ids = list(run.sequence_ids)
    listed.write_text("\n".join(ids[:60] + ids[59:]) + "\n")  # (index order, one ID repeated at line 61)
    said = {}
    for name, given in (("index", run.index), ("text", listed)):
        assert main(["validate", str(run.directory), "--expected", str(given), "--json", "--world-size", "12"]) == 1
        said[name] = json.loads(capsys.readouterr().out)["ranks_to_rerun"]
    assert said["index"] == {"incomplete": [7], "empty": [8], "failed": [3], "absent": [5, 11]}
    assert said["text"] == {"failed": [3], "absent": [5, 11]}, "only what the files themselves say"
    merged = aggregate_shards(run.shard_files, tmp_path / "partial.h5", run.sequence_ids, partial=True)
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    write_shard(rerun / "shard_0.h5", ids[5:12:6], np.ones((2, 4), np.float32))  # (two of rank 5's)
    assert main(["validate", str(merged), str(rerun / "shard_0.h5"), "--expected", str(run.index), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ranks_to_rerun"] == {}, "not placed: these are not ranks 0 and 1"


def test_an_error_a_ctrl_c_causes_on_its_way_is_told_as_the_interruption(monkeypatch, capsys):
    """A Ctrl-C during a report reached nbclient inside its event loop, which then failed an
    assertion of its own: a traceback and exit 1, where the command was interrupted (130)."""
    import contextlib
    import signal

    from virnucpro_merge import cli

    def interrupted_in_a_library(args):
        with contextlib.suppress(KeyboardInterrupt):  # (swallowed inside the library, which then fails its own way)
            signal.raise_signal(signal.SIGINT)
        raise AssertionError

    monkeypatch.setitem(cli.COMMANDS, "info", interrupted_in_a_library)
    assert main(["info", "whatever.h5"]) == 130
    assert capsys.readouterr().err.strip() == "virnucpro-merge: interrupted; the output was left as it was"


def test_a_missing_output_folder_is_said_before_anything_is_read(tmp_path, capsys):
    """It was said after the expected IDs and every shard's IDs were read (7 s at 10^7 IDs)."""
    from virnucpro_merge import aggregate_shards
    from virnucpro_merge.errors import OutputError

    bad = tmp_path / "shard_0.h5"
    bad.write_text("not HDF5")
    with pytest.raises(OutputError, match=r"output folder .*nowhere does not exist$"):
        aggregate_shards([bad], tmp_path / "nowhere" / "m.h5", ["a"])
    assert main(["aggregate", str(bad), "-o", str(tmp_path / "nowhere" / "m.h5"), "--expected",
                 str(tmp_path / "no-such-list.txt")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere does not exist")
