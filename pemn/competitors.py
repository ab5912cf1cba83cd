"""What a user would pick instead of PEMN at a few bits per weight: trained weights, stored small.

Three strategies, each one dataclass plus one registered function, built by :func:`compete_`
(the ``pemn train`` / ``pemn sweep`` builder for them):

* ``Sparse(density, allocation)``: sparse training from scratch with a fixed mask drawn at
  initialisation. ``allocation="erk"`` spreads the kept weights as Erdos-Renyi-Kernel (Evci et
  al. 2020, RigL): a layer's density is proportional to ``sum(shape) / prod(shape)``, scaled so
  the kept count over the sparse layers is ``density`` of their weights; a layer that would
  exceed density 1 is made dense and the others rescaled. ``"uniform"`` keeps ``density`` of
  every layer; ``"global_magnitude"`` keeps the largest ``|w|`` at init over all sparse layers.
  The kept positions of ERK and uniform are random (seeded).
* ``Quantized(bits)``: quantization-aware training, every weight fake-quantized per output
  channel, symmetric, to 8 or 4 bits (``pemn.artifact.weights.quantize``), gradient straight
  through the rounding.
* ``Binary()``: binary-weight network (BWN/XNOR-Net, Rastegari et al. 2016): ``sign(w) *
  alpha`` with ``alpha = mean |w|`` per output channel; the gradient passes straight through to
  the latent weight where ``|w| <= 1`` (BinaryConnect's clipping), alpha counts as a constant.

``dense_ends`` (the first and last maskable layer, i.e. the stem and the head, stay ordinary
dense weights, stored like every other tensor) is True by default for ``Sparse`` and False for
the others, whose every maskable weight is quantized or binarized. Layers are the ones
``pemn.apply_`` would mask. Each layer keeps its latent weight as ``<name>_orig`` (and a sparse
one its mask as ``<name>_mask``), the layout of ``torch.nn.utils.prune``; a forward pre-hook
sets ``<name>`` to the effective weight before every forward, in training and in eval, and a
forward hook detaches it afterwards (so the model can be deep-copied between steps). What is
stored and how bytes are counted: docs/METHOD.md, section 6.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import torch
from torch import nn

from pemn.artifact.weights import binarize, debinarize, dequantize, quantize, register_trained
from pemn.fill import Strategy, TensorSpec, register_strategy
from pemn.masking import num_kept
from pemn.transform import PemnSpec, maskable_tensors

__all__ = ["compete_", "TrainedWeights", "Sparse", "Quantized", "Binary", "erk_counts",
           "ALLOCATIONS"]

ALLOCATIONS = ("erk", "uniform", "global_magnitude")
_ALLOCATION_TITLES = {"erk": "ERK", "uniform": "uniform", "global_magnitude": "global |w|"}


def _check_bool(strategy: Strategy, field: str) -> None:
    value = getattr(strategy, field)
    if not isinstance(value, bool):
        raise ValueError(f"{strategy.name} {field} must be true or false, got {value!r}")


@dataclass(frozen=True)
class TrainedWeights(Strategy):
    """Base of the strategies whose layers train their own weights (built by :func:`compete_`).

    ``dense_ends``: the first and last maskable layers (stem and head) stay dense.
    """

    def kept_fraction(self, keep_ratio: float = 0.0) -> float:
        return 1.0  # every weight is stored (in fewer bits); Sparse overrides

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float = 0.0) -> int:
        return sum(s.numel for s in specs)

    def _ends_tag(self, default: bool) -> str:
        return "" if self.dense_ends == default else ("-dense_ends" if self.dense_ends
                                                      else "-sparse_ends")


@register_strategy("quantized")
@dataclass(frozen=True)
class Quantized(TrainedWeights):
    """Quantization-aware training: weights fake-quantized per output channel to ``bits``.

    Raises:
        ValueError: ``bits`` not 8 or 4, ``dense_ends`` not a bool.
    """

    bits: int = 8
    dense_ends: bool = False
    title: ClassVar[str] = "Quantized"
    stores_mask: ClassVar[bool] = False

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in (8, 4):
            raise ValueError(f"quantized bits must be 8 or 4 (int8 or int4 codes), got "
                             f"{self.bits!r}")
        _check_bool(self, "dense_ends")

    def label(self) -> str:
        return f"Int{self.bits} QAT" + (" (dense ends)" if self.dense_ends else "")

    def tag(self) -> str:
        return f"quantized{self.bits}{self._ends_tag(False)}"


@register_strategy("binary")
@dataclass(frozen=True)
class Binary(TrainedWeights):
    """Binary weights ``sign(w) * alpha`` per output channel (BWN), latent fp32 weights trained.

    Raises:
        ValueError: ``dense_ends`` not a bool.
    """

    dense_ends: bool = False
    title: ClassVar[str] = "Binary"
    stores_mask: ClassVar[bool] = False

    def __post_init__(self):
        _check_bool(self, "dense_ends")

    def label(self) -> str:
        return "Binary (BWN)" + (" (dense ends)" if self.dense_ends else "")

    def tag(self) -> str:
        return f"binary{self._ends_tag(False)}"


@register_strategy("sparse")
@dataclass(frozen=True)
class Sparse(TrainedWeights):
    """Sparse training from scratch with a mask fixed at initialisation.

    Args:
        density: kept fraction of the sparse layers' weights (the dense ends not counted), in
            (0, 1].
        allocation: ``"erk"``, ``"uniform"`` or ``"global_magnitude"`` (module docstring).
        dense_ends: stem and head stay dense (and are stored in full).

    Raises:
        ValueError: a density outside (0, 1], an unknown allocation, ``dense_ends`` not a bool.
    """

    density: float = 0.1
    allocation: Literal["erk", "uniform", "global_magnitude"] = "erk"
    dense_ends: bool = True
    title: ClassVar[str] = "Sparse"

    def __post_init__(self):
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) \
                or not 0 < self.density <= 1:
            raise ValueError(f"sparse density is the kept fraction, in (0, 1] (e.g. 0.1); got "
                             f"{self.density!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"sparse allocation must be one of {list(ALLOCATIONS)}, got "
                             f"{self.allocation!r}")
        _check_bool(self, "dense_ends")

    def label(self) -> str:
        ends = "" if self.dense_ends else " (sparse ends)"
        return f"Sparse {_ALLOCATION_TITLES[self.allocation]} @ {100 * self.density:g} %{ends}"

    def tag(self) -> str:
        return f"sparse-{self.allocation}{self.density:g}{self._ends_tag(True)}"

    def kept_fraction(self, keep_ratio: float = 0.0) -> float:
        return float(self.density)

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float = 0.0) -> int:
        """The kept values of the sparse layers (the mask decides the rest)."""
        numels = [s.numel for s in specs]
        if self.allocation == "erk":
            return sum(erk_counts([s.shape for s in specs], self.density))
        if self.allocation == "uniform":
            return sum(num_kept(n, self.density) for n in numels)
        return num_kept(sum(numels), self.density)


# ------------------------------------------------------------------------------------------
# Allocation of a sparse model's kept weights
# ------------------------------------------------------------------------------------------

def erk_counts(shapes: Sequence[tuple[int, ...]], density: float) -> list[int]:
    """Kept weights per layer under Erdos-Renyi-Kernel, summing to ``num_kept(total, density)``.

    A layer's density is ``eps * sum(shape) / prod(shape)``; ``eps`` makes the kept counts add
    up to the target. While that asks more than all of some layer, the layer with the largest
    ratio is made dense and ``eps`` recomputed over the rest (as RigL does). Fractional counts
    are rounded by largest remainder (ties to the earlier layer), so the sum is exact.
    """
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


def _random_mask(weight: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    # drawn on the CPU, so a seed gives the same mask on every device
    n = weight.numel()
    mask = torch.zeros(n, dtype=weight.dtype)
    mask[torch.randperm(n, generator=gen)[:k]] = 1
    return mask.view_as(weight).to(weight.device)


def _sparse_masks(strategy: Sparse, weights: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if strategy.allocation == "global_magnitude":
        flat = torch.cat([w.detach().abs().reshape(-1).cpu() for w in weights])
        keep = torch.zeros(flat.numel(), dtype=weights[0].dtype)
        order = torch.argsort(flat, descending=True, stable=True)  # ties: the earlier position
        keep[order[: num_kept(flat.numel(), strategy.density)]] = 1
        return [m.view_as(w).to(w.device)
                for m, w in zip(keep.split([w.numel() for w in weights]), weights)]
    if strategy.allocation == "erk":
        counts = erk_counts([tuple(w.shape) for w in weights], strategy.density)
    else:
        counts = [num_kept(w.numel(), strategy.density) for w in weights]
    return [_random_mask(w.detach(), k, gen) for w, k in zip(weights, counts)]


# ------------------------------------------------------------------------------------------
# Effective weights: a forward pre-hook, as torch.nn.utils.prune does it
# ------------------------------------------------------------------------------------------

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


def _fake_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    return _StraightThrough.apply(w, lambda v: dequantize(*quantize(v, bits)), None)


def _binary(w: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(w, lambda v: debinarize(*binarize(v)), 1.0)


class _Effective:
    """Forward pre-hook: ``module.<name> = fn(<name>_orig)``, or ``<name>_orig * <name>_mask``
    for a sparse layer, before every forward."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor] | None):
        self.name, self.fn = name, fn

    def __call__(self, module: nn.Module, inputs) -> None:
        weight = getattr(module, self.name + "_orig")
        mask = getattr(module, self.name + "_mask", None)
        setattr(module, self.name, self.fn(weight) if mask is None else weight * mask)

    def detach(self, module: nn.Module, inputs, output) -> None:
        # Forward hook: the graph keeps what backward needs; the attribute left on the module
        # is a plain tensor, so the model can be deep-copied between steps.
        setattr(module, self.name, getattr(module, self.name).detach())


