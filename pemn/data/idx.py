"""IDX reader for MNIST and Fashion-MNIST (LeCun's format), gzipped or plain: declared sizes are
checked before allocation, and gzip never inflates past them (docs/DATASETS.md)."""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .files import DatasetError, read_regular, reader_errors

__all__ = ["IDX_FILES", "MAX_BYTES", "load_idx_images", "load_idx_labels", "load_idx_splits",
           "read_idx"]

MAX_BYTES = 1 << 28  # 256 MiB of values per file; Fashion-MNIST's largest file holds 47 MB
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_UBYTE = 0x08  # the only IDX dtype MNIST-style files use
_MAX_DEFLATE_RATIO = 1032  # deflate cannot inflate one byte into more than ~1032
_CHUNK = 1 << 22  # bytes inflated per step


class _Source:
    """The bytes of an IDX file in order, inflated on demand (never more than asked for)."""

    def __init__(self, path: Path, raw: bytes):
        self.path, self.gzipped = path, raw.startswith(b"\x1f\x8b")  # the gzip magic
        self._raw = memoryview(raw)  # a view: slicing it copies nothing
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzipped else None

    def readinto(self, out: memoryview) -> int:
        """Fill ``out`` as far as the data goes; returns the bytes written."""
        done = 0
        while done < len(out):
            piece = self._next(min(_CHUNK, len(out) - done))
            if not piece:
                break
            out[done:done + len(piece)] = piece
            done += len(piece)
        return done

    @property
    def remaining(self) -> int:
        """Bytes of the file not consumed yet (compressed, for gzip)."""
        if self._inflater is not None and self._inflater.eof:  # what follows the member
            return len(self._inflater.unused_data)
        return len(self._raw)

    def at_end(self) -> bool:
        """True when nothing follows; for gzip, the stream also ended with a valid checksum."""
        return not self._next(1) and (self._inflater is None or self._inflater.eof)

    def _next(self, max_length: int) -> bytes:
        """At most ``max_length`` bytes; empty only at the end (of the last gzip member)."""
        if self._inflater is None:
            piece, self._raw = self._raw[:max_length], self._raw[max_length:]
            return piece
        while True:
            if self._inflater.eof and self._inflater.unused_data:  # the next member starts
                self._raw = memoryview(self._inflater.unused_data)
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                piece = self._inflater.decompress(self._raw, max_length)
            except zlib.error as e:
                raise DatasetError(f"{self.path} is a corrupt gzip file ({e}); download it "
                                   "again") from None
            self._raw = self._inflater.unconsumed_tail
            if piece or not (self._inflater.eof and self._inflater.unused_data):
                return piece


def read_idx(path: str | Path, ndim: int, max_bytes: int = MAX_BYTES) -> torch.Tensor:
    """An unsigned-byte IDX file of ``ndim`` dimensions, gzipped or not (from its content), as
    a uint8 tensor of its stored shape; a DatasetError for anything else."""
    path = Path(path)
    with reader_errors(path, "IDX file"):
        src = _Source(path, read_regular(path, max_bytes + 4 + 4 * ndim, "IDX file"))
        header = bytearray(4 + 4 * ndim)  # the magic number, then the sizes
        got = src.readinto(memoryview(header))
        if got < 4 or header[:2] != b"\x00\x00":
            raise DatasetError(f"{path} is not an IDX file: it must start with bytes 00 00")
        magic = header[:4]
        if magic[2] != _UBYTE or magic[3] != ndim:
            raise DatasetError(f"{path} has IDX magic 0x{int.from_bytes(magic, 'big'):08x}, "
                               f"expected 0x{(_UBYTE << 8) | ndim:08x} (unsigned bytes, "
                               f"{ndim} dims)")
        if got < len(header):
            raise DatasetError(f"{path} is truncated inside its IDX header")
        shape = struct.unpack_from(f">{ndim}I", header, 4)
        num_bytes = math.prod(shape)  # Python ints: (2**31, 2**31, 4) must not wrap to 0
        declared = f"{path} declares shape {shape}, {num_bytes:,} bytes, more than"
        if num_bytes > max_bytes:
            raise DatasetError(f"{declared} max_bytes={max_bytes:,}")
        if src.gzipped and num_bytes > _MAX_DEFLATE_RATIO * src.remaining:
            raise DatasetError(f"{declared} the {src.remaining:,} gzip bytes left can inflate to")
        if not src.gzipped and src.remaining != num_bytes:
            raise DatasetError(f"{path} holds {src.remaining:,} data bytes but its header {shape} "
                               f"needs {num_bytes:,}; the file is truncated or corrupt")
        values = np.empty(num_bytes, dtype=np.uint8)
        got = src.readinto(memoryview(values))
        if got != num_bytes or not src.at_end():
            raise DatasetError(f"{path} holds {'fewer' if got < num_bytes else 'more'} data "
                               f"bytes than its header {shape} needs ({num_bytes:,}); the file "
                               "is truncated or corrupt")
        return torch.from_numpy(values.reshape(shape))


def load_idx_images(path: str | Path) -> torch.Tensor:
    """IDX image file (magic 0x00000803) -> uint8 tensor (N, 1, rows, cols)."""
    return read_idx(path, ndim=3).unsqueeze(1)


def load_idx_labels(path: str | Path) -> torch.Tensor:
    """IDX label file (magic 0x00000801) -> int64 tensor (N,)."""
    return read_idx(path, ndim=1).long()


def load_idx_splits(name: str, folders: list[Path], hint: str = ""):
    """``(train_images, train_labels, test_images, test_labels)`` from the first of ``folders``
    holding the four :data:`IDX_FILES`; ``hint`` (how to get them) starts the error otherwise."""
    for folder in folders:
        files = [next((p for p in (Path(folder) / (stem + ".gz"), Path(folder) / stem)
                       if p.is_file()), None) for stem in IDX_FILES]
        if None not in files:
            splits = [load_idx_images(files[0]), load_idx_labels(files[1]),
                      load_idx_images(files[2]), load_idx_labels(files[3])]
            for x, y, f in ((splits[0], splits[1], files[1]), (splits[2], splits[3], files[3])):
                if len(x) != len(y):
                    raise DatasetError(f"{f} has {len(y)} labels for {len(x)} images")
            return tuple(splits)
    where = " or ".join(str(Path(d).resolve()) for d in folders)
    wanted = ", ".join(s + ".gz" for s in IDX_FILES)
    raise DatasetError(f"{name} not found in {where}: {hint}put the four IDX files {wanted} "
                       f"(gzipped or not) in {Path(folders[-1]).resolve()}")
