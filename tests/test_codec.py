"""Bit packing and mask codecs: documented bit order, round trips over the whole registry,
sizes against the entropy bound n H(p) / 8, and hostile bytes (CodecError or a valid mask)."""
import hashlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pemn.artifact.bitpack import CodecError, pack_bits, packed_num_bytes, unpack_bits
from pemn.artifact.codec import (
    MaskCodec,
    choose_codec,
    decode_mask,
    encode_mask,
    get_codec,
    list_codecs,
    register_codec,
)

SIZES = [1, 7, 8, 9, 1000, 65536]
KEEP = ["0", "1/n", 0.01, 0.1, 0.3, 0.5, 0.7, 1.0]


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
    with pytest.raises(CodecError):
        unpack_bits(b"\x01", 9)
    with pytest.raises(CodecError):
        unpack_bits(b"\x01\x00\x00", 9)
    with pytest.raises(CodecError):
        unpack_bits(b"\x01\x02", 9)  # bit 9 is padding
    with pytest.raises(CodecError):
        unpack_bits(b"", -1)
    assert unpack_bits(b"\xff\x01", 9).all()


def test_pack_rejects_non_bool():
    with pytest.raises(TypeError):
        pack_bits(torch.ones(8))


def test_codec_error_is_value_error():
    assert issubclass(CodecError, ValueError)


# ------------------------------------------------------------------------------------------
# codecs: round trips over the whole registry
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_codecs())
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("keep", KEEP, ids=str)
def test_round_trip(name, n, keep):
    k = num_kept(n, keep)
    mask = exact_k_mask(n, k, seed=n + k)
    data = get_codec(name).encode(mask)
    assert isinstance(data, bytes)
    out = decode_mask(data, name, n, k)
    assert out.dtype == torch.bool and out.shape == (n,)
    assert torch.equal(out, mask)


@pytest.mark.parametrize("name", list_codecs())
def test_encode_takes_any_shape(name):
    mask = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(3)) < 0.2
    codec = get_codec(name)
    assert codec.encode(mask) == codec.encode(mask.reshape(-1))
    k = int(mask.sum())
    assert torch.equal(codec.decode(codec.encode(mask), mask.numel(), k), mask.reshape(-1))


@pytest.mark.parametrize("name", list_codecs())
def test_decode_takes_bytes_like(name):
    mask = exact_k_mask(100, 10)
    data = get_codec(name).encode(mask)
    for buf in (bytearray(data), memoryview(data)):
        assert torch.equal(decode_mask(buf, name, 100, 10), mask)
    with pytest.raises(TypeError):
        decode_mask(list(data), name, 100, 10)


@pytest.mark.parametrize("name", list_codecs())
def test_decode_checks_count(name):
    mask = exact_k_mask(1000, 100)
    data = get_codec(name).encode(mask)
    for k in (99, 101):
        with pytest.raises(CodecError):
            decode_mask(data, name, 1000, k)
    for n, k in ((1000, 1001), (1000, -1), (-1, 0), (1000, 1.5)):
        with pytest.raises(CodecError):
            decode_mask(data, name, n, k)


def test_rans_all_or_nothing_is_empty():
    assert encode_mask(torch.zeros(100, dtype=torch.bool), "rans")[1] == b""
    assert encode_mask(torch.ones(100, dtype=torch.bool), "rans")[1] == b""
    assert decode_mask(b"", "rans", 100, 100).all()
    with pytest.raises(CodecError):
        decode_mask(b"\x00", "rans", 100, 0)


def test_rans_format_is_frozen():
    """Artifacts store this byte format: it must never change under the name "rans"."""
    mask = (torch.arange(4096) * 2654435761) % 4096 < 400  # 400 ones, no RNG involved
    data = get_codec("rans").encode(mask)
    assert (len(data), hashlib.sha256(data).hexdigest()[:16]) == (242, "c5b746231dc52279")


def test_registry():
    assert list_codecs()[0] == "bits" and "rans" in list_codecs()
    with pytest.raises(CodecError):
        get_codec("zip")
    with pytest.raises(ValueError):
        register_codec(MaskCodec("bits", None, None, None))


def test_encode_mask_defaults_to_choose_codec():
    mask = exact_k_mask(10_000, 1_000)
    name, data = encode_mask(mask)
    assert name == choose_codec(10_000, 1_000) == "rans"
    assert torch.equal(decode_mask(data, name, 10_000, 1_000), mask)


# ------------------------------------------------------------------------------------------
# sizes and codec choice
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.4])
def test_rans_size_near_entropy(p):
    n = 600_000
    k = round(p * n)
    data = get_codec("rans").encode(exact_k_mask(n, k, seed=11))
    assert len(data) <= 1.02 * entropy_bytes(n, k) + 16
    assert abs(len(data) - get_codec("rans").expected_num_bytes(n, k)) <= 4


@pytest.mark.parametrize("n", [8, 9, 1000, 65536, 600_000])
def test_choose_bits_at_half(n):
    assert choose_codec(n, n // 2) == "bits"


def test_choose_codec():
    assert choose_codec(600_000, 60_000) == "rans"
    assert choose_codec(9, 3) == "bits"  # 2 bytes of bits beat rans' 6-byte state
    assert choose_codec(0, 0) == "bits"
    assert choose_codec(1000, 0) == "rans"  # 0 bytes: the header says it all


@pytest.mark.parametrize("n", [9, 64, 200, 5000])
@pytest.mark.parametrize("keep", [0.02, 0.1, 0.3, 0.45, 0.5])
def test_chosen_codec_is_smallest(n, keep):
    k = round(keep * n)
    mask = exact_k_mask(n, k, seed=5)
    sizes = {name: len(get_codec(name).encode(mask)) for name in list_codecs()}
    assert sizes[choose_codec(n, k)] <= min(sizes.values()) + 2


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
    data = _corrupt(get_codec(name).encode(exact_k_mask(n, k, seed)), how, pos, byte)
    try:
        out = decode_mask(data, name, n, k)
    except CodecError:
        return
    assert out.dtype == torch.bool and out.shape == (n,) and int(out.sum()) == k


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(list_codecs()), n=st.integers(0, 2000), k_frac=st.floats(0, 1),
       data=st.binary(max_size=400))
def test_random_bytes_raise_or_decode_exact_k(name, n, k_frac, data):
    k = round(k_frac * n)
    try:
        out = decode_mask(data, name, n, k)
    except CodecError:
        return
    assert out.shape == (n,) and int(out.sum()) == k
