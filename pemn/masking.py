"""Top-k of |scores| per tensor with a straight-through gradient, and computed tensors.

A masked weight keeps the frozen values whose |score| is among the largest ``keep_ratio`` of
its tensor (docs/METHOD.md, section 1); the top-k counts rather than sorts, and each scores
tensor caches its masked weight (docs/PERFORMANCE.md, "Exact top-k", "Masked-weight caches").

**Computed tensors** are the one mechanism of every family and load form: :func:`compute_` makes
``module.<name>`` a property computed at every read from stored tensors ``<name><suffix>``
(:data:`SUFFIXES`; docs/METHOD.md, section 5); :func:`bake_` undoes it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["num_kept", "topk_mask", "mask_tensor_", "masked_names", "current_mask",
           "cached_tensors", "compute_", "bake_", "computed_names", "parts", "SUFFIXES",
           "scatter_support"]

_SMALL = 4096  # up to this many entries one kthvalue is cheaper than probing
_PROBES = 6  # one probe is one count pass; resolving the band costs about four
_SAMPLE = 2048  # entries sampled for the first guess of threshold and density
_EXACT_F32 = 1 << 24  # a float32 sum of {0, 1} counts exactly up to 2**24 entries


def num_kept(numel: int, keep_ratio: float) -> int:
    """Exact kept count: ``numel - floor((1 - keep_ratio) * numel)``, as edge-popup."""
    return numel - int((1.0 - keep_ratio) * numel)


def _count(mask: torch.Tensor) -> int:
    if mask.numel() <= _EXACT_F32:
        return int(mask.sum(dtype=torch.float32))
    return sum(int(part.sum(dtype=torch.float32)) for part in mask.split(_EXACT_F32))


def _rounded(x: float, dtype: torch.dtype) -> float:
    """``x`` as a threshold of ``dtype`` compares against the tensor."""
    if dtype == torch.float32:  # numpy's scalar is ten times cheaper than a tensor
        return float(np.float32(x))
    return float(torch.tensor(x, dtype=dtype))


def _above(x: float, dtype: torch.dtype) -> float:
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(math.inf, dtype=dtype)))


def _first_guess(a: torch.Tensor, k: int) -> tuple[float, float]:
    """Threshold and density (entries per unit of |score|) near rank ``k``, from a sample."""
    n = a.numel()
    sample = a[:: max(1, n // _SAMPLE)].sort(descending=True).values
    m = sample.numel()
    j = min(m - 1, k * m // n)
    w = max(1, math.isqrt(m))
    i0, i1 = max(0, j - w), min(m - 1, j + w)
    span = float(sample[i0] - sample[i1])
    density = (i1 - i0) * n / m / span if span > 0 else math.inf
    return float(sample[j]), density


class _Bracket:
    """Thresholds ``lo < hi`` with count(lo) > k > count(hi), where count(t) = #(|s| >= t);
    closed, it interpolates (Illinois regula falsi: an end kept twice has its weight halved);
    while one side is open it steps by the density, doubling the step each time."""

    def __init__(self, n: int, k: int, density: float, dtype: torch.dtype) -> None:
        self.k, self.density, self.dtype = k, density, dtype
        self.lo_t, self.lo_f = -math.inf, float(n - k)
        self.hi_t, self.hi_f = math.inf, float(-k)
        self.lo_c, self.hi_c = n, 0
        self.last, self.growth = 0, 1.0

    def update(self, t: float, c: int) -> float | None:
        """Record count ``c`` at ``t``; return the next probe, or None when none is left."""
        side = 1 if c > self.k else -1
        if side > 0:
            self.lo_t, self.lo_c, self.lo_f = t, c, float(c - self.k)
            if self.last > 0:
                self.hi_f /= 2
        else:
            self.hi_t, self.hi_c, self.hi_f = t, c, float(c - self.k)
            if self.last < 0:
                self.lo_f /= 2
        self.last = side
        if math.isfinite(self.lo_t) and math.isfinite(self.hi_t):
            lo, hi = self.lo_t, self.hi_t
            new = _rounded(lo + (hi - lo) * self.lo_f / (self.lo_f - self.hi_f), self.dtype)
            if not lo < new < hi:
                new = _rounded(0.5 * (lo + hi), self.dtype)
            return new if lo < new < hi else None
        new = _rounded(t + (c - self.k) / self.density * self.growth, self.dtype)
        self.growth *= 2
        if side < 0 and new <= 0:
            new = 0.0  # every |score| is >= 0: this closes the bracket from below
        return new if math.isfinite(new) and new != t else None


def _resolve(a: torch.Tensor, k: int, lo_t: float, hi_t: float, out: torch.Tensor
             ) -> float | None:
    """Keep ``a >= hi_t``, then the largest of ``lo_t <= a < hi_t`` up to ``k``, equal values
    in position order. Returns the smallest kept value, or None if the bracket cannot give
    ``k`` (NaN scores: the caller falls back to the sort)."""
    need = k - _count(torch.ge(a, hi_t, out=out))
    band = ((a >= lo_t) & (a < hi_t)).nonzero().squeeze(1)
    if not 0 <= need <= band.numel():
        return None
    if need == 0:
        return hi_t
    values = a[band]
    v = values.kthvalue(values.numel() - need + 1).values
    above = band[values > v]
    out[above] = 1
    out[band[values == v][: need - above.numel()]] = 1
    return float(v)


def _next_to_bracket(a: torch.Tensor, bracket: _Bracket, buf: torch.Tensor) -> float | None:
    """When an end of the bracket is one entry away from k, the threshold that keeps k: one
    masked max (or min) instead of a few probes landing between two values."""
    if bracket.hi_c == bracket.k - 1 and math.isfinite(bracket.hi_t):
        torch.lt(a, bracket.hi_t, out=buf)
        return float(buf.mul_(a).max())  # the largest value below hi: the k-th
    if bracket.lo_c == bracket.k + 1 and math.isfinite(bracket.lo_t):
        torch.lt(a, bracket.lo_t, out=buf)  # values below lo are lifted out of the min
        v = float(buf.mul_(torch.finfo(a.dtype).max).add_(a).min())  # the (k+1)-th
        return _above(v, a.dtype)
    return None


class _Hint(NamedTuple):
    """What one selection tells the next on the same tensor."""

    threshold: float  # a threshold that kept exactly k: scores move little per step
    density: float  # entries per unit of |score| near it, from the first sample


def _select(a: torch.Tensor, k: int, hint: _Hint | None) -> tuple[torch.Tensor, _Hint | None]:
    """A {0, 1} tensor keeping the ``k`` largest of flat ``a``, and the hint for the next call."""
    out = torch.empty_like(a)
    n = a.numel()
    if k >= n or k <= 0:
        return out.fill_(1 if k >= n else 0), hint
    if n <= _SMALL:  # one kthvalue is cheaper than probing
        v = float(a.kthvalue(n - k + 1).values)
        if _count(torch.ge(a, v, out=out)) == k:
            return out, hint
        bracket = None  # ties at v: resolve them
        lo_t, hi_t = v, _above(v, a.dtype)
    else:
        hint = hint or _Hint(*_first_guess(a, k))
        bracket, t = _Bracket(n, k, hint.density, a.dtype), hint.threshold
        for _ in range(_PROBES):  # count ``a >= t`` into ``out`` until it keeps exactly k
            c = _count(torch.ge(a, t, out=out))
            if c == k:
                return out, _Hint(t, hint.density)
            t = bracket.update(t, c)
            t = _next_to_bracket(a, bracket, out) or t
            if t is None:
                break
        lo_t, hi_t = bracket.lo_t, bracket.hi_t
    boundary = _resolve(a, k, lo_t, hi_t, out)
    if boundary is None:  # the reference: a stable sort keeps equal values in position order
        out.zero_()[a.sort(descending=True, stable=True).indices[:k]] = 1
        return out, None
    return out, hint if bracket is None else _Hint(boundary, hint.density)


def topk_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """A {0,1} tensor like ``scores`` keeping exactly ``num_kept`` largest |scores|; among equal
    ones the lower flat position first, so the mask is the same on every device."""
    a = scores.detach().abs().flatten()
    return _select(a, num_kept(a.numel(), keep_ratio), None)[0].view(scores.shape)


@dataclass(eq=False)
class _Cached:
    """A masked weight: the training step's (``value`` None once a backward pass through it has
    run), or the one cached for evaluation, with the ``scores`` it was built from."""

    key: tuple
    value: torch.Tensor | None
    scores: torch.Tensor | None = None


@dataclass(eq=False)
class _State:
    hint: _Hint | None = None
    step: _Cached | None = None
    eval: _Cached | None = None


# One state per scores tensor, shared by tied modules; it dies with the scores.
_STATES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _masked_values(fixed: torch.Tensor, scores: torch.Tensor, keep_ratio: float,
                   state: _State) -> torch.Tensor:
    """``fixed * mask``; the mask buffer becomes the result. Call with autograd off."""
    a = scores.abs().flatten()
    mask, state.hint = _select(a, num_kept(a.numel(), keep_ratio), state.hint)
    mask = mask.view(fixed.shape)
    return mask.mul_(fixed) if mask.dtype == fixed.dtype else fixed * mask.to(fixed.dtype)


class _MaskedWeight(torch.autograd.Function):
    """``fixed * mask(|scores|)``; backward treats the mask as identity on ``|scores|`` (as the
    official code): ``dL/ds = dL/dw * fixed * sign(scores)``. The step's weight is reused by
    every read until a backward pass through it has run."""

    @staticmethod
    def forward(ctx, fixed, scores, keep_ratio, state):
        ctx.save_for_backward(fixed, scores)
        key = (fixed._version, fixed.data_ptr(), scores._version, scores.data_ptr(), keep_ratio)
        if state.step is None or state.step.key != key or state.step.value is None:
            state.step = _Cached(key, _masked_values(fixed, scores, keep_ratio, state))
        ctx.entry = state.step
        return state.step.value.detach()  # a new alias: the cached tensor gets no grad_fn

    @staticmethod
    def backward(ctx, grad):
        ctx.entry.value = None  # the step is over: the next one needs a new mask
        fixed, scores = ctx.saved_tensors
        return None, torch.sign(scores).mul_(fixed).mul_(grad), None, None


def _eval_weight(fixed, scores, keep_ratio, state: _State) -> torch.Tensor:
    # The scores' version is left out of the key: the snapshot comparison covers every write.
    key = (fixed._version, fixed.data_ptr(), scores.device, scores.dtype, keep_ratio)
    cached = state.eval
    # An inference tensor cannot be saved for backward outside inference mode.
    usable = cached is not None and cached.key == key and (
        torch.is_inference_mode_enabled() or not cached.value.is_inference())
    if not (usable and torch.equal(cached.scores, scores)):
        with torch.no_grad():
            value = _masked_values(fixed, scores, keep_ratio, state)
            state.eval = _Cached(key, value, scores.detach().clone())
    return state.eval.value


def _masked(module: nn.Module, name: str) -> torch.Tensor:
    """The PEMN weight ``[gain *] fixed * topk_mask(|scores|)`` of ``module.<name>``."""
    fixed = getattr(module, name + FIXED)
    scores = getattr(module, name + SCORES)
    keep = module._pemn_keep_ratio
    state = _STATES.setdefault(scores, _State())
    if torch.is_grad_enabled() and scores.requires_grad:
        weight = _MaskedWeight.apply(fixed, scores, keep, state)
    elif module.training:
        with torch.no_grad():
            weight = _masked_values(fixed, scores, keep, state)
    else:
        weight = _eval_weight(fixed, scores, keep, state)
    support = module._buffers.get(name + SUPPORT)
    if support is not None:  # compact values -> the full shape, zero off the support
        weight = scatter_support(weight, support)
    gain = module._parameters.get(name + GAIN)
    return weight if gain is None else weight * gain


def scatter_support(compact: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The ``support.shape`` tensor holding ``compact`` at the True positions of bool
    ``support`` (in flat order), zero elsewhere; differentiable in ``compact``."""
    return compact.new_zeros(support.shape).masked_scatter(support, compact)


