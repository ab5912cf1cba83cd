"""Optional ed25519 signatures (``pemn[sign]``): who wrote an artifact, not only whether it is
intact. Use: docs/THREAT_MODEL.md, "Signing"; the block's layout: docs/FORMAT.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from pemn.artifact.format import SIGNATURE_MAGIC, ArtifactError, read_container
from pemn.fileio import atomic_write

__all__ = ["generate_key", "sign", "verify", "public_key_hex"]


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ArtifactError("signing needs the 'cryptography' package: pip install "
                            "'pemn[sign]'") from None
    return ed25519


def _private_key(key):
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    from cryptography.hazmat.primitives import serialization
    try:
        loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, TypeError, ValueError) as e:
        raise ArtifactError(f"cannot read an ed25519 private key from {key}: {e}") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ArtifactError(f"{key} is not an ed25519 private key")
    return loaded


def _public_bytes(key) -> bytes:
    """32 raw bytes from a public key object, 64 hex characters, or a private key."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(*raw)
    if isinstance(key, str) and len(key) == 64:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    if isinstance(key, bytes) and len(key) == 32:
        return key
    return _private_key(key).public_key().public_bytes(*raw)


def generate_key(path: str | os.PathLike) -> str:
    """Write a new ed25519 private key (PEM, mode 0600) to ``path``; returns its public hex."""
    from cryptography.hazmat.primitives import serialization
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem)
    os.chmod(path, 0o600)
    return public_key_hex(key)


def public_key_hex(key) -> str:
    """The public key (hex) of a private key, a key file, or a public key."""
    return _public_bytes(key).hex()


def sign(data: bytes, private_key) -> bytes:
    """``data`` (an unsigned artifact) followed by its signature block."""
    if read_container(data).signature is not None:
        raise ArtifactError("the file is already signed")
    key = _private_key(private_key)
    return data + SIGNATURE_MAGIC + _public_bytes(key.public_key()) + key.sign(data)


def verify(data: bytes, public_key) -> None:
    """Raise :class:`ArtifactError` unless ``data`` is signed by ``public_key``."""
    signature = read_container(data).signature
    if signature is None:
        raise ArtifactError("the file is not signed, so its author cannot be verified")
    expected = _public_bytes(public_key)
    if signature.public_key != expected:
        raise ArtifactError(f"the file is signed by key {signature.public_key.hex()[:16]}..., "
                            f"not by {expected.hex()[:16]}...")
    from cryptography.exceptions import InvalidSignature
    try:
        _ed25519().Ed25519PublicKey.from_public_bytes(expected).verify(
            signature.signature, bytes(data[:signature.signed_bytes]))
    except InvalidSignature:
        raise ArtifactError("the signature does not match the file: it was modified after "
                            "signing") from None
