"""Hostile artifacts: every mutated file either loads into the original model (bit-identical
logits; only possible when the mutation changed nothing that matters) or raises ArtifactError,
never another exception, a hang or a huge allocation.

About 300 examples in total by default (a few seconds). The longer run:
``PEMN_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_artifact.py`` (the total, split over the
tests in the proportions given to ``fuzz``; a few minutes on one core). ``PEMN_SHORT=1`` (CI's
short form) runs 30. Runs are deterministic (``derandomize=True``, no example database).
"""
import functools
import hashlib
import json
import os
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pemn
from pemn.artifact import ArtifactError, pack, unpack
from pemn.artifact import format as fmt
from pemn.models import create_model
from pemn.transform import accepts

_TOTAL = int(os.environ.get("PEMN_FUZZ_EXAMPLES", "300"))
if os.environ.get("PEMN_SHORT") == "1" and "PEMN_FUZZ_EXAMPLES" not in os.environ:
    _TOTAL = 30


def fuzz(share: float):
    """Hypothesis settings for a test that gets ``share`` of the total example budget."""
    return settings(max_examples=max(3, round(_TOTAL * share)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])


def _model(strategy, keep_ratio):
    args = {"keep_ratio": keep_ratio, "seed": 5}
    model = pemn.apply_(create_model("convmixer_64_d4", in_channels=1, num_classes=4),
                        strategy, **{k: args[k] for k in accepts(strategy)})
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith(("_fixed", "running_var", "_mask")):
                t.copy_(torch.randn(t.shape, generator=g))
    return model.eval()


_X = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
# A stored RP prototype + raw bits, a regenerated Mask prototype + entropy-coded masks, and
# RP with every lever (per-layer scales, signed constants, learned per-channel gains).
_MODELS = [_model(pemn.RP(ratio=0.01, order="permuted"), 0.5), _model(pemn.Mask(), 0.1),
           _model(pemn.RP(ratio=0.01, scale="layer", values="signed_constant", gain="channel"),
                  0.3),
           # trained weights as int4 codes + scales, and a sparse mask + fp32 values
           _model(pemn.Quantized(bits=4), 0.5), _model(pemn.Sparse(density=0.2), 0.5)]
_FILES = [pack(m) for m in _MODELS]
# norm8: fp16 floats and int8-tensor norm layers; the model it loads into is the reference
_FILES.append(pack(_MODELS[0], precision="norm8"))
_MODELS.append(unpack(_FILES[-1]))


@functools.cache
def original_logits(i: int) -> torch.Tensor:
    """Computed inside the tests, with the same thread count as the loaded models."""
    with torch.no_grad():
        return _MODELS[i](_X)


which = st.integers(0, len(_FILES) - 1)


def check(data: bytes, i: int) -> None:
    """The property: the original model or ArtifactError, nothing else."""
    try:
        model = unpack(data)
    except ArtifactError:
        return
    with torch.no_grad():
        same = torch.equal(model(_X), original_logits(i))
    assert same, "a mutated file loaded as a different model"


def header_and_payload(data: bytes) -> tuple[dict, bytes]:
    c = fmt.read_container(data)
    header, start = c.header, c.header_bytes
    return header, data[start:]


def seal(text: bytes, payload: bytes) -> bytes:
    """A file with this header text and valid header digest (what a hostile writer can do)."""
    packed = zlib.compress(text)
    return fmt.MAGIC + struct.pack("<II", fmt.FORMAT_VERSION, len(packed)) \
        + hashlib.sha256(packed).digest() + packed + payload


# ------------------------------------------------------------------------------------------
# Byte-level damage
# ------------------------------------------------------------------------------------------

@fuzz(0.2)
@given(which, st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1,
                       max_size=8))
def test_bit_flips(i, flips):
    data = bytearray(_FILES[i])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    check(bytes(data), i)


@fuzz(0.1)
@given(which, st.integers(0, 2**31))
def test_truncation(i, length):
    check(_FILES[i][: length % len(_FILES[i])], i)


