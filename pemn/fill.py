"""Weight fills: how the frozen random weights of the masked layers are built (PEMN.md §3).

A strategy is a small frozen dataclass; ``plan_fill`` turns it, a seed and the list of masked
weight tensors into a :class:`FillPlan`: a few prototype vectors and, for every layer, which
prototype serves it. Every layer then takes the *first* ``numel`` values of its prototype, which
covers all strategies of the paper:

=========  ======================================================  ===========================
strategy   prototypes                                              unique values U
=========  ======================================================  ===========================
Mask       one per layer, its own kaiming-normal values            P (all weights)
OneLayer   one per distinct weight shape (first such layer's)      sum of distinct shapes
MP         the first largest layer's values                        d_max
RP         first ``int(d_max*ratio)+1`` values of MP, tiled        int(d_max*ratio)+1
=========  ======================================================  ===========================

Values come from :mod:`pemn.rng`: layer ``i`` (in module order) owns stream ``i`` and its
kaiming-normal std ``sqrt(2 / fan_in)`` (fan_in mode, relu gain), as in the official code. The
RP permutation uses stream ``2**32`` so it never collides with a layer's stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from pemn import rng

__all__ = [
    "Dense", "Mask", "OneLayer", "MP", "RP", "Strategy", "FillPlan", "TensorSpec",
    "plan_fill", "strategy_from_dict", "strategy_to_dict", "fan_in",
]

_PERMUTATION_STREAM = 2**32


@dataclass(frozen=True)
class Dense:
    """Ordinary training of all weights; nothing is masked (the paper's reference line)."""


@dataclass(frozen=True)
class Mask:
    """Edge-popup: every layer has its own independent random weights."""


@dataclass(frozen=True)
class OneLayer:
    """One prototype tensor per distinct weight shape, shared by all layers of that shape."""


@dataclass(frozen=True)
class MP:
    """Max-layer padding: every layer takes the first values of the largest layer."""


@dataclass(frozen=True)
class RP:
    """Random-vector padding: a vector of ``int(d_max * ratio) + 1`` values tiled over each layer.

    Args:
        ratio: unique values relative to MP, in (0, 1]; 1e-3 is the paper's "RP 1e-3".
        order: ``"copy"`` tiles the vector as is; ``"permuted"`` shuffles the tiled vector
            once with a seeded permutation (the official ``rand`` mode, there unseeded).
    """

    ratio: float = 1e-3
    order: Literal["copy", "permuted"] = "copy"

    def __post_init__(self):
        if not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ValueError(f"RP ratio must be in (0, 1] (e.g. 1e-3), got {self.ratio!r}; "
                             "use MP() for ratio 1")
        if self.order not in ("copy", "permuted"):
            raise ValueError(f"RP order must be 'copy' or 'permuted', got {self.order!r}")


Strategy = Dense | Mask | OneLayer | MP | RP
STRATEGIES: dict[str, type] = {"dense": Dense, "mask": Mask, "one_layer": OneLayer,
                               "mp": MP, "rp": RP}


def strategy_to_dict(strategy: Strategy) -> dict:
    name = next(k for k, v in STRATEGIES.items() if type(strategy) is v)
    return {"name": name, **strategy.__dict__}


def strategy_from_dict(d: dict) -> Strategy:
    """Inverse of :func:`strategy_to_dict`; unknown names list the valid ones."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    try:
        return STRATEGIES[name](**d)
    except TypeError as e:
        raise ValueError(f"bad arguments for strategy {name!r}: {e}") from None


def fan_in(shape: tuple[int, ...]) -> int:
    """Kaiming fan_in of a weight of ``shape``, laid out as torch's layers lay it out.

    ``shape[1] * prod(shape[2:])`` for ``(out, in, *kernel)`` weights, as
    ``torch.nn.init._calculate_fan_in_and_fan_out``; a 1-D tensor scales one input per value,
    so its fan_in is 1. Layers with another layout (GPT-2's ``Conv1D`` stores ``(in, out)``)
    give their own fan_in to :class:`TensorSpec`.
    """
    return shape[1] * math.prod(shape[2:]) if len(shape) > 1 else 1


@dataclass(frozen=True)
class TensorSpec:
    """A masked weight tensor: its qualified name, shape and kaiming fan_in.

    ``fan_in`` 0 means :func:`fan_in` of the shape (torch's (out, in, *kernel) layout).
    """

    name: str
    shape: tuple[int, ...]
    fan_in: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def effective_fan_in(self) -> int:
        return max(self.fan_in or fan_in(self.shape), 1)

    @property
    def std(self) -> float:
        # kaiming_normal(fan_in, relu): sqrt(2 / fan_in), as the official code initialises.
        return math.sqrt(2.0 / self.effective_fan_in)


@dataclass(frozen=True)
class Prototype:
    """How to regenerate one stored vector: the stream, length, std and the tiling recipe."""

    stream: int
    numel: int  # values drawn from the stream
    std: float
    tile_to: int = 0  # > numel: tile the drawn values to this length (RP)
    permute: bool = False

    @property
    def num_unique(self) -> int:
        return self.numel

    def expand(self, drawn: np.ndarray, seed: int) -> np.ndarray:
        """The drawn values -> the full prototype vector (RP tiling and permutation)."""
        values = drawn
        if self.tile_to > self.numel:
            values = np.tile(values, -(-self.tile_to // self.numel))[: self.tile_to]
        if self.permute:
            values = values[rng.permutation(seed, _PERMUTATION_STREAM, len(values))]
        return values

    def drawn(self, full: np.ndarray, seed: int) -> np.ndarray:
        """Inverse of :meth:`expand`: the drawn values of a full prototype vector."""
        if self.permute:
            unpermuted = np.empty_like(full)
            unpermuted[rng.permutation(seed, _PERMUTATION_STREAM, len(full))] = full
            full = unpermuted
        return full[: self.numel]


@dataclass(frozen=True)
class FillPlan:
    """Prototypes plus, for each layer (same order as the specs), the index of its prototype."""

    prototypes: tuple[Prototype, ...]
    sources: tuple[int, ...]

    @property
    def num_unique(self) -> int:
        return sum(p.num_unique for p in self.prototypes)

    def generate(self, seed: int) -> list[np.ndarray]:
        """Regenerate every prototype as a float32 vector (bit-identical on any machine)."""
        return [p.expand(rng.normal(seed, p.stream, p.numel, p.std), seed)
                for p in self.prototypes]


def _plan_mask(strategy: Mask, specs: list[TensorSpec]) -> FillPlan:
    protos = tuple(Prototype(i, s.numel, s.std) for i, s in enumerate(specs))
    return FillPlan(protos, tuple(range(len(specs))))


def _plan_one_layer(strategy: OneLayer, specs: list[TensorSpec]) -> FillPlan:
    first_of_shape: dict[tuple[int, ...], int] = {}
    protos, sources = [], []
    for i, s in enumerate(specs):
        if s.shape not in first_of_shape:
            first_of_shape[s.shape] = len(protos)
            protos.append(Prototype(i, s.numel, s.std))
        sources.append(first_of_shape[s.shape])
    return FillPlan(tuple(protos), tuple(sources))


def _largest(specs: list[TensorSpec]) -> int:
    # The first of several equally large layers wins, as in the official code.
    return max(range(len(specs)), key=lambda i: (specs[i].numel, -i))


def _plan_mp(strategy: MP, specs: list[TensorSpec]) -> FillPlan:
    big = _largest(specs)
    return FillPlan((Prototype(big, specs[big].numel, specs[big].std),), (0,) * len(specs))


def _plan_rp(strategy: RP, specs: list[TensorSpec]) -> FillPlan:
    big = _largest(specs)
    d_max = specs[big].numel
    num_unique = min(int(d_max * strategy.ratio) + 1, d_max)
    proto = Prototype(big, num_unique, specs[big].std, tile_to=d_max,
                      permute=strategy.order == "permuted")
    return FillPlan((proto,), (0,) * len(specs))


_PLANNERS: dict[type, Callable[..., FillPlan]] = {
    Mask: _plan_mask, OneLayer: _plan_one_layer, MP: _plan_mp, RP: _plan_rp,
}


def plan_fill(strategy: Strategy, specs: list[TensorSpec]) -> FillPlan:
    """The prototypes and per-layer sources of ``strategy`` for the masked tensors ``specs``."""
    if type(strategy) not in _PLANNERS:
        raise TypeError(f"{strategy!r} has no weight fill; strategies with one: "
                        f"{[t.__name__ for t in _PLANNERS]}")
    if not specs:
        raise ValueError("no layer to mask: the model has no selected Conv/Linear/attention weight")
    return _PLANNERS[type(strategy)](strategy, specs)
