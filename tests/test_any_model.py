"""Compress any model: transformers models built from small configs, a model of our own with a
custom maskable layer, tied parameters, the three load forms, hostile paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pemn
from pemn.artifact import ArtifactError, describe, load, pack, read_header, save, unpack
from pemn.artifact import format as fmt
from pemn.masking import cached_tensors
from pemn.models import create_model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=64, max_position_embeddings=16,
                                  num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def _vit():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, image_size=16, patch_size=4,
                                 num_channels=3, num_labels=5)
    return transformers.ViTForImageClassification(cfg)


BUILDERS = {"gpt2": _gpt2, "bert": _bert, "vit": _vit}


def _inputs(name: str):
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(0, 64, (2, 8), generator=g)}


def _logits(model, name):
    with torch.no_grad():
        return model.eval()(**_inputs(name)).logits


def _train_a_little(model, name, steps: int = 3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(**_inputs(name)).logits.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_transformers_models_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = _train_a_little(pemn.apply_(BUILDERS[name](), pemn.RP(ratio=0.01), seed=2), name)
    save(model, tmp_path / "m.pemn", metadata={"source": name})
    for form in pemn.artifact.FORMS:
        torch.manual_seed(123)  # the skeleton's own init must not matter
        loaded = load(tmp_path / "m.pemn", model=BUILDERS[name](), form=form)
        assert torch.equal(_logits(loaded, name), _logits(model, name)), form
    assert read_header(tmp_path / "m.pemn").metadata == {"source": name}


def test_transformers_fresh_process_bit_identical(tmp_path):
    """Save here, load into a fresh skeleton in another process: the same logits."""
    for name, build in BUILDERS.items():
        model = _train_a_little(pemn.apply_(build(), pemn.Mask(), keep_ratio=0.3), name)
        save(model, tmp_path / f"{name}.pemn")
        torch.save(_logits(model, name), tmp_path / f"{name}.pt")
    script = (
        "import sys, torch, pemn\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import test_any_model as t\n"
        "for name, build in t.BUILDERS.items():\n"
        "    model = pemn.load(f'{sys.argv[1]}/{name}.pemn', model=build())\n"
        "    assert torch.equal(t._logits(model, name), torch.load(f'{sys.argv[1]}/{name}.pt')), name\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_gpt2_every_conv1d_masked_and_the_tie_kept():
    model = _gpt2()
    conv1d = [f"{f}.weight" for f, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    pemn.apply_(model, pemn.Mask())
    masked = [f"{f}.{n}" for f, _, n in pemn.masked_tensors(model)]
    assert masked == conv1d and len(conv1d) == 8
    # lm_head is tied to the (opt-in) token embedding: left alone by default, still tied
    assert model.lm_head.weight is model.transformer.wte.weight
    # Conv1D stores (in, out): its kaiming fan_in is shape[0]
    spec = model.pemn_spec.tensors[0]
    assert spec.fan_in == spec.shape[0] == 32


@pytest.mark.parametrize("name", list(BUILDERS))
def test_values_follow_each_fan_in_and_every_score_gets_a_gradient(name):
    """Signed constants are +-sqrt(2 / fan_in), fan_in worked out here by layer type: GPT-2's
    Conv1D stores (in, out), torch's layers (out, in, *kernel)."""
    model = pemn.apply_(BUILDERS[name](), pemn.Mask())
    model(**_inputs(name)).logits.float().pow(2).mean().backward()
    for path, module, tensor in pemn.masked_tensors(model):
        fixed, scores = (getattr(module, tensor + s) for s in ("_fixed", "_scores"))
        fan_in = fixed.shape[0] if name == "gpt2" else fixed[0].numel()
        assert torch.allclose(fixed.abs(), torch.tensor((2 / fan_in) ** 0.5)), path
        assert bool(scores.grad.isfinite().all() & scores.grad.ne(0).any()), path


