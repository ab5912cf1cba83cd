"""Trained weights stored compactly: the numerics :mod:`pemn.competitors` trains with, next to
their byte formats (``docs/FORMAT.md``, "Trained-weight encodings"), so that the forward pass
and the file agree bit for bit."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from pemn.artifact.bitpack import pack_bits, unpack_bits
from pemn.artifact.codec import choose_codec, get_codec, list_codecs
from pemn.artifact.header import ArtifactError
from pemn.fill import Strategy, TensorSpec, file_under

__all__ = ["quantize", "dequantize", "binarize", "debinarize", "Encoding", "ENCODINGS",
           "get_encoding", "sparse_encoding", "TrainedWeights", "register_encoding",
           "SPARSE_FORMATS", "csr_num_bytes"]

_FP16_MAX = 65504.0


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows,)`` vector shaped to broadcast over ``like``'s other dims."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _fp16_scale(v: torch.Tensor) -> torch.Tensor:
    """Round to float16 (its largest finite value at most) and compute on in float32."""
    return v.clamp(max=_FP16_MAX).half().float()


def quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel ``q = round(w / s)``, ``s = max|w| / qmax`` (127 or 7 for 8 or
    4 bits): int8 ``q`` of ``w``'s shape and float32 ``s`` ``(out,)`` of float16 numbers."""
    qmax = 2 ** (bits - 1) - 1
    w = w.detach()
    scale = _fp16_scale(_rows(w).abs().amax(1) / qmax)
    divisor = _per_row(torch.where(scale > 0, scale, torch.ones_like(scale)), w)
    q = torch.round(w / divisor).clamp_(-qmax, qmax) * _per_row(scale > 0, w)
    return q.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``q * s`` of :func:`quantize` (what the layer computes with)."""
    return q.to(torch.float32) * _per_row(scale, q)


def binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BWN/XNOR-Net (Rastegari et al. 2016): bool ``signs`` (True where ``w >= 0``, and in a
    channel whose alpha is 0) and ``alpha = mean |w|`` per channel (float16 numbers)."""
    w = w.detach()
    alpha = _fp16_scale(_rows(w).abs().mean(1))
    return (w >= 0) | _per_row(alpha == 0, w), alpha


