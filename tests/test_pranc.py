"""PRANC (pemn/pranc.py): seed + k coefficients over seeded random basis networks, through
apply_, training, save, load in every form and materialize_, like every family."""
import pytest
import torch
from torch import nn

import pemn
from pemn import pranc
from pemn.artifact import ArtifactError, describe, pack, unpack
from pemn.config import load_config
from pemn.experiments import read_records, run_sweep, summary_table
from pemn.fill import strategy_from_dict
from pemn.models import create_model
from tests.test_competitors import TINY_SWEEP_BASE
from pemn.rundir import RunDir
from pemn.storage import format_size_table, size_report


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


X = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(1))


def _trained(strategy=pranc.PRANC(k=30), seed=5) -> nn.Module:
    model = pemn.apply_(_net(), strategy, seed=seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(X).square().mean().backward()
        optimizer.step()
    return model.eval()


def test_alpha_is_the_one_trained_tensor_of_every_compressed_layer():
    model = pemn.apply_(_net(), pranc.PRANC(k=30), seed=5)
    alpha = model[0].weight_gain
    assert alpha is model[4].weight_gain and alpha.shape == (30,)
    assert alpha.tolist() == [1.0] + [0.0] * 29  # the official init: basis network 0
    bound = 1 / (2 * 3 * 3) ** 0.5  # conv fan_in 18: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.9 * bound < model[0].weight.abs().max() <= bound
    before = alpha.detach().clone()
    optimizer = torch.optim.SGD([alpha], lr=0.1)
    model(X).square().mean().backward()
    optimizer.step()
    assert not torch.equal(alpha, before)
    assert pranc.PRANC(k=4000).label() == "PRANC k=4000"
    assert pranc.PRANC(k=4000).tag() == "pranc4000"


@pytest.mark.parametrize("precision", ["exact", "fp16"])
def test_every_form_gives_the_logits_of_the_saved_model(tmp_path, precision):
    model = _trained()
    want = model(X)
    pemn.save(model, tmp_path / "m.pemn", precision=precision)
    if precision == "fp16":  # alpha and the folded norms in fp16: the loaded model is the file's
        want = pemn.load(tmp_path / "m.pemn", model=_net(), form="dense")(X)
        assert not torch.equal(want, model(X)) and torch.allclose(want, model(X), atol=1e-2)
    for form in pemn.artifact.FORMS:
        loaded = pemn.load(tmp_path / "m.pemn", model=_net(), form=form)
        assert torch.equal(loaded(X), want), form
    resumed = pemn.load(tmp_path / "m.pemn", model=_net())
    assert resumed[0].weight_gain.requires_grad and resumed.pemn_spec.strategy.k == 30
    assert torch.equal(pemn.materialize_(model)(X), model(X))
    assert type(model[0]) is nn.Conv2d and set(model.state_dict()) == set(_net().state_dict())


def test_a_zoo_model_loads_without_a_skeleton(tmp_path):
    model = pemn.apply_(create_model("convmixer_64_d4", dim=8, depth=1, in_channels=2,
                                     num_classes=3), pranc.PRANC(k=20), seed=2).eval()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("_gain")).normal_()
    x = torch.randn(2, 2, 8, 8)
    pemn.save(model, tmp_path / "m.pemn")
    for form in pemn.artifact.FORMS:
        assert torch.equal(pemn.load(tmp_path / "m.pemn", form=form)(x), model(x)), form


def test_the_chunked_basis_equals_the_held_one(monkeypatch):
    monkeypatch.setattr(pranc, "_CHUNK_VALUES", 1000)  # 5 networks of the Linear a chunk
    held = pemn.apply_(_net(), pranc.PRANC(k=30), seed=5)
    chunked = pemn.apply_(_net(), pranc.PRANC(k=30, basis_mib=0), seed=5)
    basis = held._modules["4"]._pemn_fns["weight"].args[0]
    assert basis.held is not None and len(basis.held) == 6
    assert chunked._modules["4"]._pemn_fns["weight"].args[0].held is None
    with torch.no_grad():
        for m in (held, chunked):
            m[0].weight_gain.copy_(torch.linspace(-1, 1, 30))
    for m in (held, chunked):
        m(X).square().mean().backward()
    assert torch.equal(held(X), chunked(X))
    assert torch.equal(held[0].weight_gain.grad, chunked[0].weight_gain.grad)
    assert held[0].weight_gain.grad.count_nonzero() == 30
    other = pemn.apply_(_net(), pranc.PRANC(k=30, basis_mib=0), seed=6)  # another basis
    with torch.no_grad():
        other[0].weight_gain.copy_(torch.linspace(-1, 1, 30))
    assert not torch.equal(other[4].weight, chunked[4].weight)


