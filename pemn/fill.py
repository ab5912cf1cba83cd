"""Strategies, and the weight fills: how the frozen random weights of masked layers are built.

Every strategy is a frozen dataclass registered by name (:func:`register_strategy`) and stored
as ``{"name": ..., **fields}``. A weight fill's planner (:func:`plan_fill`) gives a few prototype
vectors and, per layer, which prototype serves it: docs/METHOD.md, section 2.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Literal, Sequence

import numpy as np

from pemn import rng

if TYPE_CHECKING:  # layer_values works on torch tensors; fill itself never needs torch
    import torch

__all__ = ["Dense", "Mask", "OneLayer", "MP", "RP", "Strategy", "FillPlan", "TensorSpec",
           "plan_fill", "strategy_from_dict", "strategy_to_dict", "fan_in", "register_strategy",
           "STRATEGIES", "FILLS", "register_planner", "PRESETS", "register_preset",
           "file_under", "mask_size"]

_PERMUTATION_STREAM = 2**32
_SUPPORT_STREAM = 2**33  # + layer index: each layer's seeded support (``pruned``)


class Strategy:
    """Base of every strategy: a frozen dataclass with a ``title``; ``name`` is set by
    :func:`register_strategy`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # for people: "MP", "One-layer"
    stores_mask: ClassVar[bool] = True  # 1 bit per masked weight (Dense: no mask at all)

    def label(self) -> str:
        """For people, in tables and figures: ``"RP 1e-3"``, ``"Random @ CR 90 %"``."""
        return self.title

    def family_label(self) -> str:
        """The label of a frontier line, which runs across model sizes: :meth:`label` less
        any size knob (PRANC's k)."""
        return self.label()

    def tag(self) -> str:
        """For file and run names: ``"rp0.001"``, ``"random_prune-cr0.9"``."""
        return self.name

    def keep_ratio(self, requested: float) -> float:
        """The kept fraction when the config asks for ``requested``."""
        return requested

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float) -> int:
        """U: the fp32 values stored for the masked tensors ``specs`` (the paper's CR count)."""
        return plan_fill(self, list(specs)).num_unique

    def gain_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape of a learned gain on a masked tensor of ``shape``; None: no gain."""
        return None


STRATEGIES: dict[str, type[Strategy]] = {}  # every strategy by name, in registration order
FILLS: dict[str, type[Strategy]] = {}  # those that ``pemn.apply_`` builds (weight fills)


def register_strategy(name: str, *, fill: bool = False):
    """Class decorator: file a strategy under ``name``, the ``"name"`` of its dict form
    (ValueError if taken); ``fill``: a weight fill, with a planner (:func:`register_planner`)."""
    def register(cls: type[Strategy]) -> type[Strategy]:
        file_under(STRATEGIES, name)(cls)
        cls.name = name
        if fill:
            FILLS[name] = cls
        return cls
    return register


def file_under(table: dict, key, entry: Callable | None = None):
    """The one registry decorator: file the decorated function, or ``entry(fn)``, in ``table``
    under ``key``. A key filed twice raises ValueError (never a silent override)."""
    def register(fn):
        if key in table:
            raise ValueError(f"{getattr(key, '__name__', key)!r} is already registered")
        table[key] = fn if entry is None else entry(fn)
        return fn
    return register


PRESETS: dict[str, Callable[..., Strategy]] = {}  # names of thin constructors (random_prune)


def register_preset(name: str, make: Callable[..., Strategy]) -> None:
    """``{ name = "random_prune", cr = 0.9 }`` in a config reads as ``make(cr=0.9)``; the
    strategy it returns is stored as itself."""
    if name in STRATEGIES:
        raise ValueError(f"strategy name {name!r} is already registered")
    file_under(PRESETS, name)(make)


@register_strategy("dense", fill=True)
@dataclass(frozen=True)
class Dense(Strategy):
    """Ordinary training of all weights; nothing is masked (the paper's reference line)."""

    title: ClassVar[str] = "Dense"
    stores_mask: ClassVar[bool] = False

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float) -> int:
        return sum(s.numel for s in specs)


