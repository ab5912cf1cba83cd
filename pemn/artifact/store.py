"""Pack a trained PEMN model into seed + masks + other tensors, and rebuild it exactly.

``pack`` writes what cannot be recomputed (layout in :mod:`pemn.artifact.format`); ``unpack``
rebuilds the architecture with ``create_model``, re-applies PEMN to exactly the recorded
tensors with ``apply_`` (which regenerates the frozen random weights from the seed), checks the
regenerated values against their SHA-256, sets every mask and loads the other tensors. The
loaded model's eval-mode logits are bit-identical to the packed model's on the same device.

A loaded mask is set through its scores: ``scores = mask + 1`` (kept 2, dropped 1), so the
top-k of ``|scores|`` is exactly the stored mask (the stored kept count *is* ``num_kept``).
The learned score magnitudes are not stored: an artifact is for inference; resume training
from a checkpoint instead.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pemn import rng
from pemn.artifact.codec import choose_codec, get_codec, list_codecs
from pemn.artifact.format import (
    FORMAT_VERSION,
    MAX_ELEMENTS,
    ArtifactError,
    _validate_model,
    read_container,
    write_container,
)
from pemn.fill import (
    STRATEGIES,
    Dense,
    FillPlan,
    TensorSpec,
    plan_fill,
    strategy_from_dict,
    strategy_to_dict,
)
from pemn.masking import current_mask, num_kept
from pemn.models import create_model
from pemn.transform import apply_, masked_tensors

__all__ = ["pack", "unpack", "save", "load", "describe", "ArtifactError",
           "STORE_PROTOTYPE_MAX_BYTES"]

# "auto" stores the prototype values verbatim when they take at most this many bytes (RP at
# small ratios: 66 values = 264 B for ConvMixer-256 at 1e-3). Such a file no longer depends on
# the float path of the generator, for less than the cost of a few header lines.
STORE_PROTOTYPE_MAX_BYTES = 1024
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LOWER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
                 OverflowError, RecursionError, struct.error, UnicodeError)


# ------------------------------------------------------------------------------------------
# Helpers shared by pack and unpack
# ------------------------------------------------------------------------------------------

def _dtype_code(name: str, t: torch.Tensor) -> str:
    if t.dtype == torch.float32:
        return "<f4"
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise ArtifactError(f"tensor {name} is {t.dtype}; artifacts store fp32 models, call "
                            "model.float() before saving")
    return "|u1" if t.dtype == torch.bool else "<i8"


def _other_tensors(model: nn.Module, exclude: set[str]) -> list[tuple[str, torch.Tensor]]:
    """Every state_dict entry not in ``exclude``, in state_dict order."""
    return [(k, v) for k, v in model.state_dict().items() if k not in exclude]


def _layout(entries) -> tuple[list[tuple[str, str, tuple[int, ...]]], str]:
    lines = [(k, _dtype_code(k, v), tuple(v.shape)) for k, v in entries]
    text = "\n".join(f"{k}:{code}:{','.join(map(str, shape))}" for k, code, shape in lines)
    return lines, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _layout_num_bytes(lines) -> int:
    return sum(math.prod(shape) * int(code[-1]) for _, code, shape in lines)


def _escape_glob(name: str) -> str:
    """``apply_`` takes glob patterns; an exact name must not match anything else."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------
# pack
# ------------------------------------------------------------------------------------------

def _check_packable(model: nn.Module):
    if not isinstance(model, nn.Module):
        raise ArtifactError(f"pack needs an nn.Module, got {type(model).__name__}")
    args = getattr(model, "model_args", None)
    if not (isinstance(args, dict) and isinstance(args.get("name"), str)
            and isinstance(args.get("kwargs"), dict)):
        raise ArtifactError("the model has no model_args; build it with "
                            "pemn.models.create_model(name, ...) so a loader can rebuild it")
    spec = getattr(model, "pemn_spec", None)
    if spec is None:
        raise ArtifactError("the model has no PEMN spec; call pemn.apply_(model, strategy, "
                            "keep_ratio, seed) before training and saving it")
    if type(spec.strategy) not in STRATEGIES.values():
        raise ArtifactError(f"{type(spec.strategy).__name__} models have trained weights and "
                            "no seed; artifacts hold PEMN models (Dense, Mask, OneLayer, MP, RP). "
                            "Save a baseline with torch.save(model.state_dict()) or export it")
    return args, spec


