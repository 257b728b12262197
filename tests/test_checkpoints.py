"""The pipeline's checkpoints, read safely (virnucpro_merge.checkpoints): real torch.save files,
files that would run code, damaged files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from virnucpro_merge.checkpoints import read_checkpoint
from virnucpro_merge.errors import CheckpointError
from virnucpro_merge.synthetic import write_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- files written by torch.save


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_checkpoint_torch_wrote_reads_as_it_was_saved(name):
    """Files written by real torch.save (tests/fixtures/checkpoints/make.py): numpy and tensor
    payloads, float32, float16, bfloat16 (widened exactly), a strided view."""
    want = EXPECTED[name]
    found = read_checkpoint(FIXTURES / name)
    assert found.embeddings.dtype == np.dtype(want["dtype"])
    assert found.embeddings.tolist() == want["embeddings"]
    assert found.embeddings.flags.c_contiguous
    assert found.sequence_ids == want["sequence_ids"]
    assert found.metadata == want["metadata"]


def test_torch_reads_what_the_synthetic_runs_write(tmp_path):
    """The synthetic runs write checkpoints in the pipeline's format, without torch: torch itself
    reads them as this package does (run where torch is installed)."""
    torch = pytest.importorskip("torch")
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    saved = write_checkpoint(tmp_path / "batch_00002.pt", ["a", "b", "c"], rows, {"batch_idx": 2})
    loaded = torch.load(saved, weights_only=False)
    assert loaded["sequence_ids"] == ["a", "b", "c"]
    assert np.array_equal(loaded["embeddings"], rows)
    assert loaded["metadata"] == {"batch_idx": 2}


def test_the_fixtures_are_what_torch_reads_now():
    """Where torch is installed, it reads every fixture as this package does."""
    torch = pytest.importorskip("torch")
    for name in EXPECTED:
        loaded = torch.load(FIXTURES / name, weights_only=False)
        rows = loaded["embeddings"]
        rows = rows.float().numpy() if isinstance(rows, torch.Tensor) else rows
        assert read_checkpoint(FIXTURES / name).embeddings.tolist() == rows.tolist(), name


def test_what_the_synthetic_runs_write_matches_the_pipelines_layout(tmp_path):
    saved = write_checkpoint(tmp_path / "batch_00007.pt", ["x"], np.ones((1, 2), np.float32))
    with zipfile.ZipFile(saved) as archive, zipfile.ZipFile(FIXTURES / "numpy_float32.pt") as real:
        ours = sorted(n.split("/", 1)[1] for n in archive.namelist())
        theirs = sorted(n.split("/", 1)[1] for n in real.namelist())
        assert ours == theirs
        assert {n.split("/")[0] for n in archive.namelist()} == {"batch_00007"}
    assert (tmp_path / "batch_00007.pt.done").exists()


# --------------------------------------------------------------------------- files that would run code


def _archive_with(path: Path, data_pkl: bytes, **members: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("batch_00000/data.pkl", data_pkl)
        archive.writestr("batch_00000/byteorder", b"little")
        for name, data in members.items():
            archive.writestr(f"batch_00000/{name}", data)
    return path


class _RunsCode:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _would_run(marker: Path) -> dict[str, object]:
    """Payloads that, unpickled by pickle.load (or torch.load without weights_only), run code."""
    import builtins

    return {
        "os.system": _RunsCode(os.system, f"touch {marker}"),
        "builtins.exec": _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w')"),
        "subprocess.call": _RunsCode(subprocess.call, ["touch", str(marker)]),
        "in the metadata": {"embeddings": np.zeros((1, 2), np.float32), "sequence_ids": ["a"],
                            "metadata": {"x": _RunsCode(os.system, f"touch {marker}")}},
        "numpy.load": _RunsCode(np.load, str(marker)),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.call", "in the metadata", "numpy.load"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "ran"
    payload = _would_run(marker)[kind]
    evil = _archive_with(tmp_path / "batch_00000.pt", pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(evil)
    message = str(err.value)
    assert message.startswith(f"{evil}: refused ")
    assert "nothing in it was run" in message
    assert not marker.exists()
    if kind == "os.system":
        assert "refused posix.system" in message or "refused os.system" in message
    # (the same bytes, given to plain pickle, do run: the test would see it)
    if kind == "os.system":
        pickle.loads(pickle.dumps(payload, protocol=4))
        assert marker.exists()


@pytest.mark.parametrize(("payload", "problem"), [
    ({"embeddings": np.array([["a", 1]], dtype=object), "sequence_ids": ["a"]}, "an array of objects"),
    ({"embeddings": np.zeros((2, 2), np.float32), "sequence_ids": ["a", 7]}, "its sequence IDs hold a int"),
    ({"embeddings": np.zeros((2, 2), np.float32), "sequence_ids": ["a"]}, "2 rows of embeddings but 1 sequence IDs"),
    ({"embeddings": np.zeros(4, np.float32), "sequence_ids": []}, "not a 2-D float32 or float16 array"),
    ({"embeddings": np.zeros((1, 2), np.int32), "sequence_ids": ["a"]}, "not a 2-D float32 or float16 array"),
    ({"embeddings": np.zeros((1, 2), np.float64), "sequence_ids": ["a"]}, "not a 2-D float32 or float16 array"),
    ({"sequence_ids": ["a"]}, "not a checkpoint (no 'embeddings' and 'sequence_ids' in it)"),
    ([1, 2, 3], "not a checkpoint"),
], ids=["object array", "non-str ID", "counts differ", "1-D", "integers", "float64", "no embeddings", "a list"])
def test_contents_not_shaped_like_a_checkpoint(tmp_path, payload, problem):
    bad = _archive_with(tmp_path / "batch_00000.pt", pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError, match="^" + str(bad).replace("/", "/") + ": ") as err:
        read_checkpoint(bad)
    assert problem in str(err.value)


# --------------------------------------------------------------------------- damaged files


def _data_at(path: Path, member: str) -> int:
    """Where a member's bytes start in the file (after its local header, whose extra field
    torch uses to align storages)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    header = path.read_bytes()[info.header_offset : info.header_offset + 30]
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _copy(tmp_path: Path, name: str = "numpy_float32.pt") -> Path:
    copy = tmp_path / "batch_00000.pt"
    copy.write_bytes((FIXTURES / name).read_bytes())
    return copy


