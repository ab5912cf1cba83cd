"""Bit packing and mask codecs: documented bit order, round trips over the whole registry,
pinned byte formats, sizes against the entropy bound n H(p) / 8, the shortest-honest-encoding
rule, and hostile bytes (CodecError or a valid mask, never another error)."""
import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pemn.artifact.bitpack import CodecError, pack_bits, pack_codes, packed_num_bytes, unpack_bits
from pemn.artifact.codec import MaskCodec, choose_codec, get_codec, list_codecs, register_codec

SIZES = [1, 7, 8, 9, 1000, 65536]
KEEP = ["0", "1/n", 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.99, 1.0]
HUFFMAN = ["huffman-bytes", "huffman-gaps"]
CURRENT = ["bits"] + HUFFMAN  # what choose_codec may pick


def exact_k_mask(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """A random flat bool mask with exactly k ones."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:k]] = True
    return mask


def num_kept(n: int, keep) -> int:
    return {"0": 0, "1/n": 1}[keep] if isinstance(keep, str) else round(keep * n)


def entropy_bytes(n: int, k: int) -> float:
    p = k / n
    return 0.0 if k in (0, n) else n * (-p * math.log2(p) - (1 - p) * math.log2(1 - p)) / 8


def hashed_mask(n: int, k: int) -> torch.Tensor:
    """A scattered mask with exactly k ones and no RNG involved (for pinned formats)."""
    return (torch.arange(n) * 2654435761) % n < k


# ------------------------------------------------------------------------------------------
# bitpack
# ------------------------------------------------------------------------------------------

def test_documented_bit_order():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert pack_bits(mask) == b"\x01\x01"
    assert pack_bits(torch.tensor([0, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool)) == b"\x82"


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5, 2), (64, 3, 3, 3)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    data = pack_bits(mask)
    assert len(data) == packed_num_bytes(mask.numel())
    flat = mask.reshape(-1)
    for i in range(flat.numel()):  # bit i of the flat (C-order) mask is bit i % 8 of byte i // 8
        assert bool(data[i // 8] >> (i % 8) & 1) == bool(flat[i])
    out = unpack_bits(data, mask.numel())
    assert out.dtype == torch.bool and out.shape == (mask.numel(),)
    assert torch.equal(out.reshape(shape), mask)


def test_pack_flattens_in_c_order():
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(2)) < 0.5
    assert pack_bits(mask.t()) == pack_bits(mask.t().contiguous().reshape(-1))


def test_unpack_rejects_bad_length_and_padding():
    with pytest.raises(CodecError, match="9 packed bits take 2 bytes, got 1"):
        unpack_bits(b"\x01", 9)
    with pytest.raises(CodecError, match="9 packed bits take 2 bytes, got 3"):
        unpack_bits(b"\x01\x00\x00", 9)
    with pytest.raises(CodecError, match="padding bits after bit 9 are not zero"):
        unpack_bits(b"\x01\x02", 9)  # bit 9 is padding
    with pytest.raises(CodecError, match="mask size must be >= 0"):
        unpack_bits(b"", -1)
    assert unpack_bits(b"\xff\x01", 9).all()


def test_pack_rejects_non_bool():
    with pytest.raises(TypeError, match="pack_bits needs a torch.bool tensor"):
        pack_bits(torch.ones(8))


def test_pack_codes_order():
    assert pack_codes(np.array([1, 2]), np.array([1, 2])) == b"\x05"  # bits 1, 0, 1
    assert pack_codes(np.array([0x1FF, 0]), np.array([9, 0])) == b"\xff\x01"
    assert pack_codes(np.zeros(0, np.uint64), np.zeros(0, np.int64)) == b""


def test_pack_codes_matches_pack_bits_across_chunks():
    bits = torch.rand(300_001, generator=torch.Generator().manual_seed(4)) < 0.5
    ones = np.ones(bits.numel(), np.int64)
    assert pack_codes(bits.numpy().astype(np.uint64), ones) == pack_bits(bits)


# ------------------------------------------------------------------------------------------
# codecs: round trips over the whole registry
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_codecs())
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("keep", KEEP, ids=str)
def test_round_trip(name, n, keep):
    k = num_kept(n, keep)
    mask = exact_k_mask(n, k, seed=n + k)
    codec = get_codec(name)
    data = codec.encode(mask)
    assert isinstance(data, bytes) and len(data) >= codec.min_num_bytes(n, k)
    out = codec.decode(data, n, k)
    assert out.dtype == torch.bool and out.shape == (n,)
    assert torch.equal(out, mask)


@pytest.mark.parametrize("n, k", [(1 << 20, 50), (1 << 20, 1), (3_000_000, 1_200_000),
                                  (3_000_000, 2_900_000), (100_000, 99_999)])
def test_huffman_gaps_round_trip_large(n, k):
    """Raw low bits (sparse masks), several decode chunks (> 2**20 symbols), coded zeros."""
    mask = exact_k_mask(n, k, seed=7)
    codec = get_codec("huffman-gaps")
    assert torch.equal(codec.decode(codec.encode(mask), n, k), mask)


@pytest.mark.parametrize("name", list_codecs())
def test_encode_takes_any_shape(name):
    mask = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(3)) < 0.2
    codec = get_codec(name)
    assert codec.encode(mask) == codec.encode(mask.reshape(-1))
    k = int(mask.count_nonzero())
    assert torch.equal(codec.decode(codec.encode(mask), mask.numel(), k), mask.reshape(-1))


@pytest.mark.parametrize("name", list_codecs())
def test_decode_takes_bytes_like(name):
    mask = exact_k_mask(100, 10)
    codec = get_codec(name)
    data = codec.encode(mask)
    for buf in (bytearray(data), memoryview(data)):
        assert torch.equal(codec.decode(buf, 100, 10), mask)
    with pytest.raises(TypeError, match="decodes bytes, got list"):
        codec.decode(list(data), 100, 10)


@pytest.mark.parametrize("name", list_codecs())
def test_decode_checks_count(name):
    mask = exact_k_mask(1000, 100)
    codec = get_codec(name)
    data = codec.encode(mask)
    for k in (99, 101):
        with pytest.raises(CodecError, match=f"(header says|runs, expected) {k}"):
            codec.decode(data, 1000, k)
    for n, k in ((1000, 1001), (1000, -1), (-1, 0), (1000, 1.5)):
        with pytest.raises(CodecError, match="need 0 <= k <= n|must be integers"):
            codec.decode(data, n, k)


@pytest.mark.parametrize("name", HUFFMAN)
def test_all_or_nothing_is_empty(name):
    codec = get_codec(name)
    assert codec.encode(torch.zeros(100, dtype=torch.bool)) == b""
    assert codec.encode(torch.ones(100, dtype=torch.bool)) == b""
    assert codec.decode(b"", 100, 100).all()
    with pytest.raises(CodecError, match="k=0 of n=100 takes 0 bytes, got 1"):
        codec.decode(b"\x00", 100, 0)


# ------------------------------------------------------------------------------------------
# pinned formats: artifacts store these bytes, so they must never change under their names
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hex_bytes", [("huffman-bytes", "2de9eb940dff7f"),
                                             ("huffman-gaps", "b0873d7cf8ff0f")])
def test_huffman_known_answer(name, hex_bytes):
    mask = hashed_mask(64, 10)
    assert get_codec(name).encode(mask).hex() == hex_bytes
    assert torch.equal(get_codec(name).decode(bytes.fromhex(hex_bytes), 64, 10), mask)


@pytest.mark.parametrize("name, n, k, size, digest", [
    ("huffman-bytes", 4096, 400, 248, "d4f92ad10aadc41b"),
    ("huffman-gaps", 4096, 400, 246, "dedbc89cafa7025f"),
    ("huffman-gaps", 1 << 20, 60, 120, "ce589ac01bb1a707"),  # Rice parameter 7: raw low bits
])
def test_huffman_format_is_frozen(name, n, k, size, digest):
    data = get_codec(name).encode(hashed_mask(n, k))
    assert (len(data), hashlib.sha256(data).hexdigest()[:16]) == (size, digest)


def test_registry():
    assert list_codecs()[0] == "bits" and set(CURRENT) == set(list_codecs())
    with pytest.raises(CodecError, match="unknown mask codec 'zip'"):
        get_codec("zip")
    with pytest.raises(ValueError, match="'bits' is already registered"):
        register_codec(MaskCodec("bits", None, None, None, None))


# ------------------------------------------------------------------------------------------
# sizes and codec choice
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [65536, 600_000])
@pytest.mark.parametrize("p", [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45])
def test_chosen_size_within_one_percent_of_entropy(n, p):
    k = round(p * n)
    name = choose_codec(n, k)
    data = get_codec(name).encode(exact_k_mask(n, k, seed=11))
    assert len(data) <= 1.01 * entropy_bytes(n, k), name
    assert abs(len(data) - get_codec(name).expected_num_bytes(n, k)) <= 0.002 * len(data) + 8


@pytest.mark.parametrize("n", [8, 9, 1000, 65536, 600_000])
def test_choose_bits_at_half(n):
    assert choose_codec(n, n // 2) == "bits"


def test_choose_codec():
    assert choose_codec(600_000, 60_000) == "huffman-gaps"
    assert choose_codec(600_000, 240_000) == "huffman-bytes"
    assert choose_codec(9, 3) == "bits"  # 2 bytes of bits beat 3 of Huffman
    assert choose_codec(0, 0) == "bits"
    assert get_codec(choose_codec(1000, 0)).expected_num_bytes(1000, 0) == 0


@pytest.mark.parametrize("n", [9, 64, 200, 5000, 65536])
@pytest.mark.parametrize("keep", [0.001, 0.02, 0.1, 0.3, 0.45, 0.5, 0.8])
def test_chosen_codec_is_smallest_current(n, keep):
    k = round(keep * n)
    mask = exact_k_mask(n, k, seed=5)
    sizes = {name: len(get_codec(name).encode(mask)) for name in CURRENT}
    assert sizes[choose_codec(n, k)] <= min(sizes.values()) + 2


# ------------------------------------------------------------------------------------------
# the shortest honest encoding: refused below it, never above
# ------------------------------------------------------------------------------------------

def _structured_masks(n: int, k: int):
    """Masks an iid model finds unusually cheap or dear: clustered, periodic, at the end."""
    ramp = torch.arange(n)
    yield ramp < k
    yield ramp >= n - k
    yield hashed_mask(n, k)
    if k:
        step = n // k
        yield (ramp % step == 0) & (ramp < step * k)


@pytest.mark.parametrize("name", list_codecs())
@pytest.mark.parametrize("n, keep", [(64, 0.1), (1000, 0.01), (1000, 0.5), (5000, 0.3),
                                     (40_000, 0.05), (40_000, 0.7), (1 << 20, 0.0001)])
def test_honest_encodings_are_never_refused(name, n, keep):
    k = round(keep * n)
    codec = get_codec(name)
    for mask in _structured_masks(n, k):
        data = codec.encode(mask)
        assert len(data) >= codec.min_num_bytes(n, k)
        assert torch.equal(codec.decode(data, n, k), mask)


@pytest.mark.parametrize("name", list_codecs())
def test_too_short_for_n_k_is_refused(name):
    n, k = 100_000, 30_000
    data = get_codec(name).encode(exact_k_mask(n, k))
    least = get_codec(name).min_num_bytes(n, k)
    assert least > 0.4 * len(data)
    with pytest.raises(CodecError, match="at least"):
        get_codec(name).decode(data[:least - 1], n, k)


@pytest.mark.parametrize("name", list_codecs())
def test_huge_claimed_mask_with_tiny_data_is_refused(name):
    for n, k in ((1 << 40, 1 << 39), (1 << 40, 1 << 30), (1 << 31, 1 << 28)):
        with pytest.raises(CodecError, match="at least"):
            get_codec(name).decode(b"\x5a" * 1000, n, k)


def test_raw_errors_are_wrapped():
    def explode(data, n, k):
        raise MemoryError("Unable to allocate 16.0 GiB")

    codec = MaskCodec("test-explode", None, explode, None, lambda n, k: 0)
    with pytest.raises(CodecError, match="MemoryError"):
        codec.decode(b"", 10, 1)


# ------------------------------------------------------------------------------------------
# hostile bytes
# ------------------------------------------------------------------------------------------

def _corrupt(data: bytes, how: str, pos: int, byte: int) -> bytes:
    pos = pos % (len(data) + 1)
    if how == "truncate":
        return data[:pos]
    if how == "flip" and data:
        pos %= len(data)
        return data[:pos] + bytes([data[pos] ^ (byte or 1)]) + data[pos + 1:]
    if how == "insert":
        return data[:pos] + bytes([byte]) + data[pos:]
    if how == "delete" and data:
        pos %= len(data)
        return data[:pos] + data[pos + 1:]
    return data + bytes([byte])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list_codecs()), n=st.integers(1, 400), keep=st.floats(0, 1),
       seed=st.integers(0, 2**16), how=st.sampled_from(["truncate", "flip", "insert",
                                                        "delete", "append"]),
       pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_corrupted_data_raises_or_decodes_exact_k(name, n, keep, seed, how, pos, byte):
    k = round(keep * n)
    codec = get_codec(name)
    data = _corrupt(codec.encode(exact_k_mask(n, k, seed)), how, pos, byte)
    try:
        out = codec.decode(data, n, k)
    except CodecError:
        return
    assert out.dtype == torch.bool and out.shape == (n,) and int(out.count_nonzero()) == k


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(list_codecs()), n=st.integers(0, 20_000), k_frac=st.floats(0, 1),
       data=st.binary(max_size=400))
def test_random_bytes_raise_or_decode_exact_k(name, n, k_frac, data):
    k = round(k_frac * n)
    try:
        out = get_codec(name).decode(data, n, k)
    except CodecError:
        return
    assert out.shape == (n,) and int(out.count_nonzero()) == k


@pytest.mark.parametrize("name", HUFFMAN)
def test_every_truncation_is_refused(name):
    n, k = 5000, 400
    data = get_codec(name).encode(exact_k_mask(n, k, seed=3))
    for end in range(len(data)):
        with pytest.raises(CodecError, match="at least|does not end|runs past|must end"):
            get_codec(name).decode(data[:end], n, k)


@pytest.mark.parametrize("symbols, message", [
    ([90] * 9 + [255], "end with a run"),  # escapes only mean something before a run
    ([90] * 9, "codes 9 runs"),
    ([50] * 11, "codes 11 runs"),
    ([254] * 4 + [0] * 6, "past the end"),  # 4 runs of 254 zeros pass n = 1000
    ([255] * 4 + [0] * 10, "past the end"),
    ([0] * 30, "within 14 symbols"),  # more symbols than any honest stream for (n, k)
])
def test_crafted_huffman_gaps_streams_are_refused(symbols, message):
    """Well-formed Huffman streams that no mask of n = 1000, k = 10 encodes to."""
    from pemn.artifact.codec import _encode_symbols, _gap_model

    model = _gap_model(1000, 10)
    assert (model.escape, model.rice) == (255, 0)
    data = _encode_symbols(model.code, np.array(symbols, np.uint8))
    with pytest.raises(CodecError, match=message):
        get_codec("huffman-gaps").decode(data, 1000, 10)
