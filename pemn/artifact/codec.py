"""Mask codecs by name (``bits``, ``huffman-bytes``, ``huffman-gaps``): a flat exact-k bool
mask <-> bytes; :func:`choose_codec` picks the smallest per tensor. The byte formats and what
decoding hostile bytes costs: ``docs/FORMAT.md``, "Mask codecs"."""
from __future__ import annotations

import functools
import heapq
import math
import operator
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pemn.artifact.bitpack import CodecError, pack_bits, pack_codes, packed_num_bytes, unpack_bits

__all__ = ["CodecError", "MaskCodec", "register_codec", "get_codec", "list_codecs", "choose_codec"]

# what numpy, zlib and torch raise on hostile sizes or streams; decode wraps them in CodecError
_DECODE_ERRORS = (MemoryError, ValueError, IndexError, OverflowError, RuntimeError, zlib.error)


@dataclass(frozen=True)
class MaskCodec:
    """A named mask codec: :meth:`encode` and :meth:`decode` validate, then call the functions
    (a wrong count or one of ``_DECODE_ERRORS`` from ``decode_fn`` becomes CodecError).
    ``size_fn``: the expected size of a random exact-k mask; ``min_size_fn``: the size no honest
    encoding is under; ``constant_free``: a mask of ``k`` 0 or ``n`` takes 0 bytes."""

    name: str
    encode_fn: Callable[[torch.Tensor, int], bytes]
    decode_fn: Callable[[bytes, int, int], torch.Tensor]
    size_fn: Callable[[int, int], int]
    min_size_fn: Callable[[int, int], int]
    constant_free: bool = False

    def _constant(self, n: int, k: int) -> bool:
        return self.constant_free and k in (0, n)

    def encode(self, mask: torch.Tensor) -> bytes:
        """A bool mask of any shape, flattened in C order."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"codec {self.name!r} needs a torch.bool mask, got {got}")
        flat = mask.detach().cpu().reshape(-1)
        k = int(flat.count_nonzero())
        return b"" if self._constant(flat.numel(), k) else self.encode_fn(flat, k)

    def decode(self, data: bytes | bytearray | memoryview, n: int, k: int) -> torch.Tensor:
        """``data`` as a bool tensor ``(n,)`` with exactly ``k`` ones, else CodecError."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"codec {self.name!r} decodes bytes, got {type(data).__name__}")
        n, k = _check_counts(n, k)
        data = bytes(data)
        if self._constant(n, k):
            if data:
                raise CodecError(f"a mask with k={k} of n={n} takes 0 bytes, got {len(data)}")
            return torch.full((n,), k > 0, dtype=torch.bool)
        least = self.min_size_fn(n, k)
        if len(data) < least:
            raise CodecError(f"{self.name!r} data for a mask of n={n}, k={k} takes at least "
                             f"{least} bytes, got {len(data)}")
        try:
            mask = self.decode_fn(data, n, k)
            num_ones = int(mask.count_nonzero())
        except _DECODE_ERRORS as err:
            if isinstance(err, CodecError):
                raise
            raise CodecError(f"{self.name!r} data for a mask of n={n}, k={k} does not decode: "
                             f"{type(err).__name__}: {err}") from err
        if mask.shape != (n,) or num_ones != k:
            raise CodecError(f"{self.name!r} data decodes to {num_ones} ones, header says {k}")
        return mask

    def expected_num_bytes(self, n: int, k: int) -> int:
        n, k = _check_counts(n, k)
        return 0 if self._constant(n, k) else self.size_fn(n, k)

    def min_num_bytes(self, n: int, k: int) -> int:
        n, k = _check_counts(n, k)
        return 0 if self._constant(n, k) else self.min_size_fn(n, k)


_CODECS: dict[str, MaskCodec] = {}


def register_codec(codec: MaskCodec) -> MaskCodec:
    if codec.name in _CODECS:
        raise ValueError(f"mask codec {codec.name!r} is already registered; pick another name")
    _CODECS[codec.name] = codec
    return codec


def get_codec(name: str) -> MaskCodec:
    """The codec registered as ``name``; :class:`CodecError` if unknown (names come from files)."""
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise CodecError(f"unknown mask codec {name!r}; known: {list_codecs()}") from None


def list_codecs() -> list[str]:
    """Registered codec names, ``"bits"`` first."""
    return list(_CODECS)


def choose_codec(n: int, k: int) -> str:
    """The codec of smallest expected size for an exact-k mask; ties go to the earlier
    registered (``"bits"`` at ``k = n/2`` and for tiny masks)."""
    return min(_CODECS.values(), key=lambda codec: codec.expected_num_bytes(n, k)).name