def _check_fixed(model: nn.Module, spec) -> list[np.ndarray]:
    """Each prototype as stored in the model, after checking every fixed buffer against it."""
    layers = list(masked_tensors(model))
    if [f"{f}.{n}" if f else n for f, _, n in layers] != [t.name for t in spec.tensors]:
        raise ArtifactError("the masked tensors no longer match model.pemn_spec; was the model "
                            "modified after pemn.apply_?")
    protos: list[np.ndarray | None] = [None] * len(spec.plan.prototypes)
    for (_, module, name), ts, src in zip(layers, spec.tensors, spec.plan.sources):
        fixed = getattr(module, name + "_fixed").detach().cpu()
        if fixed.dtype != torch.float32:
            raise ArtifactError(f"{ts.name} is {fixed.dtype}; call model.float() before saving")
        proto = spec.plan.prototypes[src]
        if ts.numel == max(proto.numel, proto.tile_to):  # this layer holds the whole prototype
            protos[src] = fixed.reshape(-1).numpy()
    for i, values in enumerate(protos):
        if values is None or rng.sha256_f32(values) != spec.prototype_sha256[i]:
            raise ArtifactError(f"the frozen weights of prototype {i} no longer match the seed; "
                                "they must stay as pemn.apply_ generated them")
    for (_, module, name), ts, src in zip(layers, spec.tensors, spec.plan.sources):
        fixed = getattr(module, name + "_fixed").detach().cpu().reshape(-1)
        if not torch.equal(fixed, torch.from_numpy(protos[src][: ts.numel])):
            raise ArtifactError(f"the frozen weights of {ts.name} were modified after apply_")
    return protos


def _encode_masks(model: nn.Module, spec, codec: str) -> tuple[list, bytes]:
    if codec != "auto" and codec not in list_codecs():
        raise ArtifactError(f"unknown mask codec {codec!r}; use 'auto' or one of {list_codecs()}")
    entries, chunks = [], []
    for (_, module, name), ts in zip(masked_tensors(model), spec.tensors):
        mask = current_mask(module, name)
        k = num_kept(ts.numel, spec.keep_ratio)
        assert int(mask.sum()) == k, "top-k selects exactly num_kept values"
        name_ = choose_codec(ts.numel, k) if codec == "auto" else codec
        data = get_codec(name_).encode(mask)
        entries.append([name_, k, len(data)])
        chunks.append(data)
    return entries, b"".join(chunks)


def _prototype_section(protos, spec, store: bool | None) -> tuple[bool, list[int], bytes]:
    drawn = [p.drawn(v, spec.seed) for v, p in zip(protos, spec.plan.prototypes)]
    num_bytes = 4 * sum(len(d) for d in drawn)
    if store is None:
        store = num_bytes <= STORE_PROTOTYPE_MAX_BYTES
    if not store:
        return False, [], b""
    for d, p, digest in zip(drawn, spec.plan.prototypes, spec.prototype_sha256):
        assert rng.sha256_f32(p.expand(d, spec.seed)) == digest, "tiling is invertible"
    return True, [len(d) for d in drawn], b"".join(d.astype("<f4").tobytes() for d in drawn)


def _model_header(args: dict) -> dict:
    header = {"model": {"name": args["name"], "kwargs": dict(args["kwargs"])}}
    try:
        header["model"] = _json_roundtrip(header["model"])
        _validate_model(header)
    except ArtifactError as e:
        raise ArtifactError(f"model_args cannot be stored: {e}") from None
    return header["model"]


def _json_roundtrip(value):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"not JSON-serialisable ({e})") from None


