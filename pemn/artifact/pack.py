"""Pack a model that :func:`pemn.apply_` accepted into artifact bytes: seed + masks (or
encoded trained weights) + every other tensor, no code (docs/METHOD.md, "The artifact").
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os

import numpy as np
import torch
from torch import nn

from pemn import rng
from pemn.artifact.codec import choose_codec, get_codec, list_codecs
from pemn.artifact.format import seal
from pemn.artifact.header import DTYPES, FORMAT_VERSION, INT8_TENSOR, ArtifactError, Header
from pemn.artifact.weights import (SPARSE_FORMATS, TrainedWeights, dequantize, get_encoding,
                                  quantize, sparse_encoding)
from pemn.fileio import atomic_write
from pemn.fill import Dense, strategy_to_dict
from pemn.masking import FIXED, GAIN, LATENT, MASK, SUFFIXES, SUPPORT, current_mask, parts
from pemn.transform import masked_tensors

__all__ = ["pack", "save", "PRECISIONS", "STORE_PROTOTYPE_MAX_BYTES", "unique_tensors",
           "unmasked_hint"]

log = logging.getLogger(__name__)

STORE_PROTOTYPE_MAX_BYTES = 1024  # store_prototype=None stores them up to this (docs/METHOD.md)
_DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


def _check_fixed(model: nn.Module, spec) -> list[np.ndarray]:
    """Each prototype as stored in the model, after checking every fixed buffer against it."""
    layers = list(masked_tensors(model))
    if [f"{f}.{n}" if f else n for f, _, n in layers] != [t.name for t in spec.tensors]:
        raise ArtifactError("the masked tensors no longer match model.pemn_spec; was the model "
                            "modified after pemn.apply_?")
    plan = spec.plan
    protos: list[np.ndarray | None] = [None] * len(plan.prototypes)
    for i, ((_, module, name), ts, src) in enumerate(zip(layers, spec.tensors, plan.sources)):
        fixed = getattr(module, name + FIXED).detach().cpu()
        if fixed.dtype != torch.float32:
            raise ArtifactError(f"{ts.name} is {fixed.dtype}; call model.float() before saving")
        proto = plan.prototypes[src]
        # A layer that holds the whole prototype unscaled (and has no support) gives its values.
        if fixed.numel() == ts.numel == max(proto.numel, proto.tile_to) and plan.scale(i) == 1.0:
            protos[src] = fixed.reshape(-1).numpy()
    for i, (values, proto) in enumerate(zip(protos, plan.prototypes)):
        if values is None:  # no layer holds it whole: regenerate it (a new fill, layer std)
            values = protos[i] = proto.expand(proto.draw(spec.seed), spec.seed)
        if rng.sha256_f32(values) != spec.prototype_sha256[i]:
            raise ArtifactError(f"the frozen weights of prototype {i} no longer match the seed; "
                                "they must stay as pemn.apply_ generated them")
    expected = plan.layer_values([torch.from_numpy(v) for v in protos], spec.tensors)
    for i, ((_, module, name), ts, want) in enumerate(zip(layers, spec.tensors, expected)):
        support = plan.support(i, ts.numel, spec.seed)
        if support is not None:  # the compact values at the regenerated support
            have = parts(module, name).get(SUPPORT)
            if have is None or not np.array_equal(have.cpu().numpy().reshape(-1), support):
                raise ArtifactError(f"the support of {ts.name} is not the one its seed gives")
            want = want.reshape(-1)[torch.from_numpy(support)]
        if not torch.equal(getattr(module, name + FIXED).detach().cpu(), want):
            raise ArtifactError(f"the frozen weights of {ts.name} were modified after apply_")
    return protos


# Each writer below gives the tensor table's rows as (name, encoding, dtype and shape; the
# fields its encoding needs; bytes)

def _masks(model: nn.Module, spec, codec: str) -> list[tuple[dict, dict, bytes]]:
    rows = []
    for (_, module, name), ts in zip(masked_tensors(model), spec.tensors):
        mask = current_mask(module, name)
        k = int(mask.count_nonzero())
        name_ = choose_codec(mask.numel(), k) if codec == "auto" else codec  # m with a support
        rows.append((dict(name=ts.name, encoding=name_, dtype="|b1", shape=ts.shape),
                     dict(num_kept=k, fan_in=ts.fan_in), get_codec(name_).encode(mask)))
    return rows


def _prototypes(protos, spec, store: bool | None) -> list[tuple[dict, dict, bytes]]:
    drawn = [p.drawn(v, spec.seed) for v, p in zip(protos, spec.plan.prototypes)]
    if not (store or store is None and 4 * sum(map(len, drawn)) <= STORE_PROTOTYPE_MAX_BYTES):
        return []
    return [(dict(name=f"prototype.{i}", encoding="prototype", dtype="<f4", shape=(len(d),)),
             {}, d.astype("<f4").tobytes()) for i, d in enumerate(drawn)]


def unique_tensors(state) -> tuple[list, list[tuple[str, str]]]:
    """``(name, tensor)`` of each tensor of ``state`` (name, tensor pairs) once, and the ties:
    ``(alias, name)`` for each later name of a tensor already listed."""
    entries, ties, first = [], [], {}
    for name, t in state:
        if id(t) in first:
            ties.append((name, first[id(t)]))
        else:
            first[id(t)] = name
            entries.append((name, t))
    return entries, ties


def _other_tensors(model: nn.Module, spec) -> tuple[list, list[tuple[str, str]]]:
    """Every state_dict entry but the masks' machinery, by :func:`unique_tensors`."""
    masked = {t.name for t in spec.tensors} | set(spec.ties)
    machinery = set() if isinstance(spec.strategy, Dense) else {
        n + s for n in masked for s in SUFFIXES if s != GAIN}
    return unique_tensors((name, t) for name, t in model.state_dict(keep_vars=True).items()
                          if name not in machinery)


