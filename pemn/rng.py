"""A portable random generator: the same seed gives the same float32 bytes on every machine.

Only integer arithmetic and correctly rounded IEEE-754 operations; the algorithm,
``pemn-splitmix-polar-v1``, is specified in docs/FORMAT.md, "The random generator".
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["GENERATOR_ID", "normal", "permutation", "sha256_f32", "uniform_words"]

GENERATOR_ID = "pemn-splitmix-polar-v1"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM_SALT = 0x632BE59BD9B4E019
_MASK64 = (1 << 64) - 1
_LN2 = 0.6931471805599453  # nearest float64 to ln 2


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood's SplitMix64 finaliser, element-wise on uint64 (wrapping)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _stream_key(seed: int, stream: int) -> np.uint64:
    if not (0 <= seed <= _MASK64 and 0 <= stream <= _MASK64):
        raise ValueError(f"seed and stream must be integers in [0, 2**64), got {seed}, {stream}")
    words = np.array([seed, (stream + _STREAM_SALT) & _MASK64], dtype=np.uint64)
    a, b = _splitmix64(words)
    return a ^ b


def uniform_words(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Raw 64-bit words ``start .. start+count-1`` of a stream (counter-based, so any slice)."""
    counters = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(_stream_key(seed, stream) + counters * _GOLDEN)


def _ln(s: np.ndarray) -> np.ndarray:
    """Natural log of positive float64 values from correctly rounded operations only."""
    m, e = np.frexp(s)  # s = m * 2**e, m in [0.5, 1): exact
    low = m < np.sqrt(0.5)  # move m into [sqrt(1/2), sqrt(2)) so the series converges fast
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    t = (m - 1.0) / (m + 1.0)  # |t| < 0.1716
    t2 = t * t
    acc = np.zeros_like(t)
    for k in range(23, 0, -2):  # atanh(t) = t + t^3/3 + ... + t^23/23; error < 1e-18 relative
        acc = acc * t2 + 1.0 / k
    return e * _LN2 + 2.0 * t * acc


_CHUNK_PAIRS = 1 << 16  # pairs drawn per step: ~6 MB of float64 temporaries whatever n is


def _polar(seed: int, stream: int, pair: int, num_pairs: int) -> np.ndarray:
    """The accepted normals of pairs ``pair .. pair+num_pairs-1`` of a stream, in order."""
    words = uniform_words(seed, stream, 2 * pair, 2 * num_pairs)
    uv = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-52 - 1.0
    u, v = uv[0::2], uv[1::2]
    s = u * u + v * v
    ok = (s > 0.0) & (s < 1.0)
    u, v, s = u[ok], v[ok], s[ok]
    f = np.sqrt(-2.0 * _ln(s) / s)
    return np.stack([u * f, v * f], axis=1).reshape(-1)  # u0, v0, u1, v1, ...


def normal(seed: int, stream: int, n: int, std: float = 1.0) -> np.ndarray:
    """``n`` float32 values ~ N(0, std**2) of stream ``stream``; identical on every machine.
    Drawn in chunks (the bytes do not depend on their size: the prefix property)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = np.empty(n, dtype=np.float32)
    filled, pair = 0, 0
    while filled < n:
        num_pairs = min(_CHUNK_PAIRS, int((n - filled) * 0.66) + 64)  # acceptance: pi/4
        values = _polar(seed, stream, pair, num_pairs)
        take = min(len(values), n - filled)
        out[filled:filled + take] = values[:take] * float(std)  # float64 -> float32, rounded
        filled += take
        pair += num_pairs
    return out


def permutation(seed: int, stream: int, n: int) -> np.ndarray:
    """A permutation of ``range(n)``: stable argsort of the stream's raw words."""
    return np.argsort(uniform_words(seed, stream, 0, n), kind="stable")


def sha256_f32(values: np.ndarray) -> str:
    """SHA-256 of little-endian float32 bytes, the fingerprint stored next to a seed."""
    values = np.ascontiguousarray(values, dtype="<f4")
    return hashlib.sha256(values.reshape(-1).view(np.uint8)).hexdigest()  # no bytes copy
