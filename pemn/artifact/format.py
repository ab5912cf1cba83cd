"""The ``.pemn`` file: a versioned JSON header and raw sections, no pickle (PEMN.md §5).

A trained PEMN model is stored as what cannot be recomputed: the architecture name and
constructor kwargs, the strategy, keep ratio and seed (the frozen random weights are
regenerated from them by :mod:`pemn.rng`), one encoded mask per masked tensor, and every
other tensor of the ``state_dict`` (BatchNorm affine and running statistics, biases, unmasked
layers) in fp32. A loader never executes code from a file: the header is JSON and the
payload is raw little-endian numbers and mask codes.

Layout, format version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic b"\\x89PEMN\\r\\n\\x1a" (PNG-style: catches text-mode and 7-bit damage)
    8       4     format version, uint32 (= 1)
    12      4     header length H in bytes, uint32, at most 16 MiB
    16      32    SHA-256 of the H header bytes (raw digest)
    48      H     header: UTF-8 JSON object (below)
    48 + H  ...   payload: the sections back to back, in the order of the section table;
                  the file ends exactly where the last section ends

Header keys (``tests/test_artifact.py`` checks every writer field is documented here):

- ``format`` = ``"pemn-artifact"``, ``format_version`` = 1 (the same as the binary field).
- ``model``: ``{"name": str, "kwargs": {...}}``, as recorded by ``pemn.models.create_model``.
- ``pemn``: ``strategy`` (``pemn.fill.strategy_to_dict``), ``keep_ratio`` (kept fraction),
  ``seed``, ``generator`` (``pemn.rng.GENERATOR_ID``) and ``prototype_sha256``: the SHA-256
  of every regenerated prototype vector (float32 little-endian, after tiling/permutation),
  checked on load so a different generator fails loudly instead of giving another model.
- ``tensors``: ``[[qualified_name, [shape...]], ...]``, the masked weight tensors in module
  order (for ``Dense``: the tensors that were selected but left dense).
- ``masks``: ``[[codec, num_kept, num_bytes], ...]``, one per entry of ``tensors`` (empty for
  ``Dense``); ``codec`` is a name from :mod:`pemn.artifact.codec` (``"bits"``, ``"rans"``).
- ``prototype``: ``{"stored": bool, "num_values": [int, ...]}``; when stored, the section
  holds the values drawn for each prototype (before RP tiling/permutation), float32.
- ``other``: ``{"num_tensors": int, "layout_sha256": str}``: the other tensors are every
  ``state_dict`` entry of the rebuilt model except ``*_fixed`` / ``*_scores`` (and, except for
  ``Dense``, the masked tensors), in ``state_dict`` order; ``layout_sha256`` is the SHA-256 of
  the lines ``name:dtype:shape`` (e.g. ``stem.2.weight:<f4:256``) joined by ``\\n``, so the
  header stays small while any disagreement with the architecture is caught before loading.
- ``sections``: ``[[name, offset, length], ...]`` with ``name`` in ``masks``, ``prototype``,
  ``other`` (that order), offsets relative to the payload start, contiguous from 0.
- ``payload_sha256``: SHA-256 (hex) of the whole payload.
- ``written_by``: ``{"pemn": version, "torch": version}``, informational only.

Sections:

- ``masks``: the encoded masks in ``tensors`` order, each ``num_bytes`` long. A mask is the
  flattened (C order) boolean keep-mask of the tensor; ``"bits"`` is 1 bit per weight
  (:mod:`pemn.artifact.bitpack`), ``"rans"`` entropy-codes it (:mod:`pemn.artifact.codec`).
- ``prototype``: float32 ``<f4`` values, or empty when the prototypes are regenerated.
- ``other``: each tensor's raw bytes: floating tensors as ``<f4``, integer tensors as ``<i8``,
  booleans as ``|u1``.

Integrity: the header digest covers the header, the header's ``payload_sha256`` covers the
payload, and the file length must equal ``48 + H + payload``, so any flipped, lost or added
byte is detected. Every length is checked against the real file size before it is used, and
every field's type and range is checked before anything is allocated: a hostile file raises
:class:`ArtifactError`, never another exception, a huge allocation or a different model.
Limits: header at most 16 MiB; at most 2**31 values and 16,384 tensors per model; model
kwargs are numbers up to 2**16 in magnitude, bools, strings of up to 64 characters or flat
lists of up to 64 of those. The loader builds the architecture on the meta device first (no
memory, bounded work) and compares it with the header before allocating the real model.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct

__all__ = ["ArtifactError", "MAGIC", "FORMAT_VERSION", "MAX_HEADER_BYTES", "MAX_ELEMENTS",
           "PREAMBLE_BYTES", "SECTION_NAMES", "write_container", "read_container",
           "validate_header"]

MAGIC = b"\x89PEMN\r\n\x1a"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sII32s")  # magic, version, header length, header SHA-256
PREAMBLE_BYTES = _PREAMBLE.size  # 48
MAX_HEADER_BYTES = 16 * 2**20  # a real header is a few KB; refuse to parse more
MAX_ELEMENTS = 2**31  # total values a file may describe (masked + other tensors)
MAX_TENSORS = 16_384  # masked + other tensors (ResNet-152 has about 1,000)
MAX_NDIM = 8
SECTION_NAMES = ("masks", "prototype", "other")


class ArtifactError(ValueError):
    """A model cannot be packed, or a file is not a valid, consistent PEMN artifact."""


# ------------------------------------------------------------------------------------------
# Container: preamble + JSON header + payload
# ------------------------------------------------------------------------------------------

def write_container(header: dict, sections: dict[str, bytes]) -> bytes:
    """Serialise ``header`` (completed with the section table and payload hash) and sections."""
    table, offset = [], 0
    for name in SECTION_NAMES:
        table.append([name, offset, len(sections[name])])
        offset += len(sections[name])
    payload = b"".join(sections[name] for name in SECTION_NAMES)
    header = {**header, "sections": table, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise ArtifactError(f"header of {len(text)} bytes exceeds the {MAX_HEADER_BYTES} limit")
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(text), hashlib.sha256(text).digest())
    return preamble + text + payload


def read_container(data: bytes) -> tuple[dict, dict[str, memoryview], int]:
    """Check the preamble, both digests and the section table of ``data``.

    Returns:
        ``(header, sections, header_bytes)``: the validated header dict, a zero-copy view of each
        section, and the size of preamble plus header.

    Raises:
        ArtifactError: for anything but a complete, intact version-1 file.
    """
    if len(data) < PREAMBLE_BYTES:
        raise ArtifactError(f"not a PEMN artifact: {len(data)} bytes is shorter than the "
                            f"{PREAMBLE_BYTES}-byte preamble (truncated file?)")
    magic, version, header_len, header_digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError("not a PEMN artifact: wrong magic bytes (expected a file written by "
                            "pemn.artifact.save)")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format version {version}; this pemn reads "
                            f"version {FORMAT_VERSION} (upgrade pemn to read newer files)")
    if header_len > MAX_HEADER_BYTES or PREAMBLE_BYTES + header_len > len(data):
        raise ArtifactError(f"header length {header_len} does not fit the {len(data)}-byte file "
                            f"(limit {MAX_HEADER_BYTES}); the file is truncated or corrupt")
    text = bytes(data[PREAMBLE_BYTES:PREAMBLE_BYTES + header_len])
    if hashlib.sha256(text).digest() != header_digest:
        raise ArtifactError("header checksum mismatch: the file is corrupt")
    header = _parse_json(text)
    validate_header(header)
    start = PREAMBLE_BYTES + header_len
    payload = memoryview(data)[start:]
    table = header["sections"]
    if table[-1][1] + table[-1][2] != len(payload):
        raise ArtifactError(f"payload is {len(payload)} bytes but the section table describes "
                            f"{table[-1][1] + table[-1][2]}; the file is truncated or padded")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ArtifactError("payload checksum mismatch: the file is corrupt")
    sections = {name: payload[off:off + length] for name, off, length in table}
    return header, sections, start


def _reject_constant(name: str):
    raise ArtifactError(f"header contains {name}, which is not valid JSON")


def _parse_json(text: bytes) -> dict:
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"header is not valid UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"header must be a JSON object, got {type(header).__name__}")
    return header


# ------------------------------------------------------------------------------------------
# Header schema: types and ranges only; consistency with the architecture is checked on load
# ------------------------------------------------------------------------------------------

def _field(d: dict, key: str, kind, where: str = "header"):
    if not isinstance(d, dict) or key not in d:
        raise ArtifactError(f"{where} has no {key!r} field")
    value = d[key]
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        raise ArtifactError(f"{where}.{key} has type {type(value).__name__}, expected "
                            f"{getattr(kind, '__name__', kind)}")
    return value


def _count(value, what: str, upper: int = MAX_ELEMENTS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise ArtifactError(f"{what} must be an integer in [0, {upper}], got {value!r}")
    return value


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                               for c in value)


def _validate_json_value(value, what: str, depth: int = 0) -> None:
    """Constructor kwargs: JSON scalars and short flat lists only (no nesting games)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > 2**16:
            raise ArtifactError(f"{what}={value} is out of range for a model hyperparameter")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 2**16:
            raise ArtifactError(f"{what}={value} is out of range for a model hyperparameter")
    elif isinstance(value, str):
        if len(value) > 64:
            raise ArtifactError(f"{what} is a string of {len(value)} characters (limit 64)")
    elif isinstance(value, list) and depth == 0 and len(value) <= 64:
        for i, v in enumerate(value):
            _validate_json_value(v, f"{what}[{i}]", depth + 1)
    else:
        raise ArtifactError(f"{what} must be a number, string, bool or short list")


