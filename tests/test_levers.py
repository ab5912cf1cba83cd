"""The byte-neutral levers of the weight fills: signed constants, per-layer std, learned gains,
and the mask scores' learning rate. Each must regenerate from the seed and pack exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import pemn
from pemn import rng
from pemn.artifact import ArtifactError, pack, unpack
from pemn.config import ConfigError, OptimConfig, RunConfig, validate
from pemn.fill import (MP, RP, Mask, OneLayer, TensorSpec, plan_fill, strategy_from_dict,
                       strategy_to_dict)
from pemn.models import create_model
from pemn.train import make_optimizer, train_one_epoch
from pemn.transform import masked_tensors
from tests.test_fuzz_artifact import header_and_payload, seal

_SPECS = [TensorSpec("stem", (16, 1, 4, 4)), TensorSpec("dw", (16, 1, 5, 5)),
          TensorSpec("pw", (16, 16, 1, 1)), TensorSpec("head", (10, 16))]


def _convmixer(strategy, keep=0.5, seed=3):
    model = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    return pemn.apply_(model, strategy, keep, seed=seed)


def _fixed(model):
    return [getattr(m, n + "_fixed") for _, m, n in masked_tensors(model)]


@pytest.mark.parametrize("strategy", [Mask(values="signed_constant"),
                                      OneLayer(values="signed_constant"),
                                      MP(values="signed_constant"),
                                      RP(0.1, values="signed_constant")])
def test_signed_constant_keeps_the_signs_of_the_normal_draws(strategy):
    normal = type(strategy)(**{k: v for k, v in vars(strategy).items() if k != "values"})
    signed, plain = plan_fill(strategy, _SPECS), plan_fill(normal, _SPECS)
    for s, p, proto in zip(signed.generate(7), plain.generate(7), signed.prototypes):
        assert set(np.abs(s).tolist()) == {np.float32(proto.std)}
        assert np.array_equal(np.sign(s), np.where(p >= 0, 1.0, -1.0))


@pytest.mark.parametrize("strategy", [MP(scale="layer"), RP(0.05, scale="layer"),
                                      RP(0.05, "permuted", scale="layer",
                                         values="signed_constant")])
def test_layer_scale_gives_each_layer_its_own_kaiming_std(strategy):
    plan = plan_fill(strategy, _SPECS)
    [proto] = plan.generate(1)
    values = plan.layer_values([torch.from_numpy(proto)], _SPECS)
    for i, (spec, v) in enumerate(zip(_SPECS, values)):
        factor = np.float32(spec.std / plan.prototypes[0].std)
        assert plan.scale(i) == float(factor)
        assert torch.equal(v.flatten(), torch.from_numpy(proto[: spec.numel]) * factor)
    assert plan.scale(1) == 1.0  # the largest layer (dw) serves the prototype as drawn
    # the default keeps the official semantics: every layer at the largest layer's std
    shared = plan_fill(type(strategy)(**{**vars(strategy), "scale": "largest"}), _SPECS)
    assert shared.scales == () and all(shared.scale(i) == 1.0 for i in range(len(_SPECS)))


@pytest.mark.parametrize("gain, shape", [("layer", (1, 1, 1, 1)), ("channel", (16, 1, 1, 1))])
def test_gain_is_learned_and_multiplies_the_masked_weight(gain, shape):
    model = _convmixer(RP(0.1, gain=gain))
    _, module, name = next(iter(masked_tensors(model)))
    g = getattr(module, name + "_gain")
    assert tuple(g.shape) == shape and torch.equal(g, torch.ones(shape))
    with torch.no_grad():
        g.mul_(3.0)
        module.eval()
        assert torch.equal(getattr(module, name),
                           3.0 * getattr(module, name + "_fixed") * pemn.masking.current_mask(
                               module, name))
    model.train()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model(x).square().sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    assert getattr(module, name + "_scores").grad.abs().sum() > 0


def _trained(strategy, steps=2):
    model = _convmixer(strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("strategy", [RP(1e-3, gain="channel"), Mask(gain="layer"),
                                      RP(0.05, "permuted", scale="layer",
                                         values="signed_constant", gain="channel"),
                                      MP(scale="layer"), OneLayer(values="signed_constant")])
def test_levers_pack_and_load_exactly_in_every_form(strategy, tmp_path):
    model = _trained(strategy)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    pemn.save(model, tmp_path / "m.pemn")
    with torch.no_grad():
        want = model(x)
        for form in ("train", "dense", "packed"):
            loaded = pemn.load(tmp_path / "m.pemn", form=form)
            assert torch.equal(loaded(x), want), form
    assert pemn.load(tmp_path / "m.pemn").pemn_spec.strategy == strategy


def test_levers_are_byte_neutral_except_the_gains():
    sizes = {s.tag(): len(pack(_trained(s, steps=0)))
             for s in (RP(1e-3, values="normal"), RP(1e-3, scale="layer"), RP(1e-3),
                       RP(1e-3, gain="layer"), RP(1e-3, "copy"))}
    base = sizes["rp0.001-normal"]
    assert abs(sizes["rp0.001-copy"] - base) <= 16  # the order costs no bytes either
    # the header spells the strategy's fields, so a lever costs at most a few header bytes
    assert abs(sizes["rp0.001-ls"] - base) <= 16 and abs(sizes["rp0.001"] - base) <= 16
    assert 0 < sizes["rp0.001-gl"] - base <= 16 * 4 + 200  # one fp32 per tensor + header


class Tied(nn.Module):
    """Two layers sharing one weight (GPT-2's tied embedding, in miniature)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_gain_stays_tied_across_aliases(tmp_path):
    model = pemn.apply_(Tied(), RP(0.2, gain="channel"), seed=1)
    assert model.a.weight_gain is model.b.weight_gain
    with torch.no_grad():
        model.a.weight_gain.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    pemn.save(model.eval(), tmp_path / "t.pemn")
    for form in ("train", "dense", "packed"):
        loaded = pemn.load(tmp_path / "t.pemn", model=Tied(), form=form)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), form