def pack(model: nn.Module, *, codec: str = "auto", store_prototype: bool | None = None) -> bytes:
    """Serialise a PEMN model into artifact bytes (layout: :mod:`pemn.artifact.format`).

    Args:
        model: built by ``pemn.models.create_model`` and prepared by ``pemn.apply_``.
        codec: mask codec for every mask, or ``"auto"``: per mask the smallest of
            ``pemn.artifact.codec.list_codecs()`` (raw bits at keep 0.5, rANS when sparser).
        store_prototype: store the prototype values instead of regenerating them from the
            seed; ``None`` (auto) stores them when they take at most
            ``STORE_PROTOTYPE_MAX_BYTES`` (1 KB), e.g. RP 1e-3. ``Dense`` stores all weights.

    Returns:
        The file bytes.

    Raises:
        ArtifactError: the model was not built by ``create_model`` / ``apply_``, its frozen
            weights were modified, it is not fp32, or ``codec`` is unknown.

    Example:
        >>> model = apply_(create_model("mlp_paper"), RP(ratio=0.01), keep_ratio=0.5)
        >>> len(pack(model)) < 4 * stats(model).num_masked // 20
        True
    """
    args, spec = _check_packable(model)
    dense = isinstance(spec.strategy, Dense)
    header = {"format": "pemn-artifact", "format_version": FORMAT_VERSION,
              "model": _model_header(args)}
    header["pemn"] = {"strategy": strategy_to_dict(spec.strategy), "keep_ratio": spec.keep_ratio,
                      "seed": spec.seed, "generator": spec.generator,
                      "prototype_sha256": list(spec.prototype_sha256)}
    header["tensors"] = [[t.name, list(t.shape)] for t in spec.tensors]
    sections = {"masks": b"", "prototype": b""}
    header["masks"], stored, counts = [], False, []
    if not dense:
        protos = _check_fixed(model, spec)
        header["masks"], sections["masks"] = _encode_masks(model, spec, codec)
        stored, counts, sections["prototype"] = _prototype_section(protos, spec, store_prototype)
    header["prototype"] = {"stored": stored, "num_values": counts}
    exclude = set() if dense else {t.name + s for t in spec.tensors for s in ("_fixed", "_scores")}
    others = _other_tensors(model, exclude)
    lines, digest = _layout(others)
    header["other"] = {"num_tensors": len(lines), "layout_sha256": digest}
    sections["other"] = b"".join(v.detach().cpu().numpy().astype(code).tobytes()
                                 for (_, v), (_, code, _) in zip(others, lines))
    header["written_by"] = {"pemn": _version("pemn"), "torch": torch.__version__}
    return write_container(header, sections)


def save(model: nn.Module, path: str | os.PathLike, *, codec: str = "auto",
         store_prototype: bool | None = None) -> int:
    """Write :func:`pack` ``(model)`` to ``path`` atomically; returns the bytes written.

    Example:
        >>> save(model, "convmixer_rp.pemn")  # ConvMixer-256/8, RP 1e-3, keep 0.5
        144412
    """
    data = pack(model, codec=codec, store_prototype=store_prototype)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


# ------------------------------------------------------------------------------------------
# unpack: every step checks the file against the architecture before using it
# ------------------------------------------------------------------------------------------

_INIT_FNS = {getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and n[0] != "_"} | {
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
    torch.Tensor.exponential_, torch.Tensor.cauchy_, torch.Tensor.log_normal_,
    torch.Tensor.geometric_}


class _MetaBuild(TorchFunctionMode):
    """Skip weight initialisation, and stop after ``budget`` torch calls.

    Initialising meta tensors is useless, and torch implements random meta ops through its
    decompositions, whose first use imports torch._dynamo (~1 s). The budget bounds the work a
    hostile ``depth=65536`` can cause: the registered models make at most 5.25 torch calls per
    state_dict entry, and the header says how many entries there are.
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


def _build_meta(header: dict) -> nn.Module:
    """The architecture on the meta device: shapes without allocating any values."""
    num_entries = len(header["tensors"]) + header["other"]["num_tensors"]
    with _MetaBuild(budget=8 * num_entries + 256), torch.device("meta"):
        return create_model(header["model"]["name"], **header["model"]["kwargs"])


def _check_architecture(header: dict, dense: bool) -> list:
    """Check the header's tensors and other layout against the architecture (no allocation)."""
    meta = _build_meta(header)
    state = meta.state_dict()
    if sum(v.numel() for v in state.values()) > MAX_ELEMENTS:
        raise ArtifactError(f"architecture has more than {MAX_ELEMENTS} values; refusing it")
    names = [name for name, _ in header["tensors"]]
    if len(set(names)) != len(names):
        raise ArtifactError("the masked tensor list names a tensor twice")
    for name, shape in header["tensors"]:
        if name not in state or list(state[name].shape) != shape:
            raise ArtifactError(f"masked tensor {name[:80]!r} {shape} does not exist with that "
                                f"shape in {header['model']['name']}")
    exclude = set() if dense else {name for name, _ in header["tensors"]}
    lines, digest = _layout(_other_tensors(meta, exclude))
    if len(lines) != header["other"]["num_tensors"] or digest != header["other"][
            "layout_sha256"]:
        raise ArtifactError("the stored BN/other tensors do not match the architecture "
                            f"{header['model']['name']} with these kwargs")
    return lines


