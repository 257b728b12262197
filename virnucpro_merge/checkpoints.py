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
import pickletools
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from ._files import open_input
from .errors import CheckpointError, shown_id
from .expected import not_text
from .shards import first_line

__all__ = ["CHECKPOINT_NAME", "DONE_SUFFIX", "Checkpoint", "read_checkpoint", "checkpoint_batch", "CheckpointFile",
           "RankCheckpoints", "rank_checkpoints", "checkpointed_ids", "model_dtype_of"]

#: What the pipeline names a checkpoint: ``batch_<5 digits>.pt``.
CHECKPOINT_NAME = re.compile(r"batch_([0-9]+)\.pt")
#: The marker touched after a checkpoint's rename: the pipeline's sign that it is whole.
DONE_SUFFIX = ".done"

_ZIP_MAGIC = b"PK\x03\x04"
#: A zip member's local header: signature, versions, flags, method, time, date, CRC, sizes,
#: and the lengths of its name and its extra field (the member's bytes follow those).
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")
_MAX_PICKLE = 256 * 2**20  # bytes of data.pkl read at most (a checkpoint's is some KB: IDs and metadata)


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint holds.

    Attributes
    ----------
    path : Path
        The file.
    embeddings : numpy.ndarray
        ``(n, D)`` float32 or float16 (a bfloat16 tensor widened exactly to float32);
        read-only where it views the bytes read (copy it to change it).
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

    @property
    def model_dtype(self) -> str | None:
        """The dtype the model ran in, as the metadata names it (``"torch.float16"``), or None."""
        named = self.metadata.get("model_dtype")
        return named if isinstance(named, str) else None


def checkpoint_batch(path: str | os.PathLike[str]) -> int | None:
    """The batch number in a checkpoint's name (``batch_00007.pt`` -> 7), or None.

    >>> checkpoint_batch("run/checkpoints/shard_3/batch_00007.pt"), checkpoint_batch("batch_7.tmp")
    (7, None)
    """
    match = CHECKPOINT_NAME.fullmatch(Path(path).name)
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

    @property
    def size(self) -> int:
        """The bytes of its checkpoint files (one that cannot be asked counts none)."""
        total = 0
        for entry in self.files:
            try:
                total += entry.path.stat().st_size
            except OSError:
                continue
        return total


def checkpointed_ids(files: Iterable[CheckpointFile]) -> set[str]:
    """The distinct IDs of those checkpoint ``files`` that can be read (IDs and metadata only:
    :func:`read_checkpoint` with ``rows=False``); a damaged one holds none.

    >>> import numpy as np
    >>> from virnucpro_merge.synthetic import write_checkpoint
    >>> _ = write_checkpoint("shard_0/batch_00000.pt", ["a", "b"], np.zeros((2, 2), np.float32))
    >>> sorted(checkpointed_ids(rank_checkpoints("shard_0").files))
    ['a', 'b']
    """
    ids: set[str] = set()
    for entry in files:
        try:
            ids.update(read_checkpoint(entry.path, rows=False).sequence_ids)
        except CheckpointError:
            continue
    return ids


def model_dtype_of(files: Sequence[CheckpointFile]) -> str | None:
    """The model dtype that the smallest readable of a rank's checkpoint ``files`` names (its
    IDs and metadata read, one file: a rank's checkpoints come from one model), or None.

    >>> import numpy as np
    >>> from virnucpro_merge.synthetic import write_checkpoint
    >>> _ = write_checkpoint("shard_1/batch_00000.pt", ["a"], np.zeros((1, 2), np.float32),
    ...                      {"model_dtype": "torch.bfloat16"})
    >>> model_dtype_of(rank_checkpoints("shard_1").files)
    'torch.bfloat16'
    """
    def size(entry: CheckpointFile) -> int:
        try:
            return entry.path.stat().st_size
        except OSError:
            return -1

    sized = sorted((found, entry.batch, entry) for entry in files if (found := size(entry)) >= 0)
    for _, _, entry in sized:
        try:
            return read_checkpoint(entry.path, rows=False).model_dtype
        except CheckpointError:
            continue
    return None


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
    markers = {entry.name for entry in entries if entry.name.endswith(DONE_SUFFIX) and entry.is_file()}
    files = [CheckpointFile(entry, batch, entry.name + DONE_SUFFIX in markers)
             for entry in entries if (batch := checkpoint_batch(entry)) is not None and entry.is_file()]
    temps = [entry for entry in entries if re.fullmatch(r"batch_[0-9]+\.tmp", entry.name)]
    return RankCheckpoints(folder, sorted(files, key=lambda f: f.batch), temps)


