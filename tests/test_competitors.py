"""The competitor families (pemn/competitors.py): sparse from scratch with ERK, quantization-aware
training, binary weights; their configs, what their effective weights look like after training,
and their real bytes (pemn/artifact/weights.py) decoding back to the same logits."""
import math

import pytest
import torch
import torch.nn.functional as F

import pemn
from pemn.artifact.weights import binarize, debinarize, dequantize, quantize
from pemn.competitors import Binary, Quantized, Sparse, compete_, erk_counts
from pemn.config import RunConfig, from_dict
from pemn.fill import strategy_from_dict, strategy_to_dict
from pemn.masking import num_kept
from pemn.models import create_model
from pemn.run import build_model

FAMILIES = [Quantized(bits=8), Quantized(bits=4), Binary(), Sparse(),
            Sparse(density=0.2, allocation="uniform"),
            Sparse(density=0.05, allocation="global_magnitude", dense_ends=False),
            Quantized(bits=4, dense_ends=True), Binary(dense_ends=True)]


def tiny(strategy, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    return compete_(model, strategy, seed=seed)


def train_step(model: torch.nn.Module, lr: float = 1e-2) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())


def layers(model):
    """(name, module, tensor) of every compressed tensor, as pemn_spec lists them."""
    for spec in model.pemn_spec.tensors:
        fqn, _, name = spec.name.rpartition(".")
        yield spec.name, model.get_submodule(fqn), name


def effective(module, name: str) -> torch.Tensor:
    return getattr(module, name).detach()


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", FAMILIES, ids=repr)
def test_config_round_trip(strategy):
    assert strategy_from_dict(strategy_to_dict(strategy)) == strategy
    cfg = from_dict(RunConfig, {"mask": {"strategy": strategy_to_dict(strategy)}})
    assert cfg.mask.strategy == strategy


def test_tags_and_labels_tell_every_variant_apart():
    assert len({s.tag() for s in FAMILIES}) == len(FAMILIES)
    assert len({s.label() for s in FAMILIES}) == len(FAMILIES)
    assert Sparse().tag() == "sparse-erk0.1" and Quantized(bits=4).tag() == "quantized4"


@pytest.mark.parametrize("table, match", [
    ({"name": "quantized", "bits": 3}, "8 or 4"),
    ({"name": "quantized", "bits": True}, "8 or 4"),
    ({"name": "sparse", "density": 0}, r"\(0, 1\]"),
    ({"name": "sparse", "density": 1.5}, r"\(0, 1\]"),
    ({"name": "sparse", "allocation": "snip"}, "allocation"),
    ({"name": "binary", "dense_ends": "yes"}, "true or false"),
    ({"name": "binary", "alpha": 1.0}, "bad arguments"),
])
def test_bad_arguments_are_one_clear_value_error(table, match):
    with pytest.raises(ValueError, match=match):
        strategy_from_dict(table)


@pytest.mark.parametrize("strategy", [Quantized(bits=4), Binary(), Sparse()], ids=repr)
def test_run_config_builds_the_strategy(strategy):
    cfg = from_dict(RunConfig, {"mask": {"strategy": strategy_to_dict(strategy)},
                                "model": {"name": "convmixer_64_d4", "kwargs": {"dim": 16}}})
    model = build_model(cfg, in_channels=1, num_classes=10)
    assert model.pemn_spec.strategy == strategy
    assert pemn.stats(model).num_masked == sum(t.numel for t in model.pemn_spec.tensors)


# ------------------------------------------------------------------------------------------
# Training and the structure of the effective weights
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_trains_and_keeps_at_most_2_to_the_bits_levels(bits):
    model = tiny(Quantized(bits=bits))
    before = {n: getattr(m, t + "_orig").detach().clone() for n, m, t in layers(model)}
    train_step(model)
    model.eval()(torch.zeros(1, 1, 28, 28))
    qmax = 2 ** (bits - 1) - 1
    for name, module, t in layers(model):
        latent = getattr(module, t + "_orig")
        assert not torch.equal(latent.detach(), before[name]), name  # the latent weight trains
        w = effective(module, t)
        assert torch.equal(w, dequantize(*quantize(latent, bits)))  # what eval computes with
        for row in w.reshape(w.shape[0], -1):
            assert len(torch.unique(row)) <= 2 ** bits
        q, scale = quantize(latent, bits)
        assert q.abs().max() == qmax and torch.equal(scale, scale.half().float())
    assert len(model.pemn_spec.tensors) == len(list(pemn.transform.maskable_tensors(
        create_model("convmixer_64_d4", dim=16, in_channels=1))))  # every layer, ends too