def _weights(model: nn.Module, spec, codec: str, sparse_format: str) -> list[tuple]:
    """Each trained tensor (latent ``<name>_orig``, sparse mask ``<name>_mask``) encoded."""
    family = spec.strategy.encoding
    rows = []
    for ts in spec.tensors:
        fqn, _, name = ts.name.rpartition(".")
        module = model.get_submodule(fqn)
        latent, mask = parts(module, name).get(LATENT), parts(module, name).get(MASK)
        if latent is None or tuple(latent.shape) != ts.shape \
                or (family == "sparse") != (mask is not None):
            laid = name + LATENT + (f", {name}{MASK}" if family == "sparse" else "")
            raise ArtifactError(f"{ts.name} is not laid out as {spec.strategy.name} left it "
                                f"({laid})")
        if latent.dtype != torch.float32:
            raise ArtifactError(f"{ts.name} is {latent.dtype}; call model.float() before saving")
        k = int(mask.count_nonzero()) if family == "sparse" else ts.numel
        encoding = sparse_encoding(sparse_format, codec, ts.numel, k) if family == "sparse" \
            else family
        data = get_encoding(encoding).encode(latent.detach(), None if mask is None
                                             else mask.bool())
        rows.append((dict(name=ts.name, encoding=encoding, dtype="<f4", shape=ts.shape),
                     dict(num_kept=k), data))
    return rows


# "norm8": fp16, and the affine of every norm layer as int8 codes (_raw_row)
PRECISIONS = {"exact": None, "fp16": torch.float16, "bf16": torch.bfloat16,
              "norm8": torch.float16}


def _compact(model: nn.Module, others: list, dtype: torch.dtype,
             keep: set[str] = frozenset()) -> tuple[list, tuple]:
    """BatchNorm folded (FORMAT.md, ``folded_norms``); floats in ``dtype``, ``keep`` in float32."""
    values, folded = dict(others), []
    for fqn, m in model.named_modules():
        prefix = f"{fqn}." if fqn else ""
        names = [prefix + k for k in ("weight", "bias", "running_mean", "running_var")]
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not values.keys() >= set(names):
            continue  # non-affine BN, no running statistics, or tied to another tensor
        weight, bias, mean, var = (values[n].detach().double() for n in names)
        scale = weight / torch.sqrt(var + m.eps)
        values[names[0]], values[names[1]] = scale, bias - mean * scale
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            values.pop(prefix + k, None)
        folded.append(fqn)
    return ([(k, v.detach().to(torch.float32 if k in keep else dtype)
              if v.is_floating_point() else v) for k, v in values.items()], tuple(folded))


def _norm_affines(model: nn.Module, others: list) -> set[str]:
    """The weight and bias of every norm layer, which ``norm8`` stores as int8 codes."""
    from pemn.artifact.contents import norm_names  # it imports this module
    norms = norm_names(model)
    return {k for k, v in others if k in norms and k.rpartition(".")[2] in ("weight", "bias")
            and v.is_floating_point() and v.numel()}


