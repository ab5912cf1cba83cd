"""PRANC: a model stored as a seed plus ``k`` coefficients over ``k`` random basis networks.

Nooralinejad et al., "PRANC: Pseudo RAndom Networks for Compacting deep models", ICCV 2023
(arXiv 2206.08464; official code UCDvision/PRANC). Every compressed weight is ``w_l = B_l @
alpha``: ``B_l`` is layer ``l``'s slice of the seeded basis (never stored) and ``alpha`` ONE
trained vector shared by every compressed layer. docs/METHOD.md, section 6, says how the basis
is drawn, held or regenerated, and stored; :func:`_rebuild` is the loaders' rebuild hook.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from pemn import rng
from pemn.artifact.format import ArtifactError
from pemn.artifact.header import MAX_JSON_NUMBER
from pemn.artifact.forms import register_rebuild
from pemn.artifact.weights import Encoding, TrainedWeights, register_encoding
from pemn.competitors import compressed_targets, trained_spec
from pemn.fill import register_strategy
from pemn.masking import GAIN, LATENT, compute_
from pemn.transform import register_handler

__all__ = ["PRANC", "MAX_BASIS_VALUES"]

_STREAM = 0x5052414E43 << 20  # "PRANC"; stream of compressed layer l: _STREAM + l
_CHUNK_VALUES = 2**20  # basis values per chunk (4 MiB of float32, 8 MiB of words)
# The loader's budget for a file's basis (k * P values; max_elements bounds allocations): ~40
# ns a value, once at load or per forward when chunked (~11 s); the 16 kB fmnist file's 156 M fit
MAX_BASIS_VALUES = 2**28


@register_strategy("pranc")
@dataclass(frozen=True)
class PRANC(TrainedWeights):
    """``k`` trained coefficients, shared by every compressed layer, over ``k`` seeded random
    basis networks. ``basis_mib``: hold the basis while it takes at most this many MiB (1 GiB),
    else regenerate it in chunks in every forward and backward."""

    k: int = 4000
    basis_mib: int = dataclasses.field(default=1024, kw_only=True)
    title: ClassVar[str] = "PRANC"
    stores_mask: ClassVar[bool] = False
    encoding: ClassVar[str] = "pranc"

    def __post_init__(self):
        for field, low in (("k", 1), ("basis_mib", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"pranc {field} must be an integer >= {low}, got {value!r}")
            if value > MAX_JSON_NUMBER:  # refused now, not by pack after the training
                raise ValueError(f"pranc {field} must be at most {MAX_JSON_NUMBER:,} (the artifact "
                                 f"header's bound on a strategy's numbers), got {value:,}")
        super().__post_init__()

    def label(self) -> str:
        return f"PRANC k={self.k}" + (" (dense ends)" if self.dense_ends else "")

    def family_label(self) -> str:
        return "PRANC" + (" (dense ends)" if self.dense_ends else "")

    def tag(self) -> str:
        return f"pranc{self.k}{self._ends_tag(False)}"

    def num_stored(self, specs, keep_ratio: float = 0.0) -> int:
        return self.k


def _no_decode(data: bytes, shape, k):
    raise ArtifactError("pranc: a weight is rebuilt from the seed and alpha, never decoded")


# The per-layer entry holds no bytes: it records the compressed layer's name and shape.
register_encoding(Encoding("pranc", lambda latent, mask: b"", _no_decode))


@dataclass(eq=False)
class _Basis:
    """Layer ``stream``'s ``k`` basis networks of ``numel`` values: held in chunks, or drawn."""

    seed: int
    stream: int
    numel: int
    bound: float
    k: int
    held: list[torch.Tensor] | None = None

    def bounds(self) -> list[tuple[int, int]]:
        rows = max(1, _CHUNK_VALUES // self.numel)
        return [(j, min(j + rows, self.k)) for j in range(0, self.k, rows)]

    def draw(self, j0: int, j1: int, device) -> torch.Tensor:
        """Basis networks ``j0 .. j1-1``, ``(j1 - j0, numel)`` float32; the words in slices of
        ``_CHUNK_VALUES`` (a network larger than a chunk: its temporaries stay bounded)."""
        start, n = j0 * self.numel, (j1 - j0) * self.numel
        values = np.empty(n, dtype=np.float32)
        for i in range(0, n, _CHUNK_VALUES):
            words = rng.uniform_words(self.seed, _STREAM + self.stream, start + i,
                                      min(_CHUNK_VALUES, n - i))
            u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-52 - 1.0  # (-1, 1)
            values[i:i + len(words)] = u * self.bound  # float64 -> float32, rounded once
        return torch.from_numpy(values.reshape(j1 - j0, self.numel)).to(device)

    def chunks(self, device):
        if self.held is not None and self.held[0].device != device:
            self.held = [c.to(device) for c in self.held]
        for i, (j0, j1) in enumerate(self.bounds()):
            yield j0, j1, self.held[i] if self.held is not None else self.draw(j0, j1, device)


class _Combine(torch.autograd.Function):
    """``w = sum over chunks alpha[j0:j1] @ B[j0:j1]``; ``grad_alpha = B grad_w`` per chunk."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, basis: _Basis) -> torch.Tensor:
        ctx.basis = basis
        w = alpha.new_zeros(basis.numel)
        for j0, j1, chunk in basis.chunks(alpha.device):
            w += alpha[j0:j1] @ chunk
        return w

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        return torch.cat([chunk @ grad for _, _, chunk in ctx.basis.chunks(grad.device)]), None


def _weight(basis: _Basis, shape, module: nn.Module, name: str) -> torch.Tensor:
    """In float32 (alpha and the basis), rounded once to the skeleton's dtype (half models);
    autocast would run the sum over k basis networks in bf16, so it is off here."""
    alpha = getattr(module, name + GAIN)
    with torch.autocast(alpha.device.type, enabled=False):
        w = _Combine.apply(alpha.float(), basis).view(shape)
    return w.to(getattr(module, name + LATENT).dtype)


@register_handler(PRANC, uses=("seed",))
def _pranc(model: nn.Module, strategy: PRANC, targets, seed: int):
    """Each chosen weight becomes ``B_l @ alpha``, ``alpha`` one Parameter for all of them."""
    chosen = compressed_targets(targets, strategy.dense_ends)
    weights = [getattr(t.module, t.name) for t in chosen]
    for t, w in zip(chosen, weights):
        if not w.numel():
            raise ValueError(f"{t.qualified} has no weights; PRANC cannot compress it")
    device = weights[0].device
    alpha = nn.Parameter(torch.zeros(strategy.k, device=device, dtype=torch.float32))
    with torch.no_grad():
        alpha[0] = 1.0  # start from basis network 0, as the official code
    hold = 4 * strategy.k * sum(w.numel() for w in weights) <= strategy.basis_mib * 2**20
    for i, (t, w) in enumerate(zip(chosen, weights)):
        basis = _Basis(seed, i, w.numel(), 1.0 / math.sqrt(t.spec().effective_fan_in),
                       strategy.k)
        if hold:
            basis.held = [basis.draw(j0, j1, device) for j0, j1 in basis.bounds()]
        # no bytes (see pack); its dtype is the weight's, which model.half() also converts
        placeholder = torch.zeros((), device=device, dtype=w.dtype).expand(w.shape)
        compute_(t.module, t.name, functools.partial(_weight, basis, tuple(w.shape)),
                 {GAIN: alpha}, {LATENT: placeholder})
    return trained_spec(strategy, chosen, seed)


@register_rebuild(PRANC)
def _rebuild(p, form: str) -> PRANC:
    """Check the file (layout, :data:`MAX_BASIS_VALUES`); the PRANC to apply (packed: no basis)."""
    header, strategy, layers = p.header, p.strategy, p.header.encoded
    if any(e.encoding != "pranc" or e.length for e in layers):
        raise ArtifactError("a PRANC file stores an empty pranc entry per compressed layer")
    work = strategy.k * sum(e.numel for e in layers)
    if work > MAX_BASIS_VALUES:
        raise ArtifactError(f"PRANC k={strategy.k:,} over {work // strategy.k:,} weights "
                            f"regenerates {work:,} basis values, more than pemn.pranc."
                            f"MAX_BASIS_VALUES={MAX_BASIS_VALUES:,}; raise it to load this file")
    name = layers[0].name + GAIN
    alpha = p.tensors.get(name)
    if alpha is None or tuple(alpha.shape) != (strategy.k,) or not alpha.is_floating_point() \
            or not bool(torch.isfinite(alpha.float()).all()):  # a float64 1e300: inf in float32
        got = "none" if alpha is None else f"{list(alpha.shape)} {alpha.dtype}"
        raise ArtifactError(f"PRANC k={strategy.k} needs alpha {name} of {strategy.k} float32 "
                            f"numbers; the file holds {got}")
    if {a: t for a, t in header.ties if t == name} != {e.name + GAIN: name for e in layers[1:]}:
        raise ArtifactError("PRANC's compressed layers must all share the one alpha")
    # the dense form computes each weight once: chunks cost no more time and no held basis
    held = min(strategy.basis_mib, PRANC.basis_mib) if form == "train" else 0
    return replace(strategy, basis_mib=held)
