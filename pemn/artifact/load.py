"""Read an artifact into a model: the caller's skeleton, or the zoo model its header names.

Every file is hostile: what is checked, and in which order, is in ``docs/THREAT_MODEL.md``;
any failure raises one :class:`ArtifactError` naming the first problem.
"""
from __future__ import annotations

import os
import stat
import struct

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pemn import rng
from pemn.artifact.codec import get_codec
from pemn.artifact.format import MAX_HEADER_BYTES, PREAMBLE_BYTES, read_container
from pemn.artifact.forms import FORM_BUILDERS, Masks, Payload, rebuilder, tensor_specs
from pemn.artifact.header import DTYPES, INT8_TENSOR, MAX_ELEMENTS, ArtifactError, Entry, Header
from pemn.artifact.pack import unique_tensors
from pemn.artifact.weights import TrainedWeights, get_encoding
from pemn.fill import Dense, mask_size, plan_fill, strategy_from_dict
from pemn.masking import GAIN, num_kept
from pemn.models import create_model

__all__ = ["load", "unpack", "read_header", "guarded", "zoo_skeleton", "FORMS",
           "DEFAULT_MAX_ELEMENTS"]

# 128 MiB of float32: every zoo model fits (ViT-B's 86M needs max_elements); a hostile file
# within the defaults costs at most 2 s and 300 MB (docs/THREAT_MODEL.md)
DEFAULT_MAX_ELEMENTS = 2**25
VALUES_PER_BYTE = 1024  # default ceiling on values per file byte (densest honest: ~880)
FORMS = ("train", "dense", "packed")
MAX_META_CALLS = 2**15  # ~0.5 s; the largest zoo model makes 1,717 (resnet56)
_LOWER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
                 OverflowError, RecursionError, struct.error, UnicodeError)


def _read_file(path, max_elements: int) -> bytes:
    """The bytes of a regular file; FIFOs, devices and oversized files are refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, TypeError, ValueError) as e:
        raise ArtifactError(f"cannot read artifact {path}: {getattr(e, 'strerror', None) or e}"
                            ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a directory
        os.close(fd)
        raise ArtifactError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        # masks <= 1 bit per value and raw tensors <= 8 bytes per value, plus the header
        limit = PREAMBLE_BYTES + MAX_HEADER_BYTES + 9 * max_elements
        if info.st_size > limit:
            raise ArtifactError(f"{path} is {info.st_size} bytes, more than a model of "
                                f"max_elements={max_elements} values can take ({limit})")
        data = f.read(info.st_size + 1)  # a buffer of the file's size, not of the limit
    if len(data) > info.st_size:
        raise ArtifactError(f"{path} grew while being read")
    return data


def guarded(source, fn):
    """``fn(data)`` for the bytes of ``source`` (a path or bytes), any lower-level error
    (create_model, a codec, a strategy, memory) raised as one :class:`ArtifactError`."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_file(
        source, DEFAULT_MAX_ELEMENTS)
    try:
        return fn(data)
    except ArtifactError:
        raise
    except (MemoryError, *_LOWER_ERRORS) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e).lower():
            raise ArtifactError("not enough memory to build the model this file describes") from e
        kind = "" if isinstance(e, ValueError) else f" ({type(e).__name__})"
        raise ArtifactError(f"invalid artifact{kind}: {e}"[:500]) from e


_INIT_FNS = {getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and n[0] != "_"} | {
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
    torch.Tensor.exponential_, torch.Tensor.cauchy_, torch.Tensor.log_normal_,
    torch.Tensor.geometric_}


class _MetaBuild(TorchFunctionMode):
    """Skips weight init (on meta it imports torch._dynamo, ~1 s); hostile kwargs: ``budget``."""

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