NORM8_MAX_ERROR = 0.02  # median relative error of a vector's int8 codes, else it stays fp16


def _int8_faithful(v: torch.Tensor) -> bool:
    """Whether one int8 scale serves the whole vector (why not: docs/METHOD.md, norm8)."""
    row = v.detach().float().reshape(1, -1)
    error = (dequantize(*quantize(row, 8)) - row).abs() / row.abs()
    return bool(error.nan_to_num(0.0).median() <= NORM8_MAX_ERROR)


def _raw_row(name: str, t: torch.Tensor, int8: bool) -> tuple[dict, dict, bytes]:
    """A raw entry, or with ``int8`` the int8 weight encoding of ``t`` as one row."""
    if int8:
        return (dict(name=name, encoding=INT8_TENSOR, dtype="<f4", shape=tuple(t.shape)), {},
                get_encoding("int8").encode(t.detach().float().reshape(1, -1), None))
    if t.dtype not in _DTYPE_CODES:
        raise ArtifactError(f"tensor {name} is {t.dtype}, which artifacts cannot store")
    values = t.detach().cpu().contiguous()
    values = values.view(torch.int16) if t.dtype == torch.bfloat16 else values  # numpy has no bf16
    data = values.numpy().astype(values.numpy().dtype.newbyteorder("<")).tobytes()
    return (dict(name=name, encoding="raw", dtype=_DTYPE_CODES[t.dtype], shape=tuple(t.shape)),
            {}, data)


def _zoo_args(model: nn.Module) -> dict | None:
    args = getattr(model, "model_args", None)
    if not (isinstance(args, dict) and isinstance(args.get("name"), str)
            and isinstance(args.get("kwargs"), dict)):
        return None
    return _json_object({"name": args["name"], "kwargs": dict(args["kwargs"])}, "model_args")


def _dataset_header(dataset) -> dict | None:
    """``DatasetInfo.as_header()`` or the caller's dict (validated with the header)."""
    if dataset is not None and not isinstance(dataset, dict):
        if not hasattr(dataset, "as_header"):
            raise ArtifactError(f"dataset must be a pemn.data.DatasetInfo or a dict, got "
                                f"{type(dataset).__name__}")
        dataset = dataset.as_header()
    return _json_object(dataset, "dataset")