def _reparametrize(module: nn.Module, name: str, fn=None, mask: torch.Tensor | None = None):
    weight = module._parameters.pop(name)
    module.register_parameter(name + "_orig", weight)
    if mask is not None:
        module.register_buffer(name + "_mask", mask)
    hook = _Effective(name, fn)
    with torch.no_grad():
        hook(module, ())
    module.register_forward_pre_hook(hook)
    module.register_forward_hook(hook.detach)


_LAYERS: dict[type, Callable] = {}


def _layers_of(cls: type[TrainedWeights]):
    """Function decorator: ``fn(strategy, [(module, name)], seed)`` reparametrizes for ``cls``."""
    def register(fn):
        _LAYERS[cls] = fn
        return fn
    return register


@_layers_of(Quantized)
def _quantized(strategy: Quantized, layers, seed: int) -> None:
    for module, name in layers:
        _reparametrize(module, name, functools.partial(_fake_quantize, bits=strategy.bits))


@_layers_of(Binary)
def _binarized(strategy: Binary, layers, seed: int) -> None:
    for module, name in layers:
        _reparametrize(module, name, _binary)


@_layers_of(Sparse)
def _sparse(strategy: Sparse, layers, seed: int) -> None:
    masks = _sparse_masks(strategy, [getattr(m, n) for m, n in layers], seed)
    for (module, name), mask in zip(layers, masks):
        _reparametrize(module, name, mask=mask)