def _check_choice(strategy: Strategy, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(strategy, field)
    if value not in choices:
        raise ValueError(f"{strategy.title} {field} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class _Fill(Strategy):
    """A weight fill of random values; levers ``values``, ``gain``, ``pruned``: docs/METHOD.md."""

    values: Literal["normal", "signed_constant"] = "signed_constant"
    gain: Literal["none", "layer", "channel"] = "none"
    pruned: float = 0.0

    def __post_init__(self):
        _check_choice(self, "values", ("normal", "signed_constant"))
        _check_choice(self, "gain", ("none", "layer", "channel"))
        if isinstance(self.pruned, bool) or not isinstance(self.pruned, (int, float)) \
                or not 0 <= self.pruned < 1:
            raise ValueError(f"{self.title} pruned is the fraction of positions pruned by the "
                             f"seed and must be in [0, 1), got {self.pruned!r}")

    @property
    def signed(self) -> bool:
        return self.values == "signed_constant"

    def gain_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if self.gain == "none":
            return None
        ones = (1,) * (len(shape) - 1)
        return (1, *ones) if self.gain == "layer" else (shape[0], *ones)

    def _choices(self) -> list[str]:
        """Choices that differ from the defaults, in brackets after the title."""
        return ["normal"] if self.values == "normal" else []

    def _levers(self) -> list[tuple[str, str]]:
        """(label suffix, tag suffix) of each added lever that is on."""
        gain = [(f" +gain/{self.gain}", f"-g{self.gain[0]}")] if self.gain != "none" else []
        return gain + ([(f" +pruned {100 * self.pruned:g} %", f"-pr{self.pruned:g}")]
                       if self.pruned else [])

    def label(self) -> str:
        choices = self._choices()
        return (self._base()[0] + (f" ({', '.join(choices)})" if choices else "")
                + "".join(text for text, _ in self._levers()))

    def tag(self) -> str:
        # the label's words in file-name form: only what differs from the defaults
        return (self._base()[1] + "".join(f"-{choice}" for choice in self._choices())
                + "".join(tag for _, tag in self._levers()))

    def _base(self) -> tuple[str, str]:
        """The label and the tag before the choices and levers."""
        return self.title, self.name


@register_strategy("mask", fill=True)
@dataclass(frozen=True)
class Mask(_Fill):
    """Edge-popup: every layer has its own independent random weights."""

    title: ClassVar[str] = "Mask"


@register_strategy("one_layer", fill=True)
@dataclass(frozen=True)
class OneLayer(_Fill):
    """One prototype tensor per distinct weight shape, shared by all layers of that shape."""

    title: ClassVar[str] = "One-layer"


@dataclass(frozen=True, kw_only=True)
class _SharedFill(_Fill):
    """A fill whose one prototype serves every layer (MP, RP); ``scale`` is a lever."""

    scale: Literal["largest", "layer"] = "largest"

    def __post_init__(self):
        super().__post_init__()
        _check_choice(self, "scale", ("largest", "layer"))

    def _levers(self) -> list[tuple[str, str]]:
        own = [(" +layer-std", "-ls")] if self.scale == "layer" else []
        return super()._levers() + own


@register_strategy("mp", fill=True)
@dataclass(frozen=True)
class MP(_SharedFill):
    """Max-layer padding: every layer takes the first values of the largest layer."""

    title: ClassVar[str] = "MP"


@register_strategy("rp", fill=True)
@dataclass(frozen=True)
class RP(_SharedFill):
    """Random-vector padding: a vector of ``int(d_max * ratio) + 1`` values tiled over each
    layer; ``ratio`` in (0, 1] (1e-3: the paper's "RP 1e-3"), ``order`` a lever."""

    ratio: float = 1e-3
    order: Literal["copy", "permuted"] = "permuted"

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                or not 0 < self.ratio <= 1:
            raise ValueError(f"RP ratio must be in (0, 1] (e.g. 1e-3), got {self.ratio!r}; "
                             "use MP() for ratio 1")
        _check_choice(self, "order", ("copy", "permuted"))
        super().__post_init__()

    def _base(self) -> tuple[str, str]:
        exp = math.log10(self.ratio)
        ratio = f"1e{round(exp)}" if abs(exp - round(exp)) < 1e-9 else f"{self.ratio:g}"
        return f"RP {ratio}", f"rp{self.ratio:g}"

    def _choices(self) -> list[str]:
        return (["copy"] if self.order == "copy" else []) + super()._choices()


def strategy_to_dict(strategy: Strategy) -> dict:
    """``{"name": ..., **fields}``: how configs and artifacts store a strategy."""
    if not isinstance(strategy, Strategy) or STRATEGIES.get(strategy.name) is not type(strategy):
        raise TypeError(f"{strategy!r} is not a registered strategy; strategies: "
                        f"{sorted(STRATEGIES)}")
    return {"name": strategy.name, **dataclasses.asdict(strategy)}


def strategy_from_dict(d: dict) -> Strategy:
    """Inverse of :func:`strategy_to_dict` (a field left out takes its default); ValueError
    for a non-table, an unknown name, or bad arguments for that strategy."""
    if not isinstance(d, dict):
        raise ValueError(f"a strategy is a table like {{name = \"rp\", ratio = 1e-3}}, got {d!r}")
    d = dict(d)
    name = d.pop("name", None)
    if name is None:
        raise ValueError(f"a strategy table needs a name, one of {sorted(STRATEGIES)}; got {d!r}")
    make = STRATEGIES.get(name) or PRESETS.get(name)
    if make is None:
        raise ValueError(f"unknown strategy {name!r}; choose one of "
                         f"{sorted(STRATEGIES) + sorted(PRESETS)}")
    try:
        return make(**d)
    except TypeError as e:
        raise ValueError(f"bad arguments for strategy {name!r}: {e}") from None


def fan_in(shape: tuple[int, ...]) -> int:
    """Kaiming fan_in of an ``(out, in, *kernel)`` weight, as torch computes it; 1 for a 1-D or
    0-D tensor (torch refuses those: a scale vector multiplies one input per value)."""
    return shape[1] * math.prod(shape[2:]) if len(shape) > 1 else 1


@dataclass(frozen=True)
class TensorSpec:
    """A masked weight tensor; ``fan_in`` 0 means :func:`fan_in` of the shape."""

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
        return math.sqrt(2.0 / self.effective_fan_in)


@dataclass(frozen=True)
class Prototype:
    """How to regenerate one prototype vector: its stream, length, std and tiling."""

    stream: int
    numel: int  # values drawn from the stream
    std: float
    tile_to: int = 0  # > numel: tile the drawn values to this length (RP)
    permute: bool = False
    signed: bool = False  # keep only the signs of the draws: every value is +-std

    def draw(self, seed: int) -> np.ndarray:
        """The drawn values, before tiling."""
        values = rng.normal(seed, self.stream, self.numel, self.std)
        if self.signed:
            # in place, no second array: no draw is ever 0, so its sign is that of >= 0
            np.copysign(np.float32(self.std), values, out=values)
        return values

    def expand(self, values: np.ndarray, seed: int) -> np.ndarray:
        """The drawn ``values`` -> the full vector (RP tiling and permutation)."""
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


def mask_size(numel: int, pruned: float) -> int:
    """m: the positions of a layer of ``numel`` that have a mask (its seeded support, at least
    one) when a fraction ``pruned`` is pruned by the seed."""
    return max(1, numel - round(pruned * numel)) if pruned else numel


@dataclass(frozen=True)
class FillPlan:
    """Prototypes and, per layer (in spec order), the index of its prototype."""

    prototypes: tuple[Prototype, ...]
    sources: tuple[int, ...]
    scales: tuple[float, ...] = ()  # per layer, a float32 factor on its slice; () = all 1
    pruned: float = 0.0  # the strategy's ``pruned``: each layer's positions without a mask

    @property
    def num_unique(self) -> int:
        return sum(p.numel for p in self.prototypes)

    def support(self, layer: int, numel: int, seed: int) -> np.ndarray | None:
        """Layer ``layer``'s support, a bool vector with :func:`mask_size` True positions:
        the first of a seeded permutation of stream ``2**33 + layer``; None without pruning."""
        if not self.pruned:
            return None
        out = np.zeros(numel, dtype=bool)
        order = rng.permutation(seed, _SUPPORT_STREAM + layer, numel)
        out[order[: mask_size(numel, self.pruned)]] = True
        return out

    def scale(self, layer: int) -> float:
        """The factor on layer ``layer``'s slice of its prototype."""
        return self.scales[layer] if self.scales else 1.0

    def generate(self, seed: int) -> list[np.ndarray]:
        """Regenerate every prototype as a float32 vector (bit-identical on any machine)."""
        return [p.expand(p.draw(seed), seed) for p in self.prototypes]

    def layer_values(self, prototypes: Sequence[torch.Tensor],
                     specs: Sequence[TensorSpec]) -> list[torch.Tensor]:
        """Each layer's fixed values from the :meth:`generate` vectors as torch tensors: a view
        into its prototype (layers share storage), or a scaled copy for a scale other than 1."""
        views = [prototypes[src][: s.numel].view(s.shape) for src, s in zip(self.sources, specs)]
        return [v if self.scale(i) == 1.0 else v * self.scale(i) for i, v in enumerate(views)]


_PLANNERS: dict[type, Callable[[Strategy, list[TensorSpec]], FillPlan]] = {}


def register_planner(cls: type[Strategy]):
    """Function decorator: ``fn(strategy, specs) -> FillPlan`` plans the fill of ``cls``."""
    return file_under(_PLANNERS, cls)


@register_planner(Mask)
@register_planner(OneLayer)
def _plan_own(strategy: Mask | OneLayer, specs: list[TensorSpec]) -> FillPlan:
    """A prototype per layer (Mask) or per distinct shape, drawn for its first layer (OneLayer)."""
    first: dict = {}  # layer index or shape -> its prototype
    protos, sources = [], []
    for i, s in enumerate(specs):
        key = s.shape if isinstance(strategy, OneLayer) else i
        if key not in first:
            first[key] = len(protos)
            protos.append(Prototype(i, s.numel, s.std, signed=strategy.signed))
        sources.append(first[key])
    return FillPlan(tuple(protos), tuple(sources))


@register_planner(MP)
@register_planner(RP)
def _plan_shared(strategy: _SharedFill, specs: list[TensorSpec]) -> FillPlan:
    """One prototype for every layer: the first largest layer's values (RP: tiled from a few)."""
    big = max(range(len(specs)), key=lambda i: (specs[i].numel, -i))
    d_max, std = specs[big].numel, specs[big].std
    if isinstance(strategy, RP):
        proto = Prototype(big, min(int(d_max * strategy.ratio) + 1, d_max), std, tile_to=d_max,
                          permute=strategy.order == "permuted", signed=strategy.signed)
    else:
        proto = Prototype(big, d_max, std, signed=strategy.signed)
    scales = ()
    if strategy.scale == "layer":  # float32 factors, so every machine multiplies the same
        scales = tuple(float(np.float32(s.std / std)) for s in specs)
    return FillPlan((proto,), (0,) * len(specs), scales)


def plan_fill(strategy: Strategy, specs: list[TensorSpec]) -> FillPlan:
    """The prototypes and per-layer sources of ``strategy`` for the masked tensors ``specs``."""
    if type(strategy) not in _PLANNERS:
        raise TypeError(f"{strategy!r} has no weight fill; strategies with one: "
                        f"{[t.__name__ for t in _PLANNERS]}")
    if not specs:
        raise ValueError("no layer to mask: the model has no selected Conv/Linear/attention weight")
    plan = _PLANNERS[type(strategy)](strategy, specs)
    pruned = getattr(strategy, "pruned", 0.0)
    return dataclasses.replace(plan, pruned=float(pruned)) if pruned else plan