def _json_object(value, what: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ArtifactError(f"{what} must be a dict of JSON values, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{what} is not JSON-serialisable ({e})") from None


def pack(model: nn.Module, *, codec: str = "auto", store_prototype: bool | None = None,
         metadata: dict | None = None, dataset=None, precision: str = "exact",
         sparse_format: str = "mask") -> bytes:
    """The artifact bytes of a model prepared by ``pemn.apply_`` (not modified).

    Args:
        codec: mask codec for every mask, or ``"auto"``: per mask the smallest expected size.
        store_prototype: store the prototype values instead of regenerating them from the
            seed; ``None`` stores them when they take at most ``STORE_PROTOTYPE_MAX_BYTES``.
        metadata: your JSON object, stored as is (at most 64 KiB).
        dataset: what feeds the model: a ``pemn.data.DatasetInfo`` or a dict (docs/FORMAT.md).
        precision: ``"exact"``, ``"fp16"``, ``"bf16"`` or ``"norm8"`` (docs/METHOD.md, "The
            artifact").
        sparse_format: a ``Sparse`` model's weights as ``"mask"`` (its mask by ``codec``, then
            the kept float32 values) or ``"csr"``.

    Raises:
        ArtifactError: no ``apply_``, modified frozen weights, a tensor type the format
            cannot store, non-JSON metadata, or an unknown ``codec``.
    """
    if not isinstance(model, nn.Module):
        raise ArtifactError(f"pack needs an nn.Module, got {type(model).__name__}")
    spec = getattr(model, "pemn_spec", None)
    if spec is None:
        raise ArtifactError("the model has no PEMN spec; call pemn.apply_(model, strategy, "
                            "keep_ratio, seed) before training and saving it")
    if codec != "auto" and codec not in list_codecs():
        raise ArtifactError(f"mask codec {codec!r} cannot write new files; use 'auto' or one "
                            f"of {list_codecs()}")
    if sparse_format not in SPARSE_FORMATS:
        raise ArtifactError(f"unknown sparse_format {sparse_format!r}; use one of "
                            f"{list(SPARSE_FORMATS)}")
    trained = isinstance(spec.strategy, TrainedWeights)
    dense = isinstance(spec.strategy, Dense) or trained  # no masks, no prototype
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
    rows = _weights(model, spec, codec, sparse_format) if trained else []
    if not dense:
        protos = _check_fixed(model, spec)
        rows = _masks(model, spec, codec) + _prototypes(protos, spec, store_prototype)
    others, ties = _other_tensors(model, spec)
    folded, int8 = (), _norm_affines(model, others) if precision == "norm8" else set()
    if PRECISIONS[precision] is not None:
        others, folded = _compact(model, others, PRECISIONS[precision], int8)
        others = [(k, v.to(PRECISIONS[precision]) if k in int8 and not _int8_faithful(v) else v)
                  for k, v in others]
    rows += [_raw_row(k, v, k in int8 and v.dtype == torch.float32) for k, v in others]
    table, offset = [], 0
    for fields, extra, data in rows:  # the keys in the order of docs/FORMAT.md
        table.append({**fields, "shape": list(fields["shape"]), "offset": offset,
                      "length": len(data), **extra})
        offset += len(data)
    ties = ([] if dense else list(spec.ties.items())) + ties
    try:
        version = importlib.metadata.version("pemn")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    header = {  # the keys of docs/FORMAT.md, in its order
        "format": "pemn-artifact", "format_version": FORMAT_VERSION, "model": _zoo_args(model),
        "pemn": {"strategy": strategy_to_dict(spec.strategy), "keep_ratio": float(spec.keep_ratio),
                 "seed": spec.seed, "generator": spec.generator,
                 "prototype_sha256": [] if dense else list(spec.prototype_sha256)},
        "tensors": table, "ties": [list(t) for t in ties], "folded_norms": list(folded),
        "dataset": _dataset_header(dataset), "metadata": _json_object(metadata, "metadata") or {},
        "written_by": {"pemn": version, "torch": torch.__version__}}
    Header.from_json(header)  # every field checked as a reader checks it
    return seal(header, b"".join(data for *_, data in rows))


def save(model: nn.Module, path: str | os.PathLike, *, codec: str = "auto",
         store_prototype: bool | None = None, metadata: dict | None = None,
         dataset=None, precision: str = "exact", sign_with=None,
         sparse_format: str = "mask") -> int:
    """Write :func:`pack` ``(model, ...)`` to ``path`` atomically; returns the bytes written.
    ``sign_with``: an ed25519 private key (or its PEM file) to sign the file with
    (docs/THREAT_MODEL.md, "Signing")."""
    data = pack(model, codec=codec, store_prototype=store_prototype, metadata=metadata,
                dataset=dataset, precision=precision, sparse_format=sparse_format)
    if sign_with is not None:
        from pemn.artifact.signing import sign
        data = sign(data, sign_with)
    from pemn.artifact.contents import describe  # it imports this module
    hint = unmasked_hint(describe(data, model)) if model.pemn_spec.strategy.stores_mask else None
    atomic_write(path, data)
    if hint:
        log.warning("%s: %s", path, hint)
    return len(data)


def unmasked_hint(info: dict) -> str | None:
    """When unmasked layer weights (``*.weight`` tensors of two or more dimensions outside
    norm layers) hold most of a masked model's file (:func:`describe`'s ``info``): one line
    naming the largest and the ``include=`` that would mask them."""
    weights = sorted((o for o in info["others"] if o["name"].endswith(".weight")
                      and len(o["shape"]) > 1 and not o["is_norm"]),
                     key=lambda o: -o["num_bytes"])
    held, total = sum(o["num_bytes"] for o in weights), info["file_bytes"]
    if not info["strategy"].stores_mask or held <= total / 2:
        return None
    largest = ", ".join(f"{o['name']} ({'x'.join(map(str, o['shape']))}, {o['num_bytes']:,} "
                        f"bytes)" for o in weights[:3])
    return (f"{held:,} of its {total:,} bytes are unmasked layer weights stored as floats, "
            f"largest {largest}; apply_(..., include=\"*\") masks them too, with every other "
            f"maskable layer (an nn.Embedding only when include names it; other layer types: "
            f"pemn.register_maskable)")
