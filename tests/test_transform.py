"""apply_ on models pemn has never seen, built from plain torch layers."""
import pytest
import torch
from torch import nn

import pemn

STRATEGIES = [pemn.Mask(), pemn.OneLayer(), pemn.MP(), pemn.RP(ratio=0.1),
              pemn.RP(ratio=0.01, order="permuted")]


class Unseen(nn.Module):
    """Conv1d/2d/3d, grouped and depthwise convs, attention, and a head: nothing pemn built."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.c3 = nn.Conv3d(1, 2, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (B, 4, 16)
        h = self.c1(x).relu()  # (B, 8, 16)
        h2 = self.dw(self.c2(h.view(-1, 8, 4, 4))).relu()  # (B, 8, 4, 4)
        h3 = self.c3(h2[:, :1].unsqueeze(1)).mean(1)  # (B, 1, 4, 4)
        seq = (h2 + h3).flatten(2).transpose(1, 2)  # (B, 16, 8)
        a, _ = self.attn(seq, seq, seq)
        return self.head(self.norm(a + seq).mean(1))


def _x():
    return torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: repr(s))
def test_unseen_model_forward_backward(strategy):
    model = pemn.apply_(Unseen(), strategy, keep_ratio=0.4, seed=3)
    masked = [f"{f}.{n}" for f, _, n in pemn.masked_tensors(model)]
    assert masked == ["c1.weight", "c2.weight", "dw.weight", "c3.weight",
                      "attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    assert isinstance(model.c2, nn.Conv2d) and isinstance(model.attn, nn.MultiheadAttention)
    assert isinstance(model.attn.out_proj, nn.Linear)
    model(_x()).sum().backward()
    for name, p in model.named_parameters():  # every trainable tensor learns something
        assert p.grad is not None and bool(p.grad.isfinite().all()), name
        assert bool(p.grad.ne(0).any()), name
    # the masked weight seen by the layer keeps exactly the kept count
    w = model.dw.weight
    assert int((w != 0).sum()) == w.numel() - int(0.6 * w.numel())


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: repr(s))
def test_materialize_keeps_logits(strategy):
    model = pemn.apply_(Unseen(), strategy).eval()
    with torch.no_grad():
        before = model(_x())
        pemn.materialize_(model)
        after = model(_x())
    assert type(model.c2) is nn.Conv2d and type(model.attn) is nn.MultiheadAttention
    assert not hasattr(model, "pemn_spec")
    assert set(dict(model.named_parameters())) == set(dict(Unseen().named_parameters()))
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_same_seed_same_model_different_seed_different():
    a, b, c = (pemn.apply_(Unseen(), pemn.MP(), seed=s) for s in (0, 0, 1))
    assert torch.equal(a.c2.weight_fixed, b.c2.weight_fixed)
    assert torch.equal(a.c2.weight_scores, b.c2.weight_scores)
    assert not torch.equal(a.c2.weight_fixed, c.c2.weight_fixed)


def test_hooks_keep_working():
    model = Unseen()
    seen = []
    model.c2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    pemn.apply_(model, pemn.Mask())
    model(_x())
    assert seen == [torch.Size([3, 8, 4, 4])]


def test_include_exclude():
    model = pemn.apply_(Unseen(), pemn.Mask(), include=["c*", "head"], exclude="c3")
    masked = [f for f, _, _ in pemn.masked_tensors(model)]
    assert masked == ["c1", "c2", "head"]
    model = pemn.apply_(Unseen(), pemn.Mask(), exclude="attn.in_proj_weight")
    assert "attn" not in [f for f, _, _ in pemn.masked_tensors(model)]


def test_dense_leaves_model_trainable():
    model = pemn.apply_(Unseen(), pemn.Dense())
    assert not list(pemn.masked_tensors(model))
    s = pemn.stats(model)
    assert s.num_masked == s.num_unique and s.compression_ratio == 0


def test_one_layer_shares_values_but_not_masks():
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(3)])
    pemn.apply_(model, pemn.OneLayer())
    assert torch.equal(model[0].weight_fixed, model[2].weight_fixed)
    assert not torch.equal(model[0].weight, model[2].weight)  # own masks


@pytest.mark.parametrize("kwargs, match", [
    (dict(keep_ratio=0), "keep_ratio"), (dict(keep_ratio=1.5), "keep_ratio"),
    (dict(keep_ratio="half"), "keep_ratio"), (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"), (dict(include="nope*"), "matches no maskable layer"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pemn.apply_(Unseen(), pemn.Mask(), **kwargs)


def test_bad_strategy_and_ratio():
    with pytest.raises(TypeError, match="'rp' is not a strategy"):
        pemn.apply_(Unseen(), "rp")
    with pytest.raises(ValueError, match="ratio"):
        pemn.RP(ratio=0)
    with pytest.raises(ValueError, match="order"):
        pemn.RP(order="rand")


EXPORTED = [getattr(pemn, n)() for n in pemn.__all__ if isinstance(getattr(pemn, n), type)
            and issubclass(getattr(pemn, n), pemn.fill.Strategy)] + [pemn.RandomPrune(),
                                                                    pemn.MagnitudePrune()]


@pytest.mark.parametrize("strategy", EXPORTED, ids=lambda s: s.tag())
def test_apply_takes_every_exported_strategy(strategy):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Linear(4, 3))
    x = torch.randn(2, 6)
    pemn.apply_(model, strategy)(x).sum().backward()
    assert model.pemn_spec.strategy is strategy
    want = model.eval()(x)
    assert torch.equal(pemn.materialize_(model)(x), want)  # any family becomes a plain model
    assert all(type(m) in (nn.Sequential, nn.ReLU, nn.Linear) for m in model.modules())
    assert not [k for m in model.modules() for k in vars(m) if k.startswith("_pemn")]


@pytest.mark.parametrize("strategy, unused", [
    (pemn.Dense(), "keep_ratio"), (pemn.Dense(), "seed"), (pemn.Quantized(), "keep_ratio"),
    (pemn.Binary(), "seed"), (pemn.Sparse(), "keep_ratio"), (pemn.RandomPrune(), "keep_ratio")])
def test_an_argument_the_strategy_does_not_use_is_refused(strategy, unused):
    with pytest.raises(ValueError, match=f"does not use {unused}"):
        pemn.apply_(Unseen(), strategy, **{unused: 1})


def test_apply_twice_is_an_error():
    model = pemn.apply_(Unseen(), pemn.Mask())
    with pytest.raises(ValueError, match="already applied"):
        pemn.apply_(model, pemn.MP())


def test_no_maskable_layer():
    with pytest.raises(ValueError, match="no layer to mask"):
        pemn.apply_(nn.Sequential(nn.ReLU()), pemn.MP())


@pytest.mark.parametrize("register", [
    lambda: pemn.fill.register_planner(pemn.Mask), lambda: pemn.transform.register_handler(
        pemn.Dense), lambda: pemn.competitors.register_weight(pemn.Quantized)])
def test_a_type_is_registered_once(register):
    # a second planner, handler or weight function for a type would silently replace the first
    with pytest.raises(ValueError, match="is already registered"):
        register()(lambda *args: None)
