"""The in-memory forms of a loaded artifact, ``train``, ``dense`` and ``packed`` (what each
holds: docs/METHOD.md, "The artifact"), built from a checked :class:`Payload`. Every computed
weight goes through :func:`pemn.masking.compute_`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pemn import rng
from pemn.artifact.bitpack import pack_bits, unpack_bits
from pemn.artifact.header import ArtifactError, Header
from pemn.artifact.weights import get_encoding
from pemn.fill import TensorSpec, file_under
from pemn.masking import BITS, FIXED, GAIN, MASK, SCORES, SUPPORT, VALUES, compute_, scatter_support
from pemn.transform import accepts, apply_, masked_tensors, materialize_, tie_

__all__ = ["FORM_BUILDERS", "Masks", "Payload", "register_rebuild", "rebuilder", "tensor_specs",
           "hold_prototype"]


@functools.lru_cache(maxsize=None)
def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8): row ``b`` holds the 8 bits of byte ``b``, least significant first."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return bits.to(device=device, dtype=dtype)


def _unpack_bits_torch(bits: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``(ceil(n/8),)`` uint8 -> ``(n,)`` 0/1 of ``dtype``, by table (3x shift-and-mask)."""
    return F.embedding(bits.int(), _bit_table(bits.device, dtype)).view(-1)[:n]


def _pack_bits_torch(mask: torch.Tensor) -> torch.Tensor:
    return torch.frombuffer(bytearray(pack_bits(mask)), dtype=torch.uint8).to(mask.device)


def hold_prototype(full: torch.Tensor, proto) -> tuple[torch.Tensor, float | None]:
    """``(values, magnitude)``: what the packed form holds of the prototype vector ``full``
    (docs/METHOD.md, "The artifact")."""
    if proto.tile_to > proto.numel and not proto.permute:
        return full[: proto.numel].clone(), None  # clone: the full vector is not kept alive
    magnitude = full[:1].abs()
    if full.numel() and bool((full.abs() == magnitude).all()):
        return _pack_bits_torch(full > 0), float(magnitude)
    return full, None


def _packed(shape: tuple[int, ...], scale: float, magnitude: float | None, module: nn.Module,
            name: str) -> torch.Tensor:
    """``values[:numel] * unpack(bits)``, times the layer's scale and gain, at every read."""
    values, n = getattr(module, name + VALUES), math.prod(shape)
    bits = getattr(module, name + BITS)
    if magnitude is not None:  # 0/1 mask times -1/+1 signs times the magnitude: exact in fp32
        weight = _unpack_bits_torch(bits, n, torch.float32)
        weight.mul_(_unpack_bits_torch(values, n, torch.float32).mul_(2).sub_(1)).mul_(magnitude)
    else:
        weight = _unpack_bits_torch(bits, n, values.dtype)  # a fresh tensor: multiply in place
        period = min(values.numel(), n)  # copy-order RP repeats a short vector
        whole = n - n % period
        weight[:whole].view(-1, period).mul_(values[:period])  # broadcast, no tiled copy
        weight[whole:].mul_(values[: n - whole])
    if scale != 1.0:
        weight.mul_(scale)
    weight = weight.view(shape)
    gain = module._buffers.get(name + GAIN)
    return weight if gain is None else weight.mul_(gain)


def _decoded(encoding: str, shape: tuple[int, ...], k: int, module: nn.Module,
             name: str) -> torch.Tensor:
    data = getattr(module, name + BITS)
    weight, _ = get_encoding(encoding).decode(data.cpu().numpy().tobytes(), shape, k)
    return weight.to(data.device)


class Masks(list):
    """Decoded masks held as packed bits, unpacked one at a time on use: a bool per weight
    for every layer at once would cost a byte per weight at the peak."""

    def append(self, mask: torch.Tensor) -> None:
        super().append((pack_bits(mask), mask.shape))

    def __getitem__(self, j: int) -> torch.Tensor:
        bits, shape = super().__getitem__(j)
        return unpack_bits(bits, shape.numel()).view(shape)

    def into(self, j: int, out: torch.Tensor) -> torch.Tensor:
        """Mask ``j`` written into ``out`` as 0/1, a bit position at a time (small temporaries)."""
        bits = torch.from_numpy(np.frombuffer(super().__getitem__(j)[0], np.uint8).copy())
        flat = out.view(-1)
        for b in range(8):  # bitpack's order: element i is bit i % 8 of byte i // 8
            dst = flat[b::8]
            dst.copy_(bits[:len(dst)].bitwise_right_shift(b).bitwise_and_(1))
        return out


def tensor_specs(header: Header) -> list[TensorSpec]:
    """The masked tensors, as ``apply_`` selected them at save time."""
    return [TensorSpec(m.name, m.shape, m.fan_in) for m in header.masked]


