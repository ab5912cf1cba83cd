"""The competitor families (pemn/competitors.py): sparse from scratch with ERK, quantization-aware
training, binary weights; their configs, what their effective weights look like after training,
and their real bytes (pemn/artifact/weights.py) decoding back to the same logits."""
import copy
import math
import struct

import pytest
import torch
import torch.nn.functional as F

import pemn
from pemn.artifact import ArtifactError, describe, export, pack, unpack
from pemn.artifact import format as fmt
from pemn.artifact.weights import binarize, debinarize, dequantize, quantize
from pemn.competitors import Binary, Quantized, Sparse, erk_counts
from pemn.config import RunConfig, from_dict
from pemn.experiments import plot_results, read_records, run_sweep, summary_table
from pemn.fill import strategy_from_dict, strategy_to_dict
from pemn.masking import num_kept
from pemn.models import create_model
from pemn.run import build_model
from pemn.rundir import RunDir
from pemn.storage import format_size_table, size_report, storage_readings

FAMILIES = [Quantized(bits=8), Quantized(bits=4), Binary(), Sparse(),
            Sparse(density=0.2, allocation="uniform"),
            Sparse(density=0.05, allocation="global_magnitude", dense_ends=False),
            Quantized(bits=4, dense_ends=True), Binary(dense_ends=True)]


def tiny(strategy, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    return pemn.apply_(model, strategy, **({"seed": seed} if isinstance(strategy, Sparse)
                                           else {}))


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
    layer = pemn.apply_(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), Binary())
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
    pemn.apply_(model, Sparse(density=0.05, allocation="global_magnitude", dense_ends=False))
    kept = torch.cat([getattr(m, t + "_orig").detach().abs().reshape(-1)[
        getattr(m, t + "_mask").reshape(-1).bool()] for _, m, t in layers(model)])
    assert len(kept) == num_kept(len(init), 0.05)
    assert kept.min() >= init.sort(descending=True).values[len(kept) - 1]


