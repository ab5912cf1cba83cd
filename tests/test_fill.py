"""Strategies: unique values U and the paper's CR (arXiv 2210.06699, section 3 and Eq. 10),
labels, byte accounting, (de)serialisation, layer values and the pruning baselines."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import pemn
from pemn import rng
from pemn.competitors import MagnitudePrune, RandomPrune, Sparse
from pemn.fill import (
    STRATEGIES,
    FillPlan,
    Prototype,
    TensorSpec,
    fan_in,
    plan_fill,
    strategy_from_dict,
    strategy_to_dict,
)
from pemn.masking import num_kept
from pemn.models import create_model

# U per strategy, ConvMixer with a 10-class head.
U_TABLE = {
    "convmixer_256_d6": {"one_layer": 77_568, "mp": 65_536, 1e-1: 6_554, 1e-2: 656, 1e-3: 66,
                         1e-4: 7, 1e-5: 1},
    "convmixer_512_d6": {"one_layer": 286_208, "mp": 262_144, 1e-1: 26_215, 1e-2: 2_622,
                         1e-3: 263, 1e-4: 27, 1e-5: 3},
    "resnet32": {"one_layer": 72_496, "mp": 36_864, 1e-1: 3_687, 1e-2: 369, 1e-3: 37, 1e-4: 4,
                 1e-5: 1},
}

# P and CR in % (the paper's Eq. 10), 10-class heads unless noted.
CR_TABLE = [
    ("convmixer_256_d6", {}, 437_248, {"mp": 81.887, 1e-1: 95.376, 1e-2: 96.725, 1e-3: 96.860}),
    ("convmixer_256_d8", {}, 581_120, {"mp": 85.597, 1e-1: 95.747, 1e-2: 96.762, 1e-3: 96.864}),
    ("resnet32", {}, 461_872, {"mp": 88.894, 1e-1: 96.077, 1e-2: 96.795, 1e-3: 96.867}),
    ("resnet56", {}, 848_944, {"mp": 92.533, 1e-1: 96.441, 1e-2: 96.832, 1e-3: 96.871}),
    ("convmixer_512_d8", {}, 2_210_816, {"one_layer": 83.929, "mp": 85.018, 1e-1: 95.689,
                                          1e-5: 96.875}),
    ("convmixer_256_d8", {"num_classes": 100}, 604_160, {"mp": 86.028, 1e-1: 95.790}),
    ("convmixer_256_d6", {}, 437_248, {"one_layer": 79.135, 1e-4: 96.873}),
]


def _strategy(key):  # the paper's strategies: normal values (signed constants repeat values)
    return ({"one_layer": pemn.OneLayer(values="normal"), "mp": pemn.MP(values="normal")}.get(key)
            or pemn.RP(ratio=key, values="normal"))


def _unique_fixed_values(model) -> int:
    values = torch.cat([getattr(m, n + "_fixed").flatten() for _, m, n in
                        pemn.masked_tensors(model)])
    return torch.unique(values).numel()


@pytest.mark.parametrize("name", list(U_TABLE))
def test_unique_values_match_the_spec(name):
    for key, expected in U_TABLE[name].items():
        model = pemn.apply_(create_model(name), _strategy(key))
        assert pemn.stats(model).num_unique == expected, (name, key)
        # Count the real values too. Independent float32 normal draws collide now and then
        # (birthday collisions grow as U**2: 27 at U = 77k), so allow that, never an excess.
        unique = _unique_fixed_values(model)
        assert expected - 1e-8 * expected**2 <= unique <= expected, (name, key, unique)


def test_rp_1e5_is_a_single_scalar():
    model = pemn.apply_(create_model("convmixer_256_d6"), pemn.RP(ratio=1e-5))
    assert _unique_fixed_values(model) == 1


def test_mask_strategy_has_all_weights_unique():
    model = pemn.apply_(create_model("convmixer_64_d4"), pemn.Mask(values="normal"))
    s = pemn.stats(model)
    assert s.num_unique == s.num_masked
    assert s.num_masked - 1e-8 * s.num_masked**2 <= _unique_fixed_values(model) <= s.num_masked
    assert s.compression_ratio == pytest.approx(-1 / 32)


def _signed(seed: int, stream: int, n: int, std: float) -> np.ndarray:
    return np.where(rng.normal(seed, stream, n, std) >= 0, std, -std).astype(np.float32)


def test_default_mask_and_mp_values_follow_the_documented_recipe():
    """Files store only the seed: layer i draws from stream i, signed constants are the draws'
    signs times sqrt(2 / fan_in); MP takes prefixes of the largest layer's draws (at its std),
    the first of equally large layers."""
    def model(strategy):  # fan_in 18, 48, 5; 54, 240, 240 values
        m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(48, 5), nn.Linear(5, 48))
        pemn.apply_(m, strategy, seed=4)
        return [m[i].weight_fixed.flatten().numpy() for i in (0, 2, 3)]

    conv, linear, last = model(pemn.Mask())
    assert np.array_equal(conv, _signed(4, 0, 54, (2 / 18) ** 0.5))
    assert np.array_equal(linear, _signed(4, 1, 240, (2 / 48) ** 0.5))
    assert np.array_equal(last, _signed(4, 2, 240, (2 / 5) ** 0.5))
    conv, linear, last = model(pemn.MP())
    assert np.array_equal(linear, _signed(4, 1, 240, (2 / 48) ** 0.5))
    assert np.array_equal(conv, linear[:54]) and np.array_equal(last, linear)


@pytest.mark.parametrize("name, kwargs, num_masked, table", CR_TABLE)
def test_compression_ratio_table(name, kwargs, num_masked, table):
    for key, cr_percent in table.items():
        s = pemn.stats(pemn.apply_(create_model(name, **kwargs), _strategy(key)))
        assert s.num_masked == num_masked
        assert 100 * s.compression_ratio == pytest.approx(cr_percent, abs=5e-4), (name, key)


def test_mp_uses_prefixes_of_the_largest_layer():
    model = pemn.apply_(create_model("convmixer_64_d4"), pemn.MP())
    layers = [getattr(m, n + "_fixed").flatten() for _, m, n in pemn.masked_tensors(model)]
    big = max(layers, key=len)
    for w in layers:
        assert torch.equal(w, big[: len(w)])


def test_rp_permuted_has_same_values_in_other_order():
    copy = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01, order="copy"))
    perm = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01))  # the default
    a, b = (m.blocks[0][1].weight_fixed.flatten() for m in (copy, perm))
    assert not torch.equal(a, b)
    assert set(torch.unique(b).tolist()) <= set(torch.unique(a).tolist()) | set(
        torch.unique(perm.head.weight_fixed).tolist())
    assert pemn.stats(perm).num_unique == pemn.stats(copy).num_unique


# ------------------------------------------------------------------------------------------
# Labels, tags and (de)serialisation: every registered strategy
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy, label, tag", [
    (pemn.Dense(), "Dense", "dense"),
    (pemn.Mask(), "Mask", "mask"),  # signed constants, the default
    (pemn.Mask(values="normal"), "Mask (normal)", "mask-normal"),
    (pemn.OneLayer(), "One-layer", "one_layer"),
    (pemn.MP(values="normal"), "MP (normal)", "mp-normal"),
    (pemn.RP(1e-3), "RP 1e-3", "rp0.001"),  # permuted, the default
    (pemn.RP(0.01, "copy"), "RP 1e-2 (copy)", "rp0.01-copy"),
    (pemn.RP(1e-3, "copy", values="normal"), "RP 1e-3 (copy, normal)", "rp0.001-copy-normal"),  # the paper's
    (pemn.RP(0.25, values="normal"), "RP 0.25 (normal)", "rp0.25-normal"),
    (RandomPrune(0.9), "Sparse uniform @ 6.875 % (sparse ends)",
     "sparse-uniform0.06875-sparse_ends"),
    (MagnitudePrune(0.96), "Sparse |w| @ 0.875 % (sparse ends)",
     "sparse-magnitude0.00875-sparse_ends"),
])
def test_labels_and_tags(strategy, label, tag):
    assert (strategy.label(), strategy.tag()) == (label, tag)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_round_trips_through_its_dict(name):
    strategy = STRATEGIES[name]()
    d = strategy_to_dict(strategy)
    assert d["name"] == name and strategy_from_dict(d) == strategy


@pytest.mark.parametrize("d, match", [
    ({"name": "rnd"}, "unknown strategy 'rnd'"),
    ({"ratio": 0.1}, "needs a name"),
    ({"name": "mp", "ratio": 0.1}, "bad arguments for strategy 'mp'"),
    ({"name": "rp", "ratio": 0}, r"in \(0, 1\]"),
    ({"name": "random_prune", "cr": 0.97}, "31/32"),
    ({"name": "magnitude_prune", "keep": 0.1}, "bad arguments for strategy 'magnitude_prune'"),
    ("rp", "is a table"),
])
def test_bad_strategy_dicts(d, match):
    with pytest.raises(ValueError, match=match):
        strategy_from_dict(d)


def test_fan_in_follows_torch_and_takes_one_for_vectors():
    assert fan_in((8, 4, 3, 3)) == 36 and fan_in((10, 100)) == 100
    assert fan_in((5,)) == 1 and fan_in(()) == 1
    conv = torch.nn.Conv2d(4, 8, 3)
    assert fan_in(tuple(conv.weight.shape)) == torch.nn.init._calculate_fan_in_and_fan_out(
        conv.weight)[0]
    assert TensorSpec("w", (5,)).std == pytest.approx(math.sqrt(2))


def test_layer_values_are_views_into_the_prototypes():
    specs = [TensorSpec("a", (4, 3)), TensorSpec("b", (2, 3)), TensorSpec("c", (5,))]
    plan = plan_fill(pemn.OneLayer(), specs)
    protos = [torch.from_numpy(v) for v in plan.generate(7)]
    values = plan.layer_values(protos, specs)
    assert [tuple(v.shape) for v in values] == [(4, 3), (2, 3), (5,)]
    for v, src in zip(values, plan.sources):
        assert v.data_ptr() == protos[src].data_ptr()  # shared storage, no copy
    tiled = FillPlan((Prototype(0, 2, 1.0, tile_to=6),), (0, 0))
    a, b = tiled.layer_values([torch.arange(6.0)], [TensorSpec("a", (2, 3)), TensorSpec("b", (4,))])
    assert torch.equal(b, torch.arange(4.0)) and torch.equal(a.flatten(), torch.arange(6.0))


# ------------------------------------------------------------------------------------------
# Byte accounting: P, U, mask bits and CR per strategy, in one place
# ------------------------------------------------------------------------------------------

def _build(strategy):
    model = create_model("mlp_paper")
    if isinstance(strategy, (Sparse, pemn.Dense)):
        return pemn.apply_(model, strategy)
    return pemn.apply_(model, strategy, keep_ratio=0.5)


@pytest.mark.parametrize("strategy", [pemn.Dense(), pemn.MP(), pemn.RP(0.1),
                                      RandomPrune(0.9), MagnitudePrune(0.94)])
def test_byte_accounting(strategy):
    s = pemn.stats(_build(strategy))
    sizes = [512 * 100, 100 * 100, 100 * 100, 100 * 10]
    assert s.num_masked == sum(sizes) and s.num_other_params == 100 * 3 + 10  # the biases
    if isinstance(strategy, pemn.Dense):
        assert (s.num_unique, s.mask_bits, s.compression_ratio) == (s.num_masked, 0, 0.0)
        return
    if isinstance(strategy, Sparse):  # the kept values are the stored values
        assert s.num_unique == sum(num_kept(n, strategy.density) for n in sizes)
        assert s.compression_ratio == pytest.approx(31 / 32 - strategy.density, abs=1e-4)
    else:
        assert s.num_unique == {pemn.MP: 51_200, pemn.RP: 5_121}[type(strategy)]
    assert s.mask_bits == s.num_masked
    assert s.compression_ratio == 1 - (s.num_masked + 32 * s.num_unique) / (32 * s.num_masked)


# ------------------------------------------------------------------------------------------
# Pruning baselines
# ------------------------------------------------------------------------------------------

def test_magnitude_prune_keeps_the_largest_weights():
    model = pemn.apply_(create_model("mlp_paper"), MagnitudePrune(0.9), seed=0)
    layer = model.features[1]
    w, mask = layer.weight_orig.detach().abs().flatten(), layer.weight_mask.flatten().bool()
    assert mask.sum() == num_kept(w.numel(), 31 / 32 - 0.9)
    assert w[mask].min() >= w[~mask].max()
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)


def test_random_prune_is_seeded_and_differs_from_magnitude():
    a, b, c = (pemn.apply_(create_model("mlp_paper"), s, seed=seed) for s, seed in
               [(RandomPrune(0.9), 1), (RandomPrune(0.9), 1), (MagnitudePrune(0.9), 1)])
    masks = [m.features[1].weight_mask for m in (a, b, c)]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("device, dtype", [("meta", torch.float32), ("cpu", torch.float64)])
def test_random_prune_builds_its_mask_where_the_weight_lives(device, dtype):
    with torch.device(device):
        model = torch.nn.Sequential(torch.nn.Linear(64, 32)).to(dtype)
    pemn.apply_(model, RandomPrune(0.5), seed=0)
    mask = model[0].weight_mask
    assert (mask.device.type, mask.dtype) == (device, dtype)


def test_pruning_presets_are_the_sparse_strategies_they_name():
    assert RandomPrune(0.9) == Sparse(0.06875, "uniform", dense_ends=False)
    assert MagnitudePrune(0.92) == Sparse(0.04875, "magnitude", dense_ends=False)
    assert strategy_from_dict({"name": "random_prune", "cr": 0.9}) == RandomPrune(0.9)
    assert strategy_to_dict(RandomPrune(0.9))["name"] == "sparse"  # stored as what it is