def test_a_flipped_bit_in_the_data_fails_its_crc(tmp_path):
    copy = _copy(tmp_path)
    _flip(copy, _data_at(copy, "numpy_float32/data.pkl") + 200)
    with pytest.raises(CheckpointError, match="damaged checkpoint: Bad CRC-32"):
        read_checkpoint(copy)


def test_a_flipped_bit_in_a_tensors_storage_fails_its_crc(tmp_path):
    copy = _copy(tmp_path, "tensor_float32.pt")
    _flip(copy, _data_at(copy, "tensor_float32/data/0") + 5)
    with pytest.raises(CheckpointError, match="damaged checkpoint: Bad CRC-32"):
        read_checkpoint(copy)


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "damaged checkpoint"),
    (lambda p: p.write_bytes(pickle.dumps({"embeddings": 1}, protocol=2)), "torch's legacy format"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100)), "not a checkpoint (not a zip archive"),
], ids=["empty", "truncated", "legacy format", "not a zip"])
def test_damaged_or_foreign_files_are_one_line(tmp_path, damage, problem):
    copy = _copy(tmp_path)
    damage(copy)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(copy)
    assert problem in str(err.value)
    assert str(err.value).startswith(f"{copy}: ")


def test_a_compressed_member_is_not_read(tmp_path):
    """torch.save stores members as they are: a compressed one (a zip bomb, say) is not unpacked."""
    bomb = tmp_path / "batch_00000.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("batch_00000/data.pkl", bytes(50 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="a member is compressed"):
        read_checkpoint(bomb)


def test_a_storage_reference_outside_the_archive_is_refused(tmp_path):
    """A persistent reference naming ../something is not followed."""
    data = (FIXTURES / "tensor_float32.pt").read_bytes()
    with zipfile.ZipFile(FIXTURES / "tensor_float32.pt") as archive:
        pkl = archive.read("tensor_float32/data.pkl").replace(b"\x8c\x010", b"\x8c\x01/")
        storage = archive.read("tensor_float32/data/0")
    assert data
    bad = _archive_with(tmp_path / "batch_00000.pt", pkl, **{"data/0": storage})
    with pytest.raises(CheckpointError, match="refused a storage named '/'"):
        read_checkpoint(bad)


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
    with zipfile.ZipFile(FIXTURES / "tensor_float32.pt") as archive:
        pkl = archive.read("tensor_float32/data.pkl")
        storage = archive.read("tensor_float32/data/0")
    bad = _archive_with(tmp_path / "batch_00000.pt", pkl, **{"data/0": storage[:8]})
    with pytest.raises(CheckpointError, match="damaged checkpoint: its storage 0 holds 2 of 12 values"):
        read_checkpoint(bad)


