"""Shards' IDs read ahead in forked processes: the same IDs, hashes and errors as read here,
in order, whatever the pieces; and a merge that reads ahead writes what one that does not writes."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from virnucpro_merge import _processes as processes_module
from virnucpro_merge import aggregate_shards, read_merge_report
from virnucpro_merge import readahead as readahead_module
from virnucpro_merge._processes import pool
from virnucpro_merge.errors import DuplicateIdError, ShardError
from virnucpro_merge.ids import id_hashes
from virnucpro_merge.readahead import ReadAhead, ShardIds
from virnucpro_merge.shards import iter_id_byte_chunks, open_shard
from virnucpro_merge.synthetic import make_demo_run, write_shard


def _shards(tmp_path, sizes):
    shards, start = [], 0
    for number, rows in enumerate(sizes):
        ids = [f"s{start + i}" for i in range(rows)]
        shards.append(write_shard(tmp_path / f"shard_{number}.h5", ids, np.ones((rows, 2), np.float32)))
        start += rows
    return [ShardIds(path, path, rows) for path, rows in zip(shards, sizes, strict=True)]


def _read_here(shard):
    with open_shard(shard.source) as handle:
        return [i for chunk in iter_id_byte_chunks(handle, shard.name) for i in chunk]


@pytest.fixture(params=["forked", "here"])
def executor(request):
    with pool(2 if request.param == "forked" else 1) as found:
        yield found


@pytest.mark.parametrize("piece_rows", [3, 7, 65536])
def test_the_ids_read_ahead_are_those_read_here(tmp_path, monkeypatch, executor, piece_rows):
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", piece_rows)
    shards = _shards(tmp_path, [10, 0, 1, 7, 25])
    ahead = ReadAhead(shards, executor, in_flight=3)
    for number, shard in enumerate(shards):
        chunks = list(ahead.chunks(number))
        assert [i for chunk in chunks for i in chunk] == _read_here(shard)
        for chunk in chunks:  # (hashed where read: a forked process hashes as this one does)
            assert chunk.hashes.tolist() == id_hashes(list(chunk)).tolist()


def test_a_shard_given_up_on_is_skipped(tmp_path, monkeypatch, executor):
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 4)
    shards = _shards(tmp_path, [12, 5, 9])
    ahead = ReadAhead(shards, executor)
    next(ahead.chunks(0))  # the first of three pieces only
    assert [i for chunk in ahead.chunks(2) for i in chunk] == _read_here(shards[2])  # (shard 1 not asked for)


def _not_utf8_at(path, row, rows):
    ids = np.array([f"s{i}".encode() for i in range(rows)], dtype=object)
    ids[row] = b"\xff\xfe"
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=np.ones((rows, 2), np.float32))
        f.create_dataset("sequence_ids", data=ids, dtype=h5py.string_dtype())
    return ShardIds(path, path, rows)


def test_an_error_comes_after_the_chunks_before_it_and_names_its_row(tmp_path, monkeypatch, executor):
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 4)
    bad = _not_utf8_at(tmp_path / "bad.h5", 9, 12)
    good = _shards(tmp_path, [3])[0]
    ahead = ReadAhead([bad, good], executor)
    chunks = ahead.chunks(0)
    assert [i for _ in range(2) for i in next(chunks)] == [f"s{i}".encode() for i in range(8)]  # the pieces before
    with pytest.raises(ShardError, match=r"bad\.h5: a sequence ID near row 8 is not valid UTF-8"):
        next(chunks)
    assert [i for chunk in ahead.chunks(1) for i in chunk] == _read_here(good)


def test_a_missing_shard_is_its_own_error(tmp_path, executor):
    shards = _shards(tmp_path, [3, 3])
    os.unlink(shards[0].source)
    ahead = ReadAhead(shards, executor)
    with pytest.raises(ShardError, match="file does not exist"):
        list(ahead.chunks(0))
    assert [i for chunk in ahead.chunks(1) for i in chunk] == _read_here(shards[1])


_PARENT = os.getpid()


def _dies_in_a_worker(pieces, lookup=None):
    if os.getpid() != _PARENT:
        os._exit(1)  # (as the OOM killer would end it)
    return _READ(pieces, lookup)


_READ = readahead_module._read


def test_a_process_that_dies_leaves_the_reading_here(tmp_path, monkeypatch):
    monkeypatch.setattr(readahead_module, "_read", _dies_in_a_worker)
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 4)
    shards = _shards(tmp_path, [9, 6])
    with pool(2) as executor:
        assert executor is not None
        ahead = ReadAhead(shards, executor, in_flight=2)
        assert [[i for chunk in ahead.chunks(n) for i in chunk] for n in range(2)] == [_read_here(s) for s in shards]


def _merged(run, out, expected, **options):
    try:
        path = aggregate_shards(run.shard_files, out, expected, **options)
    except DuplicateIdError as err:
        return str(err)
    report = read_merge_report(path)
    with h5py.File(path) as f:
        ids = f["sequence_ids"][:].tolist()
        rows = f["embeddings"][:]
    return ({k: report[k] for k in ("total_sequences", "failed_shards", "missing_ids", "num_extra", "shards")},
            ids, rows.tobytes())


@pytest.mark.parametrize("case", ["complete", "partial", "duplicate"])
def test_a_merge_reading_ahead_writes_what_one_reading_here_writes(tmp_path, monkeypatch, case):
    run = make_demo_run(tmp_path / "run", n_sequences=300, world_size=6, dim=4, absent=(), short={},
                        truncated=(2,) if case != "complete" else (), empty=(4,) if case == "partial" else (),
                        duplicated=(1,) if case == "duplicate" else ())
    options = {"partial": case != "complete", "checkpoints": False}
    monkeypatch.setattr(readahead_module, "FROM_ROWS", 2**62)  # read here
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 2**62)
    here = _merged(run, tmp_path / "here.h5", run.index, **options)
    monkeypatch.setattr(readahead_module, "FROM_ROWS", 0)
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 0)
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 16)  # many pieces, some tasks of several shards
    monkeypatch.setattr(readahead_module, "_METAS_A_TASK", 1)  # (a task each: as many processes as cores)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    calls = []
    monkeypatch.setattr(readahead_module, "pool", _counting(readahead_module.pool, calls))
    ahead = _merged(run, tmp_path / "ahead.h5", run.index, **options)
    assert ahead == here
    assert calls == [2, 2]  # (forked processes read the metadata, then the IDs)


def _counting(real, calls):
    def counted(workers, **kwargs):
        calls.append(workers)
        return real(workers, **kwargs)
    return counted


def test_metadata_read_by_forked_processes_is_what_is_read_here(tmp_path, monkeypatch):
    good = _shards(tmp_path, [3, 0, 5])
    (tmp_path / "text.h5").write_text("not HDF5")
    paths = [good[0].source, tmp_path / "none.h5", tmp_path / "text.h5", good[1].source, good[2].source]

    def described(found):
        return [(type(f).__name__, str(f)) if isinstance(f, ShardError) else (f.num_sequences, f.data_offset)
                for f in found]

    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 2**62)
    here = described(readahead_module.read_metas(paths))
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 0)
    assert described(readahead_module.read_metas(paths)) == here
    assert [h[0] for h in here] == [3, "UnreadableShardError", "UnreadableShardError", 0, 5]


@pytest.mark.parametrize("forked", [True, False])
def test_ids_looked_up_where_they_are_read_are_where_the_lookup_finds_them(tmp_path, monkeypatch, forked):
    """With a lookup, the processes that read the IDs find them in it too (it is theirs
    without a copy): the lookup's positions of a chunk are then those it would find here;
    another lookup looks for itself."""
    from virnucpro_merge.ids import IdLookup
    from virnucpro_merge.readahead import read_ahead

    monkeypatch.setattr(readahead_module, "FROM_ROWS", 1 if forked else 10**9)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 5)
    shards = _shards(tmp_path, [9, 0, 6])  # IDs s0 ... s14
    lookup = IdLookup.from_ids([f"s{i}" for i in range(0, 20, 2)] + ["s4"])  # half of them, s4 twice
    other = IdLookup.from_ids([f"s{i}" for i in range(1, 20, 2)])
    with read_ahead(shards, lookup) as ahead:
        chunks = [chunk for number in range(3) for chunk in ahead.chunks(number)]
    assert len(chunks) == 4
    for chunk in chunks:
        assert chunk.found is not None, "looked up where read"
        assert chunk.found[2] == id(lookup)
        plain = list(chunk)
        for table in lookup, other:
            found, fresh = table.positions(chunk), table.positions(plain)
            assert [part.tolist() for part in found] == [part.tolist() for part in fresh]
    assert sorted(np.concatenate([lookup.positions(c)[0] for c in chunks]).tolist()) == [0, 1, 2, 3, 4, 5, 6, 7, 10]


@pytest.mark.parametrize("forked", [True, False])
def test_a_check_that_writes_nothing_gets_the_ids_found_without_their_bytes(tmp_path, monkeypatch, forked):
    """Without their bytes wanted, the IDs come back as the lookup found them: every hash,
    the expected ones' places, and the bytes of the others only; an index takes them in
    with the same findings as from the IDs themselves."""
    from virnucpro_merge.ids import FoundIds, IdLookup
    from virnucpro_merge.readahead import read_ahead
    from virnucpro_merge.validation import IdIndex

    monkeypatch.setattr(readahead_module, "FROM_ROWS", 1 if forked else 10**9)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(readahead_module, "PIECE_ROWS", 4)
    shards = _shards(tmp_path, [7, 5])  # s0 ... s11
    lookup = IdLookup.from_ids([f"s{i}" for i in range(0, 16, 3)])  # s0 s3 s6 s9 s12 s15
    with read_ahead(shards, lookup, ids=False) as ahead:
        found = [list(ahead.chunks(number)) for number in range(2)]
    chunks = [chunk for shard in found for chunk in shard]
    assert all(isinstance(chunk, FoundIds) for chunk in chunks)
    assert [other for chunk in chunks for other in chunk.others] == \
        [f"s{i}".encode() for i in range(12) if i % 3]
    assert sum(len(chunk) for chunk in chunks) == 12
    thin, whole = IdIndex(lookup), IdIndex(lookup)
    for number, shard in enumerate(shards):
        thin.add_shard(shard.source, found[number])
        whole.add_shard(shard.source, [_read_here(shard)])
    assert thin.findings() == whole.findings()
    assert thin.missing() == ["s12", "s15"]
    with pytest.raises(ValueError, match="another lookup"):
        IdIndex(IdLookup.from_ids(["s0"])).add_shard(shards[0].source, found[0])


@pytest.mark.parametrize("forked", [True, False])
def test_what_this_process_does_meanwhile_is_done_once_while_processes_read_metadata(tmp_path, monkeypatch, forked):
    from virnucpro_merge.readahead import read_metas

    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 1 if forked else 10**9)
    monkeypatch.setattr(readahead_module, "_METAS_A_TASK", 1)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    paths = [shard.source for shard in _shards(tmp_path, [3, 4])]
    done = []
    found = read_metas(paths, meanwhile=lambda: done.append(os.getpid()))
    assert done == ([os.getpid()] if forked else []), "while processes read them; read here, nothing to wait for"
    assert [meta.num_sequences for meta in found] == [3, 4]


@pytest.mark.parametrize("room", [True, False])
def test_a_merge_makes_the_lookup_of_expected_ids_once(tmp_path, monkeypatch, room):
    """Expected IDs given as a set are made a lookup while processes read the shards' metadata,
    once, and that lookup is the one the IDs are found in (also where the output's folder lacks
    room and the IDs are checked first)."""
    from virnucpro_merge import merge as merge_module
    from virnucpro_merge.ids import IdLookup

    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 2)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    if not room:
        monkeypatch.setattr(merge_module, "room_problem", lambda output, size: "no room (as the test says)")
    made = []
    real = IdLookup.from_ids.__func__
    monkeypatch.setattr(IdLookup, "from_ids", classmethod(lambda cls, ids: made.append(len(ids)) or real(cls, ids)))
    run = make_demo_run(tmp_path / "run", n_sequences=60, world_size=3, dim=4, truncated=(), absent=(), empty=(),
                        short={})
    out = aggregate_shards(run.shard_files, tmp_path / "m.h5", set(run.sequence_ids))
    assert made == [60]
    assert read_merge_report(out)["num_missing"] == 0


def test_a_lookup_of_bytes_objects_is_not_looked_in_by_forked_processes(tmp_path, monkeypatch):
    """A lookup that holds its IDs as bytes objects (one very long expected ID) would be copied
    into each forked reader, page by page, as it looked at them: its IDs are looked up here."""
    from virnucpro_merge.ids import IdLookup
    from virnucpro_merge.readahead import read_ahead
    from virnucpro_merge.validation import IdIndex

    monkeypatch.setattr(readahead_module, "FROM_ROWS", 1)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    shards = _shards(tmp_path, [5, 4])
    lookup = IdLookup.from_ids([f"s{i}" for i in range(0, 12, 2)] + ["x" * 2000])
    assert not lookup.shared_without_copy
    assert IdLookup.from_ids(["s0", "s1"]).shared_without_copy
    index = IdIndex(lookup)
    with read_ahead(shards, lookup, ids=False) as ahead:
        for number, shard in enumerate(shards):
            chunks = list(ahead.chunks(number))
            assert all(chunk.found is None for chunk in chunks), "not looked up where read"
            index.add_shard(shard.source, chunks)
    assert index.missing() == ["s10", "x" * 2000]
    assert sorted(index.extra) == ["s1", "s3", "s5", "s7"]


def test_the_ids_of_few_shards_beside_many_bytes_of_embeddings_are_read_here(tmp_path, monkeypatch):
    """Forked readers slowed the copy of a few large shards (their IDs weigh little beside the
    embeddings); with many shards, or few embedding bytes an ID, the IDs are read ahead."""
    from virnucpro_merge.readahead import BYTES_AN_ID, FROM_SHARDS, read_ahead

    monkeypatch.setattr(readahead_module, "FROM_ROWS", 1)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    shards = _shards(tmp_path, [5, 4])

    def forked(**options):
        with read_ahead(shards, **options) as ahead:
            return ahead._executor is not None

    assert forked()
    assert forked(copied=9 * BYTES_AN_ID)
    assert not forked(copied=9 * BYTES_AN_ID + 1)
    assert len(shards) < FROM_SHARDS
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 2)
    assert forked(copied=10**12)


@pytest.mark.parametrize(("cores", "copied", "shards", "readers", "metas"), [
    (1, 0, 100, 1, 1),  # one core: read here
    (2, 0, 100, 2, 2),
    (6, 0, 100, 6, 6),  # a check: one reader a core
    (64, 0, 100, 8, 8),  # ... up to MAX_PROCESSES, whose answers this process can take in
    (6, 10**6, 100, 2, 6),  # a merge: its copy and scan take the other cores
    (6, 0, 3, 6, 3),  # no more processes than tasks (here a shard's metadata each)
])
def test_processes_reading_ahead_follow_the_cores(tmp_path, monkeypatch, cores, copied, shards, readers, metas):
    """A check of a large run shares the reading out to one process a usable core (a batch
    job's share of a node), at most MAX_PROCESSES; a merge keeps two readers, beside its copy."""
    from virnucpro_merge.readahead import read_ahead, read_metas

    monkeypatch.setattr(processes_module, "usable_cpus", lambda: cores)
    monkeypatch.setattr(readahead_module, "FROM_ROWS", 0)
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 0)
    monkeypatch.setattr(readahead_module, "_METAS_A_TASK", 1)
    calls = []
    monkeypatch.setattr(readahead_module, "pool", lambda workers, **kwargs: calls.append(workers) or pool(1))
    listed = [ShardIds(tmp_path / f"shard_{i}.h5", tmp_path / f"shard_{i}.h5", 10) for i in range(shards)]
    with read_ahead(listed, copied=copied):
        pass
    read_metas([shard.source for shard in listed])
    assert calls == [readers, metas]


