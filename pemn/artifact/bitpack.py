"""Bool tensors and variable-length codes <-> bytes, in the artifact's bit order
(``docs/FORMAT.md``, "Bit order": part of the format, never change it)."""
from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["CodecError", "pack_bits", "pack_codes", "packed_num_bytes", "unpack_bits"]

_CHUNK = 1 << 18  # codes per step of pack_codes: bounds its temporaries to a few MB


class CodecError(ValueError):
    """Encoded mask bytes are malformed (defined in this lowest module; codec re-exports it)."""


def packed_num_bytes(n: int) -> int:
    return (n + 7) // 8


def pack_bits(mask: torch.Tensor) -> bytes:
    """A bool tensor of any shape and device as bytes, 8 elements per byte (C order)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"pack_bits needs a torch.bool tensor, got {got}; use mask.bool()")
    flat = mask.detach().cpu().reshape(-1).numpy()  # (n,), C order
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_bits(data: bytes | bytearray | memoryview, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor ``(n,)`` (the caller bounds ``n``);
    CodecError unless ``data`` is exactly ``ceil(n / 8)`` bytes with zero padding bits."""
    n = operator.index(n)
    if n < 0:
        raise CodecError(f"mask size must be >= 0, got n={n}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"unpack_bits needs bytes, got {type(data).__name__}")
    packed = np.frombuffer(data, dtype=np.uint8)
    if packed.size != packed_num_bytes(n):
        raise CodecError(f"{n} packed bits take {packed_num_bytes(n)} bytes, got {packed.size}")
    if n % 8 and packed[-1] >> (n % 8):
        raise CodecError(f"padding bits after bit {n} are not zero (last byte {packed[-1]:#04x})")
    bits = np.unpackbits(packed, count=n, bitorder="little")  # (n,) uint8 in {0, 1}, fresh array
    return torch.from_numpy(bits.view(np.bool_))


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> bytes:
    """The low ``lengths[i]`` bits (0 to 32) of each ``codes[i]``, back to back, least
    significant first, zero-padded to a byte."""
    codes, lengths = np.asarray(codes, np.uint64), np.asarray(lengths, np.int64)
    width = int(lengths.max(initial=0))
    shifts = np.arange(width, dtype=np.uint64)
    out, carry = [], np.zeros(0, np.bool_)
    for start in range(0, codes.size, _CHUNK):
        c, n = codes[start:start + _CHUNK, None], lengths[start:start + _CHUNK, None]
        bits = ((c >> shifts) & 1).astype(np.bool_)[shifts.astype(np.int64) < n]  # (sum n,)
        bits = np.concatenate([carry, bits])
        whole = bits.size - bits.size % 8
        out.append(np.packbits(bits[:whole], bitorder="little").tobytes())
        carry = bits[whole:]
    out.append(np.packbits(carry, bitorder="little").tobytes())
    return b"".join(out)