def _validate_model(header: dict) -> None:
    model = _field(header, "model", dict)
    name = _field(model, "name", str, "model")
    if not 0 < len(name) <= 64:
        raise ArtifactError(f"model name of {len(name)} characters is not a registered name")
    kwargs = _field(model, "kwargs", dict, "model")
    if len(kwargs) > 64:
        raise ArtifactError(f"model.kwargs has {len(kwargs)} entries (limit 64)")
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise ArtifactError(f"model.kwargs key {key[:40]!r} is not a Python identifier")
        _validate_json_value(value, f"model.kwargs.{key}")


def _validate_pemn(header: dict) -> None:
    pemn = _field(header, "pemn", dict)
    strategy = _field(pemn, "strategy", dict, "pemn")
    _field(strategy, "name", str, "pemn.strategy")
    if len(strategy) > 16:
        raise ArtifactError(f"pemn.strategy has {len(strategy)} fields (limit 16)")
    for key, value in strategy.items():
        _validate_json_value(value, f"pemn.strategy.{key[:40]}", depth=1)
    keep = _field(pemn, "keep_ratio", (int, float), "pemn")
    if not 0 < keep <= 1:
        raise ArtifactError(f"pemn.keep_ratio must be in (0, 1], got {keep!r}")
    _count(_field(pemn, "seed", int, "pemn"), "pemn.seed", 2**63 - 1)
    _field(pemn, "generator", str, "pemn")
    digests = _field(pemn, "prototype_sha256", list, "pemn")
    if len(digests) > MAX_TENSORS or not all(_is_sha256(d) for d in digests):
        raise ArtifactError("pemn.prototype_sha256 must be a list of hex SHA-256 digests")


