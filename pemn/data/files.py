"""Reading dataset files safely: the one exception type of ``pemn.data``, the guard that turns
any reader failure into it, and opening only regular files of a checked size inside the folder."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["DatasetError", "inside", "open_regular", "read_regular", "reader_errors", "short"]

_MAX_DETAIL = 200  # characters of a hostile value or a library message quoted in an error


class DatasetError(ValueError):
    """A dataset is missing, malformed, unsafe or too large; one line naming the file."""


@contextmanager
def reader_errors(path: str | Path, what: str) -> Iterator[None]:
    """Re-raise any failure in the block as one :class:`DatasetError` line naming ``path`` and
    ``what`` it should be (``"IDX file"``): hostile files fail in ways no reader enumerates."""
    try:
        yield
    except DatasetError:
        raise
    except MemoryError:
        # from None: the traceback would keep the half-built buffers alive
        raise DatasetError(f"{path}: not enough memory to read this {what}") from None
    except Exception as e:
        detail = short(str(e), quote=False) or "no detail"
        raise DatasetError(f"{path}: cannot read this {what} ({type(e).__name__}: {detail})") from e


def short(value: object, quote: bool = True) -> str:
    """``repr(value)`` (``str`` unless ``quote``) on one line, cut to a readable length."""
    text = " ".join((repr(value) if quote else str(value)).split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def inside(folder: Path, path: Path) -> Path:
    """``path`` resolved, refused unless it stays inside ``folder`` (already resolved)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        raise DatasetError(f"{path} resolves to {resolved}, outside the dataset folder {folder}; "
                           "refusing to read it")
    return resolved


def open_regular(path: str | Path, max_bytes: int, what: str) -> BinaryIO:
    """Open a regular file of at most ``max_bytes`` for reading; the caller closes it."""
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
