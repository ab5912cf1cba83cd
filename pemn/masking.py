"""Sparse selection (PEMN.md §2): top-k of |scores| per tensor with a straight-through gradient.

A masked tensor ``name`` of a module is stored as two new entries:

* ``{name}_fixed``: a buffer with the frozen random values (never trained);
* ``{name}_scores``: a Parameter with one learnable score per value.

and ``module.{name}`` becomes a computed attribute ``fixed * topk_mask(|scores|)``. It is
injected as a property of a dynamically created subclass of the module's own class (the
mechanism of ``torch.nn.utils.parametrize``), so the module stays an instance of its torch class,
its ``forward`` is untouched (``nn.MultiheadAttention`` reads ``in_proj_weight`` and
``out_proj.weight`` directly, so overriding ``forward`` could not cover it), and hooks keep
working.

In eval mode the masked tensor is computed once and cached until the scores or the fixed
values change (tracked by tensor version counters), so inference costs what a dense model costs.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["num_kept", "topk_mask", "masked_weight", "mask_tensor_", "unmask_tensor_",
           "masked_names", "is_masked", "current_mask"]


def num_kept(numel: int, keep_ratio: float) -> int:
    """Exact kept count: ``numel - floor((1 - keep_ratio) * numel)``, as edge-popup."""
    return numel - int((1.0 - keep_ratio) * numel)


def topk_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """A {0,1} tensor (scores' dtype and shape) keeping exactly ``num_kept`` largest |scores|.

    Ties are broken by position (whatever ``torch.topk`` picks), never by count. ``topk`` on
    |scores| was the fastest exact method on CPU (benchmarks/topk.py); on CUDA a full sort
    is often faster than topk for large k (pytorch#22812), so sort is used there.
    """
    flat = scores.detach().abs().flatten()
    k = num_kept(flat.numel(), keep_ratio)
    mask = torch.zeros_like(flat)
    if k == flat.numel():
        return mask.fill_(1).view_as(scores)
    if flat.is_cuda:
        idx = flat.argsort(descending=True)[:k]
    else:
        idx = flat.topk(k, sorted=False).indices
    return mask.index_fill_(0, idx, 1).view_as(scores)


class _MaskedWeight(torch.autograd.Function):
    """``fixed * mask(|scores|)``; backward treats the mask as identity (STE, Eq. 3).

    The official code applies the STE to ``|scores|``, so autograd then multiplies by
    ``sign(scores)``: ``dL/ds = dL/dw_eff * fixed * sign(scores)``. Fused here in one op.
    """

    @staticmethod
    def forward(ctx, fixed, scores, keep_ratio):
        ctx.save_for_backward(fixed, scores)
        return fixed * topk_mask(scores, keep_ratio).to(fixed.dtype)

    @staticmethod
    def backward(ctx, grad):
        fixed, scores = ctx.saved_tensors
        return None, grad * fixed * scores.sign(), None


def masked_weight(fixed: torch.Tensor, scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The effective weight with the straight-through gradient to ``scores``."""
    return _MaskedWeight.apply(fixed, scores, keep_ratio)


def _masked_property(name: str) -> property:
    def get(module: nn.Module) -> torch.Tensor:
        fixed = getattr(module, name + "_fixed")
        scores = getattr(module, name + "_scores")
        keep = module._pemn_keep_ratio
        if module.training or torch.is_grad_enabled() and scores.requires_grad:
            return masked_weight(fixed, scores, keep)
        key = (scores._version, scores.data_ptr(), fixed._version, fixed.data_ptr(), keep)
        cached = module._pemn_cache.get(name)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, fixed * topk_mask(scores, keep).to(fixed.dtype))
            module._pemn_cache[name] = cached
        return cached[1]

    return property(get)


_CLASS_CACHE: dict[tuple[type, tuple[str, ...]], type] = {}


def _masked_class(base: type, names: tuple[str, ...]) -> type:
    key = (base, names)
    if key not in _CLASS_CACHE:
        attrs = {n: _masked_property(n) for n in names}
        attrs["_pemn_base"] = base
        _CLASS_CACHE[key] = type(f"Masked{base.__name__}", (base,), attrs)
    return _CLASS_CACHE[key]


def masked_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the masked tensors of ``module`` (empty if it is not masked)."""
    return tuple(getattr(module, "_pemn_names", ()))


def is_masked(module: nn.Module) -> bool:
    return bool(masked_names(module))


def mask_tensor_(module: nn.Module, name: str, fixed: torch.Tensor, scores: torch.Tensor,
                 keep_ratio: float) -> None:
    """Turn ``module.<name>`` (a Parameter) into frozen ``fixed`` values masked by ``scores``."""
    param = module._parameters.pop(name)
    module.register_buffer(name + "_fixed", fixed.to(param.device, param.dtype))
    module.register_parameter(name + "_scores", nn.Parameter(scores.to(param.device, param.dtype)))
    names = masked_names(module) + (name,)
    module._pemn_names = names
    module._pemn_keep_ratio = keep_ratio
    module._pemn_cache = {}
    module.__class__ = _masked_class(getattr(module, "_pemn_base", type(module)), names)


def unmask_tensor_(module: nn.Module, name: str) -> None:
    """Bake ``module.<name>`` into a plain trainable Parameter holding the masked values."""
    with torch.no_grad():
        value = getattr(module, name).detach().clone()
    del module._buffers[name + "_fixed"], module._parameters[name + "_scores"]
    names = tuple(n for n in masked_names(module) if n != name)
    base = module._pemn_base
    module.__class__ = _masked_class(base, names) if names else base
    module._pemn_names = names
    module._pemn_cache.pop(name, None)
    module.register_parameter(name, nn.Parameter(value))
    if not names:
        del module._pemn_names, module._pemn_keep_ratio, module._pemn_cache


def current_mask(module: nn.Module, name: str) -> torch.Tensor:
    """The boolean mask of a masked tensor as currently selected by its scores."""
    scores = getattr(module, name + "_scores")
    return topk_mask(scores, module._pemn_keep_ratio).bool()