def test_the_file_holds_alpha_at_its_precision_and_no_weight():
    model = _trained(pranc.PRANC(k=30))
    for precision, width in (("exact", 4), ("fp16", 2)):
        info = describe(pack(model, precision=precision))
        alpha = [o for o in info["others"] if o["name"] == "0.weight_gain"]
        assert [o["num_bytes"] for o in alpha] == [30 * width], precision
        assert [e["num_bytes"] for e in info["encoded"]] == [0, 0]
        assert info["header"].seed == 5
        report = size_report(pack(model, precision=precision))  # alpha: the family's values
        assert report["num_unique"] == 30 and report["bytes"]["weights"] == 30 * width
        assert report["bytes"]["other"] == sum(o["num_bytes"] for o in info["others"]) - 30 * width
        assert "U=30" in format_size_table(report)


def test_a_gain_of_another_familys_weight_is_refused(tmp_path):
    model = pemn.apply_(_net(), pemn.Quantized())
    model[4].register_parameter("weight_gain", nn.Parameter(torch.ones(3)))
    with pytest.raises(ArtifactError, match="holds a gain 4.weight_gain but quantized has none"):
        unpack(pack(model), _net())


def _spoofed(model: nn.Module, **fields) -> bytes:
    """The model packed with its strategy record changed (a file claiming another k)."""
    model.pemn_spec.strategy = pranc.PRANC(**fields)
    return pack(model)


def test_a_hostile_file_is_refused(monkeypatch):
    model = _trained()
    with pytest.raises(ArtifactError, match=r"needs alpha 0.weight_gain of 31 float32 "
                                            r"numbers; the file holds \[30\] torch.float32"):
        unpack(_spoofed(model, k=31), _net())
    assert pranc.MAX_BASIS_VALUES == 2**28  # the 16 kB fmnist file's 156 M fit
    monkeypatch.setattr(pranc, "MAX_BASIS_VALUES", 2**24)  # header ints stop k at 2**16
    with pytest.raises(ArtifactError, match=r"PRANC k=65,536 over 264 weights regenerates "
                                            r"17,301,504 basis values, more than pemn.pranc."
                                            r"MAX_BASIS_VALUES=16,777,216; raise it"):
        unpack(_spoofed(model, k=65536), _net())
    # the basis has its own budget: max_elements bounds what the file allocates, not k * P
    assert unpack(pack(_trained()), _net(), max_elements=1000).pemn_spec.strategy.k == 30
    monkeypatch.setattr(pranc, "MAX_BASIS_VALUES", 7920)  # k * P = 30 * 264 fits
    assert unpack(pack(_trained()), _net()).pemn_spec.strategy.k == 30
    monkeypatch.setattr(pranc, "MAX_BASIS_VALUES", 7919)
    with pytest.raises(ArtifactError, match="more than pemn.pranc.MAX_BASIS_VALUES=7,919"):
        unpack(pack(_trained()), _net())
    # a file asking for a 64 GiB basis is held within the default 1 GiB (the record stays)
    monkeypatch.setattr(pranc, "MAX_BASIS_VALUES", 2**28)
    greedy = unpack(_spoofed(_trained(), k=30, basis_mib=2**16), _net())
    assert greedy.pemn_spec.strategy.basis_mib == 2**16
    model = _trained()
    ints = nn.Parameter(torch.zeros(30, dtype=torch.int64), requires_grad=False)
    model[0].weight_gain = model[4].weight_gain = ints
    with pytest.raises(ArtifactError, match=r"30 float32 numbers; the file holds \[30\] "
                                            r"torch.int64"):
        unpack(pack(model), _net())
    huge = nn.Parameter(torch.full((30,), 1e300, dtype=torch.float64))
    model[0].weight_gain = model[4].weight_gain = huge
    with pytest.raises(ArtifactError, match=r"the file holds \[30\] torch.float64"):
        unpack(pack(model), _net())
    with pytest.raises(ValueError, match="pranc k must be an integer >= 1, got 0"):
        strategy_from_dict({"name": "pranc", "k": 0})