# The one table of suffixes under which a computed tensor ``w`` stores its parts (``w_fixed``).
FIXED, SCORES, GAIN = "_fixed", "_scores", "_gain"  # PEMN: frozen values, scores, learned gain
LATENT, MASK = "_orig", "_mask"  # trained weights (the layout of torch.nn.utils.prune)
BITS, VALUES = "_bits", "_values"  # the packed form: packed mask bits, shared prototype
SUPPORT = "_support"  # seeded support (``pruned``): bool, the positions fixed and scores hold
SUFFIXES = (FIXED, SCORES, GAIN, LATENT, MASK, BITS, VALUES, SUPPORT)


@functools.cache  # one class per (base, names): modules masked alike share it
def _computed_class(base: type, names: tuple[str, ...]) -> type:
    attrs = {n: property(lambda m, n=n: m._pemn_fns[n](m, n)) for n in names}
    return type(f"Masked{base.__name__}", (base,), {**attrs, "_pemn_base": base})


def computed_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the computed tensors of ``module`` (empty if it has none)."""
    return tuple(module.__dict__.get("_pemn_fns", ()))


def parts(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The stored tensors of computed tensor ``name``, by suffix."""
    own = {**module._parameters, **module._buffers}
    return {s: own[name + s] for s in SUFFIXES if own.get(name + s) is not None}