def _check_counts(n: int, k: int) -> tuple[int, int]:
    try:
        n, k = operator.index(n), operator.index(k)
    except TypeError:
        raise CodecError(f"mask counts must be integers, got n={n!r}, k={k!r}") from None
    if not 0 <= k <= n:
        raise CodecError(f"need 0 <= k <= n for a mask, got n={n}, k={k}")
    return n, k


register_codec(MaskCodec(name="bits", encode_fn=lambda flat, k: pack_bits(flat),
                         decode_fn=lambda data, n, k: unpack_bits(data, n),
                         size_fn=lambda n, k: packed_num_bytes(n),
                         min_size_fn=lambda n, k: packed_num_bytes(n)))


# Static canonical Huffman codes, decoded by zlib as one DEFLATE block (docs/FORMAT.md)
_MAX_LEN = 15  # DEFLATE's longest code
_EOB = 256  # end-of-block symbol
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


@dataclass(frozen=True)
class _Code:
    """A canonical Huffman code over symbols 0..256 and the DEFLATE prefix that declares it."""

    lengths: np.ndarray  # (257,) int64; 0 = unused symbol
    codes: np.ndarray  # (257,) uint64, each bit-reversed so that pack_codes writes it MSB first
    prefix: bytes  # 142 bytes: three empty fixed blocks and the dynamic block's header
    mean_bits: float  # expected code length of a symbol in 0..255, under the weights


def _huffman_lengths(weights: list[int]) -> list[int]:
    """Code lengths (0 for weight 0) of a Huffman code, cut to ``_MAX_LEN`` (docs/FORMAT.md)."""
    used = [s for s, w in enumerate(weights) if w > 0]
    heap = [(weights[s], s, [s]) for s in used]  # (weight, id, its symbols); ties: lower id
    heapq.heapify(heap)
    depth, next_id = dict.fromkeys(used, 0), len(weights)
    while len(heap) > 1:  # merge the two lightest: each of their symbols one level deeper
        (w1, _, a), (w2, _, b) = heapq.heappop(heap), heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (w1 + w2, next_id, a + b))
        next_id += 1
    leaf_depths = list(depth.values())
    count = _cut_to_max_length([leaf_depths.count(b) for b in range(max(leaf_depths) + 1)])
    ranked = iter(sorted(used, key=lambda s: (-weights[s], s)))  # shortest codes first
    lengths = [0] * len(weights)
    for length, num in enumerate(count):
        for _ in range(num):
            lengths[next(ranked)] = length
    return lengths


def _cut_to_max_length(count: list[int]) -> list[int]:
    """JPEG's cut (ITU T.81 Annex K.3): no code longer than ``_MAX_LEN``, Kraft sum kept at 1."""
    count = count + [0] * (_MAX_LEN + 1 - len(count))
    for i in range(len(count) - 1, _MAX_LEN, -1):
        while count[i]:
            j = i - 2
            while count[j] == 0:
                j -= 1
            count[i] -= 2
            count[i - 1] += 1
            count[j + 1] += 2
            count[j] -= 1
    return count[:_MAX_LEN + 1]


def _canonical_codes(lengths: list[int]) -> list[int]:
    """RFC 1951 canonical codes by (length, symbol), bit-reversed for DEFLATE; 0 if unused."""
    codes, code, previous = [0] * len(lengths), 0, 0
    for s in sorted((s for s, b in enumerate(lengths) if b), key=lambda s: (lengths[s], s)):
        code <<= lengths[s] - previous
        previous = lengths[s]
        codes[s] = int(f"{code:0{previous}b}"[::-1], 2)
        code += 1
    return codes


def _deflate_prefix(lengths: list[int]) -> bytes:
    """The 142-byte DEFLATE prefix of docs/FORMAT.md, declaring the code of ``lengths``."""
    empty_fixed = [(0, 1), (1, 2), (0, 7)]  # (value, bits): BFINAL 0, BTYPE 01, end-of-block
    fields = empty_fixed * 3 + [(1, 1), (2, 2), (0, 5), (0, 5), (15, 4)]  # BTYPE 10, HLIT, ...
    fields += [(4 if s < 16 else 0, 3) for s in _CL_ORDER]  # lengths 0..15 have 4-bit codes
    fields += [(int(f"{b:04b}"[::-1], 2), 4) for b in lengths + [0]]  # code = value, MSB first
    values, widths = zip(*fields)
    return pack_codes(np.array(values), np.array(widths))


