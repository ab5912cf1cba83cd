"""The extension promises of docs/METHOD.md, kept: a new fill, a new trained-weight family and
a new layer type are each defined here, outside pemn, and go through ``apply_``, a training
step, ``save``, ``load`` in every form and ``materialize_`` with no change to pemn.

The code between the ``# ---`` marks is the code docs/METHOD.md shows.
"""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import pemn
from pemn.artifact import ArtifactError
from pemn.artifact.weights import Encoding, TrainedWeights, register_encoding
from pemn.competitors import register_weight, straight_through
from pemn.fill import FillPlan, Prototype, Strategy, TensorSpec, register_planner, register_strategy


# --- a new fill: one prototype longer than any layer, so no layer holds it whole
@register_strategy("ext_long", fill=True)
@dataclass(frozen=True)
class LongVector(Strategy):
    extra: int = 7  # values beyond the largest layer's
    title: ClassVar[str] = "Long vector"


@register_planner(LongVector)
def _plan_long(strategy: LongVector, specs: list[TensorSpec]) -> FillPlan:
    longest = max(s.numel for s in specs)
    return FillPlan((Prototype(0, longest + strategy.extra, specs[0].std),), (0,) * len(specs))
# ---


# --- a new trained-weight family: fp16 weights, stored as two bytes each
def _f16_decode(data: bytes, shape: tuple[int, ...], k: int):
    if len(data) != 2 * int(np.prod(shape)):
        raise ArtifactError(f"ext-f16: {len(data)} bytes do not hold a {list(shape)} tensor")
    return torch.from_numpy(np.frombuffer(data, "<f2").astype(np.float32)).view(shape), None


register_encoding(Encoding(
    "ext-f16", lambda latent, mask: latent.cpu().numpy().astype("<f2").tobytes(), _f16_decode))


@register_strategy("ext_half")
@dataclass(frozen=True)
class Half(TrainedWeights):
    title: ClassVar[str] = "Half"
    encoding: ClassVar[str] = "ext-f16"


@register_weight(Half)
def _half(strategy: Half, w: torch.Tensor) -> torch.Tensor:
    return straight_through(w, lambda v: v.half().float())
# ---


# --- a new layer type
class Bilinear(nn.Module):
    """``y_o = sum_ij x_i W_oij x_j``: a weight of shape (out, in, in)."""

    def __init__(self, n: int, out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out, n, n) / n)

    def forward(self, x):
        return torch.einsum("bi,oij,bj->bo", x, self.weight, x)


pemn.register_maskable(Bilinear, "weight", fan_in=lambda shape: shape[1] * shape[2])
# ---


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), Bilinear(8, 5),
                         nn.Linear(5, 3))


CASES = [(LongVector(), {"keep_ratio": 0.3, "seed": 2}), (Half(), {}),
         (pemn.RP(ratio=0.1), {"seed": 1})]  # RP reaches the Bilinear layer


@pytest.mark.parametrize("strategy, args", CASES, ids=lambda c: getattr(c, "name", ""))
def test_an_extension_goes_through_every_step(tmp_path, strategy, args):
    model = pemn.apply_(_net(), strategy, **args)
    assert type(model[3]).__name__ == "MaskedBilinear"  # the new layer type was selected
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(x).square().mean().backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()
               if k.startswith("3."))  # the step reached the new layer's trained tensors
    model.eval()
    want = model(x)
    pemn.save(model, tmp_path / "m.pemn")
    for form in pemn.artifact.FORMS:
        loaded = pemn.load(tmp_path / "m.pemn", model=_net(), form=form)
        assert torch.equal(loaded(x), want), form
    assert torch.equal(pemn.materialize_(model)(x), want)
    assert type(model[3]) is Bilinear and not hasattr(model, "pemn_spec")


def test_the_new_fill_is_refused_once_its_values_change(tmp_path):
    model = pemn.apply_(_net(), LongVector(), seed=2)
    with torch.no_grad():
        model[0].weight_fixed[0, 0] += 1
    with pytest.raises(ArtifactError, match="modified after apply_"):
        pemn.save(model, tmp_path / "m.pemn")
