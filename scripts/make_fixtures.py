"""Write the committed ``.pemn`` fixtures of ``tests/test_fixtures.py``, the only way they are made.

One small file per strategy family in today's defaults, each with its logits on a fixed
input (``expected.json``): RP (permuted, signed constants), Mask and MP on a tiny ConvMixer or
MLP, one file per trained-weight encoding (int4, int8, sign, CSR) on a tiny MLP, and one
``precision="norm8"`` file (int8-tensor norm layers). Run it when the format changes on
purpose, and say so in the CHANGELOG:

    python scripts/make_fixtures.py            # writes tests/fixtures/
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import pemn
from pemn import rng
from pemn.models import create_model

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
INPUT = {"seed": 23, "stream": 0, "shape": [2, 1, 12, 12]}  # drawn by pemn.rng: portable
_CONVMIXER = ("convmixer_64_d4", {"in_channels": 1})
_MLP = ("mlp", {"in_features": 144, "hidden": [32, 32, 16]})

# file name -> (zoo model, its kwargs, strategy, keyword arguments of apply_, of save)
FIXTURES = {
    "rp_convmixer.pemn": (*_CONVMIXER, pemn.RP(), {"keep_ratio": 0.5, "seed": 1}, {}),
    "mask_mlp.pemn": (*_MLP, pemn.Mask(), {"keep_ratio": 0.5, "seed": 2}, {}),
    "mp_convmixer.pemn": (*_CONVMIXER, pemn.MP(), {"keep_ratio": 0.3, "seed": 3}, {}),
    "int4_mlp.pemn": (*_MLP, pemn.Quantized(bits=4), {}, {}),
    "int8_mlp.pemn": (*_MLP, pemn.Quantized(bits=8), {}, {}),
    "sign_mlp.pemn": (*_MLP, pemn.Binary(), {}, {}),
    "csr_mlp.pemn": (*_MLP, pemn.Sparse(density=0.3), {"seed": 4}, {"sparse_format": "csr"}),
    "norm8_convmixer.pemn": (*_CONVMIXER, pemn.RP(), {"keep_ratio": 0.5, "seed": 5},
                             {"precision": "norm8"}),
}


def fixture_input() -> torch.Tensor:
    """The input every fixture's logits are recorded on."""
    n = 1
    for size in INPUT["shape"]:
        n *= size
    values = rng.normal(INPUT["seed"], INPUT["stream"], n)
    return torch.from_numpy(values).view(INPUT["shape"])


def _model(name: str, kwargs: dict, strategy, apply_args: dict) -> torch.nn.Module:
    torch.manual_seed(0)  # the initial weights and scores that the saved file then fixes
    return pemn.apply_(create_model(name, **kwargs), strategy, **apply_args).eval()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"input": INPUT}
    x = fixture_input()
    for file_name, (name, kwargs, strategy, apply_args, save_args) in FIXTURES.items():
        path = OUT / file_name
        pemn.save(_model(name, kwargs, strategy, apply_args), path, **save_args)
        with torch.no_grad():  # what the file holds, read back: the reference for every form
            logits = pemn.load(path, form="dense")(x)
        expected[file_name] = {"strategy": repr(strategy), "bytes": path.stat().st_size,
                               "logits": logits.tolist()}
        print(f"{file_name}: {path.stat().st_size:,} bytes")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