def _make_code(weights: list[int]) -> _Code:
    lengths = _huffman_lengths(weights + [1])
    mean = sum(w * b for w, b in zip(weights, lengths)) / sum(weights)
    return _Code(np.array(lengths, np.int64), np.array(_canonical_codes(lengths), np.uint64),
                 _deflate_prefix(lengths), mean)


def _encode_symbols(code: _Code, symbols: np.ndarray) -> bytes:
    """The codes of ``symbols`` (uint8) then end-of-block, zero-padded to a byte."""
    stream = np.append(symbols.astype(np.int64), _EOB)
    return pack_codes(code.codes[stream], code.lengths[stream])


def _inflate(code: _Code, data: bytes, max_symbols: int) -> tuple[bytes, bytes]:
    """Decode the Huffman part of ``data``: its symbols (a byte each) and the bytes after it."""
    inflater = zlib.decompressobj(-15)
    out = inflater.decompress(code.prefix + data, max_symbols + 1)
    if not inflater.eof or len(out) > max_symbols:
        raise CodecError(f"Huffman data does not end within {max_symbols} symbols")
    return out, inflater.unused_data


# "huffman-bytes": the packed bitmap, a byte per symbol
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)])


@functools.lru_cache(maxsize=256)
def _bytes_code(n: int, k: int) -> _Code:
    per_count = [k**c * (n - k) ** (8 - c) for c in range(9)]
    return _make_code([per_count[c] for c in _POPCOUNT.tolist()])


def _bytes_encode(flat: torch.Tensor, k: int) -> bytes:
    symbols = np.frombuffer(pack_bits(flat), np.uint8)
    return _encode_symbols(_bytes_code(flat.numel(), k), symbols)


def _bytes_decode(data: bytes, n: int, k: int) -> torch.Tensor:
    num_symbols = packed_num_bytes(n)
    symbols, rest = _inflate(_bytes_code(n, k), data, num_symbols)
    if len(symbols) != num_symbols or rest:
        raise CodecError(f"huffman-bytes data for n={n} holds {len(symbols)} symbols and "
                         f"{len(rest)} trailing bytes, expected {num_symbols} and 0")
    return unpack_bits(symbols, n)


def _bytes_size(n: int, k: int) -> int:
    code = _bytes_code(n, k)
    return math.ceil((packed_num_bytes(n) * code.mean_bits + code.lengths[_EOB]) / 8)


def _bytes_min_size(n: int, k: int) -> int:
    code = _bytes_code(n, k)
    return packed_num_bytes(packed_num_bytes(n) * int(code.lengths[:256].min()))


register_codec(MaskCodec(name="huffman-bytes", encode_fn=_bytes_encode,
                         decode_fn=_bytes_decode, size_fn=_bytes_size,
                         min_size_fn=_bytes_min_size, constant_free=True))


# "huffman-gaps": runs between minority values, Rice-split, high part Huffman-coded
_FIX = 48  # fixed-point bits of the run-length model
_ESCAPE_BELOW = 1 << (_FIX - 12)  # escape once a run this long has probability < 2**-12
_DECODE_CHUNK = 1 << 20  # symbols per vectorised step: bounds int64 temporaries to ~8 MB


@dataclass(frozen=True)
class _GapModel:
    minority: bool  # the value whose positions are coded
    num: int  # m: how many there are
    rice: int  # r: low bits sent raw
    escape: int  # E: the symbol meaning "E << r more values of the majority"
    escape_share: float  # the expected share of escapes among the symbols
    code: _Code

    def max_symbols(self, n: int) -> int:
        """At most one escape per ``E << r`` majority values, plus one symbol per run."""
        return self.num + (n >> self.rice) // self.escape + 1


