"""The paper's pruning baselines (PEMN.md §10): prune once at initialisation, train the rest.

* ``random_prune``: keep a random ``keep_ratio`` of each layer's weights;
* ``magnitude_prune`` ("Minimum"): keep each layer's largest-|w| ``keep_ratio`` of weights.

Layer-wise at the same kept count as PEMN's masks (``num_kept``), on the same layers that
``apply_`` would mask; the mask is fixed and the surviving weights are trained as in Dense.
Storage is counted as a 1-bit mask plus fp32 kept values, so the paper's CR becomes
``31/32 - keep_ratio`` (PEMN.md §5.5, first row); ``pemn size`` also reports CSR.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from pemn.fill import TensorSpec
from pemn.masking import num_kept, topk_mask
from pemn.transform import PemnSpec, maskable_tensors

__all__ = ["prune_", "RandomPrune", "MagnitudePrune", "BASELINES", "keep_ratio_for_cr"]


@dataclass(frozen=True)
class RandomPrune:
    is_baseline = True


@dataclass(frozen=True)
class MagnitudePrune:
    is_baseline = True


BASELINES = {"random_prune": RandomPrune, "magnitude_prune": MagnitudePrune}


def keep_ratio_for_cr(compression_ratio: float) -> float:
    """The kept fraction whose 1-bit mask + fp32 kept values reach the paper's CR."""
    keep = 31 / 32 - compression_ratio
    if not 0 < keep <= 1:
        raise ValueError(f"a CR of {compression_ratio} is out of reach for 1-bit mask + fp32 "
                         f"values (it must be below 31/32 = 0.96875)")
    return keep


def _mask(weight: torch.Tensor, strategy, keep_ratio: float, gen: torch.Generator):
    if isinstance(strategy, MagnitudePrune):
        return topk_mask(weight, keep_ratio)
    n = weight.numel()
    idx = torch.randperm(n, generator=gen)[: num_kept(n, keep_ratio)]
    return torch.zeros(n).index_fill_(0, idx, 1).view_as(weight)


def prune_(model: nn.Module, name: str, keep_ratio: float, seed: int = 0) -> nn.Module:
    """Prune ``model`` in place with baseline ``name`` and record a spec for ``pemn.stats``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    strategy = BASELINES[name]()
    gen = torch.Generator().manual_seed(seed)
    specs = []
    for fqn, module, tensor in list(maskable_tensors(model)):
        weight = getattr(module, tensor)
        prune.custom_from_mask(module, tensor, _mask(weight.detach(), strategy, keep_ratio, gen))
        specs.append(TensorSpec(f"{fqn}.{tensor}" if fqn else tensor, tuple(weight.shape)))
    model.pemn_spec = PemnSpec(strategy, keep_ratio, seed, specs, None)
    return model
