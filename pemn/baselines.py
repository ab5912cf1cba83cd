"""The paper's pruning baselines: prune once at initialisation, then train the kept weights.

Both are strategies (:mod:`pemn.fill`) given by the paper's compression ratio, as in its
Fig. 4/5 (arXiv 2210.06699, section 4.3):

* ``RandomPrune(cr)`` ("Random"): keep a random fraction of each layer's weights;
* ``MagnitudePrune(cr)`` ("Minimum"): keep each layer's largest-|w| fraction of weights.

Layer-wise at the same kept count as PEMN's masks (``num_kept``), on the same layers that
``apply_`` would mask; the mask is fixed and the surviving weights are trained as in Dense.
Storage is counted as a 1-bit mask plus the fp32 kept values, so the paper's
``CR = 1 - (P + 32 U) / (32 P)`` with ``U = keep P`` gives ``keep = 31/32 - CR``
(:meth:`PruneBaseline.kept_fraction`); ``pemn size`` also reports CSR.

Adding a baseline is one dataclass (a registered ``PruneBaseline`` with a ``title``) and one
mask function (decorated with ``_mask_of``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from pemn.fill import Strategy, TensorSpec, register_strategy
from pemn.masking import num_kept, topk_mask
from pemn.transform import PemnSpec, maskable_tensors

__all__ = ["prune_", "PruneBaseline", "RandomPrune", "MagnitudePrune"]

_MAX_CR = 31 / 32  # a 1-bit mask alone costs 1/32 of fp32 weights


@dataclass(frozen=True)
class PruneBaseline(Strategy):
    """A pruning baseline at the paper's compression ratio ``cr`` (a fraction, e.g. 0.9).

    Raises:
        ValueError: ``cr`` out of reach of a 1-bit mask + fp32 values (not in [0, 31/32)).
    """

    cr: float = 0.9

    def __post_init__(self):
        if isinstance(self.cr, bool) or not isinstance(self.cr, (int, float)) \
                or not 0 <= self.cr < _MAX_CR:
            raise ValueError(f"{self.name} cr is the paper's compression ratio, in [0, 31/32) "
                             f"for a 1-bit mask + fp32 kept values; got {self.cr!r}")

    def label(self) -> str:
        return f"{self.title} @ CR {100 * self.cr:.3g} %"

    def tag(self) -> str:
        return f"{self.name}-cr{self.cr:g}"

    def kept_fraction(self, keep_ratio: float = 0.0) -> float:
        """``31/32 - cr``: the CR fixes the kept fraction (the config's keep_ratio is unused)."""
        return round(_MAX_CR - self.cr, 10)  # 0.06875, not 0.06874999...

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float = 0.0) -> int:
        keep = self.kept_fraction()
        return sum(num_kept(s.numel, keep) for s in specs)  # the trained kept values


@register_strategy("random_prune")
@dataclass(frozen=True)
class RandomPrune(PruneBaseline):
    """Random pruning: each layer keeps a random subset of its weights."""

    title: ClassVar[str] = "Random"


@register_strategy("magnitude_prune")
@dataclass(frozen=True)
class MagnitudePrune(PruneBaseline):
    """Magnitude pruning (the paper's "Minimum"): each layer keeps its largest |w|."""

    title: ClassVar[str] = "Minimum"


_MASKS: dict[type, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {}


def _mask_of(cls: type[PruneBaseline]):
    """Function decorator: ``fn(weight, keep, generator) -> {0, 1} mask`` prunes for ``cls``."""
    def register(fn):
        _MASKS[cls] = fn
        return fn
    return register


@_mask_of(RandomPrune)
def _random_mask(weight: torch.Tensor, keep: float, gen: torch.Generator) -> torch.Tensor:
    # The permutation is drawn on the CPU, so a seed gives the same mask on every device.
    n = weight.numel()
    idx = torch.randperm(n, generator=gen)[: num_kept(n, keep)].to(weight.device)
    mask = torch.zeros(n, dtype=weight.dtype, device=weight.device)
    return mask.index_fill_(0, idx, 1).view_as(weight)


@_mask_of(MagnitudePrune)
def _magnitude_mask(weight: torch.Tensor, keep: float, gen: torch.Generator) -> torch.Tensor:
    return topk_mask(weight, keep)


def prune_(model: nn.Module, strategy: PruneBaseline, keep_ratio: float = 0.0,
           seed: int = 0) -> nn.Module:
    """Prune ``model`` in place with a baseline and record a spec for ``pemn.stats``.

    Args:
        model: any model; its maskable layers (as ``pemn.apply_`` selects them) are pruned.
        strategy: ``RandomPrune(cr)`` or ``MagnitudePrune(cr)``.
        keep_ratio: unused (the strategy's CR fixes the kept fraction); there so every
            strategy builds with the same arguments.
        seed: seeds the random masks.

    Raises:
        TypeError: ``strategy`` is not a pruning baseline.
    """
    if type(strategy) not in _MASKS:
        raise TypeError(f"{strategy!r} is not a pruning baseline; baselines: "
                        f"{[t.__name__ for t in _MASKS]}")
    keep = strategy.kept_fraction(keep_ratio)
    gen = torch.Generator().manual_seed(seed)
    specs = []
    for fqn, module, tensor in list(maskable_tensors(model)):
        weight = getattr(module, tensor)
        mask = _MASKS[type(strategy)](weight.detach(), keep, gen)
        prune.custom_from_mask(module, tensor, mask)
        specs.append(TensorSpec(f"{fqn}.{tensor}" if fqn else tensor, tuple(weight.shape)))
    model.pemn_spec = PemnSpec(strategy, keep, seed, specs, None)
    return model
