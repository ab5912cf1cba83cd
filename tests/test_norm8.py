"""precision="norm8": fp16, and the affine of every norm layer as int8 codes with one fp16
scale per tensor (``int8-tensor`` entries, docs/FORMAT.md)."""
import numpy as np
import pytest
import torch

import pemn
from pemn.artifact import ArtifactError, describe, pack, unpack
from pemn.artifact import format as fmt
from pemn.competitors import Quantized
from pemn.storage import format_size_table, size_report
from tests.test_artifact import logits, trained

ARCH = "convmixer_64_d4"


@pytest.fixture(scope="module")
def files():
    model = trained(ARCH, pemn.RP(ratio=0.01))
    return model, pack(model, precision="fp16"), pack(model, precision="norm8")


def _norms(data: bytes) -> list[dict]:
    return [o for o in describe(data)["others"] if o["is_norm"]]


def _scale(value: float) -> bytes:
    return np.array([value], dtype="<f2").tobytes()


def test_a_norm_vector_of_c_channels_takes_c_plus_2_bytes(files):
    _, fp16, norm8 = files
    norms = _norms(norm8)
    assert len(norms) == 18  # (a, b) of the 9 folded BatchNorms
    assert all(o["encoding"] == fmt.INT8_TENSOR and o["num_bytes"] == o["shape"][0] + 2
               for o in norms)
    # everything else is as the fp16 file stores it
    others = {o["name"]: o for o in describe(fp16)["others"] if not o["is_norm"]}
    assert others == {o["name"]: o for o in describe(norm8)["others"] if not o["is_norm"]}
    saved = sum(2 * o["shape"][0] - o["num_bytes"] for o in norms)  # C - 2 per vector
    assert abs(len(fp16) - len(norm8) - saved) < 64  # plus what the header's table adds
    report = size_report(norm8)
    assert report["bytes"]["norm"] == sum(o["num_bytes"] for o in norms)
    assert "norm layers (folded affine, int8)" in format_size_table(report)


@pytest.mark.parametrize("form", pemn.artifact.FORMS)
def test_logits_within_int8_rounding_of_the_fp16_file_in_every_form(files, form):
    model, fp16, norm8 = files
    half, loaded = unpack(fp16, form=form), unpack(norm8, form=form)
    for name, t in loaded.state_dict().items():
        if name.rpartition(".")[0] in loaded.pemn_header.folded_norms and name.endswith(
                ("weight", "bias")):
            want = half.state_dict()[name].float()
            step = want.abs().max() / 127  # the int8 step; fp16 rounds by 2**-11 of a value
            assert ((t - want).abs() <= step / 2 + want.abs() * 2**-10).all(), name
    torch.testing.assert_close(logits(loaded, ARCH), logits(half, ARCH), atol=2e-2, rtol=0)
    if form == "train":  # the loaded model is what the file holds
        assert pack(loaded, precision="norm8") == norm8


@pytest.mark.parametrize("arch, strategy", [
    ("vit_tiny", pemn.MP()),  # LayerNorm weight and bias, nothing folded
    (ARCH, Quantized(bits=4)),  # a trained-weight family: the same option
], ids=["layernorm", "quantized"])
def test_norm8_codes_every_norm_layer_of_every_family(arch, strategy):
    model = trained(arch, strategy)
    data = pack(model, precision="norm8")
    norms = _norms(data)
    assert norms and {o["encoding"] for o in norms} == {fmt.INT8_TENSOR}
    assert len(data) < len(pack(model, precision="fp16"))
    torch.testing.assert_close(logits(unpack(data), arch), logits(model, arch), atol=0.1,
                               rtol=0.05)


def _edit(data: bytes, payload_edit=None, entry_edit=None) -> bytes:
    """Edit the first int8-tensor entry's bytes or table row, then re-seal."""
    c = fmt.read_container(data)
    header, payload = c.header, bytearray(c.payload)
    entry = next(e for e in header["tensors"] if e["encoding"] == fmt.INT8_TENSOR)
    if payload_edit:
        payload_edit(payload, entry["offset"])
    if entry_edit:
        entry_edit(entry)
    return fmt.seal(header, bytes(payload))


def _put(at: int, value: bytes):
    def edit(payload, offset):
        payload[offset + at:offset + at + len(value)] = value
    return edit


@pytest.mark.parametrize("payload_edit, entry_edit, match", [
    (None, lambda e: e.update(length=e["length"] - 1), "values take 66 as int8-tensor"),
    (None, lambda e: e.update(shape=[63]), "values take 65 as int8-tensor"),
    (None, lambda e: e.update(dtype="<f2"), "must have dtype <f4"),
    (_put(0, _scale(float("nan"))), None, "scale is negative, NaN or infinite"),
    (_put(0, _scale(float("inf"))), None, "scale is negative, NaN or infinite"),
    (_put(0, _scale(-0.5)), None, "scale is negative, NaN or infinite"),
    (_put(0, _scale(0.0)), None, "not what the quantizer writes"),  # codes without a scale
    (_put(2, b"\x80"), None, r"a code is outside \[-127, 127\]"),  # -128
    (_put(2, b"\x00" * 64), None, "not what the quantizer writes"),  # no code reaches 127
])
def test_hostile_int8_tensors_are_refused(files, payload_edit, entry_edit, match):
    bad = _edit(files[2], payload_edit, entry_edit)
    with pytest.raises(ArtifactError, match=match):
        unpack(bad)
    with pytest.raises(ArtifactError, match=match):
        describe(bad) if entry_edit else unpack(bad, form="packed")


def test_an_all_zero_vector_is_scale_zero():
    model = trained(ARCH, pemn.MP())
    with torch.no_grad():
        model.stem[2].bias.zero_()
        model.stem[2].running_mean.zero_()  # b = bias - mean * a = 0
    loaded = unpack(pack(model, precision="norm8"))
    assert torch.equal(loaded.stem[2].bias, torch.zeros(64))


def test_a_vector_one_int8_scale_cannot_hold_stays_fp16():
    model = trained(ARCH, pemn.RP(ratio=0.01))
    name, bn = next((n, m) for n, m in model.named_modules()
                    if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var[0] = 0.0  # its folded scale, 1 / sqrt(eps), dwarfs the other channels'
    fp16, norm8 = pack(model, precision="fp16"), pack(model, precision="norm8")
    encodings = {o["name"]: o["encoding"] for o in _norms(norm8)}
    assert encodings.pop(f"{name}.weight") == "raw"  # one scale would zero its neighbours
    assert list(encodings.values()).count(fmt.INT8_TENSOR) >= len(encodings) - 1
    for form in pemn.artifact.FORMS:
        torch.testing.assert_close(logits(unpack(norm8, form=form), ARCH),
                                   logits(unpack(fp16, form=form), ARCH), atol=2e-2, rtol=0)
