"""The one exception type of ``pemn.data``, and the guard that turns any reader failure into it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DatasetError", "reader_errors", "short"]

_MAX_DETAIL = 200  # characters of a hostile value or a library message quoted in an error


class DatasetError(ValueError):
    """A dataset is missing, malformed, unsafe or too large; one line naming the file."""


@contextmanager
def reader_errors(path: str | Path, what: str) -> Iterator[None]:
    """Re-raise any failure inside the block as a one-line :class:`DatasetError` naming
    ``path``, ``what`` it should be (e.g. ``"IDX file"``). Files from strangers make numpy, zlib,
    pickle, Pillow and the allocator fail in ways no reader enumerates."""
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
    """``repr(value)`` (or ``str`` when not ``quote``) on one line, cut to a readable length:
    a hostile file can make any value it names gigabytes long."""
    text = " ".join((repr(value) if quote else str(value)).split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."
