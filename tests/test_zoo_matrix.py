"""Every registered model x every strategy: apply_, a training step, and pack -> unpack.

Each model keeps its registered architecture family and depth; the widest ones are built
narrower (``dim``/``layers`` kwargs, recorded in the artifact like any kwargs) and fed small
inputs, so the whole matrix stays a few seconds per model.
"""
import pytest
import torch

import pemn
from pemn.artifact import pack, unpack
from pemn.models import create_model, list_models

STRATEGIES = [pemn.Dense(), pemn.Mask(), pemn.OneLayer(), pemn.MP(), pemn.RP(ratio=1e-2),
              pemn.RP(ratio=0.1, order="permuted")]


def _build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model with narrower widths where it is large, and a small input for it."""
    if name.startswith("vit"):
        return create_model(name, dim=32, img_size=8, num_classes=4), (2, 3, 8, 8)
    if name.startswith("convmixer"):
        return create_model(name, dim=16, num_classes=4), (2, 3, 16, 16)
    if name == "resnet50":
        return create_model(name, layers=(1, 1, 1, 1), num_classes=4), (2, 3, 32, 32)
    if name.startswith("mlp"):
        model = create_model(name, num_classes=4)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        return model, (2, first.in_features)
    return create_model(name, num_classes=4), (2, 3, 16, 16)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
@pytest.mark.parametrize("name", list_models())
def test_every_model_every_strategy(name, strategy):
    torch.manual_seed(0)
    model, shape = _build(name)
    pemn.apply_(model, strategy, keep_ratio=0.5, seed=1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    fixed = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_fixed")}
    assert fixed or isinstance(strategy, pemn.Dense)

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()(x).logsumexp(-1).mean().backward()
    for k, p in model.named_parameters():
        if k.endswith("_scores") or isinstance(strategy, pemn.Dense):
            assert p.grad is not None and p.grad.abs().sum() > 0, k
    opt.step()
    for k, v in model.state_dict().items():
        if k in fixed:
            assert torch.equal(v, fixed[k]), f"{k} changed in a training step"

    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(unpack(pack(model))(x), expected)
