"""Opening dataset files safely: paths kept inside the dataset folder, regular files only,
sizes checked before a byte is read (a FIFO blocks forever, ``/dev/zero`` never ends)."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import DatasetError, reader_errors

__all__ = ["inside", "open_regular", "read_regular"]


def inside(folder: Path, path: Path) -> Path:
    """``path`` resolved, refused unless it stays inside ``folder`` (already resolved): this
    catches absolute paths, ``..`` and symlinks that point out."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        raise DatasetError(f"{path} resolves to {resolved}, outside the dataset folder {folder}; "
                           "refusing to read it")
    return resolved


def open_regular(path: str | Path, max_bytes: int, what: str) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file of at most ``max_bytes``
    (the caller closes it)."""
    with reader_errors(path, what):
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on files
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DatasetError(f"{path}: a {what} must be a regular file, not a device, "
                                   "FIFO or folder")
            if st.st_size > max_bytes:
                raise DatasetError(f"{path} is {st.st_size:,} bytes, more than the {max_bytes:,} "
                                   f"a {what} may have")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def read_regular(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The whole of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    with open_regular(path, max_bytes, what) as f, reader_errors(path, what):
        data = f.read()  # sized from fstat, so no buffer of max_bytes is allocated up front
    if len(data) > max_bytes:  # the file grew after it was opened
        raise DatasetError(f"{path} grew past {max_bytes:,} bytes while being read")
    return data