def zoo_skeleton(header: Header) -> nn.Module:
    """The zoo model the header names, on the meta device, checked against the file. Its
    build may make 16 torch calls per entry the file lists, plus 1,024, and never more than
    :data:`MAX_META_CALLS` (a larger architecture loads with ``model=`` its skeleton)."""
    if header.model is None:
        raise ArtifactError("this file was saved from a model outside pemn.models; build the "
                            "architecture yourself and pass it: pemn.load(path, model=MyNet())")
    budget = min(16 * len(header.names) + 1024, MAX_META_CALLS)
    with _MetaBuild(budget), torch.device("meta"):
        model = create_model(header.model["name"], **header.model["kwargs"])
    _check_skeleton(header, model, header.model["name"])
    return model


def _check_skeleton(header: Header, model: nn.Module, what: str) -> None:
    """Every name and shape of the file against the skeleton, then each stored dtype."""
    expected = {e.name: e.shape for e in header.tensors if e.kind != "prototype"}
    expected.update({alias: expected[target] for alias, target in header.ties})
    masked = {m.name for m in header.masked} | {e.name for e in header.encoded}
    for name in masked | {a for a, t in header.ties if t in masked}:
        expected.pop(name + GAIN, None)  # a skeleton has no learned gains (_gains checks them;
        # an encoded tensor's: its family's rebuilder, else _payload refuses them)
    for fqn in header.folded_norms:  # statistics a folded file does not store
        prefix = f"{fqn}." if fqn else ""
        channels = expected.get(prefix + "weight")
        if channels is None:
            raise ArtifactError(f"folded norm {fqn!r} has no stored weight")
        expected.update({prefix + "running_mean": channels, prefix + "running_var": channels,
                         prefix + "num_batches_tracked": ()})
    state = model.state_dict(keep_vars=True)
    for name, t in state.items():
        if name not in expected:
            raise ArtifactError(f"{what} has tensor {name!r} {list(t.shape)}, which the file "
                                "does not hold: the file was saved from another architecture")
        if expected[name] != tuple(t.shape):
            raise ArtifactError(f"tensor {name!r} is {list(t.shape)} in {what} but "
                                f"{list(expected[name])} in the file")
    missing = [n for n in expected if n not in state]
    if missing:
        raise ArtifactError(f"the file holds tensor {missing[0]!r} {list(expected[missing[0]])}, "
                            f"which {what} does not have")
    for t in header.raw:  # the skeleton's dtype, or a float of no wider range (fp16 into fp32)
        have, want = DTYPES[t.dtype], getattr(state.get(t.name), "dtype", None)
        if want is not None and have != want and not (
                have.is_floating_point and want.is_floating_point
                and torch.finfo(have).max <= torch.finfo(want).max):
            raise ArtifactError(f"tensor {t.name!r} is stored as {have}, which the skeleton's "
                                f"{want} cannot hold")


def _skeleton(header: Header, model: nn.Module | None, form: str,
              device: torch.device) -> nn.Module:
    """The caller's skeleton (moved to ``device``), or the zoo model allocated from meta."""
    if model is None:
        return _allocate(zoo_skeleton(header), header, form, device)
    if not isinstance(model, nn.Module):
        raise ArtifactError(f"model must be an nn.Module skeleton, got {type(model).__name__}")
    if getattr(model, "pemn_spec", None) is not None:
        raise ArtifactError("the skeleton already has PEMN applied; pass a freshly built "
                            "model (as its constructor returns it)")
    _check_skeleton(header, model, "the skeleton")
    return model.to(device)


def _allocate(meta: nn.Module, header: Header, form: str, device: torch.device) -> nn.Module:
    """Uninitialised storage for a meta model (the packed form's masked weights: empty)."""
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
    ties = unique_tensors(meta.named_parameters(remove_duplicate=False))[1]
    # not to_empty: its empty_like on meta tensors imports sympy (~35 MB resident)
    model = meta._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    for alias, name in ties:  # _apply gives each module its own Parameter: tie them again
        fqn, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(fqn), attr, model.get_parameter(name))
    return model


def _decode(e: Entry, payload: memoryview):
    """One entry's values: a tensor, a mask, a ``(weight, mask or None)`` or a prototype."""
    return _DECODERS[e.kind](e, payload[e.offset:e.offset + e.length])


