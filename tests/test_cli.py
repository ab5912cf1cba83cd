"""The artifact commands end to end on a tiny trained run (pack, size, eval, export), and one
clear line for every broken input."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pemn
from pemn.rundir import RunDir
from pemn.trained import load_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _pemn(*args, cwd, check=True):
    return subprocess.run([sys.executable, "-m", "pemn.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, check=check)


def _one_line_error(r, match):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert match in r.stderr, r.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    _pemn("train", "data.dataset=digits", "model.name=convmixer_128_d4",
          "model.kwargs={dim=16, depth=1}", "optim.epochs=1", "optim.batch_size=64",
          "mask.strategy={name=\"rp\", ratio=0.01}", f"out_dir={tmp}", "name=r", cwd=tmp)
    return RunDir(tmp / "r")


def test_pack_size_and_eval_agree(run_dir):
    out = _pemn("pack", str(run_dir.path), cwd=run_dir.path).stdout
    artifact = run_dir.artifact
    assert artifact.exists() and f"{artifact.stat().st_size:,} bytes" in out
    report = json.loads(_pemn("size", str(artifact), "--json", cwd=run_dir.path).stdout)
    assert report["bytes"]["total"] == artifact.stat().st_size
    table = _pemn("size", str(run_dir.path), cwd=run_dir.path).stdout
    assert "total on disk" in table and "CSR" in table
    from_ckpt = json.loads(_pemn("eval", str(run_dir.path), "--json", cwd=run_dir.path).stdout)
    # the artifact records its dataset: no --dataset needed
    from_file = json.loads(_pemn("eval", str(artifact), "--json", cwd=run_dir.path).stdout)
    assert from_file["dataset"] == "digits"
    assert from_ckpt["accuracy"] == from_file["accuracy"]


def test_compact_signed_pack_then_size_and_eval_in_every_form(run_dir, tmp_path):
    pytest.importorskip("cryptography")
    from pemn.artifact import signing

    public = signing.generate_key(tmp_path / "author.key")
    out = tmp_path / "small.pemn"
    _pemn("pack", str(run_dir.path), "-o", str(out), "--precision", "fp16", "--sign-with",
          str(tmp_path / "author.key"), cwd=tmp_path)
    table = _pemn("size", str(out), cwd=tmp_path).stdout
    assert "norm layers (folded affine)" in table and f"signed by ed25519 key {public}" in table
    exact = json.loads(_pemn("eval", str(run_dir.path), "--json", cwd=tmp_path).stdout)
    for form in ("train", "dense", "packed"):
        result = json.loads(_pemn("eval", str(out), "--form", form, "--json", cwd=tmp_path).stdout)
        assert abs(result["accuracy"] - exact["accuracy"]) <= 1.0, form  # 16-bit rounding
    assert pemn.load(out, verify_key=public) is not None


def test_norm8_pack_prices_norms_at_8_bits_and_evaluates(run_dir, tmp_path):
    from pemn.cli import build_parser

    out = tmp_path / "norm8.pemn"
    _pemn("pack", str(run_dir.path), "-o", str(out), "--precision", "norm8", cwd=tmp_path)
    assert "norm layers (folded affine, int8)" in _pemn("size", str(out), cwd=tmp_path).stdout
    exact = json.loads(_pemn("eval", str(run_dir.path), "--json", cwd=tmp_path).stdout)
    result = json.loads(_pemn("eval", str(out), "--form", "packed", "--json", cwd=tmp_path).stdout)
    assert abs(result["accuracy"] - exact["accuracy"]) <= 1.0  # int8 and 16-bit rounding
    plot = ["plot", "r.jsonl", "-o", str(tmp_path), "--precision"]
    assert build_parser().parse_args([*plot, "norm8"]).precision == "norm8"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*plot, "int4"])


def test_checkpoint_stores_model_args_and_needs_no_dataset(run_dir, tmp_path):
    state = torch.load(run_dir.checkpoint, weights_only=True)
    assert state["model_args"] == {"name": "convmixer_128_d4", "kwargs": {
        "in_channels": 1, "num_classes": 10, "dim": 16, "depth": 1}}
    # the model is rebuilt from model_args alone, even if the dataset is unknown here
    state["config"]["data"]["dataset"] = "no_such_dataset"
    torch.save(state, tmp_path / "c.pt")
    model = load_model(tmp_path / "c.pt")
    reference = load_model(run_dir.path)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("form", ["dense", "packed"])
def test_load_model_forms_give_the_same_logits(run_dir, form):
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(run_dir.path, form=form)(x), load_model(run_dir.path)(x))


def test_export_safetensors_holds_the_dense_weights(run_dir):
    from safetensors.torch import load_file

    out = run_dir.path / "dense.safetensors"
    _pemn("export", str(run_dir.path), "-o", str(out), cwd=run_dir.path)
    exported = load_file(str(out))
    dense = load_model(run_dir.path, form="dense").state_dict()
    assert exported.keys() == dense.keys()
    assert all(torch.equal(exported[k], dense[k]) for k in dense)


def test_artifact_without_dataset_needs_dataset_flag(run_dir, tmp_path):
    path = tmp_path / "m.pemn"
    pemn.save(load_model(run_dir.path), path)  # written without dataset=
    _one_line_error(_pemn("eval", str(path), cwd=tmp_path, check=False), "pass --dataset")
    r = _pemn("eval", str(path), "--dataset", "digits", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["num_images"] == 359


def test_corrupt_artifact_is_one_line(tmp_path):
    bad = tmp_path / "bad.pemn"
    bad.write_bytes(b"\x89PEMN\r\n\x1a" + b"\x00" * 40)
    for command in ("size", "eval", "export"):
        args = ["-o", str(tmp_path / "x")] if command == "export" else []
        r = _pemn(command, str(bad), *args, cwd=tmp_path, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _edited_checkpoint(run_dir, tmp_path, edit):
    state = torch.load(run_dir.checkpoint, weights_only=True)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("missing", ["config", "model_args", "model"])
def test_checkpoint_without_a_key_names_it(run_dir, tmp_path, missing):
    path = _edited_checkpoint(run_dir, tmp_path, lambda s: s.pop(missing))
    _one_line_error(_pemn("eval", str(path), cwd=tmp_path, check=False), f"'{missing}'")


def test_checkpoint_asking_for_too_much_memory_is_one_line(run_dir, tmp_path):
    path = _edited_checkpoint(run_dir, tmp_path,
                              lambda s: s["model_args"]["kwargs"].update(kernel_size=10**6))
    for command in ("eval", "pack", "size"):
        _one_line_error(_pemn(command, str(path), cwd=tmp_path, check=False),
                        "not enough memory to build model convmixer_128_d4")


def test_config_asking_for_too_much_memory_is_one_line(tmp_path):
    for command in ("info", "train"):
        r = _pemn(command, "data.dataset=digits", "model.kwargs={kernel_size=1000000}",
                  f"out_dir={tmp_path}", cwd=tmp_path, check=False)
        _one_line_error(r, "not enough memory to build model convmixer_128_d4")


def test_checkpoint_of_another_model_is_one_line(run_dir, tmp_path):
    path = _edited_checkpoint(run_dir, tmp_path,
                              lambda s: s["model_args"]["kwargs"].update(dim=8))
    _one_line_error(_pemn("eval", str(path), cwd=tmp_path, check=False), "does not fit")


def test_foreign_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], path)
    _one_line_error(_pemn("eval", str(path), cwd=tmp_path, check=False), "not a pemn checkpoint")


def test_setup_finds_unmet_requirements():
    path = Path(__file__).resolve().parents[1] / "scripts" / "deps_ok.py"
    spec = importlib.util.spec_from_file_location("deps_ok", path)
    deps_ok = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deps_ok)
    assert deps_ok.missing(["pytest>=1", "pytest<1; python_version < '3'"]) == []
    assert deps_ok.missing(["pytest<1"])[0].startswith("pytest<1 (have ")
    assert deps_ok.missing(["no-such-distribution-for-pemn"]) == ["no-such-distribution-for-pemn"]


def test_closed_stdout_is_not_an_error(tmp_path):
    """`pemn info ... | head -1`: the reader leaves early; pemn exits 0 without a message."""
    proc = subprocess.Popen([sys.executable, "-m", "pemn.cli", "info", "data.dataset=digits",
                             "model.kwargs={dim=16, depth=1}"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads: the first print meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert err == "", err


def test_issue_examples_fit_the_data(tmp_path):
    """The MLP and the ViT take digits' 8x8 single-channel images from the data (issue 22)."""
    for name in ("mlp", "vit_tiny"):
        r = _pemn("info", "data.dataset=digits", f"model.name={name}", "--json", cwd=tmp_path)
        assert json.loads(r.stdout)["model"] == name
    r = _pemn("info", "data.dataset=cifar10", "model.kwargs.in_channels=1", cwd=tmp_path,
              check=False)
    _one_line_error(r, "model.kwargs.in_channels = 1, but cifar10 gives 3")


