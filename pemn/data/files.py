"""Opening dataset files: regular files only, sizes checked before anything is read.

A path from a stranger may name a FIFO (blocks forever), a device such as ``/dev/zero``
(never ends) or a file far larger than the format allows; each is refused here, before a byte
is read.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import DatasetError, reader_errors

__all__ = ["open_regular", "read_regular"]


def open_regular(path: str | Path, max_bytes: int, what: str) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file of at most ``max_bytes``.

    Returns:
        A binary file object; the caller closes it.

    Raises:
        DatasetError: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
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