def compute_(module: nn.Module, name: str, fn, stored: dict[str, torch.Tensor],
             transient: dict[str, torch.Tensor] | None = None) -> None:
    """Make ``module.<name>`` the tensor ``fn(module, name)``, computed at every read from
    ``stored`` (suffix -> tensor, registered as ``<name><suffix>``: a Parameter trains, any
    other tensor is a buffer) and ``transient`` buffers (left out of the state_dict)."""
    module._parameters.pop(name, None)
    transient = transient or {}
    for suffix, t in {**stored, **transient}.items():
        if isinstance(t, nn.Parameter):
            module.register_parameter(name + suffix, t)
        else:
            module.register_buffer(name + suffix, t, persistent=suffix not in transient)
    module._pemn_fns = {**module.__dict__.get("_pemn_fns", {}), name: fn}
    base = getattr(module, "_pemn_base", type(module))
    module.__class__ = _computed_class(base, computed_names(module))


def bake_(module: nn.Module, name: str) -> None:
    """Turn computed ``module.<name>`` into a plain trainable Parameter of its current value."""
    with torch.no_grad():
        value = getattr(module, name).detach().clone()
    for suffix in SUFFIXES:
        module._parameters.pop(name + suffix, None)
        module._buffers.pop(name + suffix, None)
        module._non_persistent_buffers_set.discard(name + suffix)
    fns = {k: f for k, f in module._pemn_fns.items() if k != name}
    base = module._pemn_base
    module.__class__ = _computed_class(base, tuple(fns)) if fns else base
    module._pemn_fns = fns
    if not fns:  # a plain module again
        del module._pemn_fns
        module.__dict__.pop("_pemn_keep_ratio", None)
    module.register_parameter(name, nn.Parameter(value))


