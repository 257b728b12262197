"""Write a file so that it appears whole or not at all.

The data goes to a hidden temporary file beside the target
(``.<name>.<random>.partial``), which is flushed to disk and then renamed onto the
target with :func:`os.replace`. On any failure, ``KeyboardInterrupt`` included, the
temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import OutputError

__all__ = ["atomic_output", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".partial"


def _create_temp(target: Path) -> Path:
    """Create an empty, uniquely named temp file beside ``target`` (mode as umask allows)."""
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(
                f"{target}: cannot write in folder {target.parent} ({os.strerror(err.errno or errno.EIO)})"
            ) from err
        os.close(fd)
        return temp


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success move it onto ``target`` durably."""
    if not target.parent.is_dir():
        raise OutputError(f"{target}: output folder {target.parent} does not exist")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory")
    temp = _create_temp(target)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    with suppress(OSError):  # not every filesystem lets a folder be fsync'ed
        _fsync(target.parent, directory=True)