def _decode_masks(header: dict, masks_section: memoryview) -> list[torch.Tensor]:
    keep = header["pemn"]["keep_ratio"]
    if sum(m[2] for m in header["masks"]) != len(masks_section):
        raise ArtifactError("mask byte lengths do not add up to the masks section")
    out, offset = [], 0
    for (name, shape), (codec, k, num_bytes) in zip(header["tensors"], header["masks"]):
        n = math.prod(shape)
        if k != num_kept(n, keep):
            raise ArtifactError(f"mask of {name} keeps {k} values, keep_ratio {keep} needs "
                                f"{num_kept(n, keep)}")
        data = masks_section[offset:offset + num_bytes]
        out.append(get_codec(codec).decode(data, n, k).view(shape))
        offset += num_bytes
    return out


def _stored_prototypes(header: dict, plan: FillPlan, section: memoryview) -> list | None:
    info = header["prototype"]
    counts = [p.numel for p in plan.prototypes]
    if not info["stored"]:
        if info["num_values"] or len(section):
            raise ArtifactError("prototype section is present but marked as not stored")
        return None
    if info["num_values"] != counts or len(section) != 4 * sum(counts):
        raise ArtifactError(f"stored prototype lengths {info['num_values'][:8]} do not match "
                            f"the strategy's {counts[:8]}")
    values = np.frombuffer(section, dtype="<f4").astype(np.float32)
    return np.split(values, np.cumsum(counts)[:-1])


def _check_prototypes(header: dict, spec, stored: list | None) -> list | None:
    """Stored values expanded, or None to keep the regenerated ones; raises on any mismatch."""
    expected = header["pemn"]["prototype_sha256"]
    if stored is not None:
        full = [p.expand(d, spec.seed) for d, p in zip(stored, spec.plan.prototypes)]
        if [rng.sha256_f32(v) for v in full] != expected:
            raise ArtifactError("stored prototype values do not match their SHA-256 in the "
                                "header; the file is corrupt")
        return full
    if list(spec.prototype_sha256) != expected:
        raise ArtifactError(
            f"regenerated weights differ from the ones that were trained (generator "
            f"{header['pemn']['generator']} in the file, {rng.GENERATOR_ID} here); refusing to "
            "load a different model. Re-save on the training machine with store_prototype=True")
    return None


def _set_fixed(model: nn.Module, spec, full: list[np.ndarray]) -> None:
    protos = [torch.from_numpy(v) for v in full]
    with torch.no_grad():
        for (_, module, name), ts, src in zip(masked_tensors(model), spec.tensors,
                                              spec.plan.sources):
            getattr(module, name + "_fixed").copy_(protos[src][: ts.numel].view(ts.shape))


