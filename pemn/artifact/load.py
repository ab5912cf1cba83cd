"""Load an artifact into a model: the caller's skeleton, or the zoo model its header names.

Every file is treated as hostile. In order, before anything large is allocated: only a regular
file is read, and only if its size fits; the container's digests are checked;
the header's types and ranges, and its tensor table's offsets, are validated
(:meth:`Header.from_json`); the values it describes
are held to ``max_elements``; every mask decodes to exactly its kept count; every stored float
is finite; and every tensor name and shape is compared with the skeleton. Any failure raises
:class:`ArtifactError` with one line naming the first problem.

The frozen random weights are regenerated from the seed (or taken from the stored prototype)
and must match the SHA-256 recorded at save time, so a different generator fails loudly
instead of giving another model.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pemn import rng
from pemn.artifact.bitpack import pack_bits, unpack_bits
from pemn.artifact.codec import get_codec
from pemn.artifact.format import (
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    PREAMBLE_BYTES,
    ArtifactError,
    Entry,
    Header,
    read_container,
)
from pemn.artifact.forms import hold_prototype, pack_encoded_, pack_module_
from pemn.artifact.pack import torch_dtype
from pemn.artifact.weights import TrainedWeights, get_encoding
from pemn.fill import Dense, TensorSpec, file_under, plan_fill, strategy_from_dict
from pemn.masking import FIXED, GAIN, MASK, SCORES, num_kept
from pemn.models import create_model
from pemn.transform import accepts, apply_, masked_tensors, tie_

__all__ = ["load", "unpack", "read_header", "FORMS", "DEFAULT_MAX_ELEMENTS"]

# 2**25 values = 128 MiB of float32, regenerated in ~1.3 s: every zoo model (ResNet-50: 25.6M)
# fits; pass max_elements for larger ones (ViT-B: 86M). It bounds what a hostile file within
# the defaults can demand to 2 s and 300 MB (docs/THREAT_MODEL.md).
DEFAULT_MAX_ELEMENTS = 2**25
VALUES_PER_BYTE = 1024  # default ceiling on values per file byte (densest honest: ~880)
FORMS = ("train", "dense", "packed")
_LOWER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
                 OverflowError, RecursionError, struct.error, UnicodeError)


# ------------------------------------------------------------------------------------------
# Reading: regular files only, size first
# ------------------------------------------------------------------------------------------

def _max_file_bytes(max_elements: int) -> int:
    # masks <= 1 bit per value and raw tensors <= 8 bytes per value, plus the header.
    return PREAMBLE_BYTES + MAX_HEADER_BYTES + 9 * max_elements


def _read_file(path, max_elements: int) -> bytes:
    """The bytes of a regular file; FIFOs, devices and oversized files are refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, TypeError, ValueError) as e:
        raise ArtifactError(f"cannot read artifact {path}: {getattr(e, 'strerror', None) or e}"
                            ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ArtifactError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        limit = _max_file_bytes(max_elements)
        if info.st_size > limit:
            raise ArtifactError(f"{path} is {info.st_size} bytes, more than a model of "
                                f"max_elements={max_elements} values can take ({limit})")
        data = f.read(info.st_size + 1)  # a buffer of the file's size, not of the limit
    if len(data) > info.st_size:
        raise ArtifactError(f"{path} grew while being read")
    return data


# ------------------------------------------------------------------------------------------
# Header and skeleton
# ------------------------------------------------------------------------------------------

_INIT_FNS = {getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and n[0] != "_"} | {
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
    torch.Tensor.exponential_, torch.Tensor.cauchy_, torch.Tensor.log_normal_,
    torch.Tensor.geometric_}


class _MetaBuild(TorchFunctionMode):
    """Skip weight initialisation, and stop after ``budget`` torch calls.

    Initialising meta tensors is useless, and torch implements random meta ops through its
    decompositions, whose first use imports torch._dynamo (~1 s). The budget bounds the work
    hostile kwargs (``depth=65536``) can cause; it applies only to zoo models named in a
    header, and ``tests/test_artifact.py`` checks every registered model builds within it.
    """

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.budget -= 1
        if self.budget < 0:
            raise ArtifactError("the architecture builds far more tensors than the file lists; "
                                "the kwargs do not match the stored model")
        if func in _INIT_FNS and (args or "tensor" in kwargs):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


MAX_META_CALLS = 2**15  # ~0.5 s; the largest zoo model makes 1,717 (resnet56)


def meta_budget(num_entries: int) -> int:
    """Torch calls a zoo model may make per state_dict entry the file lists, plus a margin,
    and never more than :data:`MAX_META_CALLS`: a header listing 32,768 names must not buy
    a minute of building (a larger architecture loads with ``model=`` its skeleton)."""
    return min(16 * num_entries + 1024, MAX_META_CALLS)


def _build_meta(model_args: dict, num_entries: int) -> nn.Module:
    """The zoo architecture on the meta device: shapes without allocating any values."""
    with _MetaBuild(meta_budget(num_entries)), torch.device("meta"):
        return create_model(model_args["name"], **model_args["kwargs"])


def _skeleton_layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def _gain_names(header: Header) -> set[str]:
    """Names a learned gain of a masked or encoded tensor (or of a tied alias) takes in the
    file (PRANC's alpha is its encoded layers' gain)."""
    masked = {m.name for m in header.masked} | {e.name for e in header.encoded}
    return {n + GAIN for n in masked | {a for a, t in header.ties if t in masked}}


def _check_layout(header: Header, layout: dict[str, tuple[int, ...]], what: str) -> None:
    """Every name and shape of the file against the skeleton; one error, first bad tensor.

    Learned gains belong to the masked tensors (a skeleton has none); :func:`_gains` checks
    them.
    """
    expected = {e.name: e.shape for e in header.tensors if e.kind != "prototype"}
    expected.update({alias: expected[target] for alias, target in header.ties})
    for name in _gain_names(header):
        expected.pop(name, None)
    for fqn in header.folded_norms:  # statistics a folded file does not store
        prefix = f"{fqn}." if fqn else ""
        channels = expected.get(prefix + "weight")
        if channels is None:
            raise ArtifactError(f"folded norm {fqn!r} has no stored weight")
        expected.update({prefix + "running_mean": channels, prefix + "running_var": channels,
                         prefix + "num_batches_tracked": ()})
    for name, shape in layout.items():
        if name not in expected:
            raise ArtifactError(f"{what} has tensor {name!r} {list(shape)}, which the file does "
                                "not hold: the file was saved from another architecture")
        if expected[name] != shape:
            raise ArtifactError(f"tensor {name!r} is {list(shape)} in {what} but "
                                f"{list(expected[name])} in the file")
    missing = [n for n in expected if n not in layout]
    if missing:
        raise ArtifactError(f"the file holds tensor {missing[0]!r} {list(expected[missing[0]])}, "
                            f"which {what} does not have")


def _check_dtypes(header: Header, model: nn.Module) -> None:
    """Each stored tensor in the skeleton's dtype, or a float of no wider range (fp16 into a
    float32 model): a float64 1e300 is finite, but inf in a float32 model."""
    state = model.state_dict(keep_vars=True)
    for t in header.raw:
        have, want = torch_dtype(t.dtype), getattr(state.get(t.name), "dtype", None)
        if want is not None and have != want and not (
                have.is_floating_point and want.is_floating_point
                and torch.finfo(have).max <= torch.finfo(want).max):
            raise ArtifactError(f"tensor {t.name!r} is stored as {have}, which the skeleton's "
                                f"{want} cannot hold")


def _skeleton(header: Header, model: nn.Module | None, form: str,
              device: torch.device) -> nn.Module:
    """The caller's skeleton (moved to ``device``), or the zoo model allocated from meta."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ArtifactError(f"model must be an nn.Module skeleton, got {type(model).__name__}")
        if getattr(model, "pemn_spec", None) is not None:
            raise ArtifactError("the skeleton already has PEMN applied; pass a freshly built "
                                "model (as its constructor returns it)")
        _check_layout(header, _skeleton_layout(model), "the skeleton")
        _check_dtypes(header, model)
        return model.to(device)
    if header.model is None:
        raise ArtifactError("this file was saved from a model outside pemn.models; build the "
                            "architecture yourself and pass it: pemn.load(path, model=MyNet())")
    meta = _build_meta(header.model, len(header.names))
    _check_layout(header, _skeleton_layout(meta), header.model["name"])
    _check_dtypes(header, meta)
    return _allocate(meta, header, form, device)


def _allocate(meta: nn.Module, header: Header, form: str, device: torch.device) -> nn.Module:
    """Real storage for a meta model whose every state is about to be filled from the file.

    Nothing is initialised (the file overwrites it all), and the packed form never allocates
    its masked weights: they become empty placeholders first, so the peak stays small.
    """
    if {k for k, _ in meta.named_buffers()} - set(meta.state_dict()):
        return create_model(header.model["name"], **header.model["kwargs"]).to(device)
    if form == "packed":
        for name in [e.name for e in header.tensors if e.kind in ("mask", "weight")] + [
                a for a, _ in header.ties]:
            fqn, _, attr = name.rpartition(".")
            module = meta.get_submodule(fqn)
            if isinstance(module._parameters.get(attr), nn.Parameter):
                module._parameters[attr] = nn.Parameter(torch.empty(0, device="meta"),
                                                         requires_grad=False)
    # not to_empty: its empty_like on meta tensors imports sympy (~35 MB resident)
    return meta._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))


# ------------------------------------------------------------------------------------------
# Payload: masks, prototypes, tensors (all checked before the model is touched)
# ------------------------------------------------------------------------------------------

class _Masks(list):
    """Decoded (so checked) masks held as packed bits and unpacked one at a time on use: a
    bool per weight for every layer at once would cost a byte per weight at the peak."""

    def append(self, mask: torch.Tensor) -> None:
        super().append((pack_bits(mask), mask.shape))

    def __getitem__(self, j: int) -> torch.Tensor:
        bits, shape = super().__getitem__(j)
        return unpack_bits(bits, shape.numel()).view(shape)

    def into(self, j: int, out: torch.Tensor) -> torch.Tensor:
        """Mask ``j`` written into ``out`` as 0/1 a bit position at a time: temporaries of a
        bit per weight, not the byte per weight of a bool mask."""
        bits = torch.from_numpy(np.frombuffer(super().__getitem__(j)[0], np.uint8).copy())
        flat = out.view(-1)
        for b in range(8):  # bitpack's order: element i is bit i % 8 of byte i // 8
            dst = flat[b::8]
            dst.copy_(bits[:len(dst)].bitwise_right_shift(b).bitwise_and_(1))
        return out

    def __iter__(self):
        return (self[j] for j in range(len(self)))


def _decode(e: Entry, payload: memoryview):
    """One entry's values, by its encoding (one dispatch for every kind), each checked: a raw
    tensor, a bool mask, a ``(float32 weight, bool mask or None)`` or a prototype vector."""
    return _DECODERS[e.kind](e, payload[e.offset:e.offset + e.length])


def _raw(e: Entry, data: memoryview) -> torch.Tensor:
    raw = np.frombuffer(data, dtype="<i2" if e.dtype == "bf16" else e.dtype, count=e.numel)
    value = torch.from_numpy(raw.astype(raw.dtype.newbyteorder("="))).view(e.shape)
    value = value.view(torch_dtype(e.dtype))  # bfloat16 from its 16 bits
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ArtifactError(f"tensor {e.name} holds NaN or infinite values")
    return value


_DECODERS = {
    "raw": _raw,
    "prototype": lambda e, data: _raw(e, data).numpy(),
    "mask": lambda e, data: get_codec(e.encoding).decode(data, e.numel, e.num_kept).view(e.shape),
    "weight": lambda e, data: get_encoding(e.encoding).decode(bytes(data), e.shape, e.num_kept),
}


def _decode_masks(header: Header, payload: memoryview) -> _Masks:
    out = _Masks()
    for m in header.masked:
        if m.num_kept != num_kept(m.numel, header.keep_ratio):
            raise ArtifactError(f"mask of {m.name} keeps {m.num_kept} values, keep_ratio "
                                f"{header.keep_ratio} needs {num_kept(m.numel, header.keep_ratio)}")
        out.append(_decode(m, payload))
    return out


_GENERATOR_MISMATCH = ("regenerated weights differ from the ones that were trained (generator "
                       "{file} in the file, {here} here); refusing to load a different model. "
                       "Re-save on the training machine with store_prototype=True")


def _stored_prototypes(header: Header, plan, payload: memoryview) -> list[np.ndarray] | None:
    """The stored prototype vectors, checked against their SHA-256; None when regenerated."""
    counts = [p.numel for p in plan.prototypes]
    if len(header.prototype_sha256) != len(counts):
        raise ArtifactError("the number of prototype digests does not match the strategy")
    if not header.prototypes:
        return None
    if [e.numel for e in header.prototypes] != counts:
        raise ArtifactError(f"stored prototype lengths {[e.numel for e in header.prototypes][:8]}"
                            f" do not match the strategy's {counts[:8]}")
    drawn = [_decode(e, payload) for e in header.prototypes]
    full = [p.expand(d, header.seed) for d, p in zip(drawn, plan.prototypes)]
    if [rng.sha256_f32(v) for v in full] != list(header.prototype_sha256):
        raise ArtifactError("stored prototype values do not match their SHA-256 in the header; "
                            "the file is corrupt")
    return full


def _check_regenerated(header: Header, digests) -> None:
    if list(digests) != list(header.prototype_sha256):
        raise ArtifactError(_GENERATOR_MISMATCH.format(file=header.generator,
                                                       here=rng.GENERATOR_ID))


def _gains(header: Header, strategy, tensors: dict[str, torch.Tensor]) -> list:
    """Each masked tensor's learned gain (None without one), checked against the strategy."""
    out = []
    for m in header.masked:
        shape, value = strategy.gain_shape(m.shape), tensors.get(m.name + GAIN)
        if shape is None and value is not None:
            raise ArtifactError(f"the file holds a gain for {m.name} but its strategy has none")
        if shape is not None and (value is None or tuple(value.shape) != shape
                                  or not value.is_floating_point()):
            got = "none" if value is None else f"{list(value.shape)} {value.dtype}"
            raise ArtifactError(f"{m.name} needs a float gain of shape {list(shape)}; the file "
                                f"holds {got}")
        out.append(value)
    return out


def _specs(header: Header) -> list[TensorSpec]:
    return [TensorSpec(m.name, m.shape, m.fan_in) for m in header.masked]


# ------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------

@dataclass
class _Payload:
    """A checked file, ready to fill a skeleton: ``plan`` and ``stored`` are None for Dense;
    ``stored`` is None too when the prototypes are to be regenerated from the seed."""

    header: Header
    strategy: object
    plan: object
    masks: list[torch.Tensor]
    stored: list[np.ndarray] | None
    tensors: dict[str, torch.Tensor]
    gains: list  # per masked tensor, its learned gain or None

    def prototype(self, i: int) -> torch.Tensor:
        """Prototype ``i``: stored, or regenerated alone and checked against its SHA-256, so
        that a form built one prototype at a time holds one, not all of them at once."""
        if self.stored is not None:
            return torch.from_numpy(self.stored[i])
        proto, seed = self.plan.prototypes[i], self.header.seed
        values = proto.expand(proto.draw(seed), seed)
        if rng.sha256_f32(values) != self.header.prototype_sha256[i]:
            _check_regenerated(self.header, ())  # raises, naming both generators
        return torch.from_numpy(values)

    def layers_of(self, i: int) -> list[int]:
        """The masked tensors whose fixed values are slices of prototype ``i``."""
        return [j for j, src in enumerate(self.plan.sources) if src == i]

    def fixed(self, j: int, prototype: torch.Tensor) -> torch.Tensor:
        """Masked tensor ``j``'s fixed values in its prototype, as ``FillPlan.layer_values``."""
        m, scale = self.header.masked[j], self.plan.scale(j)
        view = prototype[:m.numel].view(m.shape)
        return view if scale == 1.0 else view * scale


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy each stored tensor (and its tied aliases) into the model's state, in place."""
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name in tensors:
                t.copy_(tensors[name])


def _fill_stored(model: nn.Module, header: Header, tensors: dict) -> None:
    """Every stored tensor and tie, then the neutral statistics of folded norms."""
    _fill(model, {**tensors, **{a: tensors[t] for a, t in header.ties if t in tensors}})
    with torch.no_grad():
        for fqn in header.folded_norms:
            norm = model.get_submodule(fqn)
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
                raise ArtifactError(f"folded norm {fqn!r} is a {type(norm).__name__}, not a "
                                    "BatchNorm layer")
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # sqrt(running_var + eps) = 1
            if norm.num_batches_tracked is not None:
                norm.num_batches_tracked.zero_()


def _escape_glob(name: str) -> str:
    """``apply_`` takes glob patterns; an exact name must not match anything else."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _args(strategy, header: Header) -> dict:
    """The arguments of ``apply_`` that ``strategy`` takes, as the file records them."""
    return {k: getattr(header, k) for k in accepts(strategy)}


def _train_form(model: nn.Module, p: _Payload) -> nn.Module:
    """PEMN layers again: apply_ regenerates (once) and the file's masks set the scores."""
    header, names = p.header, [m.name for m in p.header.masked]
    if p.plan is not None and p.stored is None:  # validate before use: a file whose seed
        for i in range(len(p.plan.prototypes)):  # is wrong costs one prototype, not a model
            p.prototype(i)
    apply_(model, p.strategy, **_args(p.strategy, header),
           include=[_escape_glob(n) for n in names] if names else None)
    spec = model.pemn_spec
    if p.plan is not None:
        if spec.tensors != _specs(header):
            raise ArtifactError("apply_ selects other tensors than the file lists; register "
                                "the same maskable layers (pemn.register_maskable) as at save")
        tied = {a: t for a, t in header.ties if t in names}
        if spec.ties != tied:
            raise ArtifactError(f"the skeleton ties {spec.ties} but the file ties {tied}")
        if p.stored is None:
            _check_regenerated(header, spec.prototype_sha256)
        _set_masks(model, spec, p)
    _fill_stored(model, header, p.tensors)
    return model


def _set_masks(model: nn.Module, spec, p: _Payload) -> None:
    layers = list(masked_tensors(model))
    with torch.no_grad():
        if p.stored is not None:  # a stored prototype replaces what apply_ generated
            for (_, module, name), fixed in zip(layers, spec.plan.layer_values(
                    [torch.from_numpy(v) for v in p.stored], spec.tensors)):
                getattr(module, name + FIXED).copy_(fixed)
        for j, (_, module, name) in enumerate(layers):
            # kept 2, dropped 1: top-k is the mask, as _decode_masks checked that it keeps
            # num_kept(numel, keep_ratio) values (so no top-k and its temporaries here)
            p.masks.into(j, getattr(module, name + SCORES)).add_(1)


def _dense_form(model: nn.Module, p: _Payload) -> nn.Module:
    """A plain model: each masked weight is ``fixed * mask``, written into the skeleton."""
    if p.plan is not None:
        header = p.header
        with torch.no_grad():
            for i in range(len(p.plan.prototypes)):  # one prototype alive at a time
                prototype = p.prototype(i)
                for j in p.layers_of(i):  # written in place: no temporary per weight
                    weight = model.get_parameter(header.masked[j].name)
                    weight.copy_(p.fixed(j, prototype)).mul_(p.masks[j].to(weight.device))
                    if p.gains[j] is not None:
                        weight.mul_(p.gains[j].to(weight))
            masked = {m.name: model.get_parameter(m.name) for m in header.masked}
            for alias, target in header.ties:  # an untied skeleton still gets every alias
                if target in masked and model.get_parameter(alias) is not masked[target]:
                    model.get_parameter(alias).copy_(masked[target])
    _fill_stored(model, p.header, p.tensors)
    return model


def _packed_form(model: nn.Module, p: _Payload) -> nn.Module:
    """Bits + prototype per layer, the weight rebuilt in every forward (no cache)."""
    _fill_stored(model, p.header, p.tensors)
    if p.plan is None:
        return model
    device = next(iter(model.state_dict().values())).device
    # What each prototype really is, held once and shared by its layers (hold_prototype)
    shared = [hold_prototype(p.prototype(i).to(device), proto)  # one full vector at a time
              for i, proto in enumerate(p.plan.prototypes)]
    owners = {}
    for i, (m, src, mask) in enumerate(zip(p.header.masked, p.plan.sources, p.masks)):
        fqn, _, name = m.name.rpartition(".")
        module = model.get_submodule(fqn)
        gain = p.gains[i]
        pack_module_(module, name, shared[src], mask.to(device), p.plan.scale(i),
                     None if gain is None else gain.to(device, torch.float32))
        owners[m.name] = (module, name)
    for alias, target in p.header.ties:
        if target in owners:
            fqn, _, name = alias.rpartition(".")
            tie_(model.get_submodule(fqn), name, *owners[target])
    return model


_FORM_BUILDERS = {"train": _train_form, "dense": _dense_form, "packed": _packed_form}


# ------------------------------------------------------------------------------------------
# unpack / load
# ------------------------------------------------------------------------------------------

def _check_args(form: str, max_elements) -> None:
    if form not in FORMS:
        raise ArtifactError(f"unknown form {form!r}; use one of {FORMS}")
    if max_elements is not None and (isinstance(max_elements, bool) or not isinstance(
            max_elements, int) or not 0 < max_elements <= MAX_ELEMENTS):
        raise ArtifactError(f"max_elements must be an integer in [1, {MAX_ELEMENTS}], got "
                            f"{max_elements!r}")


def _element_limit(max_elements: int | None, num_bytes: int) -> int:
    """``max_elements``, or by default 2**25 and at most 1,024 values per byte of file.

    An honest file needs at least ``H(keep)/8`` bytes per masked value: 1/8 at keep 0.5,
    1/700 at keep 0.001. Without an explicit ``max_elements``, a file that claims more values
    per byte than that (a 750-byte file describing 2**31 weights) is refused before any work.
    """
    if max_elements is not None:
        return max_elements
    return min(DEFAULT_MAX_ELEMENTS, max(2**16, VALUES_PER_BYTE * num_bytes))


def _unpack(data: bytes, model, form: str, device, max_elements, verify_key) -> nn.Module:
    container = read_container(data)
    if verify_key is not None:
        from pemn.artifact.signing import verify
        verify(data, verify_key)
    header, payload = container.table, container.payload
    limit = _element_limit(max_elements, len(data))
    if header.num_elements > limit:
        raise ArtifactError(f"the file describes {header.num_elements:,} values, more than "
                            f"max_elements={limit:,} ({len(data):,} bytes); pass a larger "
                            "max_elements to load a model this large or this sparse")
    strategy = strategy_from_dict(header.strategy)
    _check_kinds(header, strategy)
    tensors = {e.name: _decode(e, payload) for e in header.raw}
    if isinstance(strategy, TrainedWeights):
        read = next((_READERS[t] for t in type(strategy).__mro__ if t in _READERS), None)
        out = read(header, strategy, tensors, model, form, device,
                   max_elements or DEFAULT_MAX_ELEMENTS) if read else \
            _trained_model(header, strategy, payload, tensors, model, form, device)
        out.pemn_header = header
        return out.eval()
    plan = None if isinstance(strategy, Dense) else plan_fill(strategy, _specs(header))
    p = _Payload(header, strategy, plan, _decode_masks(header, payload),
                 None if plan is None else _stored_prototypes(header, plan, payload), tensors,
                 _gains(header, strategy, tensors))
    out = _FORM_BUILDERS[form](_skeleton(header, model, form, device), p)
    if form != "train" and getattr(out, "pemn_spec", None) is not None:
        del out.pemn_spec
    out.pemn_header = header
    return out.eval()


def _check_kinds(header: Header, strategy) -> None:
    """Masks (and prototypes) for a weight fill, encoded weights for a strategy that trains
    its own, neither for Dense: raw tensors besides, and at least one of what it needs."""
    needs = "weight" if isinstance(strategy, TrainedWeights) else (
        None if isinstance(strategy, Dense) else "mask")
    allowed = {"raw", needs} | ({"prototype"} if needs == "mask" else set())
    kinds = {e.kind for e in header.tensors}
    if not kinds <= allowed or (needs and needs not in kinds):
        raise ArtifactError(f"a {strategy.name} file holds {', '.join(sorted(allowed - {None}))}"
                            f" entries{f' (at least one {needs})' if needs else ''}, not "
                            f"{', '.join(sorted(kinds)) or 'none'}")


# ------------------------------------------------------------------------------------------
# Trained weights (the strategies of pemn.competitors): encoded tensors, no masks or seed
# ------------------------------------------------------------------------------------------

_READERS: dict[type, object] = {}


def register_reader(cls: type):
    """Function decorator: ``fn(header, strategy, raw tensors, model, form, device, limit)
    -> model`` builds the model of a trained-weight family whose weights no entry decodes
    alone (:mod:`pemn.pranc`: a seed and coefficients shared by every layer); ``limit``
    bounds the values it may regenerate (``max_elements``, default 2**25)."""
    return file_under(_READERS, cls)


def _trained_model(header: Header, strategy, payload, tensors, model, form: str,
                   device) -> nn.Module:
    """A skeleton filled with decoded weights; the ``train`` form re-applies the strategy."""
    family = strategy.encoding
    for e in header.encoded:  # each in an encoding of the strategy's family
        encoding = get_encoding(e.encoding)
        if (family == "sparse") != encoding.sparse or (family != "sparse"
                                                       and e.encoding != family):
            raise ArtifactError(f"{e.name} is stored as {e.encoding}, which a {strategy.name} "
                                f"model does not use")
        if not encoding.sparse and e.num_kept != e.numel:
            raise ArtifactError(f"{e.name} keeps {e.num_kept} of {e.numel} values, but "
                                f"{e.encoding} stores them all")
    weights = [_decode(e, payload) for e in header.encoded]
    skeleton = _skeleton(header, model, form, device)
    for e, (weight, _) in zip(header.encoded, weights):
        fqn, _, name = e.name.rpartition(".")
        if form == "packed":  # the file's bytes, decoded at every read
            pack_encoded_(skeleton.get_submodule(fqn), name, e.encoding,
                          bytes(payload[e.offset:e.offset + e.length]), e.shape, e.num_kept)
        else:
            with torch.no_grad():
                skeleton.get_parameter(e.name).copy_(weight)
    if form == "train":  # the Parameters above become the latent weights: the same values
        # The file lists the compressed tensors: select exactly those (the ends are among them
        # or not already), then record the strategy as it was.
        apply_(skeleton, replace(strategy, dense_ends=False),
               **_args(strategy, header), include=[_escape_glob(e.name) for e in header.encoded])
        skeleton.pemn_spec.strategy = strategy
        if [t.name for t in skeleton.pemn_spec.tensors] != [e.name for e in header.encoded]:
            raise ArtifactError(f"{strategy.name} compresses other tensors of this skeleton "
                                "than the file lists")
        with torch.no_grad():
            for e, (_, mask) in zip(header.encoded, weights):
                if mask is not None:
                    fqn, _, name = e.name.rpartition(".")
                    getattr(skeleton.get_submodule(fqn), name + MASK).copy_(mask)
    _fill_stored(skeleton, header, tensors)
    return skeleton


def _wrap(e: BaseException) -> ArtifactError:
    """A lower-level error (create_model, a codec, a strategy, memory) as one ArtifactError."""
    if isinstance(e, MemoryError) or "alloc" in str(e).lower():
        return ArtifactError("not enough memory to build the model this file describes")
    kind = "" if isinstance(e, ValueError) else f" ({type(e).__name__})"
    return ArtifactError(f"invalid artifact{kind}: {e}"[:500])


def unpack(data: bytes | bytearray | memoryview, model: nn.Module | None = None, *,
           form: str = "train", device: str | torch.device = "cpu",
           max_elements: int | None = None, verify_key=None) -> nn.Module:
    """Rebuild the model stored in artifact bytes, in eval mode on ``device``.

    Args and raises: as :func:`load`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"unpack needs bytes, got {type(data).__name__}")
    _check_args(form, max_elements)
    try:
        return _unpack(bytes(data), model, form, torch.device(device), max_elements,
                       verify_key)
    except ArtifactError:
        raise
    except (MemoryError, *_LOWER_ERRORS) as e:
        raise _wrap(e) from e


def load(path: str | os.PathLike, model: nn.Module | None = None, *, form: str = "train",
         device: str | torch.device = "cpu", max_elements: int | None = None,
         verify_key=None) -> nn.Module:
    """Read an artifact written by :func:`pemn.save` and fill a model with it.

    Args:
        path: a ``.pemn`` file (regular files only).
        model: a freshly built skeleton of the saved architecture (your constructor, your
            config), filled in place as ``load_state_dict`` would; ``None`` builds the zoo
            model the header names.
        form: ``"train"`` (PEMN layers with scores: fine-tune or keep training), ``"dense"``
            (plain layers, masks baked in; as much memory as the dense model) or ``"packed"``
            (bit-packed masks + prototype, weights rebuilt per forward; least memory).
        device: where the model is built.
        max_elements: refuse files describing more values than this, before allocating
            anything. Default: 2**25 (128 MiB of float32) and at most 1,024 values per byte of
            file (an honest file at keep 0.001 needs ~880).
        verify_key: an author's ed25519 public key (hex, raw bytes or a key object): the file
            must carry a valid signature by it (:mod:`pemn.artifact.signing`).

    Returns:
        The model, in eval mode; ``model.pemn_header`` holds the file's typed header.

    Raises:
        ArtifactError: unreadable, corrupt, hostile or inconsistent file; a skeleton whose
            names or shapes differ (the first bad tensor is named); regenerated weights that
            differ from the trained ones.

    Example:
        >>> model = pemn.load("gpt2.pemn", model=GPT2LMHeadModel(config), form="dense")
    """
    _check_args(form, max_elements)
    data = _read_file(path, max_elements or DEFAULT_MAX_ELEMENTS)
    return unpack(data, model, form=form, device=device, max_elements=max_elements,
                  verify_key=verify_key)


def read_header(source) -> Header:
    """The typed header of an artifact path or bytes (containers checked, no model built)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_file(
        source, DEFAULT_MAX_ELEMENTS)
    try:
        return read_container(data).table
    except ArtifactError:
        raise
    except (MemoryError, *_LOWER_ERRORS) as e:
        raise _wrap(e) from e
