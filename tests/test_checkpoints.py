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
    with pytest.raises(CheckpointError, match="saved on a big-endian machine"):
        read_checkpoint(bad)


def test_no_torch_is_imported():
    code = ("import sys; from virnucpro_merge.checkpoints import read_checkpoint; "
            f"read_checkpoint({str(FIXTURES / 'tensor_bfloat16.pt')!r}); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
