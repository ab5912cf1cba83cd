"""The three in-memory forms a loaded artifact can take (``pemn.load(..., form=...)``).

=========  ==========================================================  ======================
form       what the model holds                                        use it to
=========  ==========================================================  ======================
train      frozen values + fp32 scores (PEMN layers, as after apply_)  fine-tune, keep training
dense      plain layers, the masked weights baked in                   deploy; export
packed     bit-packed masks + the prototype (a trained-weight family:    deploy where memory is
           its file bytes); each layer rebuilds its weight from them   scarcer than compute
           in every forward, nothing cached
=========  ==========================================================  ======================

Every form gives the same eval logits: ``dense`` and ``packed`` hold the very same float32
weights as ``train`` (``fixed * mask`` is exact, and a trained family computes what its file
decodes to), so their logits are bit-identical on one device. ``packed`` holds ``P/8`` bytes
of masks plus each prototype as it really is (:func:`hold_prototype`): signed constants as one
bit a value, a copy-order RP vector as its short drawn values; only normal values of a long
prototype stay float32. Every form's weight is a computed tensor
(:func:`pemn.masking.compute_`), the one mechanism of every family.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from pemn.artifact.bitpack import pack_bits
from pemn.artifact.weights import get_encoding
from pemn.masking import BITS, GAIN, VALUES, compute_

__all__ = ["unpack_bits_torch", "pack_bits_torch", "pack_module_", "pack_encoded_",
           "hold_prototype"]


@functools.lru_cache(maxsize=None)
def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8): row ``b`` holds the 8 bits of byte ``b``, least significant first."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return bits.to(device=device, dtype=dtype)


def unpack_bits_torch(bits: torch.Tensor, n: int, dtype: torch.dtype = torch.uint8):
    """``(ceil(n/8),)`` uint8 -> ``(n,)`` zeros and ones of ``dtype``, on ``bits``' device.

    The bit order of :mod:`pemn.artifact.bitpack`: element ``i`` is bit ``i % 8`` (least
    significant first) of byte ``i // 8``. A table lookup (``F.embedding``) is the fastest
    way measured here: 0.8 ms for 2.4M bits on 2 threads, 3x the shift-and-mask version.
    """
    table = _bit_table(bits.device, dtype)
    return F.embedding(bits.int(), table).view(-1)[:n]


def pack_bits_torch(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask -> its packed bytes as a uint8 tensor on the mask's device."""
    data = pack_bits(mask)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(mask.device)


def hold_prototype(full: torch.Tensor, proto) -> tuple[torch.Tensor, float | None]:
    """``(values, magnitude)``: what the packed form holds of the prototype vector ``full``.

    A copy-order RP vector is its short drawn values (tiled in every read). A prototype of
    signed constants is ``+-magnitude`` throughout: its sign bits, 1 bit a value instead of 32,
    rebuild it exactly, permuted or not. Anything else is held as it is.
    """
    if proto.tile_to > proto.numel and not proto.permute:
        return full[: proto.numel].clone(), None  # clone: the full vector is not kept alive
    magnitude = full[:1].abs()
    if full.numel() and bool((full.abs() == magnitude).all()):
        return pack_bits_torch(full > 0), float(magnitude)
    return full, None


def _packed(shape: tuple[int, ...], scale: float, magnitude: float | None, module: nn.Module,
            name: str) -> torch.Tensor:
    """``values[:numel] * unpack(bits)`` (times the layer's scale and gain), rebuilt per read.

    ``values`` is a prototype vector shared (same storage) by every layer it serves; a
    copy-order RP vector is kept short and tiled here; with a ``magnitude``, ``values`` are
    the prototype's sign bits (:func:`hold_prototype`).
    """
    values, n = getattr(module, name + VALUES), math.prod(shape)
    bits = getattr(module, name + BITS)
    if magnitude is not None:  # 0/1 mask times -1/+1 signs times the magnitude: exact in fp32
        weight = unpack_bits_torch(bits, n, torch.float32)
        weight.mul_(unpack_bits_torch(values, n, torch.float32).mul_(2).sub_(1)).mul_(magnitude)
    else:
        weight = unpack_bits_torch(bits, n, values.dtype)  # a fresh tensor: multiply in place
        period = min(values.numel(), n)  # copy-order RP repeats a short vector
        whole = n - n % period
        weight[:whole].view(-1, period).mul_(values[:period])  # broadcast, no tiled copy
        weight[whole:].mul_(values[: n - whole])
    if scale != 1.0:
        weight.mul_(scale)
    weight = weight.view(shape)
    gain = module._buffers.get(name + GAIN)
    return weight if gain is None else weight.mul_(gain)


def pack_module_(module: nn.Module, name: str, held: tuple[torch.Tensor, float | None],
                 mask: torch.Tensor, scale: float = 1.0, gain: torch.Tensor | None = None) -> None:
    """Make ``module.<name>`` computed from its packed ``mask`` bits over ``held``, the
    ``(values, magnitude)`` of :func:`hold_prototype` (the mechanism of every computed weight,
    :func:`pemn.masking.compute_`); the bits (and the gain) are its stored tensors, the shared
    prototype a transient one."""
    values, magnitude = held
    stored = {BITS: pack_bits_torch(mask)} | ({} if gain is None else {GAIN: gain})
    fn = functools.partial(_packed, tuple(mask.shape), scale, magnitude)
    compute_(module, name, fn, stored, {VALUES: values})


def _decoded(encoding: str, shape: tuple[int, ...], k: int, module: nn.Module,
             name: str) -> torch.Tensor:
    data = getattr(module, name + BITS)
    weight, _ = get_encoding(encoding).decode(data.cpu().numpy().tobytes(), shape, k)
    return weight.to(data.device)


def pack_encoded_(module: nn.Module, name: str, encoding: str, data: bytes,
                  shape: tuple[int, ...], k: int) -> None:
    """Make ``module.<name>`` a trained weight decoded from its file bytes ``data`` (encoding
    ``encoding`` of :mod:`pemn.artifact.weights`) at every read."""
    bits = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(
        0, dtype=torch.uint8)  # frombuffer refuses an empty buffer (a layer keeping nothing)
    bits = bits.to(getattr(module, name).device)
    compute_(module, name, functools.partial(_decoded, encoding, tuple(shape), k), {BITS: bits})
