"""The one atomic file write of pemn: a kill at any moment leaves the old file or the new one."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *,
                 fsync: bool = True) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically: a
    temporary file in the same directory, flushed, fsynced, renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as a plain open() would (mkstemp's
    # 0o600 would make a saved model unreadable to other users).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
