"""Bool tensors <-> bytes at 1 bit per element, with a fixed, documented bit order.

Bit order (part of the artifact format; never change it): the mask is flattened in C
(row-major) order, and flat element ``i`` is bit ``i % 8`` of byte ``i // 8``, least
significant bit first (numpy's ``bitorder="little"``). A mask of ``n`` elements takes
``ceil(n / 8)`` bytes; the unused high bits of the last byte (the padding) are zero.

    >>> pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
    b'\\x01\\x01'

:func:`pack_codes` writes variable-length codes in the same order: each code's bits go out
least significant bit first, one code after another, so the stream reads like the packed bitmap
(and like RFC 1951's Huffman data when each code is stored bit-reversed).

``CodecError`` lives here, in the lowest module of ``pemn.artifact``, so that every mask codec
can raise it without import cycles; ``pemn.artifact.codec`` re-exports it.
"""
from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["CodecError", "pack_bits", "pack_codes", "packed_num_bytes", "unpack_bits"]

_CHUNK = 1 << 18  # codes per step of pack_codes: bounds its temporaries to a few MB


class CodecError(ValueError):
    """Encoded mask bytes are malformed: wrong length, non-zero padding, wrong count, ..."""


def packed_num_bytes(n: int) -> int:
    """Bytes taken by ``n`` packed bits: ``ceil(n / 8)``."""
    return (n + 7) // 8


def pack_bits(mask: torch.Tensor) -> bytes:
    """Pack a bool tensor of any shape into bytes, 8 elements per byte (see module docstring).

    Args:
        mask: bool tensor, any shape, any device.

    Returns:
        ``ceil(mask.numel() / 8)`` bytes with zero padding bits.

    Raises:
        TypeError: if ``mask`` is not a bool tensor.

    Example:
        >>> pack_bits(torch.tensor([[True, False], [True, True]]))
        b'\\r'
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"pack_bits needs a torch.bool tensor, got {got}; use mask.bool()")
    flat = mask.detach().cpu().reshape(-1).numpy()  # (n,), C order
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_bits(data: bytes | bytearray | memoryview, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of ``data`` as a flat bool tensor.

    Args:
        data: exactly ``ceil(n / 8)`` bytes.
        n: number of mask elements (from the caller, who bounds it).

    Returns:
        bool tensor of shape ``(n,)``; reshape it to the layer's shape.

    Raises:
        CodecError: if ``n < 0``, ``len(data) != ceil(n / 8)`` or a padding bit is set.
        TypeError: if ``data`` is not bytes-like or ``n`` is not an integer.
    """
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
    """Concatenate variable-length codes into bytes, each code least significant bit first.

    Args:
        codes: unsigned integers (m,); only the low ``lengths[i]`` bits of ``codes[i]`` are used.
        lengths: code lengths in bits (m,), each in ``[0, 32]``.

    Returns:
        ``ceil(lengths.sum() / 8)`` bytes; the unused high bits of the last byte are zero.

    Example:
        >>> pack_codes(np.array([1, 2]), np.array([1, 2]))  # bits 1, then 0 1
        b'\\x05'
    """
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
