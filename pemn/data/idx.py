"""IDX reader for MNIST and Fashion-MNIST (LeCun's format), gzipped or plain.

An IDX file is a 4-byte big-endian magic number ``00 00 <dtype> <ndim>``, then ``ndim``
big-endian uint32 sizes, then the values in row-major order. MNIST uses dtype 0x08 (unsigned
byte): images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError

__all__ = ["read_idx", "load_idx_images", "load_idx_labels"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # the only IDX dtype MNIST-style files use


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it starts with the gzip magic (the suffix is not trusted)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is a corrupt or truncated gzip file ({e}); download it again") from e


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read an unsigned-byte IDX file into a uint8 tensor of its stored shape.

    Args:
        path: ``.gz`` or plain IDX file (gzip is detected from the content).
        ndim: expected number of dimensions (3 for images, 1 for labels).

    Returns:
        uint8 tensor with the shape written in the header.

    Raises:
        DatasetError: bad magic number, wrong dtype or ndim, or a size that does not match.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DatasetError(f"{path} is not an IDX file: it must start with bytes 00 00")
    dtype, file_ndim = data[2], data[3]
    if dtype != _UBYTE or file_ndim != ndim:
        raise DatasetError(
            f"{path} has IDX magic 0x{int.from_bytes(data[:4], 'big'):08x}, "
            f"expected 0x{(_UBYTE << 8) | ndim:08x} (unsigned bytes, {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} holds {len(data) - header} data bytes but its header {shape} "
            f"needs {expected}; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())  # copy: frombuffer views read-only bytes


def load_idx_images(path: str | Path) -> torch.Tensor:
    """IDX image file (magic 0x00000803) -> uint8 tensor (N, 1, rows, cols)."""
    return read_idx(path, ndim=3).unsqueeze(1)


def load_idx_labels(path: str | Path) -> torch.Tensor:
    """IDX label file (magic 0x00000801) -> int64 tensor (N,)."""
    return read_idx(path, ndim=1).long()
