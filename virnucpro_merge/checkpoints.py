"""One checkpoint of the embedding pipeline, read safely: numpy arrays out, no code run, no torch.

A worker of the pipeline saves what it has embedded every few minutes::

    torch.save({"embeddings": ..., "sequence_ids": [...], "metadata": {...}}, "batch_00003.tmp",
               pickle_protocol=4)
    # then renames it to batch_00003.pt, then touches batch_00003.pt.done

The file is a zip archive (``<stem>/data.pkl``, ``<stem>/byteorder``, ``<stem>/version``, ...;
``<stem>/data/<key>`` for each tensor's storage). Its ``data.pkl`` is a pickle, and a
pickle can run any code when loaded: a checkpoint may come from someone else. So it is
read by an unpickler that knows only what the format needs (numpy's array and dtype
reconstruction; torch's tensor rebuild and its float32, float16 and bfloat16 storages,
read from the zip's members as numpy arrays) and refuses anything else, by name, before
anything runs. Every member is checked against its CRC-32 as it is read, and nothing is
read beyond the file's own size. ``embeddings`` come out as a float32 or float16 numpy
array (bfloat16 widened exactly to float32), ``sequence_ids`` as a list of str.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import open_input
from .errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "DONE_SUFFIX", "Checkpoint", "read_checkpoint", "checkpoint_batch", "CheckpointFile",
           "RankCheckpoints", "rank_checkpoints"]

#: What the pipeline names a checkpoint: ``batch_<5 digits>.pt``.
CHECKPOINT_NAME = re.compile(r"^batch_(\d+)\.pt$")
#: The marker touched after a checkpoint's rename: the pipeline's sign that it is whole.
DONE_SUFFIX = ".done"

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_PICKLE = 256 * 2**20  # bytes of data.pkl read at most (a checkpoint's is some KB: IDs and metadata)


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint holds.

    Attributes
    ----------
    path : Path
        The file.
    embeddings : numpy.ndarray
        ``(n, D)`` float32 or float16 (a bfloat16 tensor widened exactly to float32).
    sequence_ids : list of str
        The ``n`` IDs, in row order.
    metadata : dict
        The pipeline's metadata (``batch_idx``, ``timestamp``, ``trigger_reason``,
        ``model_dtype``, ...), as stored.
    """

    path: Path
    embeddings: np.ndarray
    sequence_ids: list[str]
    metadata: dict[str, Any]


def checkpoint_batch(path: str | os.PathLike[str]) -> int | None:
    """The batch number in a checkpoint's name (``batch_00007.pt`` -> 7), or None.

    >>> checkpoint_batch("run/checkpoints/shard_3/batch_00007.pt"), checkpoint_batch("batch_7.tmp")
    (7, None)
    """
    match = CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint file of a rank, as found: its batch number, and whether its ``.done``
    marker is there (without one, the file was renamed into place but the worker died before
    marking it: whole all the same, and used, as its CRCs show)."""

    path: Path
    batch: int
    done: bool


@dataclass(frozen=True)
class RankCheckpoints:
    """What a rank's checkpoint folder (``checkpoints/shard_<rank>``) holds."""

    folder: Path
    files: list[CheckpointFile]  # in batch order
    #: saves in progress (``batch_NNNNN.tmp``): never read
    temps: list[Path]
    #: why the folder cannot be listed (a file where the folder should be), or None
    problem: str | None = None


def rank_checkpoints(folder: str | os.PathLike[str]) -> RankCheckpoints:
    """The checkpoint files of one rank's folder, in batch order, told apart: with their
    ``.done`` marker or without it, and the saves in progress (``.tmp``), which are not read.
    An absent folder holds nothing (a worker that died before its first checkpoint).

    Examples
    --------
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from virnucpro_merge.synthetic import write_checkpoint
    >>> _ = write_checkpoint("shard_3/batch_00001.pt", ["a"], np.zeros((1, 2), np.float32), done=False)
    >>> _ = write_checkpoint("shard_3/batch_00000.pt", ["b"], np.zeros((1, 2), np.float32))
    >>> _ = Path("shard_3/batch_00002.tmp").write_bytes(b"")
    >>> found = rank_checkpoints("shard_3")
    >>> [(f.batch, f.done) for f in found.files], [p.name for p in found.temps]
    ([(0, True), (1, False)], ['batch_00002.tmp'])
    """
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return RankCheckpoints(folder, [], [])
    except NotADirectoryError:
        return RankCheckpoints(folder, [], [], problem=f"{folder}: a file where the checkpoint folder should be")
    except OSError as err:
        return RankCheckpoints(folder, [], [], problem=f"{folder}: cannot list it ({err.strerror or err})")
    names = {entry.name for entry in entries}
    files = [CheckpointFile(entry, batch, entry.name + DONE_SUFFIX in names)
             for entry in entries if (batch := checkpoint_batch(entry)) is not None and entry.is_file()]
    temps = [entry for entry in entries if re.fullmatch(r"batch_\d+\.tmp", entry.name)]
    return RankCheckpoints(folder, sorted(files, key=lambda f: f.batch), temps)