def test_binary_trains_and_has_only_plus_minus_alpha_per_channel():
    model = tiny(Binary())
    train_step(model)
    model.eval()(torch.zeros(1, 1, 28, 28))
    for name, module, t in layers(model):
        latent = getattr(module, t + "_orig").detach()
        w = effective(module, t).reshape(latent.shape[0], -1)
        alpha = latent.reshape(latent.shape[0], -1).abs().mean(1).half().float()
        for row, a in zip(w, alpha):
            assert set(torch.unique(row).tolist()) <= {-a.item(), a.item()}, name
            assert a > 0


def test_binary_gradient_is_straight_through_and_clipped():
    layer = compete_(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), Binary())
    with torch.no_grad():
        layer[0].weight_orig.copy_(torch.tensor([[0.5, -2.0, 0.1], [-0.3, 0.2, 1.5]]))
    layer(torch.ones(1, 3)).sum().backward()
    grad = layer[0].weight_orig.grad
    assert (grad[0, 1], grad[1, 2]) == (0, 0)  # |w| > 1: clipped
    assert grad[0, 0] != 0 and grad[1, 0] != 0


def test_sparse_erk_keeps_the_requested_count_with_dense_ends():
    model = tiny(Sparse(density=0.1))
    targets = list(pemn.transform.maskable_tensors(create_model(
        "convmixer_64_d4", dim=16, in_channels=1)))
    specs = model.pemn_spec.tensors
    assert [s.name for s in specs] == [f"{f}.{n}" for f, _, n in targets[1:-1]]
    stem, head = model.get_submodule(targets[0][0]), model.get_submodule(targets[-1][0])
    assert not hasattr(stem, "weight_orig") and not hasattr(head, "weight_orig")  # dense
    kept = [int(getattr(m, t + "_mask").sum()) for _, m, t in layers(model)]
    total = sum(s.numel for s in specs)
    assert sum(kept) == num_kept(total, 0.1) == pemn.stats(model).num_unique
    assert kept == erk_counts([s.shape for s in specs], 0.1)
    train_step(model)
    for _, module, t in layers(model):
        mask = getattr(module, t + "_mask")
        assert torch.equal(effective(module, t) != 0, mask.bool())


def test_erk_makes_layers_dense_that_would_exceed_one():
    shapes = [(4, 1, 3, 3), (256, 256), (64, 256), (10, 64)]
    counts = erk_counts(shapes, 0.3)
    numels = [math.prod(s) for s in shapes]
    assert sum(counts) == num_kept(sum(numels), 0.3)
    assert counts[0] == numels[0] and counts[3] == numels[3]  # small layers: dense
    d1, d2 = counts[1] / numels[1], counts[2] / numels[2]
    ratio = (sum(shapes[1]) / numels[1]) / (sum(shapes[2]) / numels[2])
    assert d1 / d2 == pytest.approx(ratio, rel=1e-3)  # density proportional to the ERK ratio
    assert erk_counts(shapes, 1.0) == numels


def test_sparse_global_magnitude_keeps_the_largest_init_weights():
    torch.manual_seed(0)
    model = create_model("convmixer_64_d4", dim=16, in_channels=1)
    init = torch.cat([getattr(m, n).detach().abs().reshape(-1)
                      for _, m, n in list(pemn.transform.maskable_tensors(model))])
    compete_(model, Sparse(density=0.05, allocation="global_magnitude", dense_ends=False))
    kept = torch.cat([getattr(m, t + "_orig").detach().abs().reshape(-1)[
        getattr(m, t + "_mask").reshape(-1).bool()] for _, m, t in layers(model)])
    assert len(kept) == num_kept(len(init), 0.05)
    assert kept.min() >= init.sort(descending=True).values[len(kept) - 1]


def test_refusals():
    with pytest.raises(TypeError, match="not a competitor"):
        compete_(torch.nn.Linear(2, 2), pemn.RP())
    with pytest.raises(ValueError, match="no layer left"):
        compete_(torch.nn.Sequential(torch.nn.Linear(2, 2)), Sparse())
    model = tiny(Binary())
    with pytest.raises(ValueError, match="already applied"):
        compete_(model, Binary())
    tied = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        compete_(tied, Quantized())


def test_numerics_are_canonical():
    w = torch.tensor([[0.3, -0.6, 0.0], [0.0, 0.0, 0.0], [1e-9, -1e-9, 2e-9]])
    q, scale = quantize(w, 4)
    assert q[0].abs().max() == 7 and scale[1] == 0 and not q[1].any()
    signs, alpha = binarize(w)
    assert alpha[1] == 0 and signs[1].all() and signs[2].all()  # alpha 0: all signs +1
    assert torch.equal(debinarize(signs, alpha)[0], torch.tensor([0.3, -0.3, 0.3]).half().float())
