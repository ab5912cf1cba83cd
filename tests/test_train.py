"""Training loop, config handling, resume after kill -9, and a 2-process DDP run."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pemn.train
from pemn.config import ConfigError, OptimConfig, load_config
from pemn.distributed import World
from pemn.rundir import RunDir
from pemn.train import _autocast, evaluate, lr_at

TINY = ["data.dataset=digits", "model.name=convmixer_128_d4", "model.kwargs={dim=16, depth=1}",
        "optim.batch_size=64", "optim.eval_batch_size=500"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _pemn(*args, cwd, check=True):
    return subprocess.run([sys.executable, "-m", "pemn.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, check=check)


def test_triangular_schedule_knots():
    cfg = OptimConfig(epochs=100, lr=0.05, schedule="triangular")
    total = 100 * 10
    assert lr_at(0, total, cfg) == 0
    assert lr_at(400, total, cfg) == pytest.approx(0.05)
    assert lr_at(800, total, cfg) == pytest.approx(0.0025)
    assert lr_at(1000, total, cfg) == 0


def test_cosine_schedule_with_warmup():
    cfg = OptimConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1)
    assert lr_at(5, 100, cfg) == pytest.approx(0.05)
    assert lr_at(10, 100, cfg) == pytest.approx(0.1)
    assert lr_at(100, 100, cfg) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("t", [0.3, 1.75, 4.2, 7.5, 9.9])  # epochs, between the knots
def test_cosine_schedule_between_the_knots(t):
    cfg = OptimConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1)
    expected = 0.1 * t if t < 1 else 0.05 * (1 + math.cos(math.pi * (t - 1) / 9))
    assert lr_at(round(t * 100), 1000, cfg) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t, expected", [
    (1.0, 0.05 / 4),  # rising: 0 at epoch 0 -> lr at 40 % (epoch 4)
    (6.0, 0.05 - 0.5 * (0.05 - 0.0025)),  # falling: lr -> lr / 20 at 80 % (epoch 8)
    (9.5, 0.0025 / 4),  # lr / 20 -> 0 at the end
])
def test_triangular_schedule_between_the_knots(t, expected):
    cfg = OptimConfig(epochs=10, lr=0.05, schedule="triangular")
    assert lr_at(round(t * 10), 100, cfg) == pytest.approx(expected, rel=1e-12)


def test_cpu_eval_keeps_activations_small(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 1000), torch.nn.ReLU(),
                                torch.nn.Linear(1000, 3))  # 4000 bytes of activation per image
    batches = []
    model.register_forward_pre_hook(lambda _m, inputs: batches.append(len(inputs[0])))
    x, y = torch.randn(600, 4), torch.randint(0, 3, (600,))
    whole = evaluate(model, [(x, y)])
    assert batches[1:] == [600]  # after a one-image probe: under the default budget
    monkeypatch.setattr(pemn.train, "CPU_ACTIVATION_BYTES", 4000 * 128)
    batches.clear()
    assert evaluate(model, [(x, y)]) == whole
    assert batches[1:] == [128] * 4 + [88]


def test_config_overrides_and_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[optim]\nlr = 0.1\nepochs = 3\n[model]\nname = "resnet20"\n')
    cfg = load_config(f, ["optim.lr=0.2", "mask.strategy=mp", "model.kwargs.option=B"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.mask.strategy.name) == (0.2, 3, "mp")
    assert cfg.model.kwargs == {"option": "B"}
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # int accepted for float


@pytest.mark.parametrize("override, match", [
    (["optim.lrr=0.1"], "did you mean optim.lr"),
    (["optim.epochs=two"], "optim.epochs must be int"),
    (["mask.strategy=rnd"], "unknown strategy 'rnd'"),
    (["mask.keep_ratio=0"], "kept fraction"),
    (["nokey"], "section.key=value"),
    (["optim=3"], "must be a table"),
])
def test_bad_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)


def test_cli_errors_are_one_line(tmp_path):
    for args, match in [(["train", "optim.lrr=1"], "did you mean"),
                        (["train", "data.dataset=imagenet"], "unknown dataset"),
                        (["train", "data.dataset=digits", "model.name=resnet33"],  # no download
                         "Did you mean 'resnet32'"),
                        (["train", "data.dataset=cifar10", "data.root=missing",  # name first
                          "model.name=resnet33"], "Did you mean 'resnet32'"),
                        (["train", "optim.device=foo"], "optim.device must be"),
                        (["train", "optim.device=cuda:99"], "CUDA device(s)"),
                        (["eval", str(tmp_path / "none")], "no run directory")]:
        r = _pemn(*args, cwd=tmp_path, check=False)
        assert r.returncode == 2, r.stderr
        assert match in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_info_prints_counts(tmp_path):
    r = _pemn("info", "model.name=convmixer_256_d6", "data.dataset=cifar10",
              "mask.strategy.ratio=0.1",
              "--json", cwd=tmp_path)
    info = json.loads(r.stdout)
    assert info["num_masked"] == 437_248 and info["num_unique"] == 6_554


def _metrics(path):
    return RunDir(path).read_metrics()


def _strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_s")} for r in rows]


def test_resume_after_kill_gives_same_metrics(tmp_path):
    args = [*TINY, "optim.epochs=6", f"out_dir={tmp_path}", "--no-progress"]
    _pemn("train", *args, "name=full", cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pemn.cli", "train", *args, "name=killed"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = RunDir(tmp_path / "killed").checkpoint
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_metrics(tmp_path / "killed"))
    assert done < 6, "the run finished before it could be killed; make it longer"
    assert not RunDir(tmp_path / "killed").finished
    r = _pemn("train", "--resume", str(tmp_path / "killed"), "--no-progress", cwd=tmp_path)
    assert "test accuracy" in r.stdout
    assert _strip_timing(_metrics(tmp_path / "killed")) == _strip_timing(
        _metrics(tmp_path / "full"))


def test_existing_run_dir_needs_resume(tmp_path):
    args = [*TINY, "optim.epochs=1", f"out_dir={tmp_path}", "name=r", "--no-progress"]
    log = _pemn("train", *args, cwd=tmp_path).stderr
    assert "lr " in log and not re.search(r"\d\.\d{6,}", log), log  # floats for people
    r = _pemn("train", *args, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "--resume" in r.stderr
    # continuing it under another config, or another directory than the config's, is refused
    for extra, resume, match in [(["optim.lr=0.5"], "r", "was made with a different config"),
                                 ([], "elsewhere", "but the config trains in")]:
        r = _pemn("train", *args[:-1], *extra, "--resume", str(tmp_path / resume),
                  "--no-progress", cwd=tmp_path, check=False)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    # an unfinished run whose checkpoint was damaged: one line naming what is wrong
    run_dir = RunDir(tmp_path / "r")
    run_dir.summary.unlink()
    state = torch.load(run_dir.checkpoint, weights_only=True)
    for edit, match in [(lambda s: s.pop("optimizer"), "lacks 'optimizer'"),
                        (lambda s: s["model"].popitem(), "does not fit this run")]:
        damaged = {**state, "model": dict(state["model"])}
        edit(damaged)
        torch.save(damaged, run_dir.checkpoint)
        r = _pemn("train", "--resume", str(run_dir.path), "--no-progress", cwd=tmp_path,
                  check=False)
        last = r.stderr.strip().splitlines()[-1]  # after the run's progress log
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert last.startswith("pemn: error: checkpoint") and match in last, r.stderr


def test_world_from_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert World.from_env() == World(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside WORLD_SIZE 4"):
        World.from_env()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        World.from_env()


def test_two_process_ddp_gives_identical_masks(tmp_path):
    worker = Path(__file__).parent / "helpers" / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29581", str(worker), str(tmp_path), *TINY, "optim.epochs=2"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert rank0["masks"].keys() == rank1["masks"].keys()
    for name, m in rank0["masks"].items():
        assert torch.equal(m, rank1["masks"][name]), name
    # the 1438 digits are split between the ranks: 719 each, 32 per batch
    assert rank0["batches"] == 719 // 32
    assert RunDir(tmp_path).checkpoint.exists() and len(_metrics(tmp_path)) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.name and cfg.data.dataset


def test_cli_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29582", "-m", "pemn.cli", "train", *TINY, "optim.epochs=1",
           f"out_dir={tmp_path}", "name=t", "--no-progress"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert RunDir(tmp_path / "t").finished


def test_no_amp_dtype_leaves_autocast_alone():
    # nothing to enter: a caller's autocast stays on, and a device without autocast works
    x = torch.ones(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _autocast(torch.device("cpu"), None):
            assert (x @ x).dtype == torch.bfloat16
    with _autocast(torch.device("meta"), None):
        pass
