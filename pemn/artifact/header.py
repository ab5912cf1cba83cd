"""The typed header of a ``.pemn`` file: one tensor table, an :class:`Entry` per stored tensor,
every field's type and range checked before anything is allocated (keys: docs/FORMAT.md)."""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass

import torch

from pemn.artifact.codec import list_codecs

__all__ = ["ArtifactError", "FORMAT_VERSION", "MAX_ELEMENTS", "MAX_JSON_NUMBER", "DTYPES",
           "FLOAT_DTYPES", "KINDS", "INT8_TENSOR", "MAX_INPUT_VALUES", "entry_kind", "Entry",
           "Header", "dataset_entry", "is_sha256"]

FORMAT_VERSION = 4  # the only version read; 1 to 3 had positional sections
MAX_ELEMENTS = 2**31  # hard ceiling on the values a file may describe; load() has a lower default
MAX_TENSORS = 16_384  # table entries (ResNet-152 has about 1,000)
MAX_NDIM = 8
MAX_METADATA_BYTES = 64 * 2**10
MAX_INPUT_VALUES = 2**22  # values of one example a header may name (3 x 1024 x 1024 fits)
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# dtype code -> torch dtype. "bf16" is bfloat16 as raw little-endian uint16 bits.
DTYPES = {"<f4": torch.float32, "<f2": torch.float16, "bf16": torch.bfloat16,
          "<f8": torch.float64, "<i8": torch.int64, "<i4": torch.int32, "<i2": torch.int16,
          "|i1": torch.int8, "|u1": torch.uint8, "|b1": torch.bool}
FLOAT_DTYPES = tuple(code for code, dtype in DTYPES.items() if dtype.is_floating_point)
# kind of entry -> (its dtype, None: any of DTYPES; the fields its encoding needs)
_KINDS = {"raw": (None, ()), "prototype": ("<f4", ()), "mask": ("|b1", ("num_kept", "fan_in")),
          "weight": ("<f4", ("num_kept",))}
KINDS = tuple(_KINDS)
# a raw float tensor as one fp16 scale and int8 codes: the int8 weight encoding of one row
INT8_TENSOR = "int8-tensor"
_ENTRY_KEYS = ("name", "encoding", "dtype", "shape", "offset", "length")


class ArtifactError(ValueError):
    """A model cannot be packed, or a file is not a valid, consistent PEMN artifact."""


def entry_kind(encoding: str) -> str:
    """``raw`` (also :data:`INT8_TENSOR`), ``prototype``, ``mask`` (a mask codec) or ``weight``
    (a weight encoding); ArtifactError for any other name."""
    from pemn.artifact.weights import ENCODINGS  # it imports this module
    if encoding in ("raw", "prototype", INT8_TENSOR):
        return "raw" if encoding == INT8_TENSOR else encoding
    if encoding in list_codecs() or encoding in ENCODINGS:
        return "mask" if encoding in list_codecs() else "weight"
    raise ArtifactError(f"unknown encoding {encoding[:40]!r}; known: raw, prototype, "
                        f"{INT8_TENSOR}, {', '.join(list_codecs() + sorted(ENCODINGS))}")


@dataclass(frozen=True)
class Entry:
    """One row of the tensor table (``num_kept`` for masks and weights, ``fan_in`` for masks)."""

    name: str
    encoding: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    num_kept: int = 0
    fan_in: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kind(self) -> str:
        return entry_kind(self.encoding)