def test_any_failure_is_one_line_and_v_shows_the_traceback(monkeypatch, capsys):
    from pemn import cli, run

    def fail(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nC++ frames ...")

    monkeypatch.setattr(run, "run", fail)
    assert cli.main(["train", "data.dataset=digits"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["pemn: error: pemn train failed with RuntimeError: mat1 and mat2 "
                                "shapes cannot be multiplied (pemn -v train ... shows the "
                                "traceback)"]
    for argv in (["-v", "train", "data.dataset=digits"], ["train", "-v", "data.dataset=digits"]):
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            cli.main(argv)


def test_out_of_memory_keeps_its_message(monkeypatch, capsys):
    from pemn import cli, run

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 81920000000 bytes")

    monkeypatch.setattr(run, "run", fail)
    assert cli.main(["train", "data.dataset=digits"]) == 2
    assert capsys.readouterr().err == ("pemn: error: not enough memory to run `pemn train` "
                                       "(asked for 81.9 GB at once)\n")


def test_save_and_size_say_where_the_bytes_go(tmp_path, caplog):
    def model():  # the embedding is opt-in: left in floats unless include names it
        return torch.nn.Sequential(torch.nn.Embedding(2000, 32), torch.nn.Linear(32, 8))

    path = tmp_path / "e.pemn"
    with caplog.at_level("WARNING", logger="pemn.artifact.pack"):
        pemn.save(pemn.apply_(model(), pemn.RP(ratio=1e-2)), path)
    hint = (r"256,000 of its [\d,]+ bytes are unmasked layer weights stored as floats, largest "
            r"0.weight \(2000x32, 256,000 bytes\); apply_\(\.\.\., include=\"\*\"\) masks them")
    assert re.search(f"e.pemn: {hint}", caplog.text), caplog.text
    assert re.search(hint, _pemn("size", str(path), cwd=tmp_path).stdout)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pemn.artifact.pack"):
        pemn.save(pemn.apply_(model(), pemn.RP(ratio=1e-2), include="*"), tmp_path / "all.pemn")
    assert "unmasked" not in caplog.text
    assert (tmp_path / "all.pemn").stat().st_size < path.stat().st_size / 10
