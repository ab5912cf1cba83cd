"""``apply_``, the one verb: apply any strategy to any PyTorch model in place; ``materialize_``
bakes any of them into a plain model.

``apply_`` finds a strategy's handler by type (:func:`register_handler`) and the tensors it may
select in a registry of layer kinds (:func:`register_maskable`; the built-in kinds:
docs/METHOD.md, section 1). GPT-2's ``Conv1D`` is recognised by its class name and ``nf``, so
``transformers`` is never imported.

**Tied parameters** (one Parameter under two names, e.g. GPT-2's ``lm_head.weight``) are masked
once and stay tied; a tie to a tensor no registered kind covers is refused, never untied.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from pemn import fill as fill_lib
from pemn import rng
from pemn.fill import Dense, Strategy, TensorSpec, file_under
from pemn.masking import SCORES, bake_, compute_, computed_names, mask_tensor_, masked_names, parts

__all__ = ["apply_", "materialize_", "masked_tensors", "maskable_tensors", "register_maskable",
           "register_handler", "accepts", "tie_", "PemnSpec"]


@dataclass(frozen=True)
class MaskableKind:
    """A kind of layer whose ``names`` tensors ``apply_`` may mask."""

    matches: Callable[[nn.Module], bool]
    names: tuple[str, ...]
    fan_in: Callable[[tuple[int, ...]], int] | None = None  # None: torch's (out, in, *k) layout
    default: bool = True  # masked when no include pattern is given


_KINDS: list[MaskableKind] = []


def register_maskable(layer: type | Callable[[nn.Module], bool], names, *,
                      fan_in: Callable[[tuple[int, ...]], int] | None = None,
                      default: bool = True) -> None:
    """Declare the maskable Parameters ``names`` of ``layer`` (a module class or a predicate
    ``module -> bool``); later registrations take precedence. ``fan_in``: ``shape -> fan_in``
    (default torch's layout); ``default=False``: masked only when ``include`` names it."""
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ValueError(f"names must be attribute names of Parameters, got {names!r}")
    if isinstance(layer, type):
        if not issubclass(layer, nn.Module):
            raise TypeError(f"{layer.__name__} is not an nn.Module subclass")
        cls = layer
        layer = lambda m: isinstance(m, cls)  # noqa: E731
    elif not callable(layer):
        raise TypeError(f"layer must be an nn.Module class or a predicate, got {layer!r}")
    _KINDS.insert(0, MaskableKind(layer, names, fan_in, default))


def _is_transposed_linear(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a Linear whose weight is stored ``(in, out)``."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and weight.dim() == 2 and getattr(module, "nf", None) == weight.shape[1])


register_maskable(nn.Embedding, ("weight",), fan_in=lambda shape: shape[1], default=False)
register_maskable(_is_transposed_linear, ("weight",), fan_in=lambda shape: shape[0])
register_maskable(nn.MultiheadAttention,
                  ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))
register_maskable(lambda m: isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)),
                  ("weight",))


@dataclass
class PemnSpec:
    """What ``apply_`` did, kept as ``model.pemn_spec`` (needed to store the model)."""

    strategy: Strategy
    keep_ratio: float
    seed: int
    tensors: list[TensorSpec]  # masked tensors in module order
    plan: fill_lib.FillPlan | None  # None for Dense
    prototype_sha256: list[str] = field(default_factory=list)
    generator: str = rng.GENERATOR_ID
    ties: dict[str, str] = field(default_factory=dict)  # alias name -> masked tensor name (apply_)


@dataclass
class _Target:
    """One maskable tensor and the other names of the same Parameter."""

    fqn: str
    module: nn.Module
    name: str
    kind: MaskableKind
    aliases: list[tuple[str, nn.Module, str]] = field(default_factory=list)

    @property
    def default(self) -> bool:
        """Masked without an include pattern; a tie to an opt-in kind makes the group opt-in."""
        kinds = [self.kind] + [_kind(m) for _, m, _ in self.aliases]
        return all(k is None or k.default for k in kinds)

    @property
    def qualified(self) -> str:
        return f"{self.fqn}.{self.name}" if self.fqn else self.name

    def spec(self) -> TensorSpec:
        shape = tuple(getattr(self.module, self.name).shape)
        return TensorSpec(self.qualified, shape, self.kind.fan_in(shape) if self.kind.fan_in
                          else 0)


def _kind(module: nn.Module) -> MaskableKind | None:
    return next((k for k in _KINDS if k.matches(module)), None)