def _raw(e: Entry, data: memoryview) -> torch.Tensor:
    if e.encoding == INT8_TENSOR:  # the int8 weight encoding of one row, checked there
        try:
            return get_encoding("int8").decode(bytes(data), (1, e.numel), e.numel)[0].view(
                e.shape)
        except ArtifactError as err:
            raise ArtifactError(f"tensor {e.name} ({INT8_TENSOR}): {err}") from None
    raw = np.frombuffer(data, dtype="<i2" if e.dtype == "bf16" else e.dtype, count=e.numel)
    value = torch.from_numpy(raw.astype(raw.dtype.newbyteorder("="))).view(e.shape)
    value = value.view(DTYPES[e.dtype])  # bfloat16 from its 16 bits
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ArtifactError(f"tensor {e.name} holds NaN or infinite values")
    return value


_DECODERS = {
    "raw": _raw,
    "prototype": lambda e, data: _raw(e, data).numpy(),
    "mask": lambda e, data: get_codec(e.encoding).decode(data, e.numel, e.num_kept).view(e.shape),
    "weight": lambda e, data: get_encoding(e.encoding).decode(bytes(data), e.shape, e.num_kept),
}


def _decode_masks(header: Header, plan, payload: memoryview) -> Masks:
    """Each mask, of its tensor's shape, or 1-D over its seeded support (``mask_size``)."""
    out = Masks()
    for m in header.masked:
        n = mask_size(m.numel, plan.pruned)
        if m.num_kept != num_kept(n, header.keep_ratio):
            raise ArtifactError(f"mask of {m.name} keeps {m.num_kept} values, keep_ratio "
                                f"{header.keep_ratio} needs {num_kept(n, header.keep_ratio)} "
                                f"(of its {n} masked positions)")
        out.append(_decode(m, payload) if n == m.numel else get_codec(m.encoding).decode(
            payload[m.offset:m.offset + m.length], n, m.num_kept))
    return out


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


def _trained_weights(header: Header, strategy, payload: memoryview) -> list:
    """Each encoded weight, in an encoding of the strategy's family, decoded."""
    family = strategy.encoding
    for e in header.encoded:
        encoding = get_encoding(e.encoding)
        if (family == "sparse") != encoding.sparse or (family != "sparse" and e.encoding != family):
            raise ArtifactError(f"{e.name} is stored as {e.encoding}, which a {strategy.name} "
                                f"model does not use")
        if not encoding.sparse and e.num_kept != e.numel:
            raise ArtifactError(f"{e.name} keeps {e.num_kept} of {e.numel} values, but "
                                f"{e.encoding} stores them all")
    return [_decode(e, payload) for e in header.encoded]


def _check_kinds(header: Header, strategy) -> None:
    """Raw tensors, and masks (and prototypes) for a fill or weights for a trained family."""
    needs = "weight" if isinstance(strategy, TrainedWeights) else (
        None if isinstance(strategy, Dense) else "mask")
    allowed = {"raw", needs} | ({"prototype"} if needs == "mask" else set())
    kinds = {e.kind for e in header.tensors}
    if not kinds <= allowed or (needs and needs not in kinds):
        raise ArtifactError(f"a {strategy.name} file holds {', '.join(sorted(allowed - {None}))}"
                            f" entries{f' (at least one {needs})' if needs else ''}, not "
                            f"{', '.join(sorted(kinds)) or 'none'}")


def _payload(header: Header, payload: memoryview, form: str) -> Payload:
    """Every entry decoded and checked against the strategy, before any skeleton exists."""
    strategy = strategy_from_dict(header.strategy)
    _check_kinds(header, strategy)
    p = Payload(header, strategy, {e.name: _decode(e, payload) for e in header.raw})
    rebuild = rebuilder(strategy)
    if rebuild is not None:  # weights no entry decodes alone (PRANC): the family checks p
        p.rebuild = rebuild(p, form)
    elif isinstance(strategy, TrainedWeights):
        gains = {e.name + GAIN for e in header.encoded} & {*p.tensors, *dict(header.ties)}
        if gains:
            raise ArtifactError(f"the file holds a gain {min(gains)} but {strategy.name} has "
                                "none")
        p.weights, p.payload = _trained_weights(header, strategy, payload), payload
    elif not isinstance(strategy, Dense):
        p.plan = plan_fill(strategy, tensor_specs(header))
        p.masks = _decode_masks(header, p.plan, payload)
        p.stored = _stored_prototypes(header, p.plan, payload)
        p.gains = _gains(header, strategy, p.tensors)
    return p