# --------------------------------------------------------------------------- what a pickle may hold


class _Refused(Exception):
    """Something the format never holds: refused before anything is built from it."""


class _Frozen:
    """What a pickle is handed for a global: nothing it can change (no attribute can be set,
    so a BUILD on it fails), made anew for each use."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"setting {name!r}"
        raise _Refused(msg)

    def __repr__(self) -> str:  # (as a refusal shows it: the same words every time, no address)
        return f"<{type(self).__name__.lstrip('_')}>"


class _Callable(_Frozen):
    """An allowed function, called through REDUCE."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., object]) -> None:
        object.__setattr__(self, "_call", call)

    def __call__(self, *args: object) -> object:
        return self._call(*args)  # type: ignore[attr-defined]


class _TorchStorage(_Frozen):
    """One of torch's typed storage classes (``torch.FloatStorage``...): the dtype of its bytes."""

    __slots__ = ("dtype", "name")
    dtype: str
    name: str

    def __init__(self, name: str, dtype: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchDtype(_Frozen):
    """A torch dtype (``torch.float16``) named in the metadata: read as its name."""

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _NdarrayClass(_Frozen):
    """``numpy.ndarray`` as a pickle names it for :func:`_reconstruct`: not a thing to call."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


#: torch's storage classes a checkpoint may hold, with the numpy dtype of their bytes
#: (bfloat16 is read as its 16 bits, then widened).
_STORAGES = {"FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2", "DoubleStorage": "<f8"}
#: torch's dtypes, as metadata may name one (``"model_dtype": torch.float16``): read as their names.
_TORCH_DTYPES = frozenset(("float16", "float32", "float64", "bfloat16", "half", "float", "double",
                           "int8", "int16", "int32", "int64", "uint8", "bool"))
#: The dtypes an array or a number of a checkpoint may have (numbers, strings; never objects).
_KINDS = "fiubUS"


@dataclass(frozen=True)
class _Storage:
    """A tensor's storage, read from its zip member."""

    values: np.ndarray  # 1-D, the storage's dtype
    bfloat16: bool


def _numeric_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype[Any]:
    """``numpy.dtype`` as a pickle calls it (its byte order set next, by BUILD), for dtypes of
    numbers and strings only."""
    if not isinstance(spec, str):
        msg = f"numpy.dtype of a {type(spec).__name__}"
        raise _Refused(msg)
    try:
        dtype = np.dtype(spec, bool(align), bool(copy))
    except (TypeError, ValueError, SyntaxError) as err:
        msg = f"numpy.dtype({_shown(spec)})"
        raise _Refused(msg) from err
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        msg = f"numpy.dtype({_shown(spec)}): an array of {'objects' if dtype.kind == 'O' else 'this kind'}"
        raise _Refused(msg)
    return dtype


class _Array(_Frozen):
    """A numpy array as its pickle builds it: made by ``_reconstruct``, filled once by BUILD
    with ``(version, shape, dtype, fortran, data)``; its values are the pickle's own bytes,
    viewed, not copied."""

    __slots__ = ("array",)
    array: np.ndarray | None

    def __init__(self) -> None:
        object.__setattr__(self, "array", None)

    def __setstate__(self, state: object) -> None:
        if self.array is not None or not (isinstance(state, tuple) and len(state) == 5):
            msg = "numpy array state of another form"
            raise _Refused(msg)
        _, shape, dtype, fortran, data = state
        dims = _ints(shape)
        if dims is None or not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
            msg = "numpy array state of another form"
            raise _Refused(msg)
        count = int(np.prod(dims, dtype=np.int64))
        if count * dtype.itemsize != len(data):
            msg = f"a numpy array of shape {dims} whose data holds {len(data):,} bytes"
            raise _Refused(msg)
        flat = np.frombuffer(data, dtype=dtype, count=count)
        object.__setattr__(self, "array", flat.reshape(dims, order="F" if fortran else "C"))


def _reconstruct(cls: object, shape: object, typecode: object) -> _Array:
    """numpy's ``_reconstruct``, for a plain ``numpy.ndarray`` only (its data comes next, by BUILD)."""
    if not isinstance(cls, _NdarrayClass):
        msg = f"numpy array reconstruction of {_shown(repr(cls))}"
        raise _Refused(msg)
    return _Array()


def _scalar(dtype: object, data: object = b"") -> object:
    """numpy's ``scalar`` (a numpy number in the metadata), for a dtype of numbers or strings."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _KINDS or not isinstance(data, bytes):
        msg = f"numpy scalar of {_shown(repr(dtype))}"
        raise _Refused(msg)
    if len(data) != dtype.itemsize:
        msg = f"a numpy scalar of {dtype} whose data holds {len(data):,} bytes"
        raise _Refused(msg)
    if dtype.itemsize == 0:  # an empty string: numpy pickles it as U0/S0 with no bytes
        return dtype.type()
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol 2 pickles empty bytes (an empty numpy string's data), and nothing else."""
    if args:
        msg = "bytes() of anything"
        raise _Refused(msg)
    return b""


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 pickles bytes with it (``latin1`` text), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        msg = "_codecs.encode of anything but latin1 text"
        raise _Refused(msg)
    return text.encode("latin1")


def _ints(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of whole numbers, or None where it is not one."""
    if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


#: The functions a checkpoint's pickle may call, by the global that names them (each handed
#: to the pickle as a fresh :class:`_Callable`).
_FUNCTIONS: dict[tuple[str, str], Callable[..., object]] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct, ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar, ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _numeric_dtype,
    ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes,
    ("_codecs", "encode"): _latin1,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Reader:
    """What one checkpoint's pickle may build: its globals, its storages (each read once), and
    the bytes it may make of them (a few times the file's size, however its tensors view them)."""

    def __init__(self, archive: zipfile.ZipFile, path: Path, stem: str, budget: int, *, rows: bool = True) -> None:
        self.archive, self.path, self.stem, self.budget, self.rows = archive, path, stem, budget, rows
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        """A fresh stand-in for an allowed global; any other is refused, by name."""
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayClass()
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Callable(self.rebuild_tensor)
        function = _FUNCTIONS.get((module, name))
        if function is not None:
            return _Callable(function)
        if module == "torch" and name in _STORAGES:
            return _TorchStorage(name, _STORAGES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name)
        refused = f"{module}.{name}"
        raise _Refused(_shown(refused))

    def persistent_load(self, pid: Any) -> _Storage:
        """A tensor's storage: ``("storage", <storage class>, key, location, count)``."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _TorchStorage)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            msg = f"a persistent reference {_shown(str(pid))}"
            raise _Refused(msg)
        key, kind, count = pid[2], pid[1], pid[4]
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            msg = f"a storage named {_shown(repr(key))}"
            raise _Refused(msg)
        if key not in self.storages and not self.rows:  # (not read: a tensor of it is zeros taking no memory)
            self.storages[key] = _Storage(np.empty(0, dtype=kind.dtype), bfloat16=kind.name == "BFloat16Storage")
        if key not in self.storages:
            raw = _member(self.archive, self.path, f"{self.stem}/data/{key}")
            values = np.frombuffer(raw, dtype=kind.dtype)
            if values.size < count:
                problem = f"damaged checkpoint: its storage {key} holds {values.size} of {count} values"
                raise CheckpointError(self.path, problem)
            self.storages[key] = _Storage(values[:count], bfloat16=kind.name == "BFloat16Storage")
        return self.storages[key]

    def rebuild_tensor(self, storage: object, offset: object, size: object, stride: object, *rest: object
                       ) -> np.ndarray:
        """torch's ``_rebuild_tensor_v2``: the tensor's view of its storage, as a numpy array of its own."""
        shape, steps = _ints(size), _ints(stride)
        if not isinstance(storage, _Storage) or not isinstance(offset, int) or shape is None or steps is None:
            msg = "a tensor rebuilt from something other than a storage of this file"
            raise _Refused(msg)
        values = storage.values
        itemsize = values.dtype.itemsize
        out_bytes = int(np.prod(shape, dtype=np.float64)) * (4 if storage.bfloat16 else itemsize)
        if out_bytes > self.budget:
            msg = f"a tensor of shape {shape} ({out_bytes:,} bytes), many times what the file holds"
            raise _Refused(msg)
        self.budget -= out_bytes
        if not self.rows:
            return np.broadcast_to(np.zeros((), np.float32 if storage.bfloat16 else values.dtype), shape)
        try:
            view = np.ndarray(shape, dtype=values.dtype, buffer=values, offset=offset * itemsize,
                              strides=tuple(s * itemsize for s in steps))
        except (TypeError, ValueError) as err:
            msg = f"a tensor of shape {shape} that does not fit its storage of {values.size} values"
            raise _Refused(msg) from err
        if storage.bfloat16:  # the 16 high bits of a float32: widened exactly
            return (view.astype(np.uint32) << 16).view(np.float32)
        return view.copy()


class _Unpickler(pickle.Unpickler):
    """An unpickler that builds nothing the checkpoint format does not need."""

    def __init__(self, data: bytes, reader: _Reader) -> None:
        super().__init__(io.BytesIO(data))
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        return self._reader.find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._reader.persistent_load(pid)


#: The opcodes a checkpoint's pickle may hold: building lists, dicts and tuples of plain
#: values, naming an allowed global and calling it, a tensor's storage, the memo. Never
#: INST, OBJ, NEWOBJ or the extension registry (which build instances of other classes),
#: nor BYTEARRAY8 (protocol 5's, which torch.save does not write: a garbled one made the C
#: unpickler print a SystemError of its own).
_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT",
    "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET", "GLOBAL", "STACK_GLOBAL",
    "REDUCE", "BUILD", "PERSID", "BINPERSID", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT",
    "MEMOIZE"))


def _opcode_table() -> dict[int, tuple[int, int, str]]:
    """Each allowed opcode's byte -> (the size of its argument, as :mod:`pickletools` codes it;
    how many lines a line argument takes; its name)."""
    table = {}
    for op in pickletools.opcodes:
        if op.name in _OPCODES:
            lines = 2 if op.arg is not None and op.arg.name == "stringnl_noescape_pair" else 1
            table[op.code.encode("latin-1")[0]] = (op.arg.n if op.arg is not None else 0, lines, op.name)
    return table


_TABLE = _opcode_table()
#: pickletools' codes of a length-prefixed argument -> the prefix's size and format
_PREFIXED = {pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"), pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
             pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"), pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q")}
_MEMO = frozenset(("PUT", "GET", "LONG_BINPUT", "LONG_BINGET"))
_SHORT_BINUNICODE, _MEMOIZE = (next(op.code.encode("latin-1")[0] for op in pickletools.opcodes if op.name == name)
                                for name in ("SHORT_BINUNICODE", "MEMOIZE"))


def _check_opcodes(data: bytes) -> None:
    """Every opcode of the pickle allowed, and no memo index beyond the pickle's size (an
    index of 2**30 would make the unpickler allocate gigabytes before reading on). One pass
    that steps over each argument (the embeddings' bytes in one step)."""
    at, end = 0, len(data)
    while at < end:
        op = data[at]
        if op == _SHORT_BINUNICODE and at + 1 < end:  # (the IDs: most of the opcodes, stepped over at once)
            at += 2 + data[at + 1]
            continue
        if op == _MEMOIZE:
            at += 1
            continue
        size, lines, name = _allowed_opcode(op)
        at = _past_argument(data, at + 1, size, lines, name)
        if name == "STOP":
            return


def _allowed_opcode(op: int) -> tuple[int, int, str]:
    """An allowed opcode's entry of the table (its argument's size, its lines, its name); any
    other opcode is refused, by name."""
    entry = _TABLE.get(op)
    if entry is None:
        name = next((known.name for known in pickletools.opcodes if known.code.encode("latin-1")[0] == op),
                    f"byte 0x{op:02x}")
        msg = f"the pickle opcode {name}"
        raise _Refused(msg)
    return entry


def _past_argument(data: bytes, at: int, size: int, lines: int, name: str) -> int:
    """Where the argument of opcode ``name`` that starts at ``at`` ends (a memo index checked)."""
    if size >= 0:
        if name in _MEMO and int.from_bytes(data[at : at + size], "little") > len(data):
            msg = f"a memo index of {int.from_bytes(data[at : at + size], 'little')}"
            raise _Refused(msg)
        return at + size
    if size == pickletools.UP_TO_NEWLINE:
        return _past_lines(data, at, lines, name)
    prefix, layout = _PREFIXED[size]
    (length,) = struct.unpack_from(layout, data, at)
    return at + prefix + max(0, length)


def _past_lines(data: bytes, at: int, lines: int, name: str) -> int:
    """Where an argument of ``lines`` lines that starts at ``at`` ends (a memo index checked)."""
    for _ in range(lines):
        newline = data.find(b"\n", at)
        if newline < 0:
            msg = "a pickle cut short"
            raise ValueError(msg)
        if name in _MEMO and (not data[at:newline].isdigit() or int(data[at:newline]) > len(data)):
            msg = f"a memo index of {_shown(data[at:newline].decode('latin-1'))}"
            raise _Refused(msg)
        at = newline + 1
    return at


def _shown(text: str) -> str:
    """A name or value from a file as a one-line message shows it: quoted when it holds
    anything unprintable, cut when long."""
    return shown_id(text)


# --------------------------------------------------------------------------- the file

#: Failures of the zip module on a damaged archive (its CRCs, headers, flags, names).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
               UnicodeDecodeError, ValueError, KeyError)


def _archive(handle: BinaryIO, path: Path) -> zipfile.ZipFile:
    """The checkpoint's zip archive, its members checked to be what ``torch.save`` writes."""
    head = handle.read(len(_ZIP_MAGIC))
    if not head:
        raise CheckpointError(path, "empty file (0 bytes): its worker died while saving it")
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":  # a pickle: the format torch saved in before 1.6
            raise CheckpointError(path, "a checkpoint in torch's legacy format (not a zip archive), which is not read")
        raise CheckpointError(path, "not a checkpoint (not a zip archive as torch.save writes)")
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except _ZIP_ERRORS as err:
        raise CheckpointError(path, f"damaged checkpoint: {first_line(err)}") from err
    size = os.fstat(handle.fileno()).st_size
    members = archive.infolist()
    if any(m.compress_type != zipfile.ZIP_STORED for m in members):
        raise CheckpointError(path, "not a checkpoint: a member is compressed (torch.save stores them as they are)")
    if sum(m.file_size for m in members) > size:
        raise CheckpointError(path, "damaged checkpoint: its members claim more bytes than the file holds")
    return archive


def _member(archive: zipfile.ZipFile, path: Path, name: str, *, limit: int | None = None) -> bytes:
    """One member's bytes, checked against its CRC-32."""
    try:
        info = archive.getinfo(name)
    except KeyError as err:
        raise CheckpointError(path, f"damaged checkpoint: no {_shown(name)} in it") from err
    if limit is not None and info.file_size > limit:
        raise CheckpointError(path, f"its {_shown(name)} is {info.file_size:,} bytes, more than a checkpoint holds")
    if info.flag_bits & 0x41:  # encrypted (torch.save never encrypts)
        raise CheckpointError(path, f"damaged checkpoint: {_shown(name)} is marked encrypted")
    handle = archive.fp
    assert handle is not None
    try:  # a stored member read straight into place (zipfile would read it in pieces, and join them)
        header = os.pread(handle.fileno(), _LOCAL_HEADER.size, info.header_offset)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise CheckpointError(path, f"damaged checkpoint: the header of {_shown(name)} is not where it should be")
        name_size, extra_size = _LOCAL_HEADER.unpack(header)[-2:]
        data = os.pread(handle.fileno(), info.file_size, info.header_offset + _LOCAL_HEADER.size + name_size
                        + extra_size)
    except OSError as err:
        raise CheckpointError(path, f"damaged checkpoint: {first_line(err)}") from err
    if len(data) != info.file_size:
        raise CheckpointError(path, f"damaged checkpoint: {_shown(name)} is cut short (a truncated file)")
    if zlib.crc32(data) != info.CRC:
        raise CheckpointError(path, f"damaged checkpoint: Bad CRC-32 for file {_shown(name)}")
    return data


def _stem(archive: zipfile.ZipFile, path: Path) -> str:
    """The folder of the archive's members (``batch_00003``: the name it was saved under)."""
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(path, "not a checkpoint (no single <name>/data.pkl in the archive)")
    return pickles[0].split("/")[0]


def read_checkpoint(path: str | os.PathLike[str], *, rows: bool = True) -> Checkpoint:
    """Read one checkpoint file of the pipeline, safely (no code in it runs; torch is not needed).

    Parameters
    ----------
    path : path-like
        A ``batch_NNNNN.pt`` file.
    rows : bool
        Read the rows. Without, only the IDs and metadata are read (quick: a progress
        view): ``embeddings`` then has the rows' shape and dtype but holds zeros and takes
        no memory, and the rows' CRCs are not checked.

    Returns
    -------
    Checkpoint
        Its embeddings (a numpy array), sequence IDs and metadata (plain data: numpy
        numbers as Python ones, a small tensor or array of at most 10,000 values as
        lists, a torch dtype as its name, ``"torch.float16"``).

    Raises
    ------
    CheckpointError
        One line naming the file: not a regular file, not a zip archive (or torch's legacy
        format), damaged (a member's CRC-32, a truncated file), a global or an opcode the
        format never holds (named, and never run), more than a few times the file's size
        to build, or contents not shaped like a checkpoint (rows and IDs of different
        counts, an object array, an ID that is not text, metadata that is not plain data).

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

    def error(message: str) -> CheckpointError:
        return CheckpointError(path, message.removeprefix(f"{path}: "))

    with open_input(path, "checkpoint file", error, regular=True) as handle, _archive(handle, path) as archive:
        stem = _stem(archive, path)
        byteorder = _member(archive, path, f"{stem}/byteorder", limit=16) \
            if f"{stem}/byteorder" in archive.namelist() else b"little"
        if byteorder.strip() != b"little":
            raise CheckpointError(path, f"saved on a machine of byte order {_shown(repr(byteorder))}: not read")
        data = _member(archive, path, f"{stem}/data.pkl", limit=_MAX_PICKLE)
        reader = _Reader(archive, path, stem, budget=4 * os.fstat(handle.fileno()).st_size + 2**20, rows=rows)
        try:
            _check_opcodes(data)
            loaded = _Unpickler(data, reader).load()
        except _Refused as err:
            raise CheckpointError(path, f"refused {err}: a checkpoint holds arrays, tensors and plain data only "
                                        "(nothing in it was run)") from None
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                MemoryError, RecursionError, OverflowError, UnicodeDecodeError, struct.error, SyntaxError,
                SystemError) as err:  # (garbled bytes: numpy's dtype parser and the C unpickler raise the last two)
            raise CheckpointError(path, f"damaged checkpoint: its data cannot be read ({first_line(err)})") from err
    return _checked(path, loaded, rows=rows)


_METADATA_ARRAY_VALUES = 10_000  # metadata is small; a bigger array in it is not metadata


def _plain(value: object, depth: int = 0) -> object:
    """Metadata as plain data (numpy numbers as Python ones, small arrays as lists, torch
    dtypes as their names); ``_Refused`` for anything else."""
    if depth > 32:
        msg = "metadata nested deeper than 32 levels"
        raise _Refused(msg)
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items() if isinstance(k, str | int)}
    return _plain_value(value)


def _plain_value(value: object) -> object:
    """One value of the metadata (not a list, tuple or dict) as plain data; ``_Refused`` for
    anything but a number, text, a torch dtype or a small array."""
    if value is None or isinstance(value, bool | int | float | str):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, np.generic) and value.dtype.kind in _KINDS:
        return value.item()
    if isinstance(value, _TorchDtype):
        return f"torch.{value.name}"
    if isinstance(value, _Array | np.ndarray):
        return _small_array(value)
    msg = f"metadata holding a {type(value).__name__}"
    raise _Refused(msg)


def _small_array(value: _Array | np.ndarray) -> object:
    """A small array of the metadata (a tensor or numpy array of numbers) as lists; ``_Refused``
    for a bigger one."""
    array = value.array if isinstance(value, _Array) else value
    if array is None or array.size > _METADATA_ARRAY_VALUES:
        msg = f"metadata holding an array of more than {_METADATA_ARRAY_VALUES:,} values"
        raise _Refused(msg)
    return array.tolist()


def _checked(path: Path, loaded: object, *, rows: bool = True) -> Checkpoint:
    """What was read, checked to be shaped like a checkpoint."""
    if not isinstance(loaded, dict) or not {"embeddings", "sequence_ids"} <= set(loaded):
        raise CheckpointError(path, "not a checkpoint (no 'embeddings' and 'sequence_ids' in it)")
    embeddings, ids, metadata = loaded["embeddings"], loaded["sequence_ids"], loaded.get("metadata")
    if metadata is None or (not isinstance(metadata, _Array | np.ndarray) and not metadata):  # (none, or empty:
        metadata = {}  # no metadata; not the truth of an array, which is an error)
    embeddings = _checked_embeddings(path, embeddings)
    ids = _checked_ids(path, ids, embeddings.shape[0])
    plain = _checked_metadata(path, metadata)
    if rows:
        native = embeddings.astype(embeddings.dtype.newbyteorder("="), copy=False)  # (saved big-endian: converted)
        embeddings = np.ascontiguousarray(native)
    return Checkpoint(path=path, embeddings=embeddings, sequence_ids=[str(i) for i in ids], metadata=plain)


def _checked_embeddings(path: Path, embeddings: object) -> np.ndarray:
    """A checkpoint's embeddings, checked to be a 2-D float32 or float16 array."""
    if isinstance(embeddings, _Array):
        embeddings = embeddings.array
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.dtype.kind != "f" \
            or embeddings.dtype.itemsize not in (2, 4):
        kind = f"{embeddings.dtype} of shape {embeddings.shape}" if isinstance(embeddings, np.ndarray) \
            else type(embeddings).__name__
        raise CheckpointError(path, f"its embeddings are {kind}, not a 2-D float32 or float16 array")
    return embeddings


def _checked_ids(path: Path, ids: object, rows: int) -> list[str]:
    """A checkpoint's sequence IDs, checked to be ``rows`` strings of Unicode text."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        wrong = type(ids).__name__ if not isinstance(ids, list) else \
            type(next(i for i in ids if not isinstance(i, str))).__name__
        raise CheckpointError(path, f"its sequence IDs hold a {wrong}, not only str")
    if (bad := not_text(ids)) is not None:
        raise CheckpointError(path, f"its sequence ID {shown_id(bad)} is not Unicode text (half a surrogate pair)")
    if len(ids) != rows:
        raise CheckpointError(path, f"it has {rows} rows of embeddings but {len(ids)} sequence IDs")
    return ids


def _checked_metadata(path: Path, metadata: object) -> dict[str, Any]:
    """A checkpoint's metadata, checked to be a dict of plain data, as plain data."""
    if not isinstance(metadata, dict):
        kind = "an array" if isinstance(metadata, _Array | np.ndarray) else f"a {type(metadata).__name__}"
        raise CheckpointError(path, f"its metadata is {kind}, not a dict")
    try:
        plain = _plain(metadata)
    except _Refused as err:
        raise CheckpointError(path, f"its {err}, not plain data") from None
    return cast("dict[str, Any]", plain)