def test_gpt2_tied_embedding_masked_once_and_stays_tied(tmp_path):
    model = pemn.apply_(_gpt2(), pemn.RP(ratio=0.1), include="*")
    assert model.pemn_spec.ties == {"lm_head.weight": "transformer.wte.weight"}
    assert model.lm_head.weight_scores is model.transformer.wte.weight_scores
    model = _train_a_little(model, "gpt2")
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    save(model, tmp_path / "m.pemn")
    for form in pemn.artifact.FORMS:
        loaded = load(tmp_path / "m.pemn", model=_gpt2(), form=form)
        assert torch.equal(_logits(loaded, "gpt2"), _logits(model, "gpt2")), form
        assert torch.equal(loaded.lm_head.weight, loaded.transformer.wte.weight)
    dense = load(tmp_path / "m.pemn", model=_gpt2(), form="dense")
    assert dense.lm_head.weight is dense.transformer.wte.weight


@pytest.mark.parametrize("plain_first", [False, True])
def test_a_tie_to_an_unmaskable_tensor_is_refused(plain_first):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            if plain_first:  # the plain holder comes first in module order
                self.other = nn.Module()
            self.head = nn.Linear(4, 4)
            self.other = getattr(self, "other", nn.Module())
            self.other.w = self.head.weight  # a Parameter held by a plain module
    with pytest.raises(ValueError, match="tied to other.w"):
        pemn.apply_(Tied(), pemn.Mask())


# ------------------------------------------------------------------------------------------
# A model of our own with a layer pemn does not know
# ------------------------------------------------------------------------------------------

class Scaled(nn.Module):
    """A custom layer: y = x @ kernel * gain, with its kernel stored (in, out)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(d_in, d_out))
        self.gain = nn.Parameter(torch.ones(d_out))

    def forward(self, x):
        return x @ self.kernel * self.gain


class Net(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.inp = Scaled(8, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.out(self.norm(self.inp(x)).relu())


@pytest.fixture
def custom_layer():
    pemn.register_maskable(Scaled, "kernel", fan_in=lambda shape: shape[0])
    yield
    from pemn import transform
    transform._KINDS.pop(0)


def test_custom_layer_round_trip_and_wrong_skeleton(custom_layer, tmp_path):
    model = pemn.apply_(Net(), pemn.MP(), keep_ratio=0.3, seed=4)
    assert [s.name for s in model.pemn_spec.tensors] == ["inp.kernel", "out.weight"]
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    model.train()(x)  # BN statistics move
    save(model, tmp_path / "net.pemn")
    with torch.no_grad():
        expected = model.eval()(x)
        for form in pemn.artifact.FORMS:
            assert torch.equal(load(tmp_path / "net.pemn", model=Net(), form=form)(x), expected)
    with pytest.raises(ArtifactError, match=r"tensor 'inp.kernel' is \[8, 32\] in the skeleton "
                                            r"but \[8, 16\] in the file"):
        load(tmp_path / "net.pemn", model=Net(hidden=32))
    with pytest.raises(ArtifactError, match="has tensor '0.weight'"):
        load(tmp_path / "net.pemn", model=nn.Sequential(nn.Linear(8, 3)))
    with pytest.raises(ArtifactError, match="already has PEMN applied"):
        load(tmp_path / "net.pemn", model=pemn.apply_(Net(), pemn.MP()))


def test_register_maskable_errors():
    with pytest.raises(ValueError, match="attribute names"):
        pemn.register_maskable(Scaled, "not a name")
    with pytest.raises(TypeError, match="not an nn.Module"):
        pemn.register_maskable(int, "weight")


# ------------------------------------------------------------------------------------------
# Forms and memory
# ------------------------------------------------------------------------------------------

def held_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor storage the model holds (parameters and buffers)."""
    storages = {}
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    for m in model.modules():  # the masked weights' caches (and score snapshots)
        for t in cached_tensors(m):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_forms_bytes_and_logits():
    # copy order: the packed form holds only the short vector (normal values: no sign bits)
    model = pemn.apply_(create_model("resnet20"), pemn.RP(ratio=1e-3, order="copy"),
                        seed=1).eval()
    data = pack(model)
    dense_bytes = held_bytes(create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    sizes = {}
    for form in pemn.artifact.FORMS:
        loaded = unpack(data, form=form)
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), form
        sizes[form] = held_bytes(loaded)
    assert sizes["dense"] <= 1.05 * dense_bytes
    assert sizes["packed"] <= 0.1 * dense_bytes
    assert sizes["train"] > dense_bytes  # scores + frozen values: the form to keep training
    with pytest.raises(ArtifactError, match="unknown form"):
        unpack(data, form="int8")