def test_a_checkpoint_of_another_byte_order_is_not_read(tmp_path):
    with zipfile.ZipFile(FIXTURES / "numpy_float32.pt") as archive:
        pkl = archive.read("numpy_float32/data.pkl")
    bad = tmp_path / "batch_00000.pt"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("batch_00000/data.pkl", pkl)
        archive.writestr("batch_00000/byteorder", b"big")
    with pytest.raises(CheckpointError, match="saved on a machine of byte order b'big': not read"):
        read_checkpoint(bad)


def test_no_torch_is_imported():
    code = ("import sys; from virnucpro_merge.checkpoints import read_checkpoint; "
            f"read_checkpoint({str(FIXTURES / 'tensor_bfloat16.pt')!r}); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# --------------------------------------------------------------------------- found by a review: crafted pickles

import struct  # noqa: E402


def _u(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _g(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _l(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


def _d(**items: bytes) -> bytes:
    return b"}" + (b"(" + b"".join(_u(k) + v for k, v in items.items()) + b"u" if items else b"")


def _embedded(value: object) -> bytes:
    data = pickle.dumps(value, protocol=3)
    return data[2:-1]


def _checkpoint(embeddings: bytes | None = None, ids: bytes | None = None, metadata: bytes | None = None) -> bytes:
    body = _d(embeddings=embeddings if embeddings is not None else _embedded(np.zeros((1, 2), "f4")),
              sequence_ids=ids if ids is not None else _l(_u("a")), metadata=metadata if metadata is not None else _d())
    return b"\x80\x02" + body + b"."


def _storage(key: str, count: int, kind: str = "FloatStorage") -> bytes:
    return b"(" + _u("storage") + _g("torch", kind) + _u(key) + _u("cpu") + _i(count) + b"tQ"


def _tensor(storage: bytes, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    return (_g("torch._utils", "_rebuild_tensor_v2") + _t(storage, _i(offset), _t(*map(_i, size)),
                                                         _t(*map(_i, stride)), b"\x89",
                                                         _g("collections", "OrderedDict") + b")R") + b"R")


def test_a_crafted_checkpoint_cannot_change_how_the_next_is_read(tmp_path):
    """BUILD on the stand-in of torch.FloatStorage (its dtype set to big-endian): refused, and a
    checkpoint read after it reads as before."""
    legit = FIXTURES / "tensor_float32.pt"
    before = read_checkpoint(legit).embeddings.tolist()
    evil = _archive_with(tmp_path / "batch_00000.pt", _checkpoint(
        metadata=_d(x=_g("torch", "FloatStorage") + _d(dtype=_u(">f4")) + b"b")))
    with pytest.raises(CheckpointError):
        read_checkpoint(evil)
    assert read_checkpoint(legit).embeddings.tolist() == before


def test_a_big_endian_array_reads_as_its_values(tmp_path):
    rows = np.array([[1.0, 2.0], [3.0, -0.5]], dtype=">f4")
    saved = _archive_with(tmp_path / "batch_00000.pt", pickle.dumps(
        {"embeddings": rows, "sequence_ids": ["a", "b"], "metadata": {}}, protocol=4))
    found = read_checkpoint(saved)
    assert found.embeddings.tolist() == [[1.0, 2.0], [3.0, -0.5]]
    assert found.embeddings.dtype == np.dtype("=f4")


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: None, "checkpoint file does not exist"),
    (lambda p: p.mkdir(), "is a directory, not a checkpoint file"),
    (lambda p: os.mkfifo(p), "not a regular file (a pipe or a device?)"),
], ids=["absent", "a folder", "a FIFO"])
def test_what_is_not_a_file_is_one_line_at_once(tmp_path, make, problem):
    path = tmp_path / "batch_00000.pt"
    make(path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: {problem}" if "pipe" not in problem else str(err.value).startswith(
        f"{path}: {problem}")


def test_damaged_zip_metadata_is_one_line(tmp_path):
    """Flags and headers the zip module chokes on (encryption, a bad CRC of a small member) are damage."""
    copy = _copy(tmp_path)
    data = bytearray(copy.read_bytes())
    at = _data_at(copy, "numpy_float32/byteorder")
    data[at] ^= 0x01  # (its CRC-32 no longer matches)
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged checkpoint: Bad CRC-32"):
        read_checkpoint(copy)
    copy = _copy(tmp_path)
    data = bytearray(copy.read_bytes())
    central = bytes(data).index(b"PK\x01\x02")  # the central directory's first entry (data.pkl)
    assert bytes(data[central + 46 : central + 46 + 22]) == b"numpy_float32/data.pkl"
    data[central + 8] |= 0x01  # its flag: encrypted
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged checkpoint: "):
        read_checkpoint(copy)


@pytest.mark.parametrize(("body", "members", "problem"), [
    (_checkpoint(embeddings=_tensor(_storage("0", 1), 0, (4, 4_000_000), (0, 0)),
                 ids=_l(*(_u(f"s{i}") for i in range(4)))),
     {"data/0": np.float32(1).tobytes()}, "many times what the file holds"),
    (_checkpoint(embeddings=_g("numpy", "ndarray") + _t(_t(_i(2), _i(50_000_000)), _u("<f4")) + b"R"),
     {}, "damaged checkpoint: its data cannot be read"),
    (b"\x80\x02N" + b"r" + struct.pack("<I", 2**25) + _checkpoint()[2:], {}, "refused a memo index of 33554432"),
    (b"\x80\x02" + _g("os", "system") + _u("echo\nSECOND LINE") + b"\x85R.", {}, "refused os.system"),
    (b"\x80\x04" + _u("os\nSECOND") + _u("system") + b"\x93.", {}, "refused 'os\\nSECOND.system'"),
    (b"\x80\x02" + _g("copyreg", "x") + b".", {}, "refused copyreg.x"),
    (b"\x80\x02(" + _g("collections", "OrderedDict") + b"o.", {}, "refused the pickle opcode OBJ"),
    (b"\x80\x05\x96" + struct.pack("<Q", 2) + b"ab.", {}, "refused the pickle opcode BYTEARRAY8"),
    (_checkpoint(metadata=_embedded(np.zeros(2, np.float32))), {}, "its metadata is an array, not a dict"),
    (_checkpoint(metadata=_embedded(np.zeros(1, np.float32))), {}, "its metadata is an array, not a dict"),
    (_checkpoint(embeddings=_tensor(_storage("0", -1), 0, (1, 2), (2, 1))), {},
     "refused a persistent reference ('storage', torch.FloatStorage, '0', 'cpu', -1)"),
    (_checkpoint(embeddings=_g("numpy.core.multiarray", "_reconstruct") + _t(_g("torch", "float16"), _t(_i(0)), _u("b"))
                 + b"R"), {}, "refused numpy array reconstruction of torch.float16:"),
    (_checkpoint(embeddings=_g("numpy.core.multiarray", "_reconstruct") + _t(_g("numpy", "dtype"), _t(_i(0)), _u("b"))
                 + b"R"), {}, "refused numpy array reconstruction of <Callable>:"),
], ids=["a stride-0 tensor of 64 MB from 4 bytes", "numpy.ndarray called", "a memo index of 2**25",
        "a global, its argument two lines", "a name of two lines", "another module", "OBJ", "BYTEARRAY8",
        "metadata an array (its truth is an error)", "metadata an array of one zero (taken for no metadata)",
        "a storage's count below 0 (said the same way every time)", "a torch dtype as an array's class",
        "a function as an array's class"])
def test_crafted_pickles_cost_nothing_and_say_so_in_one_line(tmp_path, body, members, problem):
    bad = _archive_with(tmp_path / "batch_00000.pt", body, **members)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


def test_a_storage_referenced_many_times_is_read_once(tmp_path, monkeypatch):
    from virnucpro_merge import checkpoints

    reads = []
    real = checkpoints._member
    monkeypatch.setattr(checkpoints, "_member", lambda *a, **k: reads.append(a[2]) or real(*a, **k))
    body = _checkpoint(embeddings=_tensor(_storage("0", 4), 0, (2, 2), (2, 1)), ids=_l(_u("a"), _u("b")),
                       metadata=_d(x=_l(*(_tensor(_storage("0", 4), 0, (2, 2), (2, 1)) for _ in range(50)))))
    bad = _archive_with(tmp_path / "batch_00000.pt", body, **{"data/0": np.arange(4, dtype="<f4").tobytes()})
    found = read_checkpoint(bad)
    assert found.metadata == {"x": [[[0.0, 1.0], [2.0, 3.0]]] * 50}
    assert reads.count("batch_00000/data/0") == 1


def test_numpy_arrays_pickled_by_protocol_2_and_numpy_strings(tmp_path):
    """torch.save's default protocol (2) pickles bytes through _codecs.encode; IDs may be numpy strings."""
    rows = np.arange(4, dtype=np.float32).reshape(2, 2)
    saved = _archive_with(tmp_path / "batch_00000.pt", pickle.dumps(
        {"embeddings": rows, "sequence_ids": [np.str_("a"), "b"], "metadata": {"x": np.float32(0.5)}}, protocol=2))
    found = read_checkpoint(saved)
    assert found.embeddings.tolist() == rows.tolist()
    assert found.sequence_ids == ["a", "b"]
    assert type(found.sequence_ids[0]) is str
    assert found.metadata == {"x": 0.5}


def test_numpy_string_ids_of_every_length(tmp_path):
    """numpy pickles each numpy string with its own dtype (U1, U12...), an empty one as U0 with no bytes."""
    ids = ["a", "contig_000012", "\u00e9t\u00e9", ""]
    saved = _archive_with(tmp_path / "batch_00000.pt", pickle.dumps(
        {"embeddings": np.zeros((4, 2), np.float32), "sequence_ids": [np.str_(i) for i in ids],
         "metadata": {"name": np.str_(""), "tag": np.bytes_(b"ab")}}, protocol=2))
    found = read_checkpoint(saved)
    assert found.sequence_ids == ids
    assert found.metadata == {"name": "", "tag": b"ab"}


def test_small_arrays_and_torch_dtypes_in_the_metadata_are_read_as_plain_data(tmp_path):
    body = _checkpoint(metadata=_d(loss=_tensor(_storage("0", 1), 0, (), ()), model_dtype=_g("torch", "float16"),
                                   steps=_embedded(np.arange(3, dtype=np.int64))))
    saved = _archive_with(tmp_path / "batch_00000.pt", body, **{"data/0": np.float32(0.5).tobytes()})
    assert read_checkpoint(saved).metadata == {"loss": 0.5, "model_dtype": "torch.float16", "steps": [0, 1, 2]}


@pytest.mark.parametrize("empty", [_l(), _u(""), _i(0), b"N", b")"], ids=["[]", "''", "0", "None", "()"])
def test_empty_metadata_is_no_metadata(tmp_path, empty):
    """As it always was (an array is refused: its truth is an error, not emptiness)."""
    saved = _archive_with(tmp_path / "batch_00000.pt", _checkpoint(metadata=empty))
    assert read_checkpoint(saved).metadata == {}


def test_a_large_array_in_the_metadata_is_refused(tmp_path):
    body = _checkpoint(metadata=_d(big=_embedded(np.zeros(10_001, np.float32))))
    with pytest.raises(CheckpointError, match="metadata holding an array of more than 10,000 values"):
        read_checkpoint(_archive_with(tmp_path / "batch_00000.pt", body))


@pytest.mark.parametrize("sample", sorted((FIXTURES / "garbled").glob("*.pkl")), ids=lambda p: p.stem)
def test_garbled_pickles_are_damaged_checkpoints_in_one_line(tmp_path, sample):
    """Found by fuzzing a real checkpoint's data.pkl (its zip and CRC intact): a length cut short
    (struct.error), a dtype string numpy's parser chokes on (SyntaxError), the C unpickler's SystemError."""
    saved = _archive_with(tmp_path / "batch_00000.pt", sample.read_bytes())
    one_line = r"damaged checkpoint: its data cannot be read|refused numpy\.dtype"
    with pytest.raises(CheckpointError, match=one_line) as err:
        read_checkpoint(saved)
    assert "\n" not in str(err.value)


def test_half_a_surrogate_pair_in_an_id(tmp_path):
    saved = _archive_with(tmp_path / "batch_00000.pt", _checkpoint(ids=_l(_u("x\ud800"))))
    with pytest.raises(CheckpointError, match="is not Unicode text"):
        read_checkpoint(saved)
