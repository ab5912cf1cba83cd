"""The three in-memory forms a loaded artifact can take (``pemn.load(..., form=...)``).

=========  ==========================================================  ======================
form       what the model holds                                        use it to
=========  ==========================================================  ======================
train      frozen values + fp32 scores (PEMN layers, as after apply_)  fine-tune, keep training
dense      plain layers, the masked weights baked in                   deploy; export
packed     bit-packed masks + the prototype; each layer rebuilds its   deploy where memory is
           weight from them in every forward, nothing cached           scarcer than compute
=========  ==========================================================  ======================

Every form gives the same eval logits: ``dense`` and ``packed`` hold the very same float32
weights as ``train`` (``fixed * mask`` is exact), so their logits are bit-identical on one
device. ``packed`` holds ``P/8`` bytes of masks plus the prototype: tiny for RP and MP, but
``Mask`` and ``OneLayer`` prototypes are as large as the layers they serve.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch import nn

from pemn.artifact.bitpack import pack_bits

__all__ = ["PackedWeight", "unpack_bits_torch", "pack_bits_torch", "pack_module_", "share_packed_"]


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


class PackedWeight(nn.Module):
    """A parametrization: ``values[:numel] * unpack(bits)``, rebuilt in every forward.

    ``values`` is a prototype vector shared (same storage) by every layer it serves; a
    copy-order RP vector is kept short and tiled per forward. The packed bits are the
    parametrization's only stored tensor (``parametrizations.<name>.original0``).
    """

    def __init__(self, values: torch.Tensor, bits: torch.Tensor, shape: tuple[int, ...],
                 scale: float = 1.0, gain: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("values", values, persistent=False)
        self.register_buffer("gain", gain, persistent=False)  # the learned gain, if any
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.scale = scale  # the layer's factor on its prototype slice (MP/RP scale="layer")
        self._bits = bits

    def right_inverse(self, weight: torch.Tensor):
        # Registration passes the skeleton's dense weight; what is stored is the packed mask.
        bits, self._bits = self._bits, None
        return (bits,)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        values, n = self.values, self.numel
        weight = unpack_bits_torch(bits, n, values.dtype)  # a fresh tensor: multiply in place
        period = min(values.numel(), n)  # copy-order RP repeats a short vector
        whole = n - n % period
        weight[:whole].view(-1, period).mul_(values[:period])  # broadcast, no tiled copy
        weight[whole:].mul_(values[: n - whole])
        if self.scale != 1.0:
            weight.mul_(self.scale)
        weight = weight.view(self.shape)
        return weight if self.gain is None else weight.mul_(self.gain)


def pack_module_(module: nn.Module, name: str, values: torch.Tensor, mask: torch.Tensor,
                 scale: float = 1.0, gain: torch.Tensor | None = None) -> None:
    """Replace ``module.<name>`` by a :class:`PackedWeight` over ``values`` and ``mask``."""
    getattr(module, name).requires_grad_(False)
    weight = PackedWeight(values, pack_bits_torch(mask), tuple(mask.shape), scale, gain)
    parametrize.register_parametrization(module, name, weight, unsafe=True)


def share_packed_(module: nn.Module, name: str, owner: nn.Module, owner_name: str) -> None:
    """Make tied ``module.<name>`` read the packed tensor of ``owner.<owner_name>``."""
    source = owner.parametrizations[owner_name]
    getattr(module, name).requires_grad_(False)
    weight = PackedWeight(source[0].values, source.original0, source[0].shape, source[0].scale,
                          source[0].gain)
    parametrize.register_parametrization(module, name, weight, unsafe=True)
    module.parametrizations[name].original0 = source.original0  # one Parameter, as tied
