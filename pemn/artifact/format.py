"""The ``.pemn`` container: a preamble, the compressed JSON header (:mod:`pemn.artifact.header`)
and the payload, plus an optional signature block; no pickle (layout: ``docs/FORMAT.md``)."""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import NamedTuple

from pemn.artifact.header import FORMAT_VERSION, INT8_TENSOR, ArtifactError, Header, is_sha256

# the header's names that callers use as format's: the error, the version, INT8_TENSOR
__all__ = ["ArtifactError", "FORMAT_VERSION", "INT8_TENSOR", "MAGIC", "MAX_HEADER_BYTES",
           "PREAMBLE_BYTES", "Container", "Signature", "SIGNATURE_MAGIC", "SIGNATURE_BYTES",
           "read_container", "seal"]

MAGIC = b"\x89PEMN\r\n\x1a"
_PREAMBLE = struct.Struct("<8sII32s")  # magic, version, header length, header SHA-256
PREAMBLE_BYTES = _PREAMBLE.size  # 48
MAX_HEADER_BYTES = 16 * 2**20  # a real header is a few KB; refuse to parse more


def seal(header_json: dict, payload: bytes) -> bytes:
    """Preamble (:data:`FORMAT_VERSION`) + compressed header + payload, ``payload_sha256`` and
    both digests set: the only writer of the container (tests re-seal edits with it)."""
    d = {**header_json, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(d, separators=(",", ":")).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise ArtifactError(f"header of {len(text)} bytes exceeds the {MAX_HEADER_BYTES} limit")
    packed = zlib.compress(text, 9)
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(packed), hashlib.sha256(packed).digest())
    return preamble + packed + payload


class Signature(NamedTuple):
    """An ed25519 signature block after the payload (see :mod:`pemn.artifact.signing`)."""

    public_key: bytes  # 32 bytes
    signature: bytes  # 64 bytes
    signed_bytes: int  # the signature covers data[:signed_bytes]: the whole unsigned file


class Container(NamedTuple):
    version: int
    header: dict  # the JSON, as parsed into ``table``
    payload: memoryview
    header_bytes: int  # preamble + stored header
    signature: Signature | None
    table: Header


SIGNATURE_MAGIC = b"PEMNSIG1"
SIGNATURE_BYTES = len(SIGNATURE_MAGIC) + 32 + 64


def read_container(data: bytes) -> Container:
    """Check the preamble, both digests and the header of ``data``; ArtifactError unless it is
    complete and intact. A signature block is returned, not verified (``signing`` does)."""
    if len(data) < PREAMBLE_BYTES:
        raise ArtifactError(f"not a PEMN artifact: {len(data)} bytes is shorter than the "
                            f"{PREAMBLE_BYTES}-byte preamble (truncated file?)")
    magic, version, header_len, header_digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError("not a PEMN artifact: wrong magic bytes (expected a file written by "
                            "pemn.artifact.save)")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format version {version}; this pemn reads "
                            f"version {FORMAT_VERSION} only (re-save the model with it)")
    if header_len > MAX_HEADER_BYTES or PREAMBLE_BYTES + header_len > len(data):
        raise ArtifactError(f"header length {header_len} does not fit the {len(data)}-byte file "
                            f"(limit {MAX_HEADER_BYTES}); the file is truncated or corrupt")
    raw = bytes(data[PREAMBLE_BYTES:PREAMBLE_BYTES + header_len])
    if hashlib.sha256(raw).digest() != header_digest:
        raise ArtifactError("header checksum mismatch: the file is corrupt")
    d = _header_json(raw)
    header = Header.from_json(d)
    if not is_sha256(d.get("payload_sha256")):
        raise ArtifactError("payload_sha256 must be a hex SHA-256 digest")
    start = PREAMBLE_BYTES + header_len
    end = start + sum(e.length for e in header.tensors)  # back to back from 0
    signature = None
    if len(data) == end + SIGNATURE_BYTES and \
            data[end:end + len(SIGNATURE_MAGIC)] == SIGNATURE_MAGIC:
        block = bytes(data[end + len(SIGNATURE_MAGIC):])
        signature = Signature(block[:32], block[32:], end)
    elif end != len(data):
        raise ArtifactError(f"payload is {len(data) - start} bytes but the tensor table "
                            f"describes {end - start}; the file is truncated or padded")
    payload = memoryview(data)[start:end]
    if hashlib.sha256(payload).hexdigest() != d.get("payload_sha256"):
        raise ArtifactError("payload checksum mismatch: the file is corrupt")
    return Container(version, d, payload, start, signature, header)


def _reject_constant(name: str):
    raise ArtifactError(f"header contains {name}, which is not valid JSON")


def _header_json(raw: bytes) -> dict:
    """The stored header inflated, capped (no gigabytes from a small header), and parsed."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_HEADER_BYTES + 1)
    except zlib.error:
        raise ArtifactError("header is not valid zlib data: the file is corrupt") from None
    if len(text) > MAX_HEADER_BYTES or not inflater.eof or inflater.unused_data:
        raise ArtifactError(f"header inflates past {MAX_HEADER_BYTES} bytes or has trailing "
                            "data")
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except ArtifactError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"header is not valid UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"header must be a JSON object, got {type(header).__name__}")
    return header