def check_regenerated(header: Header, digests) -> None:
    if list(digests) != list(header.prototype_sha256):
        raise ArtifactError(
            f"regenerated weights differ from the ones that were trained (generator "
            f"{header.generator} in the file, {rng.GENERATOR_ID} here); refusing to load a "
            "different model. Re-save on the training machine with store_prototype=True")


@dataclass
class Payload:
    """A checked file. A fill has ``plan``, ``masks``, ``gains`` (None without one) and
    ``stored`` (the prototypes, None when regenerated); a trained family ``weights`` (each a
    ``(weight, mask or None)``) and the ``payload``, or ``rebuild`` (the strategy its
    :func:`register_rebuild` function returned); Dense has neither."""

    header: Header
    strategy: object
    tensors: dict[str, torch.Tensor]
    plan: object = None
    masks: Masks | None = None
    stored: list[np.ndarray] | None = None
    gains: list | None = None
    weights: list | None = None
    payload: memoryview | None = None
    rebuild: object = None

    def prototype(self, i: int) -> torch.Tensor:
        """Prototype ``i``: stored, or regenerated alone and checked against its SHA-256."""
        if self.stored is not None:
            return torch.from_numpy(self.stored[i])
        proto, seed = self.plan.prototypes[i], self.header.seed
        values = proto.expand(proto.draw(seed), seed)
        if rng.sha256_f32(values) != self.header.prototype_sha256[i]:
            check_regenerated(self.header, ())  # raises, naming both generators
        return torch.from_numpy(values)

    def mask(self, j: int) -> torch.Tensor:
        """Mask ``j`` over all positions (a stored one covers its seeded support; others 0)."""
        mask, m = self.masks[j], self.header.masked[j]
        support = self.plan.support(j, m.numel, self.header.seed)
        if support is None:
            return mask
        return scatter_support(mask, torch.from_numpy(support).view(m.shape))


_REBUILDERS: dict[type, object] = {}


def register_rebuild(cls: type):
    """Function decorator ``fn(p, form) -> strategy`` for a trained-weight family whose
    weights no entry decodes alone (:mod:`pemn.pranc`): it checks the :class:`Payload` ``p``
    and returns the strategy ``apply_`` rebuilds the layers with (docs/METHOD.md, section 5)."""
    return file_under(_REBUILDERS, cls)


def rebuilder(strategy):
    """The :func:`register_rebuild` function of ``strategy``'s family, or None."""
    return next((_REBUILDERS[t] for t in type(strategy).__mro__ if t in _REBUILDERS), None)


def _fill_stored(model: nn.Module, p: Payload) -> None:
    """Every stored tensor and tie, then the neutral statistics of folded norms."""
    tensors = {**p.tensors, **{a: p.tensors[t] for a, t in p.header.ties if t in p.tensors}}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name in tensors:
                t.copy_(tensors[name])
        for fqn in p.header.folded_norms:
            norm = model.get_submodule(fqn)
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
                raise ArtifactError(f"folded norm {fqn!r} is a {type(norm).__name__}, not a "
                                    "BatchNorm layer")
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # sqrt(running_var + eps) = 1
            if norm.num_batches_tracked is not None:
                norm.num_batches_tracked.zero_()


def _copy_weights(model: nn.Module, p: Payload) -> None:
    with torch.no_grad():
        for e, (weight, _) in zip(p.header.encoded, p.weights):
            model.get_parameter(e.name).copy_(weight)


def _apply_to(model: nn.Module, strategy, p: Payload, names: list[str]) -> None:
    """``apply_`` with the file's arguments, on exactly the tensors ``names`` (glob-escaped)."""
    escaped = ["".join(f"[{c}]" if c in "*?[]" else c for c in n) for n in names]
    apply_(model, strategy, **{k: getattr(p.header, k) for k in accepts(p.strategy)},
           include=escaped or None)


def _train_form(model: nn.Module, p: Payload) -> nn.Module:
    """PEMN layers again: apply_ regenerates, the masks set the scores (or the weights)."""
    header = p.header
    if p.weights is not None or p.rebuild is not None:
        if p.weights is not None:
            _copy_weights(model, p)
        # select exactly the file's tensors (the dense ends among them or not), then record
        # the strategy as it was
        _apply_to(model, replace(p.rebuild or p.strategy, dense_ends=False), p,
                  [e.name for e in header.encoded])
        model.pemn_spec.strategy = p.strategy
        if [t.name for t in model.pemn_spec.tensors] != [e.name for e in header.encoded]:
            raise ArtifactError(f"{p.strategy.name} compresses other tensors of this skeleton "
                                "than the file lists")
        with torch.no_grad():
            for e, (_, mask) in zip(header.encoded, p.weights or ()):
                if mask is not None:
                    model.get_buffer(e.name + MASK).copy_(mask)
    else:
        if p.plan is not None and p.stored is None:  # validate before use: a file whose seed
            for i in range(len(p.plan.prototypes)):  # is wrong costs one prototype, not a model
                p.prototype(i)
        names = [m.name for m in header.masked]
        _apply_to(model, p.strategy, p, names)
        spec = model.pemn_spec
        if p.plan is not None:
            if spec.tensors != tensor_specs(header):
                raise ArtifactError("apply_ selects other tensors than the file lists; register "
                                    "the same maskable layers (pemn.register_maskable) as at save")
            tied = {a: t for a, t in header.ties if t in names}
            if spec.ties != tied:
                raise ArtifactError(f"the skeleton ties {spec.ties} but the file ties {tied}")
            if p.stored is None:
                check_regenerated(header, spec.prototype_sha256)
            _set_masks(model, spec, p)
    _fill_stored(model, p)
    return model