@functools.lru_cache(maxsize=256)
def _gap_model(n: int, k: int) -> _GapModel:
    m = min(k, n - k)
    t = ((n - m) << _FIX) // n
    rice = max(0, (n // m).bit_length() - 8)
    for _ in range(rice):
        t = t * t >> _FIX
    survive = [1 << _FIX]  # survive[j] ~ P(run >> r >= j)
    while survive[-1] >= _ESCAPE_BELOW and len(survive) < 256:
        survive.append(survive[-1] * t >> _FIX)
    escape = len(survive) - 1
    weights = [max(1, a * ((1 << _FIX) - t) >> _FIX) for a in survive[:escape]]
    weights += [max(1, survive[escape])] + [0] * (255 - escape)
    return _GapModel(m == k, m, rice, escape, weights[escape] / sum(weights), _make_code(weights))


def _gaps_encode(flat: torch.Tensor, k: int) -> bytes:
    model = _gap_model(flat.numel(), k)
    where = np.flatnonzero(flat.numpy() == model.minority)
    runs = np.diff(where, prepend=-1) - 1  # majority values before each minority value
    high, low = runs >> model.rice, runs & ((1 << model.rice) - 1)
    per_run = high // model.escape + 1  # escapes, then the remainder
    symbols = np.full(int(per_run.sum()), model.escape, np.uint8)
    symbols[np.cumsum(per_run) - 1] = high % model.escape
    # then the raw low bits of every run (none when r is 0)
    return _encode_symbols(model.code, symbols) + pack_codes(low, np.full(low.size, model.rice))


def _gaps_decode(data: bytes, n: int, k: int) -> torch.Tensor:
    model = _gap_model(n, k)
    stream, rest = _inflate(model.code, data, model.max_symbols(n))
    symbols = np.frombuffer(stream, np.uint8)
    if not symbols.size or symbols[-1] == model.escape:
        raise CodecError("huffman-gaps data must end with a run, not an escape or nothing")
    mask = np.full(n, not model.minority)
    num_runs = _scatter_runs(mask, symbols, _raw_low_bits(rest, model), model)
    if num_runs != model.num:
        raise CodecError(f"huffman-gaps data codes {num_runs} runs, expected {model.num}")
    return torch.from_numpy(mask)


def _scatter_runs(mask: np.ndarray, symbols: np.ndarray, low: np.ndarray | None,
                  model: _GapModel) -> int:
    """Set the minority values that ``symbols`` place in ``mask``; returns how many runs."""
    # a run symbol v moves past (v << r) + 1 values (the run and its minority value), an
    # escape past E << r: cumulative sums give the positions, plus the runs' raw low bits
    advance = (np.arange(256, dtype=np.int64) << model.rice) + 1
    advance[model.escape] = model.escape << model.rice
    end, ones, low_sum = -1, 0, 0  # totals carried from the previous chunks
    for start in range(0, symbols.size, _DECODE_CHUNK):
        chunk = symbols[start:start + _DECODE_CHUNK]
        where = np.cumsum(np.take(advance, chunk))
        where += end
        end = int(where[-1])
        runs = chunk != model.escape
        if not runs.all():
            where = where[runs]
        if ones + where.size > model.num:
            return ones + where.size  # too many runs (at least): the caller refuses them
        if low is not None:
            lows = np.cumsum(low[ones:ones + where.size]) + low_sum
            where += lows
            low_sum = int(lows[-1]) if lows.size else low_sum
        if where.size and where[-1] >= mask.size:
            raise CodecError(f"huffman-gaps data runs past the end of a mask of n={mask.size}")
        mask[where] = model.minority
        ones += where.size
    return ones


def _raw_low_bits(rest: bytes, model: _GapModel) -> np.ndarray | None:
    """The ``r`` raw low bits of every run (int64, (m,)) after the Huffman part; None if r=0."""
    if packed_num_bytes(model.num * model.rice) != len(rest):
        raise CodecError(f"huffman-gaps data has {len(rest)} bytes of raw low bits, expected "
                         f"{packed_num_bytes(model.num * model.rice)}")
    if not model.rice:
        return None
    bits = np.unpackbits(np.frombuffer(rest, np.uint8), bitorder="little")
    if bits[model.num * model.rice:].any():
        raise CodecError("huffman-gaps padding bits after the raw low bits are not zero")
    bits = bits[:model.num * model.rice].reshape(model.num, model.rice).astype(np.int64)
    return bits @ (1 << np.arange(model.rice, dtype=np.int64))


def _gaps_size(n: int, k: int) -> int:
    model = _gap_model(n, k)
    bits_per_run = model.code.mean_bits / (1 - model.escape_share) + model.rice
    return math.ceil((model.num * bits_per_run + model.code.lengths[_EOB]) / 8)


def _gaps_min_size(n: int, k: int) -> int:
    model = _gap_model(n, k)
    shortest = int(model.code.lengths[:model.escape].min())
    return (packed_num_bytes(model.num * shortest + int(model.code.lengths[_EOB]))
            + packed_num_bytes(model.num * model.rice))


register_codec(MaskCodec(name="huffman-gaps", encode_fn=_gaps_encode, decode_fn=_gaps_decode,
                         size_fn=_gaps_size, min_size_fn=_gaps_min_size, constant_free=True))
