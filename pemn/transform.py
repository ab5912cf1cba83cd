"""``apply_``: turn any PyTorch model into a PEMN model in place; ``materialize_`` undoes it.

Masked by default: the weight of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (grouped and
depthwise included) and the input projections of ``nn.MultiheadAttention`` (its ``out_proj`` is
an ``nn.Linear``), stem and head included, as the paper does. Biases and norm layers stay
ordinary trainable parameters.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pemn import fill as fill_lib
from pemn import rng
from pemn.fill import Dense, Strategy
from pemn.masking import is_masked, mask_tensor_, masked_names, unmask_tensor_

__all__ = ["apply_", "materialize_", "masked_tensors", "PemnSpec", "maskable_tensors",
           "regenerate_fixed"]

_MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ATTENTION_NAMES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass
class PemnSpec:
    """What ``apply_`` did, kept on the model as ``model.pemn_spec`` (needed to store it)."""

    strategy: Strategy
    keep_ratio: float
    seed: int
    tensors: list[fill_lib.TensorSpec]  # masked tensors in module order
    plan: fill_lib.FillPlan | None  # None for Dense
    prototype_sha256: list[str] = field(default_factory=list)
    generator: str = rng.GENERATOR_ID


def _validate(strategy, keep_ratio, seed) -> None:
    if not isinstance(strategy, tuple(fill_lib.STRATEGIES.values())):
        raise TypeError(f"strategy must be one of pemn.Dense(), Mask(), OneLayer(), MP(), "
                        f"RP(ratio=...), got {strategy!r}")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) \
            or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio is the kept fraction and must be in (0, 1], "
                         f"got {keep_ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def maskable_tensors(model: nn.Module):
    """Yield ``(module_fqn, module, tensor_name)`` for every tensor ``apply_`` can mask."""
    for fqn, module in model.named_modules():
        if isinstance(module, _MASKABLE):
            names = ("weight",)
        elif isinstance(module, nn.MultiheadAttention):
            names = _ATTENTION_NAMES
        else:
            continue
        for name in names:
            if isinstance(module._parameters.get(name), torch.Tensor) or name in masked_names(module):
                yield fqn, module, name


def _matches(fqn: str, tensor: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) or fnmatch.fnmatchcase(f"{fqn}.{tensor}", p)
               for p in patterns)


def _select(model, include, exclude):
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    candidates = list(maskable_tensors(model))
    for patterns in filter(None, (include, exclude)):
        for p in patterns:
            if not any(_matches(f, n, [p]) for f, _, n in candidates):
                names = ", ".join(f or "<root>" for f, _, _ in candidates[:20])
                raise ValueError(f"pattern {p!r} matches no maskable layer; layers are: {names}")
    return [(f, m, n) for f, m, n in candidates
            if (include is None or _matches(f, n, include)) and not _matches(f, n, exclude)]


def apply_(model: nn.Module, strategy: Strategy, keep_ratio: float = 0.5, seed: int = 0,
           include=None, exclude=None) -> nn.Module:
    """Apply PEMN to ``model`` in place and return it.

    Every selected weight is replaced by frozen random values (regenerated from ``seed`` by
    :mod:`pemn.rng`, shared as ``strategy`` says) times a learned top-k mask.

    Args:
        model: any ``nn.Module``; it is modified in place.
        strategy: ``pemn.Dense()``, ``Mask()``, ``OneLayer()``, ``MP()`` or ``RP(ratio, order)``.
        keep_ratio: fraction of each layer's weights *kept* by the mask, in (0, 1].
        seed: integer seed of the random weights and of the score initialisation.
        include: glob pattern(s) over qualified names (``"blocks.*"``, ``"head"``, or
            ``"attn.in_proj_weight"``); only matching layers are masked. Default: all.
        exclude: glob pattern(s) of layers left dense.

    Returns:
        ``model``, with ``model.pemn_spec`` recording what was done.

    Raises:
        TypeError, ValueError: bad strategy, keep_ratio, seed or a pattern matching nothing.

    Example:
        >>> model = apply_(nn.Sequential(nn.Linear(8, 4)), RP(ratio=0.1), keep_ratio=0.5)
        >>> type(model[0]).__name__, isinstance(model[0], nn.Linear)
        ('MaskedLinear', True)
    """
    _validate(strategy, keep_ratio, seed)
    if getattr(model, "pemn_spec", None) is not None:
        raise ValueError("PEMN is already applied to this model; call pemn.materialize_(model) "
                         "first or start from a fresh model")
    targets = _select(model, include, exclude)
    specs = [fill_lib.TensorSpec(f"{f}.{n}" if f else n, tuple(getattr(m, n).shape))
             for f, m, n in targets]
    if isinstance(strategy, Dense):
        model.pemn_spec = PemnSpec(strategy, 1.0, seed, specs, None)
        return model
    plan = fill_lib.plan_fill(strategy, specs)
    prototypes = plan.generate(seed)
    # Move each prototype once, so layers that share values share one device tensor.
    device = getattr(targets[0][1], targets[0][2]).device
    protos = [torch.from_numpy(v).to(device) for v in prototypes]
    score_gen = torch.Generator().manual_seed(seed)
    for (fqn, module, name), spec, src in zip(targets, specs, plan.sources):
        fixed = protos[src][: spec.numel].view(spec.shape)
        mask_tensor_(module, name, fixed, _init_scores(spec.shape, score_gen), keep_ratio)
    model.pemn_spec = PemnSpec(strategy, keep_ratio, seed, specs, plan,
                               [rng.sha256_f32(v) for v in prototypes])
    return model


def _init_scores(shape, generator) -> torch.Tensor:
    # kaiming_uniform_(a=sqrt(5)) as the official code: bound = 1 / sqrt(fan_in).
    fan_in = shape[1] * math.prod(shape[2:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def masked_tensors(model: nn.Module):
    """Yield ``(module_fqn, module, tensor_name)`` for every masked tensor, in module order."""
    for fqn, module in model.named_modules():
        for name in masked_names(module):
            yield fqn, module, name


def regenerate_fixed(model: nn.Module) -> None:
    """Rewrite every ``*_fixed`` buffer from the seed (e.g. after loading a checkpoint)."""
    spec = model.pemn_spec
    protos = [torch.from_numpy(v) for v in spec.plan.generate(spec.seed)]
    with torch.no_grad():
        for (_, module, name), ts, src in zip(masked_tensors(model), spec.tensors,
                                              spec.plan.sources):
            getattr(module, name + "_fixed").copy_(protos[src][: ts.numel].view(ts.shape))


def materialize_(model: nn.Module) -> nn.Module:
    """Bake every mask into a plain dense weight; the model no longer depends on pemn.

    The logits do not change. Returns ``model``.
    """
    for _, module, name in list(masked_tensors(model)):
        unmask_tensor_(module, name)
    if hasattr(model, "pemn_spec"):
        del model.pemn_spec
    return model


def is_pemn_model(model: nn.Module) -> bool:
    return getattr(model, "pemn_spec", None) is not None or any(
        is_masked(m) for m in model.modules())