def _check_args(form: str, max_elements) -> None:
    if form not in FORMS:
        raise ArtifactError(f"unknown form {form!r}; use one of {FORMS}")
    if max_elements is not None and (isinstance(max_elements, bool) or not isinstance(
            max_elements, int) or not 0 < max_elements <= MAX_ELEMENTS):
        raise ArtifactError(f"max_elements must be an integer in [1, {MAX_ELEMENTS}], got "
                            f"{max_elements!r}")


def _element_limit(max_elements: int | None, num_bytes: int) -> int:
    """``max_elements``, or by default 2**25 and at most 1,024 values per byte of file."""
    if max_elements is not None:
        return max_elements
    return min(DEFAULT_MAX_ELEMENTS, max(2**16, VALUES_PER_BYTE * num_bytes))


def _unpack(data: bytes, model, form: str, device, max_elements, verify_key) -> nn.Module:
    container = read_container(data)
    if verify_key is not None:
        from pemn.artifact.signing import verify
        verify(data, verify_key)
    header = container.table
    limit = _element_limit(max_elements, len(data))
    if header.num_elements > limit:
        raise ArtifactError(f"the file describes {header.num_elements:,} values, more than "
                            f"max_elements={limit:,} ({len(data):,} bytes); pass a larger "
                            "max_elements to load a model this large or this sparse")
    p = _payload(header, container.payload, form)
    # a family rebuilt by apply_ (forms.register_rebuild) needs the weights' real shapes
    skeleton = _skeleton(header, model, form if p.rebuild is None else "train", device)
    out = FORM_BUILDERS[form](skeleton, p)
    if form != "train" and getattr(out, "pemn_spec", None) is not None:
        del out.pemn_spec
    out.pemn_header = header
    return out.eval()


def unpack(data: bytes | bytearray | memoryview, model: nn.Module | None = None, *,
           form: str = "train", device: str | torch.device = "cpu",
           max_elements: int | None = None, verify_key=None) -> nn.Module:
    """:func:`load` for artifact bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"unpack needs bytes, got {type(data).__name__}")
    _check_args(form, max_elements)
    return guarded(data, lambda d: _unpack(d, model, form, torch.device(device), max_elements,
                                           verify_key))


def load(path: str | os.PathLike, model: nn.Module | None = None, *, form: str = "train",
         device: str | torch.device = "cpu", max_elements: int | None = None,
         verify_key=None) -> nn.Module:
    """Read an artifact written by :func:`pemn.save` into a model, in eval mode on ``device``
    (``model.pemn_header``: the file's typed header).

    Args:
        model: a freshly built skeleton of the saved architecture, filled in place; ``None``
            builds the zoo model the header names.
        form: ``"train"``, ``"dense"`` or ``"packed"`` (docs/METHOD.md, "The artifact").
        max_elements: refuse files describing more values, before allocating anything
            (default: 2**25, and at most 1,024 values per byte of file).
        verify_key: an author's ed25519 public key (hex, raw bytes or a key object): the file
            must carry a valid signature by it (docs/THREAT_MODEL.md, "Signing").

    Raises:
        ArtifactError: an unreadable, corrupt, hostile or inconsistent file, or a skeleton
            whose names or shapes differ (the first is named).
    """
    _check_args(form, max_elements)
    data = _read_file(path, max_elements or DEFAULT_MAX_ELEMENTS)
    return unpack(data, model, form=form, device=device, max_elements=max_elements,
                  verify_key=verify_key)


def read_header(source) -> Header:
    """The typed header of an artifact path or bytes (containers checked, no model built)."""
    return guarded(source, lambda data: read_container(data).table)