def _set_masks(model: nn.Module, spec, p: Payload) -> None:
    layers = list(masked_tensors(model))
    with torch.no_grad():
        if p.stored is not None:  # a stored prototype replaces what apply_ generated
            for (_, module, name), fixed in zip(layers, spec.plan.layer_values(
                    [torch.from_numpy(v) for v in p.stored], spec.tensors)):
                support = module._buffers.get(name + SUPPORT)
                fixed = fixed if support is None else fixed[support.cpu()]
                getattr(module, name + FIXED).copy_(fixed)
        for j, (_, module, name) in enumerate(layers):
            # kept 2, dropped 1: top-k is the mask, which decoded to exactly its kept count
            # (so no top-k and its temporaries here)
            p.masks.into(j, getattr(module, name + SCORES)).add_(1)


def _dense_form(model: nn.Module, p: Payload) -> nn.Module:
    """A plain model: each masked weight is ``fixed * mask``, written into the skeleton."""
    header = p.header
    if p.rebuild is not None:
        return materialize_(_train_form(model, p))
    if p.weights is not None:
        _copy_weights(model, p)
    elif p.plan is not None:
        with torch.no_grad():
            for i in range(len(p.plan.prototypes)):  # one prototype alive at a time
                prototype = p.prototype(i)
                for j in (j for j, src in enumerate(p.plan.sources) if src == i):
                    # its fixed values as FillPlan.layer_values gives them (scaled in float32,
                    # then rounded once to the skeleton's dtype), then the mask, in place
                    m, scale = header.masked[j], p.plan.scale(j)
                    weight = model.get_parameter(m.name)
                    view = prototype[:m.numel].view(m.shape)
                    weight.copy_(view if scale == 1.0 else view * scale)
                    weight.mul_(p.mask(j).to(weight.device))
                    if p.gains[j] is not None:
                        weight.mul_(p.gains[j].to(weight))
            masked = {m.name: model.get_parameter(m.name) for m in header.masked}
            for alias, target in header.ties:  # an untied skeleton still gets every alias
                if target in masked and model.get_parameter(alias) is not masked[target]:
                    model.get_parameter(alias).copy_(masked[target])
    _fill_stored(model, p)
    return model


def _packed_form(model: nn.Module, p: Payload) -> nn.Module:
    """Bits + prototype per layer (a trained family: its file bytes), rebuilt every forward."""
    if p.rebuild is not None:  # as the family's rebuild strategy holds it, nothing trains
        model = _train_form(model, p)
        gains = {e.name + GAIN for e in p.header.encoded}
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in gains:
                param.requires_grad_(False)
        return model
    _fill_stored(model, p)
    for e in p.header.encoded if p.weights is not None else ():  # decoded at every read
        fqn, _, name = e.name.rpartition(".")
        module = model.get_submodule(fqn)
        data = np.frombuffer(p.payload[e.offset:e.offset + e.length], np.uint8).copy()
        bits = torch.from_numpy(data).to(getattr(module, name).device)
        compute_(module, name, functools.partial(_decoded, e.encoding, e.shape, e.num_kept),
                 {BITS: bits})
    if p.plan is None:
        return model
    device = next(iter(model.state_dict().values())).device
    # what each prototype really is, held once and shared by its layers
    shared = [hold_prototype(p.prototype(i).to(device), proto)  # one full vector at a time
              for i, proto in enumerate(p.plan.prototypes)]
    owners = {}
    for i, (m, src) in enumerate(zip(p.header.masked, p.plan.sources)):
        fqn, _, name = m.name.rpartition(".")
        mask = p.mask(i).to(device)  # its bits over every position: the support costs nothing
        module, (values, magnitude), gain = model.get_submodule(fqn), shared[src], p.gains[i]
        stored = {BITS: _pack_bits_torch(mask)} | (
            {} if gain is None else {GAIN: gain.to(device, torch.float32)})
        fn = functools.partial(_packed, m.shape, p.plan.scale(i), magnitude)
        compute_(module, name, fn, stored, {VALUES: values})
        owners[m.name] = (module, name)
    for alias, target in p.header.ties:
        if target in owners:
            fqn, _, name = alias.rpartition(".")
            tie_(model.get_submodule(fqn), name, *owners[target])
    return model


FORM_BUILDERS = {"train": _train_form, "dense": _dense_form, "packed": _packed_form}