def debinarize(signs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``+alpha`` where ``signs`` is True, ``-alpha`` elsewhere."""
    a = _per_row(alpha, signs)
    return torch.where(signs, a, -a)


@dataclass(frozen=True)
class Encoding:
    """One byte format of a trained tensor (``name``: never reused for another format).
    ``decode`` returns ``(float32 weight, mask or None)``, ArtifactError unless canonical;
    ``sparse``: the tensor keeps ``k`` values (the others 0) and stores a mask."""

    name: str
    encode: Callable[[torch.Tensor, torch.Tensor | None], bytes]
    decode: Callable[[bytes, tuple[int, ...], int], tuple[torch.Tensor, torch.Tensor | None]]
    sparse: bool = False


ENCODINGS: dict[str, Encoding] = {}
SPARSE_FORMATS = ("mask", "csr")  # pack(sparse_format=...): a coded mask + values, or CSR


def get_encoding(name: str) -> Encoding:
    if name not in ENCODINGS:
        raise ArtifactError(f"unknown weight encoding {str(name)[:40]!r}; known: "
                            f"{sorted(ENCODINGS)}")
    return ENCODINGS[name]


def register_encoding(encoding: Encoding) -> None:
    file_under(ENCODINGS, encoding.name)(encoding)  # ValueError for a name taken


def _scales(data: bytes, rows: int, what: str) -> torch.Tensor:
    """``rows`` float16 scales at the start of ``data``: finite, not negative."""
    raw = np.frombuffer(data, dtype="<f2", count=rows)
    if not np.isfinite(raw).all() or np.signbit(raw).any():
        raise ArtifactError(f"{what}: a per-channel scale is negative, NaN or infinite")
    return torch.from_numpy(raw.astype(np.float32))


def _fp16_bytes(v: torch.Tensor) -> bytes:
    return v.detach().cpu().numpy().astype("<f2").tobytes()


def _expect_length(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ArtifactError(f"{what}: {len(data)} bytes, the shape needs {size}")


def _int_encoding(bits: int) -> Encoding:
    qmax = 2 ** (bits - 1) - 1
    name = f"int{bits}"

    def encode(latent: torch.Tensor, mask) -> bytes:
        q, scale = quantize(latent, bits)
        codes = q.cpu().reshape(-1).numpy().astype(np.int8)
        if bits == 4:
            nibbles = np.pad((codes & 0xF).astype(np.uint8), (0, codes.size % 2))  # even count
            codes = nibbles[0::2] | (nibbles[1::2] << 4)
        return _fp16_bytes(scale) + codes.tobytes()

    def decode(data: bytes, shape: tuple[int, ...], k: int):
        n, rows = math.prod(shape), shape[0]
        body = n if bits == 8 else (n + 1) // 2
        _expect_length(data, 2 * rows + body, name)
        scale = _scales(data, rows, name)
        raw = np.frombuffer(data, dtype=np.int8 if bits == 8 else np.uint8, offset=2 * rows)
        if bits == 4:
            if n % 2 and raw[-1] >> 4:
                raise ArtifactError(f"{name}: the padding nibble is not zero")
            nibbles = np.stack([raw & 0xF, raw >> 4], axis=1).reshape(-1)[:n].astype(np.int8)
            raw = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
        q = torch.from_numpy(raw.copy()).view(shape)
        wide = q.to(torch.int16)  # int8's abs(-128) overflows
        if bool((wide.abs() > qmax).any()):
            raise ArtifactError(f"{name}: a code is outside [-{qmax}, {qmax}]")
        # canonical: positive-scale channels reach |code| = qmax, zero-scale ones hold only 0
        peak = _rows(wide).abs().amax(1) if wide.numel() else torch.zeros_like(scale)
        if bool(((scale > 0) & (peak != qmax)).any() | ((scale == 0) & (peak != 0)).any()):
            raise ArtifactError(f"{name}: codes and scales are not what the quantizer writes")
        return dequantize(q, scale), None

    return Encoding(name, encode, decode)


def _sign_encode(latent: torch.Tensor, mask) -> bytes:
    signs, alpha = binarize(latent)
    return _fp16_bytes(alpha) + pack_bits(signs.cpu())


def _sign_decode(data: bytes, shape: tuple[int, ...], k: int):
    n, rows = math.prod(shape), shape[0]
    _expect_length(data, 2 * rows + (n + 7) // 8, "sign")
    alpha = _scales(data, rows, "sign")
    try:
        signs = unpack_bits(data[2 * rows:], n).view(shape)
    except ValueError as e:
        raise ArtifactError(f"sign: {e}") from None
    if bool((_rows(~signs).any(1) & (alpha == 0)).any()):
        raise ArtifactError("sign: a channel with alpha 0 has negative signs")
    return debinarize(signs, alpha), None


def _kept_values(latent: torch.Tensor, mask: torch.Tensor) -> bytes:
    flat = latent.detach().cpu().reshape(-1)[mask.cpu().reshape(-1)]
    return flat.numpy().astype("<f4").tobytes()


def _values(data: bytes, k: int, what: str) -> torch.Tensor:
    values = np.frombuffer(data, dtype="<f4", count=k).astype(np.float32)
    if not np.isfinite(values).all():
        raise ArtifactError(f"{what}: a stored value is NaN or infinite")
    return torch.from_numpy(values)


def _scatter(shape: tuple[int, ...], mask: torch.Tensor, values: torch.Tensor):
    weight = torch.zeros(math.prod(shape), dtype=torch.float32)
    weight[mask] = values
    return weight.view(shape), mask.view(shape)


def _mask_encoding(codec: str) -> Encoding:
    name = f"{codec}+f32"

    def encode(latent: torch.Tensor, mask: torch.Tensor) -> bytes:
        return get_codec(codec).encode(mask.bool()) + _kept_values(latent, mask.bool())

    def decode(data: bytes, shape: tuple[int, ...], k: int):
        n = math.prod(shape)
        if not 0 <= k <= n or len(data) < 4 * k:
            raise ArtifactError(f"{name}: {len(data)} bytes cannot hold {k} of {n} values")
        split = len(data) - 4 * k
        try:
            mask = get_codec(codec).decode(data[:split], n, k)
        except ValueError as e:
            raise ArtifactError(f"{name}: {e}") from None
        return _scatter(shape, mask, _values(data[split:], k, name))

    return Encoding(name, encode, decode, sparse=True)


def _index_width(largest: int) -> str:
    """The smallest unsigned little-endian dtype holding ``largest``."""
    return next(code for code, top in (("|u1", 2**8), ("<u2", 2**16), ("<u4", 2**32))
                if largest < top)


def _csr_layout(shape: tuple[int, ...], k: int) -> tuple[int, int, str, str]:
    rows = shape[0]
    cols = math.prod(shape) // rows if rows else 0
    return rows, cols, _index_width(max(cols - 1, 0)), _index_width(k)


def csr_num_bytes(shape: tuple[int, ...], k: int) -> int:
    """Bytes of the ``csr-f32`` encoding of ``k`` kept values of a tensor of ``shape`` (the one
    count of CSR bytes; ``pemn size`` prices by it)."""
    rows, _, col_dtype, ptr_dtype = _csr_layout(tuple(shape), k)
    return (4 + np.dtype(col_dtype).itemsize) * k + np.dtype(ptr_dtype).itemsize * (rows + 1)


def _csr_encode(latent: torch.Tensor, mask: torch.Tensor) -> bytes:
    mask = _rows(mask.bool().cpu())
    k = int(mask.count_nonzero())
    rows, cols, col_dtype, ptr_dtype = _csr_layout(tuple(latent.shape), k)
    columns = torch.nonzero(mask)[:, 1].numpy()  # row-major: sorted by row, then column
    pointers = np.concatenate([[0], np.cumsum(mask.sum(1).numpy())])
    return (_kept_values(latent, mask) + columns.astype(col_dtype).tobytes()
            + pointers.astype(ptr_dtype).tobytes())


def _csr_decode(data: bytes, shape: tuple[int, ...], k: int):
    n = math.prod(shape)
    rows, cols, col_dtype, ptr_dtype = _csr_layout(shape, k)
    col_bytes = np.dtype(col_dtype).itemsize
    if not 0 <= k <= n:
        raise ArtifactError(f"csr-f32: {k} kept values in a tensor of {n}")
    _expect_length(data, csr_num_bytes(shape, k), "csr-f32")
    columns = np.frombuffer(data, col_dtype, k, 4 * k).astype(np.int64)
    pointers = np.frombuffer(data, ptr_dtype, rows + 1, (4 + col_bytes) * k).astype(np.int64)
    if pointers[0] != 0 or pointers[-1] != k or (np.diff(pointers) < 0).any():
        raise ArtifactError("csr-f32: row pointers must rise from 0 to the kept count")
    row_of = np.repeat(np.arange(rows), np.diff(pointers))
    flat = row_of * cols + columns
    if (columns >= cols).any() or (np.diff(flat) <= 0).any():
        raise ArtifactError("csr-f32: column indices must be in range and rise within a row")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(flat)] = True
    return _scatter(shape, mask, _values(data, k, "csr-f32"))


register_encoding(_int_encoding(8))
register_encoding(_int_encoding(4))
register_encoding(Encoding("sign", _sign_encode, _sign_decode))
register_encoding(Encoding("csr-f32", _csr_encode, _csr_decode, sparse=True))
for _codec in list_codecs():
    register_encoding(_mask_encoding(_codec))


def sparse_encoding(sparse_format: str, codec: str, n: int, k: int) -> str:
    """``"csr-f32"``, or the mask codec (``"auto"``: the smallest) followed by ``"+f32"``."""
    if sparse_format == "csr":
        return "csr-f32"
    return f"{choose_codec(n, k) if codec == 'auto' else codec}+f32"


@dataclass(frozen=True, kw_only=True)
class TrainedWeights(Strategy):
    """Base of the strategies whose layers train their own weights (:mod:`pemn.competitors`):
    ``encoding`` names the :data:`ENCODINGS` entry its tensors are stored in (``"sparse"``: by
    :func:`sparse_encoding`); ``dense_ends``: the first and last selected layers stay dense."""

    dense_ends: bool = False
    encoding: ClassVar[str] = ""

    def __post_init__(self):
        if not isinstance(self.dense_ends, bool):
            raise ValueError(f"{self.name} dense_ends must be true or false, got "
                             f"{self.dense_ends!r}")

    def keep_ratio(self, requested: float = 0.0) -> float:
        return 1.0  # every weight is stored (in fewer bits); Sparse overrides

    def num_stored(self, specs: Sequence[TensorSpec], keep_ratio: float = 0.0) -> int:
        return sum(s.numel for s in specs)

    def _ends_tag(self, default: bool) -> str:
        return "" if self.dense_ends == default else ("-dense_ends" if self.dense_ends
                                                      else "-sparse_ends")