def _candidates(model: nn.Module) -> list[_Target]:
    """Every maskable tensor, tied aliases folded into the first (in module order)."""
    owners: dict[int, list] = {}  # id(Parameter) -> every (fqn, module, name) holding it
    for fqn, module in model.named_modules():
        for name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((fqn, module, name))
    targets, seen = [], set()
    for fqn, module in model.named_modules():
        kind = _kind(module)
        for name in kind.names if kind else ():
            p = module._parameters.get(name)
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            aliases = [h for h in owners[id(p)] if h[1:] != (module, name)]
            targets.append(_Target(fqn, module, name, kind, aliases))
    return targets


def maskable_tensors(model: nn.Module):
    """Yield ``(module_fqn, module, tensor_name)`` for every tensor ``apply_`` masks by default."""
    for t in _candidates(model):
        if t.default:
            yield t.fqn, t.module, t.name


def _names(t: _Target) -> list[str]:
    return [t.qualified] + [f"{f}.{n}" if f else n for f, _, n in t.aliases]


def _matches(t: _Target, patterns) -> bool:
    fqns = [t.fqn] + [f for f, _, _ in t.aliases]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns for name in fqns + _names(t))


def _select(model, include, exclude) -> list[_Target]:
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    candidates = _candidates(model)
    for patterns in filter(None, (include, exclude)):
        for p in patterns:
            if not any(_matches(t, [p]) for t in candidates):
                names = ", ".join(t.qualified for t in candidates[:20])
                raise ValueError(f"pattern {p!r} matches no maskable layer; layers are: {names}")
    chosen = [t for t in candidates
              if (_matches(t, include) if include is not None else t.default)
              and not _matches(t, exclude)]
    for t in chosen:  # a tie to a tensor no kind covers is refused, never untied
        for fqn, module, name in t.aliases:
            if _kind(module) is None or name not in _kind(module).names:
                raise ValueError(
                    f"{t.qualified} is tied to {fqn}.{name} ({type(module).__name__}), which "
                    f"pemn cannot mask; exclude it (exclude={t.fqn!r}) or declare that layer "
                    "with pemn.register_maskable")
    return chosen


@dataclass(frozen=True)
class _Handler:
    build: Callable  # (model, strategy, targets, **args) -> PemnSpec
    uses: frozenset  # the arguments of apply_ it takes: "keep_ratio", "seed"


_HANDLERS: dict[type, _Handler] = {}


def register_handler(cls: type, *, uses=()):
    """Function decorator: ``fn(model, strategy, targets, **args) -> PemnSpec`` builds
    strategies of ``cls`` and its subclasses. ``targets`` are the selected :class:`_Target`;
    ``uses`` names the arguments of ``apply_`` it takes (``"keep_ratio"``, ``"seed"``)."""
    return file_under(_HANDLERS, cls, lambda fn: _Handler(fn, frozenset(uses)))


def _handler(strategy) -> _Handler:
    handler = next((_HANDLERS[t] for t in type(strategy).__mro__ if t in _HANDLERS), None)
    if handler is None or not isinstance(strategy, Strategy):
        raise TypeError(f"{strategy!r} is not a strategy; pemn.apply_ takes one of "
                        f"{sorted(fill_lib.STRATEGIES)} (pemn.Dense(), RP(ratio=...), ...)")
    return handler


def accepts(strategy: Strategy) -> frozenset:
    """The arguments of :func:`apply_` that ``strategy`` uses, among keep_ratio and seed."""
    return _handler(strategy).uses


