"""The ID index gives exact answers even when its 64-bit hashes collide."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro_merge import DuplicateIdError, MissingIdsError, aggregate_shards, validate_shard_completeness
from virnucpro_merge import ids as ids_module
from virnucpro_merge.cli import main
from virnucpro_merge.ids import SortedHashes
from virnucpro_merge.shards import iter_id_byte_chunks, open_shard
from virnucpro_merge.validation import IdIndex


@pytest.fixture(params=["python hash", "colliding hash"])
def hashing(request, monkeypatch):
    """Run each test with the real hash and with one where many IDs collide."""
    if request.param == "colliding hash":
        monkeypatch.setattr(ids_module, "_id_hash", lambda s: len(s) % 3)
    return request.param


def index_of(make_shard, shards: dict[str, list[str]]) -> IdIndex:
    """An IdIndex over real shard files (its exact re-check re-reads them)."""
    index = IdIndex()
    for name, ids in shards.items():
        path = make_shard(name, ids)
        index.add_shard(path, [ids[:2], ids[2:]])
    return index


def test_no_duplicates(make_shard, hashing):
    assert index_of(make_shard, {"s0": ["a", "bb", "ccc"], "s1": ["dd", "e"]}).find_duplicate() is None


def test_first_duplicate_in_shard_order(make_shard, hashing):
    index = index_of(make_shard, {"s0": ["a", "b"], "s1": ["c", "d", "x"], "s2": ["x", "b"]})
    sequence_id, shard, first_shard = index.find_duplicate()
    assert (sequence_id, shard.name, first_shard.name) == ("x", "s2.h5", "s1.h5")


@pytest.mark.parametrize("seed", range(10))
def test_missing_and_extra_match_set_algebra(make_shard, hashing, seed):
    rng = np.random.default_rng(seed)
    pool = [f"id{i}" for i in range(300)]
    present = [p for p in pool if rng.random() < 0.7]
    cut = sorted(rng.choice(len(present) + 1, 3))
    bounds = itertools.pairwise([0, *cut, len(present)])
    shards = [make_shard(f"shard_{k}", present[a:b]) for k, (a, b) in enumerate(bounds)]
    expected = {p for p in pool if rng.random() < 0.8}
    missing, extra = validate_shard_completeness(shards, expected)
    assert missing == expected - set(present)
    assert extra == set(present) - expected


def test_validate_completeness_tolerates_duplicates(make_shard, hashing):
    a = make_shard("shard_0", ["a", "b"])
    b = make_shard("shard_1", ["b", "c"])
    assert validate_shard_completeness([a, b], {"a", "b", "c", "d"}) == ({"d"}, set())


def test_merge_finds_real_duplicates_among_collisions(make_shard, tmp_path, hashing):
    a = make_shard("shard_0", ["aa", "bb", "cc"])
    b = make_shard("shard_1", ["dd", "bb"])
    with pytest.raises(DuplicateIdError, match=r"Duplicate sequence ID found: bb in .*shard_1\.h5 .*shard_0\.h5"):
        aggregate_shards([a, b], tmp_path / "m.h5")


def test_merge_is_not_fooled_by_collisions(make_shard, tmp_path, hashing):
    a = make_shard("shard_0", ["aa", "bb"])
    b = make_shard("shard_1", ["cc", "d"])
    with pytest.raises(ValueError, match=r"Missing 2 expected sequences. First 10 missing IDs: \['ee', 'ff'\]"):
        aggregate_shards([a, b], tmp_path / "m.h5", ["aa", "bb", "cc", "d", "ee", "ff"])


def test_index_memory_is_a_few_bytes_per_id():
    index = IdIndex({f"e{i}" for i in range(10)})
    index.add_shard("s", [[f"s{i}" for i in range(100_000)]])
    assert sum(h.nbytes for h in index._hashes) == 8 * 100_000
    assert len(index.extra) == 100_000
    assert index.num_present == 0


def test_with_expected_ids_only_the_unexpected_keep_their_hashes():
    """An expected ID is marked at its place in the expected IDs (1 byte an expected ID), its
    hash let go: 10^7 IDs checked in a few hundred MB."""
    index = IdIndex([f"e{i}" for i in range(100_000)])
    index.add_shard("s", [[f"e{i}" for i in range(50_000)], [b"x1", b"x2"]])
    assert sum(h.nbytes for h in index._hashes) == 8 * 2
    assert index.num_present == 50_000
    assert index.extra == ["x1", "x2"]
    assert not index.has_repeated_hash()
    kept = IdIndex([f"e{i}" for i in range(100)], keep_places=True)
    kept.add_shard("s", [[f"e{i}" for i in range(99, -1, -1)]])
    kept.add_shard("t", [[b"x1", b"e7x"]])
    assert sum(h.nbytes for h in kept._hashes) == 8 * 2
    assert kept.row_places().tolist() == [*range(99, -1, -1), -1, -1]  # (the index order needs every row's place)


def test_each_row_has_its_place_in_the_expected_ids_whatever_the_hashes(hashing):
    """The places of a block's expected IDs come in the block's order, also where their
    hashes collide (those are matched by their bytes, after the others)."""
    expected = ["aa", "b", "cc", "ddd", "e", "ffff"]
    index = IdIndex(expected, keep_places=True)
    block = ["ffff", "zz", "b", "cc", "aa", "y", "ddd"]
    index.add_shard("s", [[name.encode() for name in block[:4]], [name.encode() for name in block[4:]]])
    assert index.row_places().tolist() == [expected.index(n) if n in expected else -1 for n in block]
    assert index.missing() == ["e"]
    with pytest.raises(ValueError, match="without repeats"):  # (an ID listed twice has two places)
        IdIndex(["aa", "aa"], keep_places=True).add_shard("s", [[b"aa"]])


@pytest.mark.parametrize("where", ["another shard", "the same shard"])
def test_an_expected_id_twice_is_a_duplicate_whatever_the_hashes_kept(make_shard, hashing, where):
    a = make_shard("shard_0", ["aa", "bb", "cc"] + (["bb"] if where == "the same shard" else []))
    b = make_shard("shard_1", ["dd"] + (["bb"] if where == "another shard" else []))
    index = IdIndex(["aa", "bb", "cc", "dd", "ee"])
    for path in (a, b):
        with open_shard(path) as handle:
            index.add_shard(path, iter_id_byte_chunks(handle, path))
    assert index.has_repeated_hash()
    sequence_id, shard, first = index.find_duplicate()
    assert (sequence_id, shard.name, first.name) == ("bb", f"{b.name if where == 'another shard' else a.name}",
                                                    a.name)
    assert index.missing() == ["ee"]


def test_an_id_listed_twice_in_the_expected_ids_is_no_duplicate(make_shard, hashing):
    index = IdIndex(["aa", "bb", "aa"])
    index.add_shard("s", [[b"aa", b"bb"]])
    assert not index.has_repeated_hash()
    assert (index.missing(), index.num_expected, index.num_present) == ([], 2, 2)


def test_ids_that_are_not_ascii_are_matched_by_their_bytes(make_shard, hashing):
    shard = make_shard("shard_0", ["caf\u00e9", "na\u00efve", "\U0001f600"])
    assert validate_shard_completeness([shard], {"caf\u00e9", "\U0001f600", "x\u00e9"}) == \
        ({"x\u00e9"}, {"na\u00efve"})


def test_missing_id_hidden_by_a_collision_is_still_found(make_shard, monkeypatch):
    monkeypatch.setattr(ids_module, "_id_hash", lambda s: len(s) % 3)
    shard = make_shard("shard_0", ["aa", "b"])  # hashes 2 and 1: no repeat among the shard IDs
    # "cc" hashes like "aa": by hash alone it would look present
    assert validate_shard_completeness([shard], {"aa", "b", "cc"}) == ({"cc"}, set())


def test_a_shard_that_fails_midway_adds_none_of_its_ids(make_shard):
    """Its first chunk was read before the read failed: it counts for nothing."""
    from virnucpro_merge import UnreadableShardError

    good = make_shard("shard_0", ["a", "b"])
    broken = make_shard("shard_1", ["c", "d", "e"])
    index = IdIndex({"a", "b", "c", "d", "e", "f"})
    index.add_shard(good, [["a", "b"]])

    def chunks():
        yield ["c", "d", "x"]
        raise UnreadableShardError(broken, "cannot read 'sequence_ids'")

    with pytest.raises(UnreadableShardError):
        index.add_shard(broken, chunks())
    assert index.shards == [good]
    assert index.num_present == 2
    assert index.extra == []
    assert index.missing() == ["c", "d", "e", "f"]


def test_errors_survive_pickling():
    """Dask workers send exceptions back pickled: they must arrive whole."""
    import pickle

    from virnucpro_merge import (
        DuplicateIdError,
        MissingIdsError,
        NonFiniteError,
        ShardError,
        UnreadableShardError,
    )

    for err in (
        ShardError("s.h5", "bad"),
        UnreadableShardError("s.h5", "truncated"),
        DuplicateIdError("x", "b.h5", "a.h5"),
        MissingIdsError(["a", "b"]),
        NonFiniteError({"s.h5": 3}),
    ):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err)
        assert str(again) == str(err)


class TestNormalisationTwins:
    """IDs are compared exactly; an ID missing only in its NFC/NFD spelling is said to be so."""

    NFC, NFD = "caf\u00e9_1", "cafe\u0301_1"

    @pytest.fixture
    def run(self, make_shard):
        return [make_shard("shard_0", [self.NFC, "plain"])]

    def test_strict_merge_names_the_twin(self, run, tmp_path):
        with pytest.raises(MissingIdsError) as err:
            aggregate_shards(run, tmp_path / "o.h5", [self.NFD, "plain"])
        message = str(err.value)
        assert message.startswith("Missing 1 expected sequences. First 10 missing IDs: ")
        assert message.endswith("; 'cafe\\u0301_1' differs from the present 'caf\\xe9_1' only by Unicode "
                                "normalisation (NFC/NFD): IDs are compared exactly")
        assert err.value.twins == {self.NFD: self.NFC}
        assert pickle.loads(pickle.dumps(err.value)).twins == {self.NFD: self.NFC}

    def test_twin_that_is_expected_too(self, run, tmp_path):
        """Both spellings expected, one present: the other is missing, and looks present."""
        with pytest.raises(MissingIdsError, match=r"differs from the present 'caf\\xe9_1'"):
            aggregate_shards(run, tmp_path / "o.h5", [self.NFC, self.NFD, "plain"])

    def test_partial_merge_and_validate_say_it_too(self, run, tmp_path, caplog, capsys):
        with caplog.at_level("WARNING", logger="virnucpro_merge"):
            aggregate_shards(run, tmp_path / "o.h5", [self.NFD, "plain"], partial=True)
        assert any("only by Unicode normalisation" in r.getMessage() for r in caplog.records)
        expected = tmp_path / "ids.txt"
        expected.write_text(f"{self.NFD}\nplain\n", encoding="utf-8")
        assert main(["validate", str(run[0]), "--expected", str(expected)]) == 1
        assert "differs from the present 'caf\\xe9_1' only by Unicode normalisation" in capsys.readouterr().out

    def test_distinct_ids_have_no_twin(self, run, tmp_path):
        with pytest.raises(MissingIdsError) as err:
            aggregate_shards(run, tmp_path / "o.h5", ["caf\u00e8_1", "plain"])  # è, not é
        assert err.value.twins == {}
        assert "normalisation" not in str(err.value)


@settings(max_examples=300, deadline=None)
@given(hashes=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-20, 20), max_size=70),
       keys=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-22, 22), max_size=30))
def test_sorted_hashes_find_what_searchsorted_finds(hashes, keys):
    """Repeats, keys below and above them all, long walks within a bucket, none at all."""
    ordered = np.sort(np.array(hashes, dtype=np.int64))
    wanted = np.array(keys, dtype=np.int64)
    for table in _Walked(ordered), _Crowded(ordered), SortedHashes(ordered):
        where, found = table.find(wanted)
        assert where.tolist() == np.minimum(np.searchsorted(ordered, wanted), max(ordered.size - 1, 0)).tolist()
        assert found.tolist() == [k in hashes for k in keys]


class _Walked(SortedHashes):
    _CROWDED = 10**9  # the buckets, however crowded


class _Crowded(SortedHashes):
    _CROWDED = -1  # numpy's search, however spread


def test_sorted_hashes_of_many_ids_find_what_searchsorted_finds():
    """Hashes of IDs, as many as a run's: the buckets answer, and answer as numpy does."""
    from virnucpro_merge.ids import id_hashes

    ordered = np.sort(id_hashes([f"contig_{i:07d}".encode() for i in range(200_000)]))
    keys = np.concatenate([ordered[::7], id_hashes([f"other_{i}".encode() for i in range(5000)]),
                           [np.iinfo(np.int64).min, np.iinfo(np.int64).max]])
    table = SortedHashes(ordered)
    where, found = table.find(keys)
    assert table._starts is not None, "the hashes of IDs are spread evenly: no bucket is crowded"
    assert where.tolist() == np.minimum(np.searchsorted(ordered, keys), ordered.size - 1).tolist()
    assert found.tolist() == np.isin(keys, ordered).tolist()