# --------------------------------------------------------------------------- what a pickle may hold


class _Refused(Exception):
    """A global the format never needs: refused before anything is built from it."""


class _TorchStorage:
    """Stands for one of torch's typed storage classes (``torch.FloatStorage``...): its dtype."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, dtype


#: torch's storage classes a checkpoint may hold, with the numpy dtype of their bytes
#: (bfloat16 is read as its 16 bits, then widened).
_STORAGES = {name: _TorchStorage(name, dtype) for name, dtype in
             (("FloatStorage", "<f4"), ("HalfStorage", "<f2"), ("BFloat16Storage", "<u2"))}


@dataclass(frozen=True)
class _Storage:
    """A tensor's storage, read from its zip member."""

    values: np.ndarray  # 1-D, the storage's dtype
    bfloat16: bool


def _numeric_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype[Any]:
    """``numpy.dtype`` as a pickle calls it, for the numeric dtypes a checkpoint holds only."""
    try:
        dtype = np.dtype(spec)  # type: ignore[call-overload]
    except TypeError as err:
        msg = f"numpy.dtype({spec!r})"
        raise _Refused(msg) from err
    if dtype.kind not in "fiub" or dtype.fields is not None:
        msg = f"numpy.dtype({spec!r}): an array of {'objects' if dtype.kind == 'O' else dtype}"
        raise _Refused(msg)
    return dtype


def _reconstruct(cls: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's ``_reconstruct``, for a plain ``numpy.ndarray`` only (its data comes next, by BUILD)."""
    if cls is not np.ndarray:
        msg = f"numpy array reconstruction of {cls!r}"
        raise _Refused(msg)
    return np.ndarray.__new__(np.ndarray, (0,), np.dtype("b"))


def _scalar(dtype: object, data: object = b"") -> object:
    """numpy's ``scalar`` (a numpy number in the metadata), for a numeric dtype and its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "fiub" or not isinstance(data, bytes):
        msg = f"numpy scalar of {dtype!r}"
        raise _Refused(msg)
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _ints(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of whole numbers, or None where it is not one."""
    if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, *rest: object) -> np.ndarray:
    """torch's ``_rebuild_tensor_v2``: the tensor's view of its storage, as a numpy array of its own."""
    shape, steps = _ints(size), _ints(stride)
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or shape is None or steps is None:
        msg = "a tensor rebuilt from something other than a storage of this file"
        raise _Refused(msg)
    values = storage.values
    itemsize = values.dtype.itemsize
    try:
        view = np.ndarray(shape, dtype=values.dtype, buffer=values, offset=offset * itemsize,
                          strides=tuple(s * itemsize for s in steps))
    except (TypeError, ValueError) as err:
        msg = f"a tensor of shape {shape} does not fit its storage of {values.size} values"
        raise _Refused(msg) from err
    if storage.bfloat16:  # the 16 high bits of a float32: widened exactly
        return (view.astype(np.uint32) << 16).view(np.float32)
    return view.copy()


#: Every global a checkpoint's pickle may name, and what stands for it here.
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): storage for name, storage in _STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
    """An unpickler that builds nothing the checkpoint format does not need."""

    def __init__(self, data: bytes, storage: Callable[[str, _TorchStorage, int], _Storage]) -> None:
        super().__init__(io.BytesIO(data))
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            refused = f"{module}.{name}"
            raise _Refused(refused)
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _TorchStorage)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            msg = f"a persistent reference {str(pid)[:80]!r}"
            raise _Refused(msg)
        return self._storage(pid[2], pid[1], pid[4])


# --------------------------------------------------------------------------- the file


