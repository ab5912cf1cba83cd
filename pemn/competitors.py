"""What a user would pick instead of PEMN at a few bits per weight: trained weights, stored small.

Each family is a :class:`TrainedWeights` dataclass plus a weight function that computes
``<name>`` from the latent ``<name>_orig`` (and a sparse layer's ``<name>_mask``) at every read;
docs/METHOD.md, section 6, says what each family trains and stores.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import torch
from torch import nn

from pemn.artifact.weights import TrainedWeights, binarize, debinarize, dequantize, quantize
from pemn.fill import TensorSpec, register_preset, register_strategy
from pemn.masking import LATENT, MASK, compute_, num_kept, topk_mask
from pemn.transform import PemnSpec, register_handler

__all__ = ["TrainedWeights", "Sparse", "Quantized", "Binary", "RandomPrune", "MagnitudePrune",
           "register_weight", "straight_through", "erk_counts", "compressed_targets",
           "trained_spec", "ALLOCATIONS"]

ALLOCATIONS = {"erk": "ERK", "uniform": "uniform", "magnitude": "|w|",
               "global_magnitude": "global |w|"}  # name -> title


@register_strategy("quantized")
@dataclass(frozen=True)
class Quantized(TrainedWeights):
    """Quantization-aware training: weights fake-quantized per output channel to 8 or 4 bits,
    symmetric, the gradient straight through the rounding."""

    bits: int = 8
    title: ClassVar[str] = "Quantized"
    stores_mask: ClassVar[bool] = False

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in (8, 4):
            raise ValueError(f"quantized bits must be 8 or 4 (int8 or int4 codes), got "
                             f"{self.bits!r}")
        super().__post_init__()

    @property
    def encoding(self) -> str:
        return f"int{self.bits}"

    def label(self) -> str:
        return f"Int{self.bits} QAT" + (" (dense ends)" if self.dense_ends else "")

    def tag(self) -> str:
        return f"quantized{self.bits}{self._ends_tag(False)}"


@register_strategy("binary")
@dataclass(frozen=True)
class Binary(TrainedWeights):
    """Binary weights ``sign(w) * alpha``, ``alpha = mean |w|`` per output channel (BWN); the
    gradient passes to the latent weight where ``|w| <= 1``."""

    title: ClassVar[str] = "Binary"
    stores_mask: ClassVar[bool] = False
    encoding: ClassVar[str] = "sign"

    def label(self) -> str:
        return "Binary (BWN)" + (" (dense ends)" if self.dense_ends else "")

    def tag(self) -> str:
        return f"binary{self._ends_tag(False)}"


@register_strategy("sparse")
@dataclass(frozen=True)
class Sparse(TrainedWeights):
    """Sparse training from scratch with a mask fixed at initialisation, keeping ``density``
    (in (0, 1]) of the sparse layers' weights; ``allocation``: docs/METHOD.md, section 6."""

    density: float = 0.1
    allocation: Literal["erk", "uniform", "magnitude", "global_magnitude"] = "erk"
    dense_ends: bool = dataclasses.field(default=True, kw_only=True)
    title: ClassVar[str] = "Sparse"
    encoding: ClassVar[str] = "sparse"

    def __post_init__(self):
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) \
                or not 0 < self.density <= 1:
            raise ValueError(f"sparse density is the kept fraction, in (0, 1] (e.g. 0.1); got "
                             f"{self.density!r}")
        if not isinstance(self.allocation, str) or self.allocation not in ALLOCATIONS:
            raise ValueError(f"sparse allocation must be one of {list(ALLOCATIONS)}, got "
                             f"{self.allocation!r}")
        super().__post_init__()

    def label(self) -> str:
        ends = "" if self.dense_ends else " (sparse ends)"
        return f"Sparse {ALLOCATIONS[self.allocation]} @ {100 * self.density:g} %{ends}"

    def tag(self) -> str:
        return f"sparse-{self.allocation}{self.density:g}{self._ends_tag(True)}"

    def keep_ratio(self, requested: float = 0.0) -> float:
        return float(self.density)

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float = 0.0) -> int:
        """The kept values of the sparse layers (the mask decides the rest)."""
        if self.allocation == "erk":
            return sum(erk_counts([s.shape for s in specs], self.density))
        if self.allocation == "global_magnitude":
            return num_kept(sum(s.numel for s in specs), self.density)
        return sum(num_kept(s.numel, self.density) for s in specs)