def test_one_long_expected_id_does_not_widen_every_other():
    """Joined as one fixed-width array, 100,000 IDs of 12 bytes and one of 900 would take 90 MB;
    as bytes objects they take a few MB, and every answer is the same."""
    from virnucpro_merge.ids import MAX_WIDTH, IdLookup, encode_and_hash_ids

    short = [f"seq{i:09d}" for i in range(100_000)]
    blocks = [encode_and_hash_ids(part, max_width=MAX_WIDTH) for part in (short[:50_000], ["x" * 900], short[50_000:])]
    lookup = IdLookup(blocks)
    assert lookup.encoded.dtype == object
    assert lookup.encoded.nbytes < 10 * 2**20
    index = IdIndex(lookup)
    index.add_shard("s", [[b"seq000000005", b"x" * 900, b"nope"]])
    assert index.extra == ["nope"]
    assert len(index.missing()) == 100_001 - 2
    assert IdLookup([encode_and_hash_ids(short, max_width=MAX_WIDTH)]).encoded.dtype == "S12"  # (the usual case)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.sampled_from([f"s{i}" for i in range(12)]), max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=5), ordered=st.booleans())
def test_a_lookup_merged_from_sorted_blocks_is_the_lookup_of_all_its_ids(ids, cuts, ordered):
    """However the IDs come in blocks, each block ordered where it was read or not, the lookup
    holds every ID's hash sorted, and each place in the index order of its ID (repeats in order)."""
    from virnucpro_merge.ids import IdLookup, encode_and_hash_ids, hash_order, id_hashes

    bounds = [0, *sorted(min(c, len(ids)) for c in cuts), len(ids)]
    blocks = []
    for start, stop in itertools.pairwise(bounds):
        encoded, hashes = encode_and_hash_ids(ids[start:stop])
        blocks.append((encoded, hashes, hash_order(hashes)) if ordered else (encoded, hashes))
    lookup = IdLookup(blocks)
    every = id_hashes([i.encode() for i in ids])
    assert lookup.sorted.tolist() == np.sort(every).tolist()
    assert lookup.order.tolist() == np.argsort(every, kind="stable").tolist()
    assert list(lookup.ids()) == ids


def test_one_long_id_within_a_block_does_not_widen_the_others():
    """Within one block too (a range of an expected list read by one process): 1,000 IDs of 16
    bytes and one of 500 are kept as bytes objects, not as 1,001 rows of 500 bytes."""
    from virnucpro_merge.expected._text import plain_line_ids
    from virnucpro_merge.ids import MAX_WIDTH, encode_ids

    ids = [f"contig_{i:09d}" for i in range(1000)] + ["y" * 500]
    encoded = encode_ids(ids, max_width=MAX_WIDTH)
    assert encoded.dtype == object
    assert encoded.tolist() == [i.encode() for i in ids]
    data = "".join(f"{i}\n" for i in ids).encode()
    assert plain_line_ids(data, MAX_WIDTH) is None, "left to the rules of each line, which encode_ids follows"
    assert plain_line_ids(data).dtype == np.dtype("S500"), "(without a width to keep to: as encode_ids)"
    assert encode_ids(ids).dtype == np.dtype("S500")