@dataclass(frozen=True)
class Header:
    """The validated header. Built only by :meth:`from_json`, fields read by name."""

    model: dict | None
    strategy: dict
    keep_ratio: float
    seed: int
    generator: str
    prototype_sha256: tuple[str, ...]
    tensors: tuple[Entry, ...]
    ties: tuple[tuple[str, str], ...]
    folded_norms: tuple[str, ...]
    dataset: dict | None
    metadata: dict
    written_by: dict

    def of_kind(self, kind: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.tensors if e.kind == kind)

    # Loaders index these per layer: computed once per header (the dataclass is frozen).
    masked = functools.cached_property(lambda self: self.of_kind("mask"))
    encoded = functools.cached_property(lambda self: self.of_kind("weight"))
    raw = functools.cached_property(lambda self: self.of_kind("raw"))
    prototypes = functools.cached_property(lambda self: self.of_kind("prototype"))

    @property
    def num_elements(self) -> int:
        """Values the file describes: every entry's."""
        return sum(e.numel for e in self.tensors)

    @property
    def names(self) -> list[str]:
        """Every ``state_dict`` name the file fills (its entries but prototypes, and ties)."""
        return [e.name for e in self.tensors if e.kind != "prototype"] + [a for a, _ in self.ties]

    @classmethod
    def from_json(cls, d: dict) -> Header:
        """Validate every field's type and range (no allocation, no architecture needed)."""
        if not isinstance(d, dict) or d.get("format") != "pemn-artifact":
            raise ArtifactError("header.format is not 'pemn-artifact'")
        version = d.get("format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise ArtifactError(f"header.format_version must be {FORMAT_VERSION}")
        pemn = _field(d, "pemn", dict)
        folds = _list(d, "folded_norms") if "folded_norms" in d else []
        header = cls(
            model=_model(d),
            **_pemn_fields(pemn),
            tensors=_table(d),
            ties=tuple(_tie(e, i) for i, e in enumerate(_list(d, "ties"))),
            folded_norms=tuple(_text(e, f"folded_norms[{i}]") for i, e in enumerate(folds)),
            dataset=dataset_entry(_optional_json(d, "dataset")),
            metadata=_optional_json(d, "metadata") or {},
            written_by=_optional_json(d, "written_by") or {},
        )
        names = header.names
        if len(set(names)) != len(names):
            raise ArtifactError("the header names a tensor twice")
        stored = {e.name for e in header.tensors if e.kind in ("mask", "raw")}
        for alias, target in header.ties:
            if target not in stored:
                raise ArtifactError(f"tie {alias[:80]!r} points to {target[:80]!r}, which the "
                                    "file does not store")
        if header.num_elements > MAX_ELEMENTS:
            raise ArtifactError(f"the file describes more than {MAX_ELEMENTS} values")
        return header


def _field(d, key: str, kind, where: str = "header"):
    if not isinstance(d, dict) or key not in d:
        raise ArtifactError(f"{where} has no {key!r} field")
    value = d[key]
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        raise ArtifactError(f"{where}.{key} has type {type(value).__name__}, expected "
                            f"{getattr(kind, '__name__', kind)}")
    return value


def _list(d, key: str, where: str = "header") -> list:
    value = _field(d, key, list, where)
    if len(value) > MAX_TENSORS:
        raise ArtifactError(f"{where}.{key} has {len(value)} entries (limit {MAX_TENSORS})")
    return value


def _count(value, what: str, upper: int = MAX_ELEMENTS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise ArtifactError(f"{what} must be an integer in [0, {upper}], got {value!r}"[:200])
    return value


def _text(value, what: str, limit: int = 512) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ArtifactError(f"{what} must be a string of 1 to {limit} characters")
    return value


def _shape(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_NDIM:
        raise ArtifactError(f"{what} must be a list of at most {MAX_NDIM} dimensions")
    shape = tuple(_count(v, f"a dimension of {what}") for v in value)
    if math.prod(shape) > MAX_ELEMENTS:  # Python ints: no overflow
        raise ArtifactError(f"{what} holds more than {MAX_ELEMENTS} values")
    return shape


def is_sha256(value) -> bool:
    return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None


MAX_JSON_NUMBER = 2**16  # the bound on a constructor kwarg or strategy field in a header


def _validate_json_value(value, what: str, depth: int = 0) -> None:
    """Constructor kwargs and strategy fields: JSON scalars and short flat lists only."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if abs(value) > MAX_JSON_NUMBER or not math.isfinite(value):  # in this order: a huge int
            raise ArtifactError(f"{what}={value} is out of range for a model hyperparameter")
    elif isinstance(value, str):
        if len(value) > 64:
            raise ArtifactError(f"{what} is a string of {len(value)} characters (limit 64)")
    elif isinstance(value, list) and depth == 0 and len(value) <= 64:
        for i, v in enumerate(value):
            _validate_json_value(v, f"{what}[{i}]", depth + 1)
    else:
        raise ArtifactError(f"{what} must be a number, string, bool or short list")


def _model(d: dict) -> dict | None:
    model = d.get("model")
    if model is None:
        return None
    name = _text(_field(model, "name", str, "model"), "model.name", 64)
    kwargs = _field(model, "kwargs", dict, "model")
    if len(kwargs) > 64:
        raise ArtifactError(f"model.kwargs has {len(kwargs)} entries (limit 64)")
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise ArtifactError(f"model.kwargs key {key[:40]!r} is not a Python identifier")
        _validate_json_value(value, f"model.kwargs.{key}")
    return {"name": name, "kwargs": kwargs}


def _pemn_fields(pemn: dict) -> dict:
    """The ``pemn`` object: strategy, keep ratio, seed, generator and prototype digests."""
    strategy = _field(pemn, "strategy", dict, "pemn")
    _field(strategy, "name", str, "pemn.strategy")
    if len(strategy) > 16:
        raise ArtifactError(f"pemn.strategy has {len(strategy)} fields (limit 16)")
    for key, value in strategy.items():
        _validate_json_value(value, f"pemn.strategy.{key[:40]}", depth=1)
    keep = _field(pemn, "keep_ratio", (int, float), "pemn")
    if not 0 < keep <= 1:
        raise ArtifactError(f"pemn.keep_ratio must be in (0, 1], got {keep!r}")
    seed = _count(_field(pemn, "seed", int, "pemn"), "pemn.seed", 2**63 - 1)
    generator = _text(_field(pemn, "generator", str, "pemn"), "pemn.generator", 1024)
    digests = _list(pemn, "prototype_sha256", "pemn")
    if not all(is_sha256(x) for x in digests):
        raise ArtifactError("pemn.prototype_sha256 must be a list of hex SHA-256 digests")
    return dict(strategy=strategy, keep_ratio=float(keep), seed=seed, generator=generator,
                prototype_sha256=tuple(digests))


def _table(d: dict) -> tuple[Entry, ...]:
    """The tensor table, each entry starting where the one before ends (the first at 0)."""
    entries, offset = [], 0
    for i, e in enumerate(_list(d, "tensors")):
        entries.append(_entry(e, i, offset))
        offset += entries[-1].length
    protos = [e.name for e in entries if e.kind == "prototype"]
    if protos != [f"prototype.{i}" for i in range(len(protos))]:
        raise ArtifactError("prototype entries must be named prototype.0, prototype.1, ... "
                            "in order")
    return tuple(entries)


def _entry(e, i: int, offset: int) -> Entry:
    if not (isinstance(e, dict) and isinstance(e.get("encoding"), str)):
        raise ArtifactError(f"tensors[{i}] must be an object with an encoding name")
    encoding = _text(e["encoding"], f"tensors[{i}] encoding", 32)
    kind = entry_kind(encoding)
    dtype, extra = _KINDS[kind] if encoding != INT8_TENSOR else ("<f4", ())
    if set(e) != {*_ENTRY_KEYS, *extra}:
        raise ArtifactError(f"tensors[{i}] ({encoding}) must have exactly the fields "
                            f"{[*_ENTRY_KEYS, *extra]}")
    name = _text(e["name"], f"tensors[{i}] name")
    what = f"tensor {name[:80]!r}"
    if not isinstance(e["dtype"], str) or e["dtype"] not in DTYPES or dtype not in (
            None, e["dtype"]):
        raise ArtifactError(f"{what} ({encoding}) must have dtype "
                            f"{dtype or f'in {sorted(DTYPES)}'}, got {e['dtype']!r}"[:200])
    shape = _shape(e["shape"], what)
    if _count(e["offset"], f"offset of {what}", 2**62) != offset:
        raise ArtifactError(f"{what} must start at byte {offset} of the payload, where the "
                            "entry before it ends")
    length = _count(e["length"], f"length of {what}", 2**62)
    if kind in ("mask", "weight") and not (shape and shape[0]):
        raise ArtifactError(f"{what} ({encoding}) needs at least one output channel")
    fields = {k: _count(e[k], f"{k} of {what}", math.prod(shape) if k == "num_kept"
                        else MAX_ELEMENTS) for k in extra}
    size = math.prod(shape) + 2 if encoding == INT8_TENSOR else math.prod(shape) * DTYPES[
        e["dtype"]].itemsize  # int8 codes and one fp16 scale
    if kind in ("raw", "prototype") and length != size:
        raise ArtifactError(f"{what} is {length} bytes, but {list(shape)} {e['dtype']} "
                            f"values take {size}{' as ' + encoding if kind != encoding else ''}")
    if kind == "prototype" and len(shape) != 1:
        raise ArtifactError(f"{what} must be a vector of prototype values")
    return Entry(name, encoding, e["dtype"], shape, offset, length, **fields)


def _tie(entry, i: int) -> tuple[str, str]:
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ArtifactError(f"ties[{i}] must be [alias, name]")
    return _text(entry[0], f"ties[{i}] alias"), _text(entry[1], f"ties[{i}] name")


def _optional_json(d: dict, key: str) -> dict | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ArtifactError(f"header.{key} must be a JSON object or null")
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ArtifactError(f"header.{key} is larger than {MAX_METADATA_BYTES} bytes")
    return value


def _numbers(value, count: int | None) -> bool:
    return isinstance(value, list) and 0 < len(value) == (count or len(value)) <= 64 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)


def dataset_entry(d: dict | None) -> dict | None:
    """The ``dataset`` entry validated (docs/FORMAT.md), for writers and readers alike."""
    if d is None:
        return None
    name, shape = d.get("name"), d.get("input_shape")
    if set(d) - {"name", "input_shape", "mean", "std", "class_names"} or not isinstance(
            name, str) or not _DATASET_NAME.fullmatch(name):
        raise ArtifactError("header.dataset must have a name of 1 to 64 letters, digits, '_', "
                            "'.' or '-' and only the keys name, input_shape, mean, std, "
                            "class_names")
    if shape is not None and not (_numbers(shape, None) and 1 <= len(shape) <= 3 and all(
            type(v) is int and v > 0 for v in shape) and math.prod(shape) <= MAX_INPUT_VALUES):
        raise ArtifactError(f"dataset input_shape must be 1 to 3 positive sizes of at most "
                            f"{MAX_INPUT_VALUES} values, got {shape!r}"[:200])
    channels = shape[0] if shape and len(shape) == 3 else None
    for key in ("mean", "std"):
        if d.get(key) is not None and not (_numbers(d[key], channels) and (
                key == "mean" or min(d[key]) > 0)):
            raise ArtifactError(f"dataset {key} must be one finite number per channel"
                                f"{' (> 0)' if key == 'std' else ''}")
    names = d.get("class_names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        raise ArtifactError("dataset class_names must be a list of strings")
    return d
