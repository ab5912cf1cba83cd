"""IDX reader for MNIST and Fashion-MNIST (LeCun's format), gzipped or plain.

An IDX file is a magic number ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32 sizes, then
the values row-major. MNIST uses unsigned bytes (0x08): images ``0x00000803`` (N, rows, cols),
labels ``0x00000801`` (N,).

Hostile files: the declared size is checked against ``max_bytes`` and against what the file can
hold before the output is allocated, and gzip is inflated in chunks never past that size, so a
gzip bomb costs at most the declared size. Concatenated gzip members are read as one stream.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError, reader_errors
from .files import read_regular

__all__ = ["IDX_FILES", "MAX_BYTES", "load_idx_images", "load_idx_labels", "load_idx_splits",
           "read_idx"]

MAX_BYTES = 1 << 28  # 256 MiB of values per file; Fashion-MNIST's largest file holds 47 MB
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # the only IDX dtype MNIST-style files use
_MAX_DEFLATE_RATIO = 1032  # deflate cannot inflate one byte into more than ~1032
_CHUNK = 1 << 22  # bytes inflated per step


class _Source:
    """The bytes of an IDX file in order, inflated on demand when gzipped (never more than
    asked for)."""

    def __init__(self, path: Path, raw: bytes):
        self.path, self.gzipped = path, raw.startswith(_GZIP_MAGIC)
        self._raw, self._pos = memoryview(raw), 0  # a view: slicing it copies nothing
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzipped else None

    def readinto(self, out: memoryview) -> int:
        """Fill ``out`` as far as the data goes; returns the bytes written."""
        if self._inflater is None:
            piece = self._raw[self._pos:self._pos + len(out)]
            out[:len(piece)] = piece
            self._pos += len(piece)
            return len(piece)
        done = 0
        while done < len(out):
            piece = self._inflate(min(_CHUNK, len(out) - done))
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
        return len(self._raw) - self._pos

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        return bytes(buf[:self.readinto(memoryview(buf))])

    def at_end(self) -> bool:
        """True when nothing follows; for gzip, the stream also ended with a valid checksum."""
        if self._inflater is None:
            return self._pos == len(self._raw)
        return not self._inflate(1) and self._inflater.eof and not self._inflater.unused_data

    def _inflate(self, max_length: int) -> bytes:
        """At most ``max_length`` inflated bytes; empty only at the end of the last member."""
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
    a uint8 tensor of its stored shape.

    Raises:
        DatasetError: not a regular file, a bad magic number, dtype or ndim, a declared size
            above ``max_bytes`` or beyond what the file can hold, data shorter or longer than
            declared, corrupt gzip, or not enough memory.
    """
    path = Path(path)
    with reader_errors(path, "IDX file"):
        src = _Source(path, read_regular(path, max_bytes + 4 + 4 * ndim, "IDX file"))
        shape = _read_header(src, ndim)
        num_bytes = _check_size(src, shape, max_bytes)
        values = np.empty(num_bytes, dtype=np.uint8)
        got = src.readinto(memoryview(values))
        if got != num_bytes or not src.at_end():
            raise DatasetError(f"{path} holds {'fewer' if got < num_bytes else 'more'} data "
                               f"bytes than its header {shape} needs ({num_bytes:,}); the file "
                               "is truncated or corrupt")
        return torch.from_numpy(values.reshape(shape))


def _read_header(src: _Source, ndim: int) -> tuple[int, ...]:
    magic = src.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DatasetError(f"{src.path} is not an IDX file: it must start with bytes 00 00")
    if magic[2] != _UBYTE or magic[3] != ndim:
        raise DatasetError(f"{src.path} has IDX magic 0x{int.from_bytes(magic, 'big'):08x}, "
                           f"expected 0x{(_UBYTE << 8) | ndim:08x} (unsigned bytes, {ndim} dims)")
    sizes = src.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DatasetError(f"{src.path} is truncated inside its IDX header")
    return struct.unpack(f">{ndim}I", sizes)


def _check_size(src: _Source, shape: tuple[int, ...], max_bytes: int) -> int:
    """The declared number of bytes, refused before allocation when implausible."""
    num_bytes = math.prod(shape)  # Python ints: (2**31, 2**31, 4) must not wrap to 0
    if num_bytes > max_bytes:
        raise DatasetError(f"{src.path} declares shape {shape}, {num_bytes:,} bytes, more than "
                           f"max_bytes={max_bytes:,}")
    if src.gzipped and num_bytes > _MAX_DEFLATE_RATIO * src.remaining:
        raise DatasetError(f"{src.path} declares shape {shape}, {num_bytes:,} bytes, more than "
                           f"the {src.remaining:,} gzip bytes left can inflate to")
    if not src.gzipped and src.remaining != num_bytes:
        raise DatasetError(f"{src.path} holds {src.remaining:,} data bytes but its "
                           f"header {shape} needs {num_bytes:,}; the file is truncated or corrupt")
    return num_bytes


def load_idx_images(path: str | Path) -> torch.Tensor:
    """IDX image file (magic 0x00000803) -> uint8 tensor (N, 1, rows, cols)."""
    return read_idx(path, ndim=3).unsqueeze(1)


def load_idx_labels(path: str | Path) -> torch.Tensor:
    """IDX label file (magic 0x00000801) -> int64 tensor (N,)."""
    return read_idx(path, ndim=1).long()


def load_idx_splits(name: str, folders: list[Path], hint: str = ""):
    """``(train_images, train_labels, test_images, test_labels)`` from the first of ``folders``
    holding the four :data:`IDX_FILES`, each gzipped (``.gz``) or not; ``hint`` (how to get the
    files) starts the message when none does.

    Raises:
        DatasetError: no folder holds all four files (the message says what to put where), a
            malformed file, or a label count that differs from the image count.
    """
    for folder in folders:
        with reader_errors(folder, f"{name} folder"):  # a denied stat is an OSError
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