def _with_strategy(data: bytes, **fields) -> bytes:
    header, payload = header_and_payload(data)
    header["pemn"]["strategy"].update(fields)
    return seal(json.dumps(header).encode(), payload)


def test_a_file_whose_gains_do_not_match_its_strategy_is_refused():
    layer = pack(_trained(RP(0.1, gain="layer"), steps=0))
    with pytest.raises(ArtifactError, match=r"needs a float gain of shape \[16, 1, 1, 1\]"):
        unpack(_with_strategy(layer, gain="channel"))
    with pytest.raises(ArtifactError, match="strategy has none"):
        unpack(_with_strategy(layer, gain="none"))
    plain = pack(_trained(RP(0.1), steps=0))
    with pytest.raises(ArtifactError, match="holds none"):
        unpack(_with_strategy(plain, gain="layer"))
    with pytest.raises(ArtifactError, match="values must be one of"):
        unpack(_with_strategy(plain, values="uniform"))


@pytest.mark.parametrize("bad, match", [({"values": "uniform"}, "values must be one of"),
                                        ({"gain": "row"}, "gain must be one of"),
                                        ({"scale": 2}, "scale must be one of")])
def test_bad_lever_values_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        strategy_from_dict({"name": "rp", "ratio": 1e-3, **bad})
    with pytest.raises(ValueError, match="unexpected keyword argument 'scale'"):
        strategy_from_dict({"name": "mask", "scale": "layer"})  # Mask has its own std already


def test_labels_and_tags_name_every_lever():
    s = RP(1e-3, "permuted", scale="layer", values="signed_constant", gain="channel")
    assert s.label() == "RP 1e-3 +gain/channel +layer-std"
    assert s.tag() == "rp0.001-gc-ls"
    paper = RP(1e-3, "copy", values="normal")
    assert paper.label() == "RP 1e-3 (copy, normal)" and paper.tag() == "rp0.001-copy-normal"
    assert Mask().label() == "Mask"  # labels name what differs from the defaults


