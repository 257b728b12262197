"""Validation on a Dask LocalCluster (2 worker processes) equals the single-process path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

pytestmark = pytest.mark.slow  # (make unit-fast leaves these out)

from tests.helpers import ids, read_datasets  # noqa: E402
from virnucpro_merge import (  # noqa: E402
    DuplicateIdError,
    MissingIdsError,
    aggregate_shards,
    read_expected_ids,
    to_dask,
    validate_shard_completeness,
)
from virnucpro_merge.checks import plan_merge  # noqa: E402
from virnucpro_merge.cluster import partition_of  # noqa: E402
from virnucpro_merge.synthetic import make_demo_run  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = make_demo_run(tmp_path_factory.mktemp("demo"), n_sequences=900)
    return run, read_expected_ids(run.index)


def test_partition_is_the_same_in_every_process():
    sample = ["seq000001", "β-coronavirus", "", "NC_045512.2|ORF1ab", "x" * 70]
    here = partition_of(sample, 7).tolist()
    code = f"from virnucpro_merge.cluster import partition_of; print(partition_of({sample!r}, 7).tolist())"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == str(here)
    assert set(partition_of([f"id{i}" for i in range(1000)], 7).tolist()) == set(range(7))


def plan_facts(plan):
    return (
        [(s.path, s.status, s.num_sequences, s.offset, s.embedding_dim) for s in plan.shards],
        plan.total_sequences, plan.embedding_dim, plan.missing_ids, plan.num_extra, plan.num_expected, plan.partial,
    )


def test_plan_equals_single_process(client, demo):
    run, expected = demo
    local = plan_merge(run.shard_files, [*expected, "not-in-any-shard"], partial=True)
    spread = plan_merge(run.shard_files, [*expected, "not-in-any-shard"], partial=True, client=client)
    assert plan_facts(spread) == plan_facts(local)


def test_expected_file_read_by_the_workers(client, demo):
    run, expected = demo
    local = plan_merge(run.shard_files, expected, partial=True)
    spread = plan_merge(run.shard_files, Path(run.index), partial=True, client=client)
    assert plan_facts(spread) == plan_facts(local)


def test_completeness_equals_single_process(client, demo, make_shard):
    run, expected = demo
    present = [p for p in run.shard_files if p.exists() and p not in [run.shard_files[r] for r in run.truncated]]
    extra = make_shard("extra", ["stray1", "stray2"])
    want = set(expected[::2]) | {"ghost"}
    assert validate_shard_completeness([*present, extra], want, client=client) == \
        validate_shard_completeness([*present, extra], want)


def test_same_duplicate_error(client, tmp_path):
    run = make_demo_run(tmp_path, n_sequences=400, truncated=(), absent=(), duplicated=(2, 5))
    with pytest.raises(DuplicateIdError) as local:
        plan_merge(run.shard_files)
    with pytest.raises(DuplicateIdError) as spread:
        plan_merge(run.shard_files, client=client)
    assert str(spread.value) == str(local.value)


def test_same_duplicate_across_shards(client, make_shard):
    shards = [make_shard("shard_0", ids("a", 50)), make_shard("shard_1", []), make_shard("shard_2", ["b", "a7", "a3"])]
    with pytest.raises(DuplicateIdError) as local:
        plan_merge(shards)
    with pytest.raises(DuplicateIdError) as spread:
        plan_merge(shards, client=client)
    assert str(spread.value) == str(local.value)
    assert "Duplicate sequence ID found: a7" in str(spread.value)


def test_strict_missing(client, demo):
    run, expected = demo
    complete = [p for p in run.shard_files if p.exists() and p != run.shard_files[3]]
    with pytest.raises(MissingIdsError) as local:
        plan_merge(complete, expected)
    with pytest.raises(MissingIdsError) as spread:
        plan_merge(complete, expected, client=client)
    assert str(spread.value) == str(local.value)


def test_aggregate_with_client_writes_the_same(client, demo, tmp_path):
    run, expected = demo
    a = aggregate_shards(run.shard_files, tmp_path / "local.h5", expected, partial=True)
    b = aggregate_shards(run.shard_files, tmp_path / "spread.h5", expected, partial=True, client=client)
    (ea, ia), (eb, ib) = read_datasets(a), read_datasets(b)
    assert ia == ib
    np.testing.assert_array_equal(ea, eb)


def test_to_dask(client, demo, tmp_path):
    run, expected = demo
    merged = aggregate_shards(run.shard_files, tmp_path / "m.h5", expected, partial=True)
    array = to_dask(merged, rows_per_chunk=100)
    emb, _ = read_datasets(merged)
    assert array.shape == emb.shape
    assert array.chunks[0][0] == 100
    assert len(array.chunks[1]) == 1
    np.testing.assert_array_equal(array.compute(), emb)
    np.testing.assert_allclose(client.compute(array.mean(axis=0)).result(), emb.mean(axis=0), atol=1e-6)


def test_to_dask_on_virtual(demo, tmp_path, make_shard):
    shards = [make_shard(f"shard_{r}", ids(f"r{r}_", 30)) for r in range(3)]
    virtual = aggregate_shards(shards, tmp_path / "v.h5", layout="virtual")
    np.testing.assert_array_equal(to_dask(virtual).compute(), read_datasets(virtual)[0])
    shards[1].unlink()
    with pytest.raises(ValueError, match=r"shard_1\.h5: source shard of the virtual output .* is missing"):
        to_dask(virtual)


def test_cli_local_cluster(demo, tmp_path, capsys):
    from virnucpro_merge.cli import main

    run, _ = demo
    assert main(["validate", str(run.directory), "--expected", str(run.index), "--workers", "2"]) == 1  # (incomplete)
    captured = capsys.readouterr()
    assert "Dask cluster with 2 workers; dashboard: http" in captured.err
    assert "missing: 382" in captured.out
    assert "shard_3.h5: truncated" in captured.out
    out = tmp_path / "m.h5"
    assert main(["-q", "aggregate", str(run.directory), "-o", str(out), "--partial", "--expected", str(run.index),
                 "--workers", "2"]) == 0
    assert read_datasets(out)[0].shape == (900 - 382, 64)


@pytest.mark.parametrize("address", ["nonsense", "tcp://127.0.0.1:abc"])
def test_cli_a_scheduler_that_is_not_there(demo, capsys, address):
    from virnucpro_merge.cli import main

    run, _ = demo
    assert main(["validate", str(run.directory), "--expected", str(run.index), "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert f"error: {address}: cannot connect to a Dask scheduler there (" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("form", ["text", "fasta", "json", "gzip"])
def test_expected_file_in_byte_ranges(client, demo, tmp_path, form, monkeypatch):
    """The workers read the expected file in many small ranges: the same IDs come out."""
    import gzip
    import json as json_module

    from virnucpro_merge import cluster

    run, expected = demo
    wanted = [*expected, "not-in-any-shard", "β-ghost"]
    path = tmp_path / f"expected.{form}"
    if form == "text":
        path.write_text("\ufeff# run 7\n" + "\r\n".join(wanted) + "\n")
    elif form == "fasta":
        path.write_text("".join(f">{i} some description\nACGT\nAC\n" for i in wanted))
    elif form == "json":
        path.write_text(json_module.dumps({"sequences": [{"sequence_id": i, "length": 4} for i in wanted]}, indent=1))
    else:
        path.write_bytes(gzip.compress("\n".join(wanted).encode()))
    local = plan_merge(run.shard_files, wanted, partial=True)
    monkeypatch.setattr(cluster, "RANGE_BYTES", 97)
    spread = plan_merge(run.shard_files, path, partial=True, client=client)
    assert plan_facts(spread) == plan_facts(local)


def test_connect_closes_its_cluster():
    from virnucpro_merge.cluster import connect

    with connect(workers=1) as client:
        cluster = client.cluster
        assert len(client.scheduler_info()["workers"]) == 1
    assert cluster.status.name == "closed"


def test_relative_paths_reach_the_workers(client, demo, monkeypatch):
    run, expected = demo
    monkeypatch.chdir(run.directory)
    relative = [Path(p.name) for p in run.shard_files]
    spread = plan_merge(relative, expected, partial=True, client=client)
    local = plan_merge(relative, expected, partial=True)
    assert plan_facts(spread) == plan_facts(local)
    assert str(spread.failed_shards[0].path) == "shard_3.h5"


# The expected-ID files on which the cluster once disagreed with one process: now one
# parser reads them for both, so the answer (or the error) is the same.
ODD_EXPECTED = {
    "records without sequence_id.json": '{"sequences": [{"sequence_id": "seq000000"},\n {"id": "seq000001"}]}',
    "empty.txt": "",
    "comments only.txt": "# a header\n\n# and nothing else\n",
    "non-string IDs.json": '{"sequences": [\n {"sequence_id": 1},\n {"sequence_id": 2}\n]}',
    "IDs under other keys.json": '{"sequences": [\n {"sequence_id": "seq000000", "parent": {"sequence_id": "x"}}\n]}',
    "value on the next line.json": ('{"sequences": [\n {"sequence_id":\n  "seq000000"},\n'
                                    ' {"sequence_id":\n  "seq000008"}\n]}'),
    "CR line ends.txt": "seq000000\rseq000008\rseq000016\r",
    "indented header.fa": ">seq000000\nACGT\n >seq000008\nAC\n>seq000016\nGG\n",
}


@pytest.mark.parametrize("name", sorted(ODD_EXPECTED))
def test_odd_expected_files_read_as_one_process_reads_them(client, demo, tmp_path, monkeypatch, name):
    from virnucpro_merge import ExpectedIdsError, cluster

    run, _ = demo
    path = tmp_path / name
    path.write_text(ODD_EXPECTED[name])
    monkeypatch.setattr(cluster, "RANGE_BYTES", 7)  # many ranges, most of them cutting a line
    try:
        local = plan_facts(plan_merge(run.shard_files, read_expected_ids(path), partial=True))
    except ExpectedIdsError as err:
        local = str(err)
    try:
        spread = plan_facts(plan_merge(run.shard_files, path, partial=True, client=client))
    except ExpectedIdsError as err:
        spread = str(err)
    assert spread == local


def test_the_cluster_names_an_expected_file_as_given(client, demo, tmp_path, monkeypatch):
    from virnucpro_merge import ExpectedIdsError

    run, _ = demo
    monkeypatch.chdir(tmp_path)
    Path("ids.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    for where in (None, client):
        with pytest.raises(ExpectedIdsError) as err:
            plan_merge(run.shard_files, Path("ids.txt"), partial=True, client=where)
        assert str(err.value) == "ids.txt: not UTF-8 text; read as a list of IDs, one a line: its name ends in .txt"


def test_normalisation_twin_named_as_in_one_process(client, make_shard):
    shards = [make_shard("shard_0", ["caf\u00e9", "plain"])]
    spread = plan_merge(shards, ["cafe\u0301", "plain"], partial=True, client=client)
    assert spread.missing_twins == plan_merge(shards, ["cafe\u0301", "plain"], partial=True).missing_twins
    assert spread.missing_twins == {"cafe\u0301": "caf\u00e9"}


def test_a_shard_its_checkpoints_contradict_on_the_cluster(client, tmp_path):
    """As here: refused by a strict merge; salvaged by a partial one, beside a truncated shard
    whose rank's checkpoints are salvaged too."""
    from virnucpro_merge.errors import MislabelledShardError

    run = make_demo_run(tmp_path / "run", n_sequences=800, world_size=4, dim=8, truncated=(3,), absent=(), empty=(),
                        short={}, checkpoint_every=50, resumed=(1,))
    expected = read_expected_ids(run.index)
    with pytest.raises(MislabelledShardError, match="rank 1's checkpoints"):
        aggregate_shards(run.shard_files[:3], tmp_path / "strict.h5", expected, client=client)
    here = aggregate_shards(run.shard_files, tmp_path / "here.h5", expected, partial=True)
    there = aggregate_shards(run.shard_files, tmp_path / "there.h5", expected, partial=True, client=client)
    from virnucpro_merge import read_merge_report

    assert [s["status"] for s in read_merge_report(there)["shards"]] == ["ok", "salvaged", "ok", "salvaged"]
    assert read_merge_report(there)["missing_ids"] == read_merge_report(here)["missing_ids"]
    assert read_merge_report(there)["num_missing"] == 100  # rank 3 checkpointed 100 of its 200
    (rows_there, ids_there), (rows_here, ids_here) = read_datasets(there), read_datasets(here)
    assert ids_there == ids_here
    np.testing.assert_array_equal(rows_there, rows_here)


def test_completeness_counts_checkpointed_ids_alike_on_the_cluster(client, tmp_path):
    run = make_demo_run(tmp_path / "run", n_sequences=800, world_size=4, dim=8, truncated=(3,), absent=(1,), empty=(),
                        short={}, checkpoint_every=50)
    here = validate_shard_completeness(run.shard_files, read_expected_ids(run.index))
    there = validate_shard_completeness(run.shard_files, read_expected_ids(run.index), client=client)
    assert there == here
    assert len(here[0]) == 200  # (ranks 1 and 3 checkpointed 100 of their 200 each)
