"""Known answers worked out by hand, so that a broken core cannot agree with itself.

Every expected value here is written out in the test (a count, a byte string, a formula), never
computed by the function under test. scripts/mutate.py checks that these tests notice
realistic mistakes (argmax -> argmin, a rounding direction, a nibble order, a stream number).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

import pemn
from pemn import rng
from pemn.artifact.weights import csr_num_bytes, get_encoding
from pemn.config import load_config
from pemn.data import load_dataset
from pemn.run import run
from pemn.trained import load_trained
from pemn.storage import (bitmask_fp32_bytes, mask_entropy_bytes, paper_bytes,
                          paper_compression_ratio, size_report)
from pemn.train import evaluate

# ------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------

# The model is the identity, so each row below is its logits; argmax by eye: 1, 0, 2, 1 / 0, 2.
LOGITS = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0],
                       [4.0, 1.0, 1.5], [0.5, 0.2, 0.7]])
LABELS = torch.tensor([1, 0, 1, 0, 0, 2])  # rows 0, 1, 4, 5 right: 4 of 6


def test_evaluate_counts_argmax_hits_by_hand():
    batches = [(LOGITS[:4], LABELS[:4]), (LOGITS[4:], LABELS[4:])]
    assert evaluate(nn.Flatten(), batches) == pytest.approx(100 * 4 / 6)
    assert evaluate(nn.Flatten(), batches[:1]) == 50.0  # rows 0, 1 of 4


def test_a_tiny_digits_training_learns(tmp_path):
    """Three epochs of the default strategy (RP 1e-3, permuted, signed constants) on digits,
    about two seconds. Chance is 10 % (the largest class is 11 % of the test set); 80 % is
    far beyond what a broken mask gradient, schedule or evaluation reaches."""
    cfg = load_config(None, ["data.dataset=digits", "model.name=mlp", "optim.device=cpu",
                             "model.kwargs={hidden=[64], img_size=8}", "optim.epochs=3",
                             "optim.batch_size=64", "optim.lr=0.01", "optim.amp=off",
                             "data.flip=false", "data.crop_padding=0", f"out_dir={tmp_path}",
                             "name=digits"])
    summary = run(cfg, progress=False)
    assert summary["final_test_acc"] > 80.0, summary
    # the same accuracy counted here, without evaluate(): normalise, forward, argmax
    ds = load_dataset("digits")
    x = (ds.test_images.float() / 255 - ds.mean[0]) / ds.std[0]
    with torch.no_grad():
        hits = int((load_trained(tmp_path / "digits").model(x).argmax(1) == ds.test_labels).sum())
    assert summary["final_test_acc"] == pytest.approx(100 * hits / 359, abs=1e-3)


# ------------------------------------------------------------------------------------------
# Bytes: formulas at sizes where rounding up and down differ
# ------------------------------------------------------------------------------------------

def test_byte_formulas_round_up_at_sizes_not_a_multiple_of_8():
    assert paper_bytes(1001, 3) == 126 + 12  # ceil(1001 / 8) mask bytes, 4 U
    assert paper_bytes(17, 0) == 3
    assert bitmask_fp32_bytes((3, 7), 5) == 3 + 20 + 12  # ceil(21 / 8), 4 nnz, 4 rows
    assert csr_num_bytes((3, 7), 5) == 20 + 5 + 4  # fp32 values, u1 columns, 4 u1 pointers
    assert csr_num_bytes((3, 300), 300) == 1200 + 600 + 8  # columns up to 299, pointers to 300
    assert paper_compression_ratio(1000, 10) == pytest.approx(1 - 1320 / 32000)


@pytest.mark.parametrize("numel, kept, expected", [
    (1000, 500, 125.0),  # H(1/2) = 1 bit per entry
    (1001, 0, 0.0), (1001, 1001, 0.0),  # a mask with one outcome costs nothing
    (400, 100, 400 * (2 - 0.75 * math.log2(3)) / 8),  # H(1/4) = 2 - (3/4) log2 3
    (13, 13 - 1, 13 * (math.log2(13) - 12 / 13 * math.log2(12)) / 8),
])
def test_mask_entropy_bound_in_closed_form(numel, kept, expected):
    assert mask_entropy_bytes(numel, kept) == pytest.approx(expected, rel=1e-12)


def test_size_report_prices_each_mask_by_hand():
    # two masks of 30 and 10 weights (keep 1/2): per-tensor bitmaps ceil(30/8) + ceil(10/8) =
    # 6 bytes, although ceil(40 / 8) = 5; entropy 40 bits = 5 bytes; MP stores d_max = 30
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 3), nn.Linear(5, 2)), pemn.MP(),
                        keep_ratio=0.5)
    report = size_report(model)
    assert (report["num_masked"], report["num_unique"]) == (40, 30)
    assert report["mask_bitmap_bytes"] == 6
    assert report["mask_entropy_bytes"] == pytest.approx(5.0)
    assert report["paper_bytes"] == 5 + 4 * 30
    assert report["dense_fp32_bytes"] == 160
    assert report["baselines"]["fp32_dense"] == 160 + 4 * 5  # and the two biases in fp32
    assert report["baselines"]["csr_paper"] == 12 * 20 + 4 * 5


# ------------------------------------------------------------------------------------------
# Trained-weight encodings (artifact/weights.py), byte by byte
# ------------------------------------------------------------------------------------------

# Rows whose largest |w| is the top code: the scale is exactly 1.0 (float16 0x3C00).
W_INT4 = torch.tensor([[7.0, -2.0, 3.0], [1.0, 0.0, -7.0]])
# scales, then codes 7 -2 3 1 0 -7 as nibbles 7 E 3 1 0 9, code 2i in the low nibble of byte i
INT4_BYTES = bytes([0x00, 0x3C, 0x00, 0x3C, 0xE7, 0x13, 0x90])


def test_int4_bytes_by_hand():
    int4 = get_encoding("int4")
    assert int4.encode(W_INT4, None) == INT4_BYTES
    decoded, _ = int4.decode(INT4_BYTES, (2, 3), 6)
    assert torch.equal(decoded, W_INT4)
    # an odd count: the last byte holds one code and a zero high nibble
    assert int4.encode(W_INT4[:1], None) == bytes([0x00, 0x3C, 0xE7, 0x03])
    assert torch.equal(int4.decode(bytes([0x00, 0x3C, 0xE7, 0x03]), (1, 3), 3)[0], W_INT4[:1])


def test_int8_and_sign_bytes_by_hand():
    w = torch.tensor([[127.0, -1.0, 0.0, 5.0]])  # scale 1.0
    assert get_encoding("int8").encode(w, None) == bytes([0x00, 0x3C, 0x7F, 0xFF, 0x00, 0x05])
    # sign: alpha = mean |w| = 2.0 (float16 0x4000), then bits w >= 0, first value in bit 0
    s = torch.tensor([[1.0, -2.0, 3.0, -4.0, 0.0, 2.0, -1.0, 1.0, 4.0]])
    assert get_encoding("sign").encode(s, None) == bytes([0x00, 0x40, 0b10110101, 0b1])


@pytest.mark.parametrize("w, expected", [
    # float32 values 2, 1, -0.5; column indices 1, 0, 2 (one byte: 3 columns); row pointers
    # 0, 1, 3 (one byte: k = 3)
    ([[0.0, 2.0, 0.0], [1.0, 0.0, -0.5]],
     "00000040" "0000803f" "000000bf" "010002" "000103"),
    # 300 columns: the index 299 takes two bytes (0x012b, little-endian)
    ([[0.0] * 299 + [4.0]], "00008040" "2b01" "0001"),
])
def test_csr_bytes_by_hand(w, expected):
    w = torch.tensor(w)
    csr = get_encoding("csr-f32")
    assert csr.encode(w, w != 0).hex() == expected
    decoded, mask = csr.decode(bytes.fromhex(expected), tuple(w.shape), int((w != 0).sum()))
    assert torch.equal(decoded, w) and torch.equal(mask, w != 0)


# ------------------------------------------------------------------------------------------
# The default fill: what its values are, stated independently
# ------------------------------------------------------------------------------------------

def test_default_rp_is_the_tiled_vector_permuted_by_stream_2_pow_32():
    """Files store only the seed: the permutation's stream number is part of the format."""
    def values(order):
        layer = nn.Linear(10, 3, bias=False)
        pemn.apply_(nn.Sequential(layer), pemn.RP(0.1, order=order), seed=5)
        return layer.weight_fixed.flatten().numpy()

    copy, permuted = values("copy"), values("permuted")
    # signed constants: every value is +-sqrt(2 / fan_in), the kaiming std
    assert np.allclose(np.abs(copy), math.sqrt(2 / 10))
    assert np.array_equal(copy, np.tile(copy[:4], 8)[:30])  # int(30 * 0.1) + 1 = 4 drawn
    assert np.array_equal(permuted, copy[rng.permutation(5, 2**32, 30)])
