"""Unique values U and the paper's CR, checked against PEMN.md §4 and §5.3."""
import pytest
import torch

import pemn
from pemn.models import create_model

# U per strategy (PEMN.md §4), ConvMixer with a 10-class head.
U_TABLE = {
    "convmixer_256_d6": {"one_layer": 77_568, "mp": 65_536, 1e-1: 6_554, 1e-2: 656, 1e-3: 66,
                         1e-4: 7, 1e-5: 1},
    "convmixer_512_d6": {"one_layer": 286_208, "mp": 262_144, 1e-1: 26_215, 1e-2: 2_622,
                         1e-3: 263, 1e-4: 27, 1e-5: 3},
    "resnet32": {"one_layer": 72_496, "mp": 36_864, 1e-1: 3_687, 1e-2: 369, 1e-3: 37, 1e-4: 4,
                 1e-5: 1},
}

# P and CR in % (PEMN.md §5.3), 10-class heads unless noted.
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


def _strategy(key):
    return {"one_layer": pemn.OneLayer(), "mp": pemn.MP()}.get(key) or pemn.RP(ratio=key)


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
    model = pemn.apply_(create_model("convmixer_64_d4"), pemn.Mask())
    s = pemn.stats(model)
    assert s.num_unique == s.num_masked
    assert s.num_masked - 1e-8 * s.num_masked**2 <= _unique_fixed_values(model) <= s.num_masked
    assert s.compression_ratio == pytest.approx(-1 / 32)


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
    copy = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01))
    perm = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01, order="permuted"))
    a, b = (m.blocks[0][1].weight_fixed.flatten() for m in (copy, perm))
    assert not torch.equal(a, b)
    assert set(torch.unique(b).tolist()) <= set(torch.unique(a).tolist()) | set(
        torch.unique(perm.head.weight_fixed).tolist())
    assert pemn.stats(perm).num_unique == pemn.stats(copy).num_unique
