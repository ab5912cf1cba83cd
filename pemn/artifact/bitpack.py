"""Bool tensors <-> bytes at 1 bit per element, with a fixed, documented bit order.

Bit order (part of the artifact format; never change it): the mask is flattened in C
(row-major) order, and flat element ``i`` is bit ``i % 8`` of byte ``i // 8``, least
significant bit first (numpy's ``bitorder="little"``). A mask of ``n`` elements takes
``ceil(n / 8)`` bytes; the unused high bits of the last byte (the padding) are zero.

    >>> pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
    b'\\x01\\x01'

``CodecError`` lives here, in the lowest module of ``pemn.artifact``, so that every mask codec
can raise it without import cycles; ``pemn.artifact.codec`` re-exports it.
"""
from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["CodecError", "pack_bits", "packed_num_bytes", "unpack_bits"]


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
