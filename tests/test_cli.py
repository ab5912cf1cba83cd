"""The artifact commands end to end on a tiny trained run: pack, size, eval, export."""
import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _pemn(*args, cwd, check=True):
    return subprocess.run([sys.executable, "-m", "pemn.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    _pemn("train", "data.dataset=digits", "model.name=convmixer",
          "model.kwargs={dim=16, depth=1}", "optim.epochs=1", "optim.batch_size=64",
          "mask.strategy=rp", "mask.ratio=0.01", f"out_dir={tmp}", "name=r", cwd=tmp)
    return tmp / "r"


def test_pack_size_and_eval_agree(run_dir):
    out = _pemn("pack", str(run_dir), cwd=run_dir).stdout
    artifact = run_dir / "model.pemn"
    assert artifact.exists() and f"{artifact.stat().st_size:,} bytes" in out
    report = json.loads(_pemn("size", str(artifact), "--json", cwd=run_dir).stdout)
    assert report["bytes"]["total"] == artifact.stat().st_size
    table = _pemn("size", str(run_dir), cwd=run_dir).stdout
    assert "total on disk" in table and "CSR" in table
    from_ckpt = json.loads(_pemn("eval", str(run_dir), "--json", cwd=run_dir).stdout)
    from_file = json.loads(_pemn("eval", str(artifact), "--dataset", "digits", "--json",
                                 cwd=run_dir).stdout)
    assert from_ckpt["accuracy"] == from_file["accuracy"]


def test_export_safetensors(run_dir):
    out = run_dir / "dense.safetensors"
    _pemn("export", str(run_dir), "-o", str(out), cwd=run_dir)
    assert out.stat().st_size > 0


def test_artifact_without_dataset_is_a_clear_error(run_dir):
    _pemn("pack", str(run_dir), "-o", str(run_dir / "m.pemn"), cwd=run_dir)
    r = _pemn("eval", str(run_dir / "m.pemn"), cwd=run_dir, check=False)
    assert r.returncode == 2 and "pass --dataset" in r.stderr


def test_corrupt_artifact_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "bad.pemn"
    bad.write_bytes(b"\x89PEMN\r\n\x1a" + b"\x00" * 40)
    r = _pemn("size", str(bad), cwd=tmp_path, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