def _validate_tensors(header: dict) -> None:
    tensors = _field(header, "tensors", list)
    if len(tensors) > MAX_TENSORS:
        raise ArtifactError(f"{len(tensors)} tensors exceed the limit of {MAX_TENSORS}")
    total = 0
    for i, entry in enumerate(tensors):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and 0 < len(entry[1]) <= MAX_NDIM):
            raise ArtifactError(f"tensors[{i}] must be [name, [dim, ...]] with 1 to {MAX_NDIM} "
                                "dims")
        for d in entry[1]:
            _count(d, f"a dimension of {entry[0][:80]!r}")
        total += math.prod(entry[1])
        if total > MAX_ELEMENTS:
            raise ArtifactError(f"the masked tensors hold more than {MAX_ELEMENTS} values")
    masks = _field(header, "masks", list)
    if masks and len(masks) != len(tensors):
        raise ArtifactError(f"{len(masks)} masks for {len(tensors)} masked tensors")
    for i, entry in enumerate(masks):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
            raise ArtifactError(f"masks[{i}] must be [codec, num_kept, num_bytes]")
        _count(entry[1], f"masks[{i}] kept count")
        _count(entry[2], f"masks[{i}] byte length")


def _validate_sections(header: dict) -> None:
    prototype = _field(header, "prototype", dict)
    _field(prototype, "stored", bool, "prototype")
    counts = _field(prototype, "num_values", list, "prototype")
    if len(counts) > MAX_TENSORS:
        raise ArtifactError("prototype.num_values is too long")
    for c in counts:
        _count(c, "a prototype length")
    other = _field(header, "other", dict)
    num_other = _field(other, "num_tensors", int, "other")
    if _count(num_other, "other.num_tensors", MAX_TENSORS) + len(header["tensors"]) > MAX_TENSORS:
        raise ArtifactError(f"more than {MAX_TENSORS} tensors in one artifact")
    if not _is_sha256(_field(other, "layout_sha256", str, "other")):
        raise ArtifactError("other.layout_sha256 must be a hex SHA-256 digest")
    table = _field(header, "sections", list)
    if [s[0] if isinstance(s, list) and s else None for s in table] != list(SECTION_NAMES):
        raise ArtifactError(f"section table must list {list(SECTION_NAMES)} in that order")
    expected = 0
    for name, *rest in table:
        if len(rest) != 2 or _count(rest[0], f"section {name} offset", 2**62) != expected:
            raise ArtifactError(f"section {name!r} must be [name, offset, length] and start at "
                                f"byte {expected} of the payload")
        expected += _count(rest[1], f"section {name} length", 2**62)
    if not _is_sha256(_field(header, "payload_sha256", str)):
        raise ArtifactError("payload_sha256 must be a hex SHA-256 digest")


def validate_header(header: dict) -> None:
    """Check the type and range of every field the loader reads; raises :class:`ArtifactError`."""
    if header.get("format") != "pemn-artifact":
        raise ArtifactError("header.format is not 'pemn-artifact'")
    if header.get("format_version") != FORMAT_VERSION or isinstance(
            header.get("format_version"), bool):
        raise ArtifactError(f"header.format_version must be {FORMAT_VERSION}")
    _validate_model(header)
    _validate_pemn(header)
    _validate_tensors(header)
    _validate_sections(header)