def _set_masks(model: nn.Module, masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for (fqn, module, name), mask in zip(masked_tensors(model), masks):
            scores = getattr(module, name + "_scores")
            # kept 2, dropped 1: the top-k of |scores| is exactly this mask, with no ties
            scores.copy_(mask.to(scores.dtype) + 1)
            if not torch.equal(current_mask(module, name).cpu(), mask):
                raise ArtifactError(f"mask of {fqn}.{name} cannot be reproduced by top-k")


def _set_others(model: nn.Module, lines, exclude: set[str], section: memoryview) -> None:
    others = _other_tensors(model, exclude)
    if _layout(others)[0] != lines:
        raise ArtifactError("the rebuilt model's tensors differ from the checked architecture")
    offset = 0
    with torch.no_grad():
        for (name, tensor), (_, code, shape) in zip(others, lines):
            count = math.prod(shape)
            raw = np.frombuffer(section, dtype=code, count=count, offset=offset)
            tensor.copy_(torch.from_numpy(raw.astype(raw.dtype.newbyteorder("="))).view(shape))
            offset += count * raw.dtype.itemsize


def _unpack(data: bytes, device) -> nn.Module:
    header, sections, _ = read_container(data)
    strategy = strategy_from_dict(header["pemn"]["strategy"])
    dense = isinstance(strategy, Dense)
    if dense != (not header["masks"]):
        raise ArtifactError("a Dense artifact has no masks and every other strategy has one "
                            "mask per masked tensor")
    lines = _check_architecture(header, dense)
    if len(sections["other"]) != _layout_num_bytes(lines):
        raise ArtifactError("the other-tensors section has the wrong length")
    keep, seed = header["pemn"]["keep_ratio"], header["pemn"]["seed"]
    specs = [TensorSpec(name, tuple(shape)) for name, shape in header["tensors"]]
    masks, stored = [], None
    if not dense:
        plan = plan_fill(strategy, specs)
        if len(header["pemn"]["prototype_sha256"]) != len(plan.prototypes):
            raise ArtifactError("the number of prototype digests does not match the strategy")
        masks = _decode_masks(header, sections["masks"])
        stored = _stored_prototypes(header, plan, sections["prototype"])
    elif len(sections["masks"]) or len(sections["prototype"]):
        raise ArtifactError("a Dense artifact must have empty masks and prototype sections")

    model = create_model(header["model"]["name"], **header["model"]["kwargs"]).to(device)
    apply_(model, strategy, keep_ratio=keep, seed=seed,
           include=[_escape_glob(s.name) for s in specs])
    spec = model.pemn_spec
    if spec.tensors != specs:
        raise ArtifactError("apply_ selected other tensors than the file lists")
    exclude = set()
    if not dense:
        full = _check_prototypes(header, spec, stored)
        if full is not None:
            _set_fixed(model, spec, full)
        _set_masks(model, masks)
        exclude = {s.name + suffix for s in specs for suffix in ("_fixed", "_scores")}
    _set_others(model, lines, exclude, sections["other"])
    return model.eval()


def _wrap(e: Exception) -> ArtifactError:
    """A lower-level error (create_model, a codec, a strategy, ...) as one ArtifactError."""
    kind = "" if isinstance(e, ValueError) else f" ({type(e).__name__})"
    return ArtifactError(f"invalid artifact{kind}: {e}"[:500])


def unpack(data: bytes | bytearray | memoryview, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in artifact bytes, in eval mode on ``device``.

    Every file is treated as hostile: anything but an intact artifact whose regenerated
    weights match their recorded SHA-256 raises :class:`ArtifactError`, checked before any
    large allocation.

    Raises:
        ArtifactError: corrupt, truncated or inconsistent data; unknown architecture or codec;
            regenerated weights that differ from the trained ones.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"unpack needs bytes, got {type(data).__name__}")
    device = torch.device(device)
    try:
        return _unpack(bytes(data), device)
    except ArtifactError:
        raise
    except _LOWER_ERRORS as e:
        raise _wrap(e) from e


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Read an artifact written by :func:`save` and rebuild the model (see :func:`unpack`).

    Example:
        >>> model = load("convmixer_rp.pemn")  # eval mode, plain create_model architecture
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {path}: {e.strerror or e}") from e
    return unpack(data, device)


# ------------------------------------------------------------------------------------------
# describe: what a file holds, component by component (used by pemn.storage.size_report)
# ------------------------------------------------------------------------------------------

def _norm_names(meta: nn.Module) -> set[str]:
    return {f"{fqn}.{k}" if fqn else k for fqn, m in meta.named_modules()
            if isinstance(m, _NORM_TYPES) for k in m.state_dict()}


def _describe(data: bytes) -> dict:
    header, sections, header_bytes = read_container(data)
    strategy = strategy_from_dict(header["pemn"]["strategy"])
    dense = isinstance(strategy, Dense)
    lines = _check_architecture(header, dense)
    norms = _norm_names(_build_meta(header))
    specs = [TensorSpec(name, tuple(shape)) for name, shape in header["tensors"]]
    masks = header["masks"] or [[None, s.numel, 0] for s in specs]
    return {
        "header": header,
        "file_bytes": len(data),
        "header_bytes": header_bytes,
        "section_bytes": {k: len(v) for k, v in sections.items()},
        "masks": [{"name": s.name, "shape": s.shape, "numel": s.numel, "num_kept": k,
                   "codec": codec, "num_bytes": nb} for s, (codec, k, nb) in zip(specs, masks)],
        "others": [{"name": k, "dtype": code, "shape": shape,
                    "num_bytes": math.prod(shape) * int(code[-1]), "is_norm": k in norms}
                   for k, code, shape in lines],
        "num_unique": sum(s.numel for s in specs) if dense else
        plan_fill(strategy, specs).num_unique,
    }


def describe(source) -> dict:
    """What an artifact holds, component by component, without building the model's values.

    Args:
        source: a path, artifact bytes, or a PEMN model (packed in memory first).

    Returns:
        ``header`` (the JSON header), ``file_bytes``, ``header_bytes`` (preamble + JSON),
        ``section_bytes`` per section, ``masks`` (per masked tensor: name, shape, numel,
        num_kept, codec, num_bytes), ``others`` (per other tensor: name, dtype, shape,
        num_bytes, is_norm) and ``num_unique`` (U).

    Raises:
        ArtifactError: as :func:`unpack`.
    """
    if isinstance(source, nn.Module):
        data = pack(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except (OSError, TypeError) as e:
            raise ArtifactError(f"cannot read artifact {source}: {e}") from e
    try:
        return _describe(data)
    except ArtifactError:
        raise
    except _LOWER_ERRORS as e:
        raise _wrap(e) from e