def test_a_strategy_without_a_field_takes_its_default_wherever_it_was_written():
    old = {"name": "rp", "ratio": 1e-3, "order": "copy"}
    assert strategy_from_dict(old) == RP(1e-3, "copy", values="signed_constant")
    assert strategy_to_dict(Mask())["values"] == "signed_constant"  # new records name it


def test_the_score_lr_scale_applies_to_scores_only():
    model = _convmixer(RP(0.1, gain="channel"))
    cfg = OptimConfig(epochs=1, lr=0.1, score_lr_scale=0.25, schedule="cosine")
    opt = make_optimizer(model, cfg)
    by_scale = {g["lr_scale"]: g["params"] for g in opt.param_groups}
    scores = {id(p) for n, p in model.named_parameters() if n.endswith("_scores")}
    assert {id(p) for p in by_scale[0.25]} == scores
    assert not scores & {id(p) for p in by_scale[1.0]}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    progress = type("Progress", (), {"update": lambda self, n: None})()
    train_one_epoch(model, [(x, y)], opt, scaler, cfg, 0, 10, None, progress)
    lrs = {g["lr_scale"]: g["lr"] for g in opt.param_groups}
    assert lrs[0.25] == pytest.approx(0.25 * lrs[1.0]) and lrs[1.0] > 0


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_a_bad_score_lr_scale_is_a_config_error(scale):
    cfg = RunConfig()
    cfg.optim.score_lr_scale = scale
    with pytest.raises(ConfigError, match="score_lr_scale"):
        validate(cfg)


def test_the_default_rp_prototype_follows_the_documented_recipe():
    """RP 1e-2 of _SPECS, seed 11, by hand: the largest layer (dw, 400 values, fan_in 25) owns
    stream 1; int(400 * 0.01) + 1 = 5 draws, their signs times sqrt(2 / 25), tiled to 400,
    then permuted by stream 2**32. Every file stores only the seed for this vector."""
    std = (2 / 25) ** 0.5
    signs = np.where(rng.normal(11, 1, 5, std) >= 0, std, -std).astype(np.float32)
    expected = np.tile(signs, 80)[rng.permutation(11, 2**32, 400)]
    [proto] = plan_fill(RP(1e-2), _SPECS).generate(11)
    assert proto.dtype == np.float32 and np.array_equal(proto, expected)



def test_folded_blocks_store_one_mask_per_conv_kind_and_load_from_the_zoo(tmp_path):
    def build(fold):
        model = create_model("convmixer_64_d4", dim=16, depth=3, in_channels=1, fold=fold)
        return pemn.apply_(model, RP(1e-3, "permuted", values="signed_constant"), seed=3)

    folded, plain = build(True), build(False)
    names = [f"{f}.{n}" for f, _, n in masked_tensors(folded)]
    assert names == ["stem.0.weight", "blocks.0.0.fn.0.weight", "blocks.0.1.weight",
                     "head.weight"]
    scores = folded.blocks[0][1].weight_scores
    assert pemn.stats(folded).num_other_params == pemn.stats(plain).num_other_params  # norms
    assert folded.blocks[2][1].weight_scores is scores  # a tie, not a copy
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    folded(x).square().sum().backward()
    torch.optim.SGD(folded.parameters(), lr=1.0).step()  # the shared scores learn
    folded.eval()
    pemn.save(folded, tmp_path / "f.pemn")
    assert len(pack(folded)) < len(pack(plain.eval())) - 2 * (400 + 256) // 8  # 2 blocks' masks
    with torch.no_grad():
        want = folded(x)
        for form in ("train", "dense", "packed"):  # the zoo skeleton, tied again after meta
            loaded = pemn.load(tmp_path / "f.pemn", form=form)
            assert torch.equal(loaded(x), want), form
    trained = pemn.load(tmp_path / "f.pemn")
    assert trained.blocks[2][1].weight_scores is trained.blocks[0][1].weight_scores