def test_configs_name_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[mask]\nstrategy = { name = "pranc", k = 4000 }\n')
    assert load_config(path).mask.strategy == pranc.PRANC(k=4000)


SWEEP = TINY_SWEEP_BASE + '''[grid]
"mask.strategy" = [{{ name = "pranc", k = 40 }}]
'''


def test_a_sweep_trains_packs_and_prices_it(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(out=tmp_path / "runs"))
    (record,) = read_records(run_sweep(path))
    artifact = RunDir(tmp_path / "runs" / record["run"]).artifact
    assert record["bytes"]["total"] == artifact.stat().st_size
    exact, fp16 = (record["readings"][p]["total"] for p in ("exact", "fp16"))
    assert exact == artifact.stat().st_size and fp16 < exact
    [row] = summary_table(tmp_path / "runs" / "results.jsonl").splitlines()[2:]
    # one line across k, as across widths; U is k; the paper's CR prices a mask: PRANC has none
    assert row.split(" | ")[2:8] == ["PRANC, depth 1", "1", "0.005", "376", "40", ""]


def test_a_half_model_computes_in_float32_and_rounds_once():
    # an fp16 file in a half skeleton, every form (the dense form baked a float32 weight into
    # it); the weight is the float32 one rounded once, as the dense form of a float32 skeleton
    data = pack(_trained(), precision="fp16")
    want = unpack(data, _net(), form="dense")
    for form in pemn.artifact.FORMS:
        half = unpack(data, _net().half(), form=form)
        for i in (0, 4):
            assert half[i].weight.dtype == torch.float16, form
            assert torch.equal(half[i].weight.detach(), want[i].weight.detach().half()), form
        assert half(X.half()).dtype == torch.float16
    # apply_ to a half model, or .half() after apply_: alpha gets its gradient
    for model in (pemn.apply_(_net().half(), pranc.PRANC(k=30), seed=5),
                  pemn.apply_(_net(), pranc.PRANC(k=30), seed=5).half()):
        model(X.half()).float().square().mean().backward()
        assert model[0].weight_gain.grad.count_nonzero() == 30


def test_user_mistakes_are_refused_with_their_reason():
    # past the header's bound a file could not hold the strategy: refused before any training
    for field in ("k", "basis_mib"):
        with pytest.raises(ValueError, match=f"pranc {field} must be at most 65,536"):
            pranc.PRANC(**{field: 2**16 + 1})
    assert len(pack(pemn.apply_(nn.Sequential(nn.Linear(2, 2)),
                                pranc.PRANC(k=2**16, basis_mib=2**16), seed=1)))
    with pytest.raises(ValueError, match=r"0.weight has no weights; PRANC cannot compress it"):
        pemn.apply_(nn.Sequential(nn.Linear(0, 3), nn.Linear(3, 2)), pranc.PRANC(k=3), seed=1)


def test_only_the_train_form_holds_the_basis(monkeypatch):
    bases = []

    class Recorded(pranc._Basis):
        def __init__(self, *args):
            super().__init__(*args)
            bases.append(self)

    monkeypatch.setattr(pranc, "_Basis", Recorded)
    data = pack(_trained())
    for form, held in (("train", True), ("dense", False), ("packed", False)):
        bases.clear()
        unpack(data, _net(), form=form)
        assert [b.held is not None for b in bases] == [held, held], form


def test_a_network_larger_than_a_chunk_is_drawn_in_slices(monkeypatch):
    import tracemalloc

    basis = pranc._Basis(seed=3, stream=1, numel=2**18, bound=0.5, k=2)
    whole = basis.draw(0, 2, "cpu")
    monkeypatch.setattr(pranc, "_CHUNK_VALUES", 2**12)
    tracemalloc.start()
    try:
        sliced = basis.draw(0, 2, "cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(sliced, whole)  # the same bytes: the stream is counter-based
    assert peak < 4 * 2 * 2**18 + 64 * 2**12  # the float32 networks and one slice's words


def test_autocast_leaves_the_sum_over_the_basis_in_float32():
    model = _trained()
    want = model[0].weight.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = model[0].weight
        assert w.dtype == torch.float32 and torch.equal(w.detach(), want)
        model.train()
        model(X).float().square().mean().backward()  # alpha still learns under autocast
    assert model[0].weight_gain.grad.count_nonzero() == 30
