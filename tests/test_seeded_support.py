"""Seeded support (``pruned``): a seeded fraction of each masked layer is pruned, costs no bits,
and masks are learned and stored on the rest (Otsuka, Chijiwa et al. 2024, arXiv 2402.14029)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import pemn
from pemn.artifact import ArtifactError, describe, pack, unpack
from pemn.config import load_config
from pemn.fill import RP, Mask, OneLayer, strategy_from_dict
from pemn.masking import SCORES, SUPPORT, num_kept
from pemn.models import create_model
from pemn.storage import size_report, stats
from pemn.transform import masked_tensors
from tests.test_fuzz_artifact import header_and_payload, seal
from tests.test_levers import Tied


def _convmixer(strategy, keep=0.5, seed=3):
    model = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    return pemn.apply_(model, strategy, keep, seed=seed)


def _x():
    return torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def _trained(strategy, keep=0.5, steps=2):
    model = _convmixer(strategy, keep).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(_x()).logsumexp(1).sum().backward()
        opt.step()
    return model.eval()


def _supports(model):
    return [getattr(m, n + SUPPORT).clone() for _, m, n in masked_tensors(model)]


@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_each_layer_keeps_exactly_its_count_of_the_support(keep):
    model = _trained(RP(1e-3, pruned=0.75), keep)
    for _, module, name in masked_tensors(model):
        n = getattr(module, name).numel()
        m = max(1, n - round(0.75 * n))
        assert getattr(module, name + SUPPORT).sum() == m
        assert getattr(module, name + SCORES).shape == (m,)
        # signed constants are never 0: the nonzero weights are exactly the kept ones
        assert int((getattr(module, name) != 0).sum()) == num_kept(m, keep)


def test_pruned_positions_are_zero_and_get_no_gradient():
    model = _convmixer(Mask(pruned=0.5)).train()
    module = list(masked_tensors(model))[-1][1]  # the head, a Linear
    support = module.weight_support
    weight = module.weight
    weight.retain_grad()
    F.linear(torch.randn(4, weight.shape[1]), weight).square().sum().backward()
    assert bool((weight[~support] == 0).all())
    want = torch.sign(module.weight_scores) * module.weight_fixed * weight.grad[support]
    assert torch.equal(module.weight_scores.grad, want)  # the only gradient: on the support
    trained = _trained(Mask(pruned=0.5), steps=3)
    for _, m, n in masked_tensors(trained):
        assert bool((getattr(m, n)[~getattr(m, n + SUPPORT)] == 0).all())


def test_the_support_comes_from_the_seed():
    a = _supports(_convmixer(RP(1e-3, pruned=0.75)))
    b = _supports(_convmixer(RP(1e-3, pruned=0.75)))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = _supports(_convmixer(RP(1e-3, pruned=0.75), seed=4))
    assert not any(torch.equal(x, y) for x, y in zip(a, other))


@pytest.mark.parametrize("strategy", [RP(1e-3, pruned=0.75), Mask(pruned=0.5, gain="channel"),
                                      OneLayer(pruned=0.9, values="normal")])
@pytest.mark.parametrize("store_prototype", [None, True])
def test_save_and_load_give_identical_logits_in_every_form(strategy, store_prototype, tmp_path):
    model = _trained(strategy)
    pemn.save(model, tmp_path / "m.pemn", store_prototype=store_prototype)
    with torch.no_grad():
        want = model(_x())
        for form in ("train", "dense", "packed"):
            loaded = pemn.load(tmp_path / "m.pemn", form=form)
            assert torch.equal(loaded(_x()), want), form
    assert pemn.load(tmp_path / "m.pemn").pemn_spec.strategy == strategy
    plain = pemn.materialize_(model)
    assert not any(n.endswith((SUPPORT, SCORES)) for n, _ in plain.named_buffers())
    with torch.no_grad():
        assert torch.equal(plain(_x()), want)


def test_a_tied_support_stays_tied_in_every_form(tmp_path):
    model = pemn.apply_(Tied(), RP(0.2, pruned=0.5), seed=1).eval()
    assert model.b.weight_support is model.a.weight_support
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    pemn.save(model, tmp_path / "t.pemn")
    for form in ("train", "dense", "packed"):
        loaded = pemn.load(tmp_path / "t.pemn", model=Tied(), form=form)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), form


@pytest.mark.parametrize("pruned", [0.5, 0.75])
def test_the_file_stores_mask_bits_on_the_support_only(pruned):
    full, part = _trained(RP(1e-3), steps=0), _trained(RP(1e-3, pruned=pruned), steps=0)
    full_bytes = describe(pack(full))["kind_bytes"]["mask"]
    part_bytes = describe(pack(part))["kind_bytes"]["mask"]
    assert part_bytes == pytest.approx((1 - pruned) * full_bytes, rel=0.05)
    report = size_report(part)
    assert report["bytes"]["masks"] == part_bytes
    assert stats(part).mask_bits == sum(m["mask_size"] for m in describe(part)["masks"])
    assert stats(part).mask_bits == pytest.approx((1 - pruned) * stats(full).mask_bits, rel=0.01)
    assert report["mask_bitmap_bytes"] == pytest.approx(part_bytes, rel=0.05)


def _edit(data: bytes, edit) -> bytes:
    header, payload = header_and_payload(data)
    edit(header)
    return seal(json.dumps(header).encode(), payload)


def test_a_file_whose_masks_do_not_match_the_support_is_refused():
    keep = 0.5
    pruned = pack(_trained(RP(1e-3, pruned=0.75), keep, steps=0), codec="bits")
    with pytest.raises(ArtifactError, match=r"keeps \d+ values, .* needs \d+ \(of its \d+ masked"):
        unpack(_edit(pruned, lambda h: h["pemn"]["strategy"].update(pruned=0.5)))
    with pytest.raises(ArtifactError, match=r"keeps \d+ values, .* needs \d+ \(of its \d+ masked"):
        unpack(_edit(pruned, lambda h: h["tensors"][0].update(num_kept=1)))

    def support_of_another_file(h):  # full-length masks read as if on a support
        h["pemn"]["strategy"]["pruned"] = 0.75
        for e in h["tensors"]:
            if e["encoding"] == "bits":
                n = 1
                for d in e["shape"]:
                    n *= d
                e["num_kept"] = num_kept(max(1, n - round(0.75 * n)), keep)
    full = pack(_trained(RP(1e-3), keep, steps=0), codec="bits")
    with pytest.raises(ArtifactError, match="packed bits take"):
        unpack(_edit(full, support_of_another_file))
    for bad in (1.0, -0.25, True):
        with pytest.raises(ArtifactError, match="pruned is the fraction"):
            unpack(_edit(pruned, lambda h: h["pemn"]["strategy"].update(pruned=bad)))


def test_labels_tags_and_configs_name_the_support(tmp_path):
    s = RP(1e-3, pruned=0.75)
    assert s.label() == "RP 1e-3 +pruned 75 %" and s.tag() == "rp0.001-pr0.75"
    assert RP(1e-3).tag() == "rp0.001"
    f = tmp_path / "c.toml"
    f.write_text('[mask]\nstrategy = { name = "rp", ratio = 1e-3, pruned = 0.75 }\n')
    assert load_config(f).mask.strategy == s
    assert strategy_from_dict({"name": "mask"}).pruned == 0.0
    with pytest.raises(ValueError, match=r"pruned .* must be in \[0, 1\), got 1"):
        strategy_from_dict({"name": "mask", "pruned": 1})