def _chosen(model: nn.Module, dense_ends: bool) -> list[tuple[str, nn.Module, str]]:
    """The maskable tensors, the ends left out when ``dense_ends``; refuses tied weights."""
    targets = list(maskable_tensors(model))
    holders: dict[int, int] = {}
    for _, module in model.named_modules():
        for p in module._parameters.values():
            holders[id(p)] = holders.get(id(p), 0) + 1
    for fqn, module, name in targets:
        if holders[id(getattr(module, name))] > 1:
            raise ValueError(f"{fqn}.{name} is tied to another layer; the competitor strategies "
                             "train untied weights only")
    chosen = targets[1:-1] if dense_ends else targets
    if not chosen:
        raise ValueError(f"no layer left to compress: the model has {len(targets)} maskable "
                         f"layer(s) and dense_ends keeps the first and last dense")
    return chosen


def compete_(model: nn.Module, strategy: TrainedWeights, keep_ratio: float = 0.0,
             seed: int = 0) -> nn.Module:
    """Reparametrize ``model`` in place for a competitor strategy; record ``model.pemn_spec``.

    Args:
        model: any model; the layers ``pemn.apply_`` would mask are compressed (the first and
            last left dense when ``strategy.dense_ends``).
        strategy: ``Sparse(...)``, ``Quantized(bits)`` or ``Binary()``.
        keep_ratio: unused (the strategy's arguments fix what is kept); there so every
            strategy builds with the same arguments.
        seed: seeds the random sparse masks.

    Returns:
        ``model``; ``model.pemn_spec.tensors`` lists the compressed tensors.

    Raises:
        TypeError: ``strategy`` is not one of these.
        ValueError: already prepared, tied weights, or no layer left to compress.

    Example:
        >>> model = compete_(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2)), Quantized(bits=4))
        >>> sorted(model[0].state_dict())
        ['bias', 'weight_orig']
    """
    if type(strategy) not in _LAYERS:
        raise TypeError(f"{strategy!r} is not a competitor strategy; they are: "
                        f"{[t.__name__ for t in _LAYERS]}")
    if getattr(model, "pemn_spec", None) is not None:
        raise ValueError("a strategy is already applied to this model; start from a fresh one")
    chosen = _chosen(model, strategy.dense_ends)
    specs = [TensorSpec(f"{fqn}.{name}" if fqn else name, tuple(getattr(m, name).shape))
             for fqn, m, name in chosen]
    _LAYERS[type(strategy)](strategy, [(m, name) for _, m, name in chosen], seed)
    model.pemn_spec = PemnSpec(strategy, strategy.kept_fraction(keep_ratio), seed, specs, None)
    return model


register_trained(Quantized, encoding=lambda s: f"int{s.bits}", build=compete_)
register_trained(Binary, encoding=lambda s: "sign", build=compete_)
register_trained(Sparse, encoding=lambda s: "sparse", build=compete_)