@pytest.mark.parametrize("forked", [True, False])
def test_the_first_ids_read_ahead_are_those_read_here(tmp_path, monkeypatch, forked):
    """A shard's first IDs (fewer where it holds fewer), or why they cannot be read, the same
    read by forked processes as here: what the world size of a run folder is inferred from."""
    from virnucpro_merge.readahead import read_first_ids

    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 0 if forked else 10**9)
    monkeypatch.setattr(readahead_module, "_METAS_A_TASK", 1)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    calls = []
    monkeypatch.setattr(readahead_module, "pool", _counting(readahead_module.pool, calls))
    shards = [shard.source for shard in _shards(tmp_path, [5, 0, 2])]
    (tmp_path / "text.h5").write_text("not HDF5")
    found = read_first_ids([shards[0], tmp_path / "none.h5", shards[1], tmp_path / "text.h5", shards[2]], 3)
    assert calls == [2 if forked else 1]
    assert [f if isinstance(f, list) else str(f).split(": ")[0] for f in found] == \
        [["s0", "s1", "s2"], str(tmp_path / "none.h5"), [], str(tmp_path / "text.h5"), ["s5", "s6"]]
    assert all(isinstance(f, ShardError) for f in (found[1], found[3]))


def test_a_dead_last_rank_is_found_with_the_first_ids_read_ahead(tmp_path, monkeypatch):
    """The world size from the IDs' index positions, the shards read by forked processes."""
    from virnucpro_merge.ranks import folder_shards

    run = make_demo_run(tmp_path / "run", n_sequences=400, world_size=8, dim=4, truncated=(2,), absent=(6, 7),
                        empty=(), short={})
    monkeypatch.setattr(readahead_module, "FROM_SHARDS", 0)
    monkeypatch.setattr(readahead_module, "_METAS_A_TASK", 1)
    monkeypatch.setattr(processes_module, "usable_cpus", lambda: 2)
    calls = []
    monkeypatch.setattr(readahead_module, "pool", _counting(readahead_module.pool, calls))
    assert [p.name for p in folder_shards(run.directory, index_ids=run.sequence_ids)] == \
        [f"shard_{rank}.h5" for rank in range(8)]
    assert calls == [2]
    assert len(folder_shards(run.directory)) == 6, "(without the index: up to the last rank found)"