def masked_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the PEMN-masked tensors of ``module`` (empty if it is not masked)."""
    return tuple(n for n, f in module.__dict__.get("_pemn_fns", {}).items() if f is _masked)


def mask_tensor_(module: nn.Module, name: str, fixed: torch.Tensor, scores: torch.Tensor,
                 keep_ratio: float, gain: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> None:
    """Turn Parameter ``module.<name>`` into frozen ``fixed`` values masked by ``scores``, times
    a learned ``gain`` (broadcastable) if given. With a bool ``support`` of the weight's shape,
    ``fixed`` and ``scores`` are 1-D, one per True position (a transient buffer: regenerated
    from the seed, never stored)."""
    param = getattr(module, name)
    like = {"device": param.device, "dtype": param.dtype}
    stored = {FIXED: fixed.to(**like), SCORES: nn.Parameter(scores.to(**like))}
    if gain is not None:
        stored[GAIN] = nn.Parameter(gain.to(**like))
    module._pemn_keep_ratio = keep_ratio
    transient = None if support is None else {SUPPORT: support.to(param.device)}
    compute_(module, name, _masked, stored, transient)


def current_mask(module: nn.Module, name: str) -> torch.Tensor:
    """The boolean mask of a masked tensor as currently selected by its scores (with a
    support: 1-D, over the support's positions)."""
    return topk_mask(getattr(module, name + SCORES), module._pemn_keep_ratio).bool()


def cached_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The cached masked weights and score snapshots of ``module`` (for memory accounting; a
    tied tensor's cache is listed by every module that reads it)."""
    out = []
    for name in masked_names(module):
        state = _STATES.get(getattr(module, name + SCORES)) or _State()
        for cached in filter(None, (state.step, state.eval)):
            out += [t for t in (cached.value, cached.scores) if t is not None]
    return out
