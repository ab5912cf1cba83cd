import pytest
import torch
from torch import nn

import pemn
from pemn.masking import current_mask, num_kept, topk_mask

SHAPES = [(1,), (7,), (10, 3), (16, 3, 3, 3), (8, 1, 5, 5), (4, 2, 3), (2, 3, 2, 2, 2)]
KEEPS = [0.5, 0.1, 0.3, 0.999, 1.0, 1e-3]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", KEEPS)
def test_exact_kept_count(shape, keep):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    n = scores.numel()
    expected = n - int((1 - keep) * n)
    assert num_kept(n, keep) == expected
    mask = topk_mask(scores, keep)
    assert mask.shape == scores.shape and int(mask.sum()) == expected
    kept, dropped = scores.abs()[mask.bool()], scores.abs()[~mask.bool()]
    if len(kept) and len(dropped):
        assert kept.min() >= dropped.max()  # ranking is by |score|


@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_exact_count_with_ties(keep):
    scores = torch.ones(1000)
    scores[::3] = -1.0  # equal |scores| everywhere
    assert int(topk_mask(scores, keep).sum()) == num_kept(1000, keep)


def test_ste_passes_gradient_unchanged():
    layer = pemn.apply_(nn.Sequential(nn.Linear(6, 5, bias=False)), pemn.Mask())[0]
    x = torch.randn(4, 6)
    layer(x).pow(2).sum().backward()
    w = layer.weight_fixed
    # Straight-through: dL/ds = dL/dw_eff * w * sign(s), for kept AND dropped weights.
    with torch.no_grad():
        w_eff = w * current_mask(layer, "weight")
    w_eff.requires_grad_(True)
    (x @ w_eff.t()).pow(2).sum().backward()
    expected = w_eff.grad * w * layer.weight_scores.detach().sign()
    torch.testing.assert_close(layer.weight_scores.grad, expected)
    dropped = ~current_mask(layer, "weight")
    assert layer.weight_scores.grad[dropped].abs().sum() > 0


def test_scores_change_weights_never_change():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    pemn.apply_(model, pemn.RP(ratio=0.1))
    fixed = {n: b.clone() for n, b in model.named_buffers() if n.endswith("_fixed")}
    scores = {n: p.clone() for n, p in model.named_parameters() if n.endswith("_scores")}
    assert all(not n.endswith("_fixed") for n, _ in model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.arange(8) % 4).backward()
        opt.step()
    for n, b in model.named_buffers():
        if n.endswith("_fixed"):
            assert torch.equal(b, fixed[n])
    for n, p in model.named_parameters():
        if n.endswith("_scores"):
            assert not torch.equal(p, scores[n])


def test_eval_caches_mask_until_scores_change(monkeypatch):
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask()).eval()
    calls = []
    real = pemn.masking.topk_mask
    monkeypatch.setattr(pemn.masking, "topk_mask", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 10)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
    assert len(calls) == 1 and torch.equal(y1, y2)
    with torch.no_grad():
        model[0].weight_scores.mul_(-1).add_(torch.randn(10, 10))  # new ranking
        y3 = model(x)
    assert len(calls) == 2 and not torch.equal(y1, y3)


def test_train_and_eval_agree():
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.OneLayer())
    x = torch.randn(3, 10)
    y_train = model(x)
    with torch.no_grad():
        y_eval = model.eval()(x)
    torch.testing.assert_close(y_train, y_eval)