def apply_(model: nn.Module, strategy: Strategy, keep_ratio: float | None = None,
           seed: int | None = None, include=None, exclude=None) -> nn.Module:
    """Apply ``strategy`` to ``model`` in place and return it, with ``model.pemn_spec``: a
    weight fill makes each selected weight frozen random values times a learned top-k mask.

    Args:
        keep_ratio: a weight fill's kept fraction of each layer, in (0, 1]; default 0.5.
        seed: integer seed of the random weights, scores or masks; default 0.
        include: glob pattern(s) over qualified names (``"blocks.*"``,
            ``"attn.in_proj_weight"``); only matching tensors are selected, opt-in kinds
            included. Default: every default kind.
        exclude: glob pattern(s) of layers left dense.

    Raises:
        TypeError, ValueError: bad strategy, keep_ratio or seed, or one the strategy does not
            use; a pattern matching nothing; a tie to a tensor that cannot be masked.
    """
    handler = _handler(strategy)
    given = {k: v for k, v in (("keep_ratio", keep_ratio), ("seed", seed)) if v is not None}
    for k in given.keys() - handler.uses:
        raise ValueError(f"{strategy.title or type(strategy).__name__} does not use {k} (its "
                         f"own arguments say what it keeps); leave {k} out")
    args = {"keep_ratio": 0.5, "seed": 0, **given}
    keep, seed = args["keep_ratio"], args["seed"]
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep_ratio is the kept fraction and must be in (0, 1], got {keep!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if getattr(model, "pemn_spec", None) is not None:
        raise ValueError("a strategy is already applied to this model; call "
                         "pemn.materialize_(model) first or start from a fresh model")
    targets = _select(model, include, exclude)
    model.pemn_spec = handler.build(model, strategy, targets, **{k: args[k] for k in handler.uses})
    model.pemn_spec.ties = {alias: t.qualified for t in targets for alias in _names(t)[1:]}
    return model


@register_handler(Dense)
def _dense(model, strategy: Dense, targets) -> PemnSpec:
    return PemnSpec(strategy, 1.0, 0, [t.spec() for t in targets], None)


@register_handler(Strategy, uses=("keep_ratio", "seed"))
def _fill(model, strategy: Strategy, targets, keep_ratio: float, seed: int) -> PemnSpec:
    """A weight fill: frozen random values from the strategy's plan, masked by top-k."""
    specs = [t.spec() for t in targets]
    plan = fill_lib.plan_fill(strategy, specs)
    prototypes = plan.generate(seed)
    # Move each prototype once, so layers that share values share one device tensor.
    device = getattr(targets[0].module, targets[0].name).device
    protos = [torch.from_numpy(v).to(device) for v in prototypes]
    score_gen = torch.Generator().manual_seed(seed)
    for i, (t, spec, fixed) in enumerate(zip(targets, specs, plan.layer_values(protos, specs))):
        support = plan.support(i, spec.numel, seed)
        if support is not None:  # compact: fixed values and scores on the support only
            support = torch.from_numpy(support).view(spec.shape)
            fixed = fixed[support.to(fixed.device)]
        # kaiming_uniform_(a=sqrt(5)) as the official code: bound = 1 / sqrt(fan_in)
        bound = 1.0 / math.sqrt(spec.effective_fan_in)
        scores = torch.rand(spec.shape if support is None else (len(fixed),), generator=score_gen)
        scores.mul_(2).sub_(1).mul_(bound)
        gain_shape = strategy.gain_shape(spec.shape)
        gain = None if gain_shape is None else torch.ones(gain_shape)
        mask_tensor_(t.module, t.name, fixed, scores, keep_ratio, gain, support)
        for _, module, name in t.aliases:
            tie_(module, name, t.module, t.name)
    return PemnSpec(strategy, keep_ratio, seed, specs, plan,
                    [rng.sha256_f32(v) for v in prototypes])


def tie_(module: nn.Module, name: str, owner: nn.Module, owner_name: str) -> None:
    """Make ``module.<name>`` the same computed tensor as ``owner.<owner_name>`` (one set of
    stored tensors, so the tie holds in training)."""
    module._pemn_keep_ratio = getattr(owner, "_pemn_keep_ratio", None)
    own = parts(owner, owner_name)
    compute_(module, name, owner._pemn_fns[owner_name], own,
             {s: t for s, t in own.items()
              if owner_name + s in owner._non_persistent_buffers_set})


def masked_tensors(model: nn.Module):
    """Yield ``(module_fqn, module, tensor_name)`` for every masked tensor, in module order
    (a tied alias is not listed again)."""
    seen = set()
    for fqn, module in model.named_modules():
        for name in masked_names(module):
            scores = getattr(module, name + SCORES)
            if id(scores) not in seen:
                seen.add(id(scores))
                yield fqn, module, name


def materialize_(model: nn.Module) -> nn.Module:
    """Bake every computed tensor, of any family or load form, into a plain Parameter of its
    current value; the logits do not change and ties stay. Returns ``model``."""
    baked: dict[tuple, nn.Parameter] = {}
    for _, module in list(model.named_modules()):
        for name in computed_names(module):
            key = tuple(id(t) for t in parts(module, name).values())  # tied: the same parts
            bake_(module, name)  # a tied alias reuses the first baked Parameter
            module._parameters[name] = baked.setdefault(key, module._parameters[name])
    model.__dict__.pop("pemn_spec", None)
    return model