def erk_counts(shapes: Sequence[tuple[int, ...]], density: float) -> list[int]:
    """Kept weights per layer under Erdos-Renyi-Kernel, summing to ``num_kept(total, density)``:
    a layer's density is ``eps * sum(shape) / prod(shape)``; while that asks more than all of a
    layer, the largest-ratio layer is made dense and ``eps`` recomputed (as RigL). Fractions
    are rounded by largest remainder (ties to the earlier layer), so the sum is exact."""
    numels = [math.prod(s) for s in shapes]
    target = num_kept(sum(numels), density)
    raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, numels)]
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense and numels[i]]
        budget = target - sum(numels[i] for i in dense)
        eps = budget / sum(raw[i] * numels[i] for i in free) if free else 0.0
        top = max((raw[i] for i in free), default=0.0)
        if eps * top <= 1:
            break
        dense |= {i for i in free if raw[i] == top}
    ideal = [numels[i] if i in dense else eps * raw[i] * numels[i] for i in range(len(shapes))]
    counts = [min(int(x), n) for x, n in zip(ideal, numels)]
    order = sorted((i for i in range(len(shapes)) if counts[i] < numels[i]),
                   key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order[: target - sum(counts)]:
        counts[i] += 1
    return counts


def _sparse_masks(strategy: Sparse, weights: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    if strategy.allocation == "magnitude":  # ties: the earlier position
        return [topk_mask(w.detach(), strategy.density) for w in weights]
    if strategy.allocation == "global_magnitude":  # one top-k over every layer, on the CPU
        keep = topk_mask(torch.cat([w.detach().reshape(-1).cpu() for w in weights]),
                         strategy.density)
        return [m.view_as(w).to(w.device)
                for m, w in zip(keep.split([w.numel() for w in weights]), weights)]
    gen = torch.Generator().manual_seed(seed)
    if strategy.allocation == "erk":
        counts = erk_counts([tuple(w.shape) for w in weights], strategy.density)
    else:
        counts = [num_kept(w.numel(), strategy.density) for w in weights]
    masks = []
    for w, k in zip(weights, counts):  # drawn on the CPU: a seed gives one mask on every device
        mask = torch.zeros(w.numel(), dtype=w.dtype)
        mask[torch.randperm(w.numel(), generator=gen)[:k]] = 1
        masks.append(mask.view_as(w).to(w.device))
    return masks


class _StraightThrough(torch.autograd.Function):
    """``fn(w)`` forward; the gradient passes to ``w`` unchanged (where ``|w| <= clip``)."""

    @staticmethod
    def forward(ctx, w, fn, clip):
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(w)
        return fn(w)

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip is not None:
            (w,) = ctx.saved_tensors
            grad = grad * (w.abs() <= ctx.clip)
        return grad, None, None


def straight_through(w: torch.Tensor, fn: Callable, clip: float | None = None) -> torch.Tensor:
    """``fn(w)`` in the forward pass; the gradient passes to ``w`` as if ``fn`` were the
    identity (only where ``|w| <= clip`` with a ``clip``)."""
    return _StraightThrough.apply(w, fn, clip)


def register_weight(cls: type[TrainedWeights]):
    """Function decorator: ``fn(strategy, latent) -> weight`` is what every forward of a ``cls``
    layer computes from its latent weight ``<name>_orig``; it files ``cls``'s ``apply_``
    handler (:func:`pemn.transform.register_handler`)."""
    def register(fn):
        register_handler(cls)(functools.partial(_trained, fn))
        return fn
    return register


def _sparse_weight(module: nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name + LATENT) * getattr(module, name + MASK)


def compressed_targets(targets, dense_ends: bool):
    """The targets, the ends left out when ``dense_ends``; refuses tied weights."""
    for t in targets:
        if t.aliases:
            raise ValueError(f"{t.qualified} is tied to another layer; the trained-weight "
                             "strategies train untied weights only")
    chosen = targets[1:-1] if dense_ends else targets
    if not chosen:  # dense_ends named only where it is the reason
        ends = " and dense_ends keeps the first and last dense" if dense_ends else ""
        raise ValueError(f"no layer left to compress: the model has {len(targets)} maskable "
                         f"layer(s){ends}")
    return chosen


def trained_spec(strategy: TrainedWeights, chosen, seed: int) -> PemnSpec:
    """The ``PemnSpec`` of a trained-weight handler: ``chosen`` at their latent weights' shapes."""
    return PemnSpec(strategy, strategy.keep_ratio(), seed,
                    [TensorSpec(t.qualified, tuple(getattr(t.module, t.name + LATENT).shape))
                     for t in chosen], None)


def _trained(fn, model: nn.Module, strategy: TrainedWeights, targets) -> PemnSpec:
    """Each chosen weight becomes its latent ``<name>_orig``, read through ``fn``."""
    chosen = compressed_targets(targets, strategy.dense_ends)
    for t in chosen:
        compute_(t.module, t.name, functools.partial(_latent_weight, fn, strategy),
                 {LATENT: getattr(t.module, t.name)})
    return trained_spec(strategy, chosen, 0)


def _latent_weight(fn, strategy, module: nn.Module, name: str) -> torch.Tensor:
    return fn(strategy, getattr(module, name + LATENT))


@register_handler(TrainedWeights)
def _no_weight(model: nn.Module, strategy: TrainedWeights, targets) -> PemnSpec:
    raise TypeError(f"{type(strategy).__name__} has no weight function; decorate one with "
                    "pemn.competitors.register_weight")


@register_weight(Quantized)
def _fake_quantize(strategy: Quantized, w: torch.Tensor) -> torch.Tensor:
    return straight_through(w, lambda v: dequantize(*quantize(v, strategy.bits)))


@register_weight(Binary)
def _binary(strategy: Binary, w: torch.Tensor) -> torch.Tensor:
    return straight_through(w, lambda v: debinarize(*binarize(v)), 1.0)


@register_handler(Sparse, uses=("seed",))
def _sparse(model: nn.Module, strategy: Sparse, targets, seed: int) -> PemnSpec:
    """Each chosen weight keeps its latent values under a mask fixed now."""
    chosen = compressed_targets(targets, strategy.dense_ends)
    weights = [getattr(t.module, t.name) for t in chosen]
    for t, w, mask in zip(chosen, weights, _sparse_masks(strategy, weights, seed)):
        compute_(t.module, t.name, _sparse_weight, {LATENT: w, MASK: mask})
    return trained_spec(strategy, chosen, seed)


def RandomPrune(cr: float = 0.9) -> Sparse:
    """The paper's "Random" pruning baseline at its compression ratio ``cr``: every layer
    keeps a random ``31/32 - cr`` of its weights (a 1-bit mask + fp32 kept values at CR)."""
    return Sparse(_cr_density(cr), "uniform", dense_ends=False)


def MagnitudePrune(cr: float = 0.9) -> Sparse:
    """The paper's "Minimum" pruning baseline: every layer keeps its largest ``|w|``."""
    return Sparse(_cr_density(cr), "magnitude", dense_ends=False)


def _cr_density(cr: float) -> float:
    if isinstance(cr, bool) or not isinstance(cr, (int, float)) or not 0 <= cr < 31 / 32:
        raise ValueError(f"cr is the paper's compression ratio, in [0, 31/32) for a 1-bit mask "
                         f"+ fp32 kept values; got {cr!r}")
    return round(31 / 32 - cr, 10)  # 0.06875, not 0.06874999...


register_preset("random_prune", RandomPrune)
register_preset("magnitude_prune", MagnitudePrune)
