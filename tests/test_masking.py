import math

import pytest
import torch
from torch import nn

import pemn
from pemn import masking
from pemn.masking import cached_tensors, current_mask, num_kept, topk_mask

SHAPES = [(1,), (7,), (10, 3), (16, 3, 3, 3), (8, 1, 5, 5), (4, 2, 3), (2, 3, 2, 2, 2)]
KEEPS = [0.5, 0.1, 0.3, 0.999, 1.0, 1e-3]


def reference_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: the k largest |scores|, equal ones in position order (stable sort)."""
    a = scores.abs().flatten()
    mask = torch.zeros_like(a)
    mask[a.sort(descending=True, stable=True).indices[:k]] = 1
    return mask.view_as(scores)


@pytest.mark.parametrize(("numel", "keep", "kept"), [
    (10, 0.5, 5), (7, 0.5, 4), (3, 1e-3, 1), (1000, 1e-3, 1), (1000, 0.999, 999),
    (100, 1.0, 100), (581_120, 0.1, 58_112),
])
def test_num_kept_rounds_the_dropped_count_down(numel, keep, kept):
    assert num_kept(numel, keep) == kept


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", KEEPS)
def test_exact_kept_count(shape, keep):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = topk_mask(scores, keep)
    assert mask.shape == scores.shape
    assert torch.equal(mask, reference_mask(scores, num_kept(scores.numel(), keep)))


def _scores(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "ties":  # equal |scores| everywhere
        s = torch.ones(n)
        s[::3] = -1.0
        return s
    if kind == "few":  # seven distinct values, thousands of ties at the boundary
        return torch.randint(-3, 4, (n,), generator=gen).float()
    if kind == "ramp":
        return torch.linspace(-1, 1, n)
    return torch.randn(n, generator=gen)


# Sizes on both sides of the small-tensor path; hints right, wrong and absurd, since a stale
# threshold from the previous step must never change the result, only the work.
@pytest.mark.parametrize("n", [5, 4096, 4097, 60_000])
@pytest.mark.parametrize("kind", ["randn", "ties", "few", "ramp"])
@pytest.mark.parametrize("keep", [0.5, 0.1, 1e-3, 0.999])
def test_counting_search_equals_the_stable_sort(n, kind, keep):
    gen = torch.Generator().manual_seed(n)
    a = _scores(kind, n, gen).abs()
    k = num_kept(n, keep)
    expected = reference_mask(a, k)
    hints = [None, (float(a.median()), float(n)), (1e9, 1.0), (0.0, 1e-6), (0.5, math.inf)]
    for hint in hints:
        mask, _ = masking._select(a, k, hint and masking._Hint(*hint))
        assert torch.equal(mask, expected), hint


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_equal_the_stable_sort(dtype):
    # Half precisions have few values: thousands of ties at the boundary, thresholds rounded.
    scores = torch.randn(50_000, generator=torch.Generator().manual_seed(0)).to(dtype)
    for keep in [0.5, 0.01]:
        mask = topk_mask(scores, keep)
        assert mask.dtype == dtype
        assert torch.equal(mask, reference_mask(scores, num_kept(50_000, keep)))


@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_exact_count_with_ties(keep):
    scores = torch.ones(1000)
    scores[::3] = -1.0  # equal |scores| everywhere
    mask = topk_mask(scores, keep)
    assert int(mask.sum()) == num_kept(1000, keep)
    # Ties go to the lower positions.
    assert torch.equal(mask, (torch.arange(1000) < num_kept(1000, keep)).float())


def test_nan_scores_still_keep_exactly_k():
    scores = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    scores[::7] = float("nan")
    assert int(topk_mask(scores, 0.9).sum()) == num_kept(10_000, 0.9)


def test_count_is_exact_beyond_float32_integers():
    ones = torch.ones((1 << 24) + 3)  # a plain float32 sum returns 16777220 here
    assert masking._count(ones) == (1 << 24) + 3


def test_warm_start_follows_training_steps():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50_000, generator=gen)
    hint = None
    for _ in range(5):
        scores += 0.01 * torch.randn(50_000, generator=gen)
        mask, hint = masking._select(scores.abs(), 25_000, hint)
        assert torch.equal(mask, reference_mask(scores, 25_000))


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


def test_ste_gradient_by_hand():
    """fixed (0.5, -2), scores (0.3, -0.1), keep 1 of 2: w_eff = (0.5, 0). For x = (1, 3) and
    L = y**2: y = 0.5, dL/dw_eff = 2y x = (1, 3), so dL/ds = dL/dw_eff * fixed * sign(s) =
    (1 * 0.5 * 1, 3 * -2 * -1) = (0.5, 6): the dropped weight gets its gradient too."""
    layer = nn.Linear(2, 1, bias=False)
    pemn.apply_(nn.Sequential(layer), pemn.Mask(), keep_ratio=0.5)
    with torch.no_grad():
        layer.weight_fixed.copy_(torch.tensor([[0.5, -2.0]]))
        layer.weight_scores.copy_(torch.tensor([[0.3, -0.1]]))
    y = layer(torch.tensor([[1.0, 3.0]]))
    assert y.item() == 0.5
    y.pow(2).sum().backward()
    assert layer.weight_scores.grad.tolist() == [[0.5, 6.0]]


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


@pytest.fixture
def selections(monkeypatch):
    """Counts the top-k selections made from now on."""
    calls = []
    real = masking._select
    monkeypatch.setattr(masking, "_select", lambda *a: calls.append(1) or real(*a))
    return calls


def test_eval_caches_mask_until_scores_change(selections):
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask()).eval()
    x = torch.randn(2, 10)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
    assert len(selections) == 1 and torch.equal(y1, y2)
    with torch.no_grad():
        model[0].weight_scores.mul_(-1).add_(torch.randn(10, 10))  # new ranking
        y3 = model(x)
    assert len(selections) == 2 and not torch.equal(y1, y3)


def test_eval_cache_sees_writes_through_data():
    # EMA code writes `ema.data.mul_(d).add_(p.data, ...)`: the version counter does not move.
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask()).eval()
    x = torch.randn(2, 10)
    with torch.no_grad():
        before = model(x)
    scores = model[0].weight_scores
    scores.data.copy_(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        after = model(x)
        expected = nn.functional.linear(x, model[0].weight_fixed * topk_mask(scores, 0.5),
                                        model[0].bias)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected)


def test_cache_built_in_inference_mode_allows_backward_later():
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask()).eval()
    model.requires_grad_(False)  # e.g. an input-gradient attribution on a frozen model
    with torch.inference_mode():
        model(torch.randn(2, 10))
    x = torch.randn(2, 10, requires_grad=True)
    model(x).sum().backward()  # failed: "Inference tensors cannot be saved for backward"
    assert x.grad is not None


def test_one_selection_per_step_when_a_weight_is_read_twice(selections):
    # nn.MultiheadAttention reads in_proj_weight twice per forward (fast-path check + use).
    attn = pemn.apply_(nn.MultiheadAttention(16, 2, batch_first=True), pemn.Mask())
    masked = len([n for n, _ in attn.named_parameters() if n.endswith("_scores")])
    opt = torch.optim.SGD(attn.parameters(), lr=0.1)
    x = torch.randn(3, 5, 16)
    for step in range(1, 3):
        opt.zero_grad()
        attn(x, x, x)[0].sum().backward()
        opt.step()
        assert len(selections) == step * masked


def test_training_cache_ends_with_the_backward_pass():
    layer = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask())[0]
    x = torch.randn(2, 10)
    layer(x).sum().backward()
    layer.weight_scores.data.neg_().add_(torch.randn(10, 10))  # e.g. clipping: no version change
    expected = layer.weight_fixed * topk_mask(layer.weight_scores, 0.5)
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_two_forwards_then_one_backward_gives_both_gradients():
    layer = pemn.apply_(nn.Sequential(nn.Linear(6, 4)), pemn.Mask())[0]
    x1, x2 = torch.randn(3, 6), torch.randn(3, 6)
    (layer(x1).sum() + layer(x2).sum()).backward()
    both = layer.weight_scores.grad.clone()
    layer.weight_scores.grad = None
    layer(x1).sum().backward()
    layer(x2).sum().backward()
    torch.testing.assert_close(both, layer.weight_scores.grad)


def test_cached_tensors_lists_the_eval_cache():
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.Mask()).eval()
    assert cached_tensors(model[0]) == []
    with torch.no_grad():
        model(torch.randn(2, 10))
    assert sum(t.numel() for t in cached_tensors(model[0])) == 2 * 100  # weight + snapshot


def test_train_and_eval_agree():
    model = pemn.apply_(nn.Sequential(nn.Linear(10, 10)), pemn.OneLayer())
    x = torch.randn(3, 10)
    y_train = model(x)
    with torch.no_grad():
        y_eval = model.eval()(x)
    torch.testing.assert_close(y_train, y_eval)