def _archive(path: Path) -> zipfile.ZipFile:
    """The checkpoint's zip archive, its members checked to be what ``torch.save`` writes."""
    with open_input(path, "checkpoint file", CheckpointError) as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head:
        raise CheckpointError(path, "empty file (0 bytes): its worker died while saving it")
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":  # a pickle: the format torch saved in before 1.6
            raise CheckpointError(path, "a checkpoint in torch's legacy format (not a zip archive), which is not read")
        raise CheckpointError(path, "not a checkpoint (not a zip archive as torch.save writes)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(path, f"damaged checkpoint: {err}") from err
    size = path.stat().st_size
    members = archive.infolist()
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or sum(m.file_size for m in members) > size:
        archive.close()
        raise CheckpointError(path, "not a checkpoint: a member is compressed (torch.save stores them as they are)")
    return archive


def _member(archive: zipfile.ZipFile, path: Path, name: str, *, limit: int | None = None) -> bytes:
    """One member's bytes, checked against its CRC-32."""
    try:
        info = archive.getinfo(name)
        if limit is not None and info.file_size > limit:
            raise CheckpointError(path, f"its '{name}' is {info.file_size:,} bytes, more than a checkpoint holds")
        return archive.read(info)
    except KeyError as err:
        raise CheckpointError(path, f"damaged checkpoint: no '{name}' in it") from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # (a CRC-32 that does not match, a truncated file)
        raise CheckpointError(path, f"damaged checkpoint: {err}") from err


def _stem(archive: zipfile.ZipFile, path: Path) -> str:
    """The folder of the archive's members (``batch_00003``: the name it was saved under)."""
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(path, "not a checkpoint (no <name>/data.pkl in the archive)")
    return pickles[0].split("/")[0]


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read one checkpoint file of the pipeline, safely (no code in it runs; torch is not needed).

    Parameters
    ----------
    path : path-like
        A ``batch_NNNNN.pt`` file.

    Returns
    -------
    Checkpoint
        Its embeddings (a numpy array), sequence IDs and metadata.

    Raises
    ------
    CheckpointError
        One line naming the file: not a zip archive (or torch's legacy format), damaged (a
        member's CRC-32, a truncated file), a global the format never holds (named, and
        never run), or contents not shaped like a checkpoint (rows and IDs of different
        counts, an object array, an ID that is not a str).

    Examples
    --------
    >>> import numpy as np
    >>> from virnucpro_merge.synthetic import write_checkpoint
    >>> saved = write_checkpoint("batch_00000.pt", ["seq1", "seq2"], np.ones((2, 4), np.float32), {"batch_idx": 0})
    >>> found = read_checkpoint(saved)
    >>> found.sequence_ids, found.embeddings.shape, found.metadata["batch_idx"]
    (['seq1', 'seq2'], (2, 4), 0)
    """
    path = Path(path)
    archive = _archive(path)
    with archive:
        stem = _stem(archive, path)
        byteorder = archive.read(f"{stem}/byteorder").strip() if f"{stem}/byteorder" in archive.namelist() else b""
        if byteorder not in (b"", b"little"):
            raise CheckpointError(path, f"saved on a {byteorder.decode(errors='replace')}-endian machine: not read")
        data = _member(archive, path, f"{stem}/data.pkl", limit=_MAX_PICKLE)

        def storage(key: str, kind: _TorchStorage, numel: int) -> _Storage:
            if not re.fullmatch(r"\w+", key):
                msg = f"a storage named {key!r}"
                raise _Refused(msg)
            raw = _member(archive, path, f"{stem}/data/{key}")
            values = np.frombuffer(raw, dtype=kind.dtype)
            if values.size < numel:
                problem = f"damaged checkpoint: its storage {key} holds {values.size} of {numel} values"
                raise CheckpointError(path, problem)
            return _Storage(values[:numel], bfloat16=kind.name == "BFloat16Storage")

        try:
            loaded = _Unpickler(data, storage).load()
        except _Refused as err:
            raise CheckpointError(path, f"refused {err}: a checkpoint holds arrays, tensors and plain data only "
                                        "(nothing in it was run)") from None
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                MemoryError, RecursionError, OverflowError) as err:
            raise CheckpointError(path, f"damaged checkpoint: its data cannot be read ({err})") from err
    return _checked(path, loaded)


def _checked(path: Path, loaded: object) -> Checkpoint:
    """What was read, checked to be shaped like a checkpoint."""
    if not isinstance(loaded, dict) or not {"embeddings", "sequence_ids"} <= set(loaded):
        raise CheckpointError(path, "not a checkpoint (no 'embeddings' and 'sequence_ids' in it)")
    embeddings, ids, metadata = loaded["embeddings"], loaded["sequence_ids"], loaded.get("metadata") or {}
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.dtype.kind != "f" \
            or embeddings.dtype.itemsize not in (2, 4):
        kind = f"{embeddings.dtype} of shape {embeddings.shape}" if isinstance(embeddings, np.ndarray) \
            else type(embeddings).__name__
        raise CheckpointError(path, f"its embeddings are {kind}, not a 2-D float32 or float16 array")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        wrong = type(ids).__name__ if not isinstance(ids, list) else \
            type(next(i for i in ids if not isinstance(i, str))).__name__
        raise CheckpointError(path, f"its sequence IDs hold a {wrong}, not only str")
    if len(ids) != embeddings.shape[0]:
        raise CheckpointError(path, f"it has {embeddings.shape[0]} rows of embeddings but {len(ids)} sequence IDs")
    if not isinstance(metadata, dict):
        raise CheckpointError(path, f"its metadata is a {type(metadata).__name__}, not a dict")
    return Checkpoint(path=path, embeddings=embeddings.astype(embeddings.dtype.newbyteorder("="), copy=False),
                      sequence_ids=ids, metadata=dict(metadata))