def test_pruning_presets_build_the_paper_baselines_bit_for_bit():
    """RandomPrune keeps, per layer in module order, the first ``num_kept`` of one seeded
    permutation (the paper's "Random"); MagnitudePrune each layer's largest |w|, ties to the
    earlier position ("Minimum"); both on every layer, and they train only the kept weights."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for make, cr in ((pemn.RandomPrune, 0.9), (pemn.MagnitudePrune, 0.94)):
        torch.manual_seed(0)
        model = pemn.apply_(create_model("convmixer_64_d4", in_channels=1), make(cr), seed=7)
        gen, keep = torch.Generator().manual_seed(7), 31 / 32 - cr
        for fqn, module, name in layers(model):
            w, mask = getattr(module, name + "_orig").detach(), getattr(module, name + "_mask")
            want = torch.zeros(w.numel())
            if make is pemn.RandomPrune:
                want[torch.randperm(w.numel(), generator=gen)[:num_kept(w.numel(), keep)]] = 1
            else:
                order = w.abs().flatten().sort(descending=True, stable=True).indices
                want[order[:num_kept(w.numel(), keep)]] = 1
            assert torch.equal(mask.flatten(), want), fqn
        assert len(list(layers(model))) == len(model.pemn_spec.tensors)  # stem and head too
        model.eval()
        assert torch.equal(unpack(pack(model))(x), model(x))


def test_a_family_on_selected_layers_loads_into_the_same_layers():
    torch.manual_seed(0)
    model = pemn.apply_(create_model("convmixer_64_d4", in_channels=1), Sparse(0.2),
                        exclude="head", seed=3).eval()
    loaded = unpack(pack(model))
    assert loaded.pemn_spec.tensors == model.pemn_spec.tensors
    assert loaded.pemn_spec.strategy == Sparse(0.2)
    assert torch.equal(logits(loaded), logits(model))


def test_refusals():
    with pytest.raises(ValueError, match="Quantized does not use keep_ratio"):
        pemn.apply_(torch.nn.Linear(2, 2), pemn.Quantized(), keep_ratio=0.5)
    with pytest.raises(ValueError, match="Binary does not use seed"):
        pemn.apply_(torch.nn.Linear(2, 2), pemn.Binary(), seed=1)
    with pytest.raises(ValueError, match="no layer left"):
        pemn.apply_(torch.nn.Sequential(torch.nn.Linear(2, 2)), Sparse())
    with pytest.raises(ValueError, match=r"the model has 0 maskable layer\(s\)$"):
        pemn.apply_(torch.nn.Sequential(torch.nn.ReLU()), pemn.Quantized())  # no dense_ends
    model = tiny(Binary())
    with pytest.raises(ValueError, match="already applied"):
        pemn.apply_(model, Binary())
    tied = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        pemn.apply_(tied, Quantized())


def test_numerics_are_canonical():
    w = torch.tensor([[0.3, -0.6, 0.0], [0.0, 0.0, 0.0], [1e-9, -1e-9, 2e-9]])
    q, scale = quantize(w, 4)
    assert q[0].abs().max() == 7 and scale[1] == 0 and not q[1].any()
    signs, alpha = binarize(w)
    assert alpha[1] == 0 and signs[1].all() and signs[2].all()  # alpha 0: all signs +1
    assert torch.equal(debinarize(signs, alpha)[0], torch.tensor([0.3, -0.3, 0.3]).half().float())


# ------------------------------------------------------------------------------------------
# Real bytes: the artifact (format 3) decodes back to the same eval logits
# ------------------------------------------------------------------------------------------

X = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def trained(strategy) -> torch.nn.Module:
    """One training step, then BN statistics that are not the identity."""
    model = tiny(strategy)
    train_step(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module", params=FAMILIES, ids=repr)
def family(request):
    model = trained(request.param)
    return request.param, model, pack(model)


def test_round_trip_is_bit_identical_in_train_and_dense_forms(family, tmp_path):
    strategy, model, data = family
    assert fmt.read_container(data).version == fmt.FORMAT_VERSION
    for form in ("train", "dense"):
        assert torch.equal(logits(unpack(data, form=form)), logits(model)), form
    skeleton = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    pemn.save(model, tmp_path / "m.pemn")
    loaded = pemn.load(tmp_path / "m.pemn", model=skeleton)
    assert loaded is skeleton and torch.equal(logits(loaded), logits(model))
    assert loaded.pemn_spec.strategy == strategy  # the train form keeps training
    assert pack(loaded) == data  # and stores the very same bytes again
    train_step(loaded)


def test_export_and_deepcopy_after_training(family, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, model, _ = family
    train_step(model)  # a forward with gradients left the effective weights on the modules
    copy.deepcopy(model)
    model.eval()
    export(model, tmp_path / "m.safetensors")
    plain = create_model("convmixer_64_d4", dim=16, in_channels=1, num_classes=10)
    plain.load_state_dict(safetensors.load_file(tmp_path / "m.safetensors"))
    assert torch.equal(logits(plain), logits(model))


def test_fp16_folds_norms_and_is_stable(family):
    strategy, model, data = family
    small = pack(model, precision="fp16")
    assert len(small) < len(data) and fmt.read_container(small).header["folded_norms"]
    loaded = unpack(small)
    assert torch.allclose(logits(loaded), logits(model), atol=1e-2)
    assert pack(loaded, precision="fp16") == small  # the fp16 model is what the file holds


@pytest.mark.parametrize("arch, strategy, shape", [
    ("vit_tiny", Sparse(density=0.05), (2, 3, 32, 32)),
    ("resnet20", Binary(), (2, 3, 32, 32)),
    ("mlp", Quantized(bits=4), (2, 1, 28, 28)),
], ids=["vit_tiny", "resnet20", "mlp"])
def test_round_trip_on_other_architectures(arch, strategy, shape):
    torch.manual_seed(0)
    model = pemn.apply_(create_model(arch), strategy).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    data = pack(model)
    with torch.no_grad():
        assert torch.equal(unpack(data)(x), model(x))


def test_packed_form_holds_the_file_bytes_and_gives_the_same_logits(family):
    data = family[2]
    packed = unpack(data, form="packed")
    assert torch.equal(logits(packed), logits(unpack(data, form="dense")))
    held = sum(t.numel() * t.element_size() for t in packed.state_dict().values())
    assert held < len(data)  # the weights as their file bytes, nothing decoded is kept


def _weights(data: bytes) -> list[dict]:
    return describe(data)["encoded"]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_bytes_are_codes_plus_fp16_scales(bits):
    model = trained(Quantized(bits=bits))
    entries = _weights(pack(model))
    assert [e["name"] for e in entries] == [t.name for t in model.pemn_spec.tensors]
    for e in entries:
        codes = e["numel"] if bits == 8 else -(-e["numel"] // 2)
        assert (e["encoding"], e["num_bytes"]) == (f"int{bits}", codes + 2 * e["shape"][0])


def test_binary_bytes_are_sign_bits_plus_fp16_alpha():
    for e in _weights(pack(trained(Binary()))):
        assert (e["encoding"], e["num_bytes"]) == ("sign", -(-e["numel"] // 8) + 2 * e["shape"][0])


def test_sparse_readings_are_real_files():
    model = trained(Sparse(density=0.1))
    readings = storage_readings(model)
    mask_file = pack(model)
    csr_file = pack(model, sparse_format="csr")
    bitmap_file = pack(model, codec="bits")
    assert readings == {"total": len(mask_file), "mask_fp32": len(mask_file),
                        "bitmap_fp32": len(bitmap_file), "csr": len(csr_file),
                        "values_only": readings["values_only"]}
    for data in (csr_file, bitmap_file):
        assert torch.equal(logits(unpack(data)), logits(model))
    kept = sum(e["num_kept"] for e in _weights(mask_file))
    assert kept == pemn.stats(model).num_unique
    mask_bytes = sum(e["num_bytes"] - 4 * e["num_kept"] for e in _weights(mask_file))
    assert readings["values_only"] == len(mask_file) - mask_bytes > 0
    assert {e["encoding"] for e in _weights(bitmap_file)} == {"bits+f32"}
    # dim 16, 1x1 convs: 16 columns fit one byte per index, row pointers too (k < 256)
    pointwise = [e for e in _weights(csr_file) if e["shape"][2:] == (1, 1)]
    assert pointwise and all(e["num_bytes"] == 4 * e["num_kept"] + e["num_kept"] + 17
                             for e in pointwise)
    assert storage_readings(trained(Quantized(bits=4))).keys() == {"total"}


def _kinds(data: bytes) -> set[str]:
    return {e.kind for e in fmt.read_container(data).table.tensors}


def test_one_tensor_table_for_masks_and_weights(family):
    model = pemn.apply_(create_model("convmixer_64_d4", dim=16, in_channels=1), pemn.RP())
    assert _kinds(pack(model)) == {"mask", "prototype", "raw"} and _kinds(family[2]) == {
        "weight", "raw"}


def test_size_report_prices_the_weights(family):
    _, model, data = family
    report = size_report(data)
    b = report["bytes"]
    assert b["weights"] == sum(e.length for e in fmt.read_container(data).table.encoded) > 0
    assert sum(v for k, v in b.items() if k != "total") == b["total"] == len(data)
    assert report["num_masked"] == sum(t.numel for t in model.pemn_spec.tensors)
    assert "trained weights" in format_size_table(report)


# ------------------------------------------------------------------------------------------
# Hostile bytes: every bad encoding is one ArtifactError
# ------------------------------------------------------------------------------------------

def _edited(data: bytes, edit_payload=None, edit_header=None) -> bytes:
    """Change the payload (the weights first) and/or header, then re-seal (valid checksums)."""
    c = fmt.read_container(data)
    header, payload = c.header, bytearray(c.payload)
    if edit_payload:
        edit_payload(payload, header["tensors"])
    if edit_header:
        edit_header(header)
    return fmt.seal(header, bytes(payload))


def _set_code(value: int):
    def edit(w, entries):  # first entry: rows fp16 scales, then the codes
        w[entries[0]["offset"] + 2 * entries[0]["shape"][0]] = value
    return edit


def _set_scale(value: float):
    def edit(w, entries):
        w[0:2] = torch.tensor([value], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    return edit


@pytest.mark.parametrize("strategy, edit, match", [
    (Quantized(bits=8), _set_code(0x80), "outside"),  # -128
    (Quantized(bits=4), _set_code(0x88), "outside"),  # nibble -8
    (Quantized(bits=8), _set_scale(float("nan")), "scale"),
    (Quantized(bits=8), _set_scale(-1.0), "scale"),
    (Quantized(bits=8), _set_scale(0.0), "not what the quantizer writes"),
    (Binary(), _set_scale(float("inf")), "scale"),
    (Binary(), _set_scale(0.0), "alpha 0"),
])
def test_bad_codes_and_scales_are_refused(strategy, edit, match):
    data = pack(trained(strategy))
    with pytest.raises(ArtifactError, match=match):
        unpack(_edited(data, edit))


def test_bad_sparse_payloads_are_refused():
    model = trained(Sparse(density=0.2))
    csr = pack(model, sparse_format="csr")

    def pointers(w, entries):
        w[entries[0]["length"] - 1] ^= 0x7F  # the last row pointer
    with pytest.raises(ArtifactError, match="row pointers"):
        unpack(_edited(csr, pointers))

    def columns(w, entries):
        k = entries[0]["num_kept"]
        w[4 * k] = 200  # the first column index, past the 16 columns
    with pytest.raises(ArtifactError, match="column"):
        unpack(_edited(csr, columns))

    def nan_value(w, entries):
        end = entries[0]["length"]
        w[end - 4:end] = b"\x00\x00\xc0\x7f"  # the last kept value of the first
    with pytest.raises(ArtifactError, match="NaN"):
        unpack(_edited(pack(model), nan_value))


@pytest.mark.parametrize("edit, match", [
    # the tensor table: the encoded weights first, then the raw tensors
    (lambda h: h["tensors"][0].update(encoding="sign"), "does not use"),
    (lambda h: h["tensors"][0].update(encoding="int9"), "unknown encoding 'int9'"),
    (lambda h: h["tensors"][0].update(length=h["tensors"][0]["length"] + 1), "must start at"),
    (lambda h: h["tensors"][0].update(num_kept=1), "stores them all"),
    (lambda h: h["tensors"].pop(0), "must start at byte 0"),
    (lambda h: h["tensors"][0].update(encoding="bits", dtype="|b1", fan_in=0),
     "holds raw, weight entries"),
    (lambda h: h["pemn"].update(strategy={"name": "rp", "ratio": 0.01}), "holds mask, proto"),
    (lambda h: h["pemn"].update(strategy={"name": "quantized", "bits": 5}), "8 or 4"),
    (lambda h: h.update(format_version=3), "format_version must be 4"),
    (lambda h: h["tensors"][0].update(shape=[0, 4]), "output channel"),
])
def test_hostile_headers_are_refused(edit, match):
    data = pack(trained(Quantized(bits=4)))
    with pytest.raises(ArtifactError, match=match):
        unpack(_edited(data, edit_header=edit))


def test_only_the_current_version_is_read():
    data = pack(trained(Binary()))
    with pytest.raises(ArtifactError, match="unsupported artifact format version 3"):
        unpack(data[:8] + struct.pack("<I", 3) + data[12:])  # the header digest still holds


# ------------------------------------------------------------------------------------------
# A sweep packs every family and records its storage readings
# ------------------------------------------------------------------------------------------

TINY_SWEEP_BASE = '''
[base]
out_dir = "{out}"
"data.dataset" = "digits"
"model.name" = "convmixer_64_d4"
"model.kwargs" = {{ dim = 8, depth = 1 }}
"optim.epochs" = 1
"optim.batch_size" = 64
"optim.eval_batch_size" = 500
"optim.lr" = 0.005
'''
SWEEP = TINY_SWEEP_BASE + '''[grid]
"mask.strategy" = [{{ name = "sparse", density = 0.2 }}, {{ name = "quantized", bits = 4 }},
                   {{ name = "binary" }}]
'''


def test_sweep_packs_competitors_and_records_readings(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(out=tmp_path / "runs"))
    records = read_records(run_sweep(path))
    assert [r["config"]["mask"]["strategy"]["name"] for r in records] == ["sparse", "quantized",
                                                                          "binary"]
    for r in records:
        artifact = RunDir(tmp_path / "runs" / r["run"]).artifact
        assert r["bytes_source"] == "artifact"
        assert r["bytes"]["total"] == artifact.stat().st_size == r["readings"]["exact"]["total"]
        assert r["readings"]["norm8"]["total"] < r["readings"]["fp16"]["total"] \
            < r["readings"]["exact"]["total"]
    sparse = records[0]["readings"]
    for precision in ("exact", "fp16", "norm8"):
        keys = sparse[precision]
        assert keys.keys() == {"total", "mask_fp32", "bitmap_fp32", "csr", "values_only"}
        assert keys["values_only"] < keys["mask_fp32"]
    results = tmp_path / "runs" / "results.jsonl"
    assert any(p.name.startswith("frontier_bytes") for p in plot_results(results, tmp_path))
    table = summary_table(results)
    assert all(label in table for label in ("Sparse ERK @ 20 %", "Int4 QAT", "Binary (BWN)"))
    cr = {row.split(" | ")[2]: row.split(" | ")[7] for row in table.splitlines()[2:]}
    assert cr["Int4 QAT, depth 1"] == ""  # the paper's CR prices a mask: int4 has none
    assert float(cr["Sparse ERK @ 20 %, depth 1"]) == pytest.approx(76.799)