@fuzz(0.1)
@given(which, st.integers(0, 2**31), st.binary(min_size=1, max_size=64))
def test_insertions(i, pos, extra):
    data = _FILES[i]
    pos %= len(data) + 1
    check(data[:pos] + extra + data[pos:], i)


@fuzz(0.05)
@given(which, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_preamble_fields(i, version, header_len):
    data = _FILES[i]
    check(data[:8] + struct.pack("<II", version, header_len) + data[16:], i)
    check(data[:12] + struct.pack("<I", header_len) + data[16:], i)


# ------------------------------------------------------------------------------------------
# Hostile headers with valid digests: the validation itself is under test
# ------------------------------------------------------------------------------------------

@fuzz(0.1)
@given(which, st.binary(max_size=512))
def test_garbage_header(i, text):
    _, payload = header_and_payload(_FILES[i])
    check(seal(text, payload), i)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _paths(value, prefix=()):
    """Every path to a value inside a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for j, v in enumerate(value):
            yield from _paths(v, prefix + (j,))


_HEADER_PATHS = [sorted(filter(None, _paths(header_and_payload(f)[0])), key=repr)
                 for f in _FILES]


def _replace(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


# Hypothesis shrinks towards small indices, so sampled_from would mostly pick the first few
# paths; a wide integer taken modulo the number of paths spreads the choice over the header.
path_index = st.integers(0, 2**20)


@fuzz(0.3)
@given(which, path_index, json_values)
def test_header_field_replaced(i, index, value):
    """One field (anywhere in the header) replaced by a JSON value of any type."""
    header, payload = header_and_payload(_FILES[i])
    _replace(header, _HEADER_PATHS[i][index % len(_HEADER_PATHS[i])], value)
    check(seal(json.dumps(header).encode(), payload), i)


@fuzz(0.05)
@given(which, path_index, st.integers(-2**64, 2**64))
def test_header_number_replaced(i, index, number):
    """Counts, offsets, shapes, seeds and ratios set to any integer, tiny or huge."""
    header, payload = header_and_payload(_FILES[i])
    paths = [p for p in _HEADER_PATHS[i] if isinstance(_get(header, p), (int, float))]
    _replace(header, paths[index % len(paths)], number)
    check(seal(json.dumps(header).encode(), payload), i)


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@fuzz(0.05)
@given(which, json_values)
def test_whole_header_replaced(i, value):
    _, payload = header_and_payload(_FILES[i])
    check(seal(json.dumps(value).encode(), payload), i)


@pytest.mark.parametrize("i", range(len(_FILES)))
def test_unmutated_files_load(i):
    check(_FILES[i], i)
    assert unpack(_FILES[i]) is not None


# ------------------------------------------------------------------------------------------
# Re-sealed structured edits: plausible values, digests recomputed. Checksums cannot catch
# these; the property is a refusal or a model that loads (docs/THREAT_MODEL.md), never another
# exception. Signatures are what catches them (tests/test_artifact_threats.py).
# ------------------------------------------------------------------------------------------

plausible = st.sampled_from([0, 1, 2, -1, 3, 4, 64, 0.5, 1e-9, 1.0, "gelu", "relu", "bits",
                             "huffman-gaps", "rans", "mp", "rp", "mask", "<f2", "|b1", True,
                             "int8", "int4", "sign", "csr-f32", "bits+f32", "quantized", "sparse",
                             "raw", "prototype", "<f4",
                             None, [], [1], [2, 2]])


def check_resealed(data: bytes) -> None:
    try:
        model = unpack(data)
    except ArtifactError:
        return
    with torch.no_grad():
        assert torch.isfinite(model(_X)).all()


@fuzz(0.15)
@given(which, path_index, plausible)
def test_resealed_structured_edit(i, index, value):
    header, payload = header_and_payload(_FILES[i])
    _replace(header, _HEADER_PATHS[i][index % len(_HEADER_PATHS[i])], value)
    check_resealed(seal(json.dumps(header).encode(), payload))