def test_dense_form_is_a_plain_model():
    model = pemn.apply_(create_model("mlp_paper"), pemn.Mask())
    loaded = unpack(pack(model), form="dense")
    assert not hasattr(loaded, "pemn_spec")
    assert all(type(m).__module__.startswith(("torch", "pemn.models")) for m in loaded.modules())


# ------------------------------------------------------------------------------------------
# What the header records
# ------------------------------------------------------------------------------------------

def test_header_records_dataset_and_metadata(tmp_path):
    model = pemn.apply_(create_model("mlp_paper"), pemn.RP(ratio=0.1))
    dataset = {"name": "fashion_mnist", "input_shape": [1, 28, 28], "mean": [0.286],
               "std": [0.353], "class_names": ["T-shirt/top", "Trouser"]}
    save(model, tmp_path / "m.pemn", dataset=dataset, metadata={"epochs": 4})
    header = read_header(tmp_path / "m.pemn")
    assert (header.dataset, header.metadata) == (dataset, {"epochs": 4})
    assert header.model == {"name": "mlp_paper", "kwargs": {}}
    with pytest.raises(ArtifactError, match="metadata is not JSON"):
        pack(model, metadata={"x": object()})
    from pemn.data import dataset_info
    info = dataset_info("fashion_mnist")
    header = describe(pack(model, dataset=info))["header"]
    assert header.dataset["input_shape"] == [1, 28, 28]
    assert header.dataset["class_names"][1] == "Trouser"


# ------------------------------------------------------------------------------------------
# Hostile paths and sizes
# ------------------------------------------------------------------------------------------

def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo.pemn"
    os.mkfifo(fifo)
    for path, message in [(fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                          (tmp_path, "not a regular file"),
                          (tmp_path / "missing.pemn", "cannot read artifact")]:
        with pytest.raises(ArtifactError, match=message):
            load(path)


def test_max_elements_is_checked_before_allocation(tmp_path):
    model = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01))
    save(model, tmp_path / "m.pemn")
    with pytest.raises(ArtifactError, match="max_elements=1,000"):
        load(tmp_path / "m.pemn", max_elements=1000)
    with pytest.raises(ArtifactError, match="max_elements=20,000"):
        unpack((tmp_path / "m.pemn").read_bytes(), max_elements=20_000)


def _resealed(data: bytes, edit) -> bytes:
    c = fmt.read_container(data)
    header, start = c.header, c.header_bytes
    payload = bytearray(data[start:])
    edit(header, payload)
    return fmt.seal(header, bytes(payload))


def _offset(header: dict, test) -> int:
    """The payload offset of the first entry of the tensor table that passes ``test``."""
    return next(e["offset"] for e in header["tensors"] if test(e))


def test_resealed_non_finite_values_are_refused():
    model = pemn.apply_(create_model("convmixer_64_d4"), pemn.RP(ratio=0.01))
    data = pack(model)

    def nan_running_var(header, payload):
        off = _offset(header, lambda e: e["name"].endswith("running_var"))
        payload[off:off + 4] = torch.tensor([float("nan")]).numpy().tobytes()

    def huge_prototype(header, payload):
        off = _offset(header, lambda e: e["encoding"] == "prototype")
        payload[off:off + 4] = torch.tensor([float("inf")]).numpy().tobytes()

    with pytest.raises(ArtifactError, match="NaN or infinite"):
        unpack(_resealed(data, nan_running_var))
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        unpack(_resealed(data, huge_prototype))


def test_export_a_model_outside_the_zoo(custom_layer, tmp_path):
    from safetensors.torch import load_file

    model = pemn.apply_(Net(), pemn.RP(ratio=0.1), seed=4).eval()
    save(model, tmp_path / "net.pemn")
    pemn.artifact.export(tmp_path / "net.pemn", tmp_path / "net.safetensors", model=Net())
    plain = Net().eval()
    plain.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


def test_export_keeps_ties_once(tmp_path):
    import safetensors

    model = pemn.apply_(_gpt2(), pemn.RP(ratio=0.1), include="*").eval()
    pemn.artifact.export(model, tmp_path / "gpt2.safetensors")
    with safetensors.safe_open(str(tmp_path / "gpt2.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert json.loads(f.metadata()["pemn.ties"]) == {"lm_head.weight":
                                                         "transformer.wte.weight"}
