"""Committed files in today's format load as they did when they were written.

``tests/fixtures/`` holds one small file per strategy family in today's defaults, written only
by ``scripts/make_fixtures.py``, with the logits each gave on a fixed input. Every file loads
in every form to those logits, and the pins below (SHA-256 prefixes) fail loudly when the bytes
change under the same name: the payload (an encoder such as the int4 nibble order or a codec)
or the regenerated weights (a generator constant, a stream such as the RP permutation's).
Change a pin only with a format change made on purpose, and regenerate the files with it.
"""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import pemn
from pemn.artifact import format as fmt

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())

# file -> (payload SHA-256, {tensor: SHA-256 of its dense-form float32 weight}), 16 hex digits
PINS = {
    "rp_convmixer.pemn": ("287562b42c07f6aa", {"stem.0.weight": "3f88e2bd74d4f7a0",
                                               "head.weight": "7d61a54c4049b449"}),
    "mask_mlp.pemn": ("49b6b2e604382111", {"features.1.weight": "38f4c35a4592f9ac",
                                           "head.weight": "8ee736438f7f5c09"}),
    "mp_convmixer.pemn": ("adca4a2456817c85", {"stem.0.weight": "e6e9c318515beebf",
                                               "head.weight": "32faa0a165dfd599"}),
    "int4_mlp.pemn": ("ff3f3d47eab16fa6", {"features.1.weight": "c05d495f368038e2",
                                           "head.weight": "99f3740007b1c5e2"}),
    "int8_mlp.pemn": ("1150da0d16c50e26", {"features.1.weight": "aa84d0076de0fa05",
                                           "head.weight": "d6150a9e07b54ef0"}),
    "sign_mlp.pemn": ("749942ffcf90c854", {"features.1.weight": "c2f0316c91e5e151",
                                           "head.weight": "c67c1f1ea0c8a7d9"}),
    "csr_mlp.pemn": ("6717331dd775f8d7", {"features.3.weight": "6dfb88a58e5c9fc3",
                                          "features.5.weight": "c6dbb2ed33058bc6"}),
    "norm8_convmixer.pemn": ("82d8600352d05fa3", {"stem.2.weight": "ddc3ad258ec7f19f",
                                                  "head.weight": "e8788f2a4a893bc7"}),
}


def _script():
    spec = importlib.util.spec_from_file_location("make_fixtures",
                                                  ROOT / "scripts" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def test_every_fixture_is_pinned_and_made_by_the_script():
    assert set(PINS) == set(_script().FIXTURES) == {p.name for p in FIXTURES.glob("*.pemn")}
    assert set(EXPECTED) == set(PINS) | {"input"}


@pytest.mark.parametrize("form", pemn.artifact.FORMS)
@pytest.mark.parametrize("name", list(PINS))
def test_fixture_loads_to_its_logits(name, form):
    x = _script().fixture_input()
    with torch.no_grad():
        logits = pemn.load(FIXTURES / name, form=form)(x)
    # Recorded on another CPU, whose kernels may round differently (seen: 4e-8 apart).
    torch.testing.assert_close(logits, torch.tensor(EXPECTED[name]["logits"]), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("name", list(PINS))
def test_fixture_bytes_and_regenerated_weights_are_pinned(name):
    payload, weights = PINS[name]
    data = (FIXTURES / name).read_bytes()
    assert fmt.read_container(data).header["payload_sha256"][:16] == payload
    state = pemn.load(FIXTURES / name, form="dense").state_dict()
    assert {k: _sha(state[k]) for k in weights} == weights
