"""Sweeps: grid expansion of the shipped sweep files, errors, a tiny real sweep, plots, table,
and many sweep processes at once (claims, shards, kill -9)."""
import csv
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pemn
from pemn import MagnitudePrune, RandomPrune
from pemn.config import ConfigError, RunConfig, to_dict
from pemn.cli import main
from pemn.experiments import (
    CSV_COLUMNS,
    describe_sweep,
    expand,
    plot_results,
    read_records,
    record_results,
    run_sweep,
    summary_table,
)
from pemn.models import list_models
from pemn.experiments.claims import try_claim
from pemn.experiments.results import RESULT, csv_row
from pemn.experiments.sweep import shard_of
from pemn.rundir import RunDir, check_same_config

ROOT = Path(__file__).parent.parent
SWEEPS = ROOT / "configs" / "sweeps"


def _sweep(tmp_path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------
# Expansion of the shipped sweeps (no training)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("fmnist_cpu.toml", 78), ("paper_fig3_cifar10.toml", 216),
                                         ("paper_fig4_cifar10.toml", 72),
                                         ("paper_fig5_cifar10.toml", 72)])
def test_shipped_sweeps_expand(name, count):
    configs = expand(SWEEPS / name)
    assert len(configs) == count
    assert len({c.name for c in configs}) == count
    assert {c.model.name for c in configs} <= set(list_models())
    assert all(c.mask.seed == c.optim.seed for c in configs)
    assert sorted({c.mask.seed for c in configs}) == [0, 1, 2]


def test_fmnist_cpu_grid():
    configs = expand(SWEEPS / "fmnist_cpu.toml")
    seed0 = [c for c in configs if c.mask.seed == 0]
    assert configs[:26] == seed0  # seed by seed: a partial sweep covers the grid once
    by = {(c.model.name, c.mask.strategy.name) for c in seed0}
    assert {s for m, s in by if m == "convmixer_64_d4"} == {"dense", "mask", "one_layer", "mp",
                                                             "rp"}
    assert {s for m, s in by if m == "convmixer_128_d4"} >= {"sparse"}
    assert sorted(c.mask.strategy.ratio for c in seed0 if isinstance(c.mask.strategy, pemn.RP)
                  and c.model.name == "convmixer_64_d4") == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    for c in seed0:
        real_weights = c.mask.strategy.name in ("dense", "sparse")
        assert c.optim.lr == (0.005 if real_weights else 0.05), c.name
        assert c.model.kwargs == {"patch_size": 4, "kernel_size": 5}
        assert (c.optim.epochs, c.optim.batch_size, c.data.dataset) == (3, 128, "fashion_mnist")
    pruned = {c.mask.strategy for c in seed0 if c.mask.strategy.name == "sparse"}
    assert pruned == {kind(cr) for kind in (RandomPrune, MagnitudePrune)
                      for cr in (0.90, 0.92, 0.94, 0.96)}  # the paper's baselines, as presets
    assert any(RandomPrune(0.9).tag() in c.name for c in seed0)


def test_fig5_reuses_fig3_runs():
    fig3 = {c.name: to_dict(c) for c in expand(SWEEPS / "paper_fig3_cifar10.toml")}
    fig5 = {c.name: to_dict(c) for c in expand(SWEEPS / "paper_fig5_cifar10.toml")}
    common = fig3.keys() & fig5.keys()
    assert len(common) == 2 * 4 * 3  # d6/d8 x (dense, rp 1e-1/1e-2/1e-3) x 3 seeds
    assert all(fig3[k] == fig5[k] for k in common)


def test_base_config_and_default_names(tmp_path):
    recipe = _sweep(tmp_path, '[model]\nname = "mlp"\n[optim]\nepochs = 7\n', "recipe.toml")
    path = _sweep(tmp_path, f'''
base_config = "{recipe.name}"
seeds = [3]
[base.optim]
lr = 0.1
[grid]
"optim.weight_decay" = [0.0, 0.1]
mask.strategy.ratio = [0.5]
''')
    configs = expand(path)
    assert [c.optim.weight_decay for c in configs] == [0.0, 0.1]
    assert all((c.model.name, c.optim.epochs, c.optim.lr, c.mask.strategy, c.mask.seed)
               == ("mlp", 7, 0.1, pemn.RP(0.5), 3) for c in configs)
    assert configs[0].name == "fashion_mnist-mlp-rp0.5-k0.5-e7-s3-weight_decay0"


def test_points_and_strategy_tables(tmp_path):
    recipe = _sweep(tmp_path, '[mask]\nstrategy = { name = "rp", ratio = 0.1 }\n', "recipe.toml")
    path = _sweep(tmp_path, f'''
base_config = "{recipe.name}"
[[points]]
"mask.strategy" = {{ name = "magnitude_prune", cr = 0.94 }}
[[points]]
mask = {{ strategy = {{ name = "rp", order = "permuted" }} }}
[[points]]
"mask.strategy.ratio" = 0.01
''')
    prune, permuted, rp = expand(path)
    assert prune.mask.strategy == MagnitudePrune(0.94)  # a table replaces the recipe's whole
    assert prune.mask.strategy.density == pytest.approx(0.02875)
    assert permuted.mask.strategy == pemn.RP(1e-3, "permuted")
    assert rp.mask.strategy == pemn.RP(0.01)  # one argument of the recipe's strategy


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("seed = [0]", "unknown sweep key 'seed'"),
    ("seeds = []", "non-empty list of ints"),
    ('[grid]\n"mask.strategi" = ["rp"]', r"mask\.strategi.*did you mean mask\.strategy"),
    ('[grid]\nstrategy = [{ "mask.ratio" = 0.1 }]', r"unknown config key 'mask\.ratio'"),
    ("[base]\noptim.lrr = 0.1", r"optim\.lrr"),
    ('[grid]\n"optim.lr" = 0.1', "must be a non-empty list"),
    ('[grid]\n"mask.strategy" = [{ name = "rp", cr = 0.9 }]', "bad arguments for strategy 'rp'"),
    ('[[points]]\n"mask.strategy" = { name = "random_prune", cr = 0.97 }', "31/32"),
    ('name = "{strategy}"\n[grid]\n"optim.lr" = [0.1, 0.2]', "both named"),
    ('[base]\nname = "x"', "name template"),
    ('name = "{nope}"', r"\{nope\}"),
])
def test_bad_sweep_files_raise(tmp_path, text, match):
    path = _sweep(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        expand(path)


def test_changed_config_refuses_old_run_dir(tmp_path):
    path = _sweep(tmp_path, f'[base]\nout_dir = "{tmp_path}"\n"data.dataset" = "digits"\n')
    (cfg,) = expand(path)
    cfg.optim.lr = 123.0
    RunDir.of(cfg).write_config(cfg)
    with pytest.raises(ConfigError, match="optim.lr"):
        run_sweep(path)


def test_a_changed_strategy_option_refuses_the_run_dir(tmp_path):
    path = _sweep(tmp_path, f'[base]\nout_dir = "{tmp_path}"\n"data.dataset" = "digits"\n'
                            '"mask.strategy" = { name = "rp", ratio = 0.01, order = "copy" }\n')
    (cfg,) = expand(path)
    run_dir = RunDir.of(cfg)
    run_dir.write_config(cfg)
    assert "1 runs (0 done, 1 to do)" in describe_sweep(path)
    check_same_config(cfg, run_dir, "")  # no error: the same run
    normal = dataclasses.replace(cfg.mask.strategy, values="normal")
    with pytest.raises(ConfigError, match="mask.strategy.*'signed_constant'.*'normal'"):
        check_same_config(dataclasses.replace(cfg, mask=dataclasses.replace(
            cfg.mask, strategy=normal)), run_dir, "")


def test_committed_results_lines_keep_their_labels():
    rp = next(r for r in read_records(ROOT / "docs/results/fmnist_cpu.jsonl")
              if r["config"]["mask"]["strategy"]["name"] == "rp"
              and r["config"]["mask"]["strategy"]["ratio"] == 0.001)
    row = csv_row(rp)
    assert (row["strategy"], row["label"]) == ("rp0.001-copy-normal", "RP 1e-3 (copy, normal)")


# ------------------------------------------------------------------------------------------
# A tiny real sweep: 2 strategies x 2 seeds on digits
# ------------------------------------------------------------------------------------------

TINY = '''
seeds = [0, 1]
[base]
out_dir = "{out}"
"data.dataset" = "digits"
"model.name" = "convmixer_64_d4"
"model.kwargs" = {{ dim = 8, depth = 1 }}
"optim.epochs" = 1
"optim.batch_size" = 64
"optim.eval_batch_size" = 500
[grid]
strategy = [{{ "mask.strategy" = {{ name = "rp", ratio = 1e-2 }} }},
            {{ "mask.strategy" = {{ name = "random_prune", cr = 0.9 }}, "optim.lr" = 0.005 }}]
'''


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = _sweep(tmp, TINY.format(out=tmp / "runs"))
    return path, run_sweep(path)


def test_tiny_sweep_appends_one_line_per_run(tiny_sweep):
    path, results = tiny_sweep
    assert results == path.parent / "runs" / "results.jsonl"
    records = read_records(results)
    configs = expand(path)
    assert [r["run"] for r in records] == [c.name for c in configs]
    for r, cfg in zip(records, configs):
        assert r["config"] == to_dict(cfg)  # the resolved config, as the run saved it
        s, sizes = r["summary"], r["bytes"]
        assert 0 <= s["best_test_acc"] <= 100
        assert r["bytes_source"] == "artifact"  # every run packed: the real file, by section
        assert sizes["total"] == RunDir.of(cfg).artifact.stat().st_size
        assert sum(v for k, v in sizes.items() if k != "total") == sizes["total"]
        if not isinstance(cfg.mask.strategy, pemn.RP):  # the Random baseline at CR 90 %
            assert s["keep_ratio"] == pytest.approx(0.06875)
            assert s["compression_ratio"] == pytest.approx(0.9, abs=0.01)  # kept per layer


def test_csv_is_an_export_of_the_lines(tiny_sweep):
    _, results = tiny_sweep
    rows = _rows(results.with_suffix(".csv"))
    assert len(rows) == 4 and list(rows[0]) == list(CSV_COLUMNS)
    rp, prune = pemn.RP(1e-2), RandomPrune(0.9)
    assert [(r["strategy"], r["label"], r["seed"]) for r in rows] == [
        (s.tag(), s.label(), seed) for seed in "01" for s in (rp, prune)]
    lines = read_records(results)
    assert [int(r["bytes"]) for r in rows] == [line["bytes"]["total"] for line in lines]


def test_second_sweep_does_not_retrain_or_repeat_lines(tiny_sweep, caplog):
    path, results = tiny_sweep
    summaries = sorted((path.parent / "runs").glob("*/summary.json"))
    before = [s.stat().st_mtime_ns for s in summaries]
    with caplog.at_level(logging.INFO, logger="pemn.experiments.sweep"):
        assert run_sweep(path) == results
    assert [s.stat().st_mtime_ns for s in summaries] == before
    assert len(read_records(results)) == 4
    assert "[4/4]" in caplog.text and "done already" in caplog.text


def test_collect_only_records_finished_runs_without_training(tiny_sweep, tmp_path):
    path, results = tiny_sweep
    summaries = sorted((path.parent / "runs").glob("*/summary.json"))
    before = [s.stat().st_mtime_ns for s in summaries]
    other = tmp_path / "other.jsonl"
    assert run_sweep(path, results=other, collect_only=True) == other
    assert [r["run"] for r in read_records(other)] == [r["run"] for r in read_records(results)]
    assert [s.stat().st_mtime_ns for s in summaries] == before
    assert record_results(expand(path), other) == 0  # nothing new to append


def test_assembling_keeps_lines_of_other_runs(tiny_sweep, tmp_path):
    """Two sweeps may share one results file: rebuilding it from one grid keeps the other's."""
    path, results = tiny_sweep
    shared = tmp_path / "shared.jsonl"
    foreign = {**read_records(results)[0], "run": "another-sweeps-run"}
    shared.write_text(json.dumps(foreign) + "\n")
    assert record_results(expand(path), shared) == 4
    runs = [r["run"] for r in read_records(shared)]
    assert runs == ["another-sweeps-run"] + [r["run"] for r in read_records(results)]


def test_stale_after_must_be_positive(tiny_sweep):
    with pytest.raises(ConfigError, match="--stale-after is a time in seconds, > 0; got 0"):
        run_sweep(tiny_sweep[0], stale_after=0)


def test_describe_and_limit(tiny_sweep):
    path, _ = tiny_sweep
    assert "3 runs (3 done, 0 to do)" in describe_sweep(path, limit=3)


def test_plots_and_table_from_tiny_sweep(tiny_sweep, tmp_path):
    _, results = tiny_sweep
    paths = plot_results(results, tmp_path / "fig")
    assert {p.name for p in paths} == {f"{s}.{e}" for s in ("fig3_unique_values",
                                       "fig45_compression_ratio", "fig45_kilobytes",
                                       "frontier_bytes") for e in ("png", "svg")}
    table = summary_table(results).splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per (model, strategy) group
    assert "RP 1e-2" in table[2] and RandomPrune(0.9).label() in table[3]
    assert all(row.rstrip(" |").endswith("2") for row in table[2:])  # n = 2 seeds


# ------------------------------------------------------------------------------------------
# Plots over synthetic results lines with every strategy (no training)
# ------------------------------------------------------------------------------------------

STRATEGIES = [pemn.Dense(), pemn.Mask(), pemn.OneLayer(), pemn.MP(),
              *[pemn.RP(r) for r in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)],
              *[kind(cr) for kind in (RandomPrune, MagnitudePrune) for cr in (0.9, 0.92, 0.94,
                                                                                0.96)]]


def _synthetic_results(path: Path) -> Path:
    lines = []
    for dim in (64, 128):
        for i, strategy in enumerate(STRATEGIES):
            for seed in (0, 1, 2):
                cfg = RunConfig(name=f"r{dim}-{i}-{seed}")
                cfg.model.name, cfg.model.kwargs = "convmixer_64_d4", {"dim": dim}
                cfg.mask.strategy, cfg.mask.seed = strategy, seed
                summary = {"num_masked": 1000, "num_unique": 10, "compression_ratio": 0.9,
                           "best_test_acc": 80 + i + seed, "final_test_acc": 79 + i}
                lines.append({"run": cfg.name, "config": to_dict(cfg), "summary": summary,
                              "bytes": {"total": 2000 + 100 * i}, "bytes_source": "formula"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("metric", ["best_test_acc", "final_test_acc"])
def test_plots_and_table_cover_every_strategy(tmp_path, metric):
    results = _synthetic_results(tmp_path / "results.jsonl")
    paths = plot_results(results, tmp_path / "fig", metric=metric, prefix="x_")
    assert len(paths) == 8 and all(p.name.startswith("x_") for p in paths)
    table = summary_table(results, metric=metric).splitlines()
    assert len(table) == 2 + 2 * len(STRATEGIES)
    labels = [row.split(" | ")[2] for row in table[2:2 + len(STRATEGIES)]]
    assert labels[:9] == [s.label() for s in STRATEGIES[:9]]  # registry order, RP descending
    assert sorted(labels[9:]) == sorted(s.label() for s in STRATEGIES[9:])  # the baselines
    assert "convmixer_64_d4 w64" in table[2]
    if metric == "best_test_acc":
        assert "81.00 ± 1.00 | 3" in table[2]  # seeds 0, 1, 2 -> 80, 81, 82


def test_results_lines_are_checked(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"run": "x"}\n')
    with pytest.raises(ValueError, match="not a pemn results line"):
        read_records(bad)


def test_levers_score_lr_and_depth_keep_their_own_rows_across_results_files(tmp_path):
    def line(name, strategy, seed, acc, score_lr=1.0, depth=4, fold=False):
        cfg = RunConfig(name=name)
        cfg.model.kwargs = {"depth": depth, "fold": fold}
        cfg.mask.strategy, cfg.mask.seed, cfg.optim.score_lr_scale = strategy, seed, score_lr
        summary = {"num_masked": 1000, "num_unique": 10, "compression_ratio": 0.9,
                   "best_test_acc": acc, "final_test_acc": acc}
        return json.dumps({"run": name, "config": to_dict(cfg), "summary": summary,
                           "bytes": {"total": 3000}, "bytes_source": "artifact"}) + "\n"

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(line("a0", pemn.RP(1e-3), 0, 80) + line("a1", pemn.RP(1e-3), 1, 82))
    b.write_text(line("b0", pemn.RP(1e-3), 0, 70, score_lr=0.3)
                 + line("b1", pemn.RP(1e-3, gain="channel"), 0, 90)
                 + line("b2", pemn.RP(1e-3), 0, 60, depth=8)
                 + line("b3", pemn.RP(1e-3), 0, 50, fold=True))
    table = summary_table([a, b]).splitlines()[2:]
    rows = {r.split(" | ")[2]: r for r in table}
    assert set(rows) == {"RP 1e-3", "RP 1e-3 (score lr x0.3)", "RP 1e-3 +gain/channel",
                         "RP 1e-3, depth 8", "RP 1e-3, folded"}
    assert "81.00 ± 1.41 | 2" in rows["RP 1e-3"]
    paths = plot_results([a, b], tmp_path / "fig")
    assert {p.name for p in paths} == {"fig3_unique_values.png", "fig3_unique_values.svg",
                                       "frontier_bytes.png", "frontier_bytes.svg"}


def test_runs_are_priced_by_the_chosen_precision_with_sparse_readings(tmp_path):
    lines = []
    for seed, (exact, fp16) in enumerate([(5000, 3000), (5002, 3002)]):
        cfg = RunConfig(name=f"s{seed}")
        cfg.mask.strategy, cfg.mask.seed = pemn.Sparse(density=0.1), seed
        summary = {"num_masked": 1000, "num_unique": 100, "compression_ratio": 0.5,
                   "best_test_acc": 80.0, "final_test_acc": 80.0}
        readings = {"exact": {"total": exact}, "fp16": {"total": fp16, "csr": 4000,
                                                        "values_only": 2000},
                    "norm8": {"total": fp16 - 1000}}
        lines.append(json.dumps({"run": cfg.name, "config": to_dict(cfg), "summary": summary,
                                 "bytes": {"total": exact}, "bytes_source": "artifact",
                                 "readings": readings}) + "\n")
    path = tmp_path / "r.jsonl"
    path.write_text("".join(lines))
    [row] = summary_table(path, precision="fp16").splitlines()[2:]
    assert " | 3.0 | 4.0 | 2.0 | 80.00 ± 0.00 | 2 |" in row  # kB, CSR, values only
    [row] = summary_table(path).splitlines()[2:]
    assert " | 5.0 | " in row and "4.0" not in row  # exact files carry no sparse readings
    [row] = summary_table(path, precision="norm8").splitlines()[2:]
    assert " | 2.0 | " in row
    old = tmp_path / "old.jsonl"  # a line recorded before readings existed
    old.write_text(lines[0].replace(', "readings": {', ', "x": {'))
    with pytest.raises(ValueError, match="no fp16 reading"):
        summary_table(old, precision="fp16")


def test_series_globs_choose_the_rows_and_name_the_choices_when_none_match(tmp_path):
    results = _synthetic_results(tmp_path / "results.jsonl")
    table = summary_table(results, series=["RP 1e-3", "Sparse uniform*"]).splitlines()[2:]
    assert {row.split(" | ")[2] for row in table} == {
        "RP 1e-3", *(RandomPrune(cr).label() for cr in (0.9, 0.92, 0.94, 0.96))}
    paths = plot_results(results, tmp_path / "fig", series=["RP*"])
    assert {p.name for p in paths} == {"fig3_unique_values.png", "fig3_unique_values.svg",
                                       "frontier_bytes.png", "frontier_bytes.svg"}
    with pytest.raises(ValueError, match="no series matches.*'RP 1e-1'"):
        summary_table(results, series=["Int8*"])


def test_one_strategy_on_two_model_families_is_two_series(tmp_path):
    lines = []
    for model, acc in (("convmixer_64_d4", 80), ("vit_tiny", 70)):
        cfg = RunConfig(name=model)
        cfg.model.name, cfg.mask.strategy = model, pemn.RP(1e-3)
        summary = {"num_masked": 1000, "num_unique": 10, "compression_ratio": 0.9,
                   "best_test_acc": acc, "final_test_acc": acc}
        lines.append(json.dumps({"run": model, "config": to_dict(cfg), "summary": summary,
                                 "bytes": {"total": 3000}, "bytes_source": "artifact"}) + "\n")
    results = tmp_path / "r.jsonl"
    results.write_text("".join(lines))
    rows = summary_table(results).splitlines()[2:]
    assert [r.split(" | ")[2] for r in rows] == ["RP 1e-3, convmixer", "RP 1e-3, vit"]
    assert summary_table(results, series=["*vit"]).count("\n") == 2  # header, rule, one row


# ------------------------------------------------------------------------------------------
# Many processes: claims, shards, concurrent sweeps
# ------------------------------------------------------------------------------------------

def _reaped_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_claim(run_dir: Path, host: str, pid: int, age: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "claim.0"
    path.write_text(json.dumps({"host": host, "pid": pid}) if host else "")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_live_claim_is_exclusive_and_released(tmp_path):
    with try_claim(tmp_path) as claim:
        assert json.loads(claim.path.read_text())["pid"] == os.getpid()
        assert try_claim(tmp_path) is None and claim.held()
    assert list(tmp_path.iterdir()) == []  # released: the next process may claim it
    try_claim(tmp_path).release()


@pytest.mark.parametrize("host, pid, age, taken", [
    ("this", "dead", 0.0, True),  # the owner is gone
    ("this", "live", 0.0, False),
    ("elsewhere", "dead", 0.0, False),  # a pid of another host says nothing here
    ("elsewhere", "dead", 60.0, True),  # no heartbeat for longer than stale_after
    (None, "live", 0.0, False),  # not written yet by its creator: the age decides
    (None, "live", 60.0, True),
])
def test_a_stale_claim_is_taken_over_by_the_next_generation(tmp_path, host, pid, age, taken):
    host = socket.gethostname() if host == "this" else host
    planted = _plant_claim(tmp_path, host, _reaped_pid() if pid == "dead" else os.getpid(), age)
    claim = try_claim(tmp_path, stale_after=30.0)
    assert (claim is not None) == taken
    if taken:
        assert (claim.path.name, planted.exists()) == ("claim.1", False)
        claim.release()


def test_the_heartbeat_refreshes_and_a_lost_claim_is_left_alone(tmp_path, caplog):
    claim = try_claim(tmp_path, stale_after=0.2)  # a heartbeat every 0.02 s
    os.utime(claim.path, (0, 0))
    time.sleep(0.2)
    assert time.time() - claim.path.stat().st_mtime < 0.2
    taker = tmp_path / "claim.1"  # what a process that found it silent does
    taker.write_text("{}")
    os.utime(taker, (0, 0))
    claim.path.unlink()
    with caplog.at_level(logging.WARNING, logger="pemn.experiments.claims"):
        time.sleep(0.2)
        assert not claim.held()
        claim.release()
    assert "taken over by another process" in caplog.text
    assert taker.stat().st_mtime == 0  # the old owner's heartbeat never touches it


@pytest.mark.parametrize("shard, env, expected", [
    ("1/4", {}, (1, 4)),
    (None, {}, (0, 1)),
    (None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
            "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),  # --array=4-6
    (None, {"SLURM_ARRAY_TASK_ID": "20", "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_STEP": "10", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),  # 0-20:10
    ("0/2", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "9"}, (0, 2)),  # flag wins
])
def test_shards_from_the_flag_or_slurm(shard, env, expected):
    assert shard_of(shard, env) == expected


@pytest.mark.parametrize("shard, env, match", [
    ("4/4", {}, r"--shard: a shard is K/N with 0 <= K < N.*got 4/4"),
    ("1/0", {}, "got 1/0"),
    ("one/4", {}, "got one/4"),
    ("-1/4", {}, "got -1/4"),
    (None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"},
     r"SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=3: .*got 3/3"),
    (None, {"SLURM_ARRAY_TASK_ID": "3"}, r"SLURM_ARRAY_TASK_ID=3: .*got none"),
])
def test_bad_shards_are_one_line_errors(shard, env, match):
    with pytest.raises(ConfigError, match=match):
        shard_of(shard, env)


def test_the_cli_takes_a_shard_and_refuses_a_bad_one(tiny_sweep, capsys, caplog, monkeypatch):
    path, _ = tiny_sweep
    assert main(["sweep", str(path), "--dry-run", "--shard", "1/2"]) == 0
    names = [c.name for c in expand(path)]
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[:2]] == names[1::2]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")  # the third task of --array=0-3
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    with caplog.at_level(logging.INFO, logger="pemn.experiments.sweep"):
        assert main(["sweep", str(path)]) == 0
    assert f"[1/1] {names[2]}: done already" in caplog.text and "[2/" not in caplog.text
    assert main(["sweep", str(path), "--shard", "2/2"]) == 2
    assert capsys.readouterr().err == ("pemn: error: --shard: a shard is K/N with 0 <= K < N "
                                       "(e.g. 0/4), got 2/2\n")


CONCURRENT = '''
[base]
out_dir = "{out}"
"data.dataset" = "digits"
"model.name" = "convmixer_64_d4"
"model.kwargs" = {{ dim = 8, depth = 1 }}
"data.limit_train" = 256
"optim.epochs" = {epochs}
"optim.batch_size" = 64
"optim.eval_batch_size" = 500
[grid]
"mask.strategy.ratio" = {ratios}
'''


def _owner(run_dir: Path, by_pid: dict):
    try:
        return by_pid.get(json.loads(next(run_dir.glob("claim.*")).read_text())["pid"])
    except (StopIteration, OSError, ValueError, KeyError):  # no claim, or not written yet
        return None


def _kill_mid_run(procs, runs: Path) -> tuple[int, str]:
    """kill -9 a process training a run that has a checkpoint and no summary yet: (its index,
    the run's name). The owner is stopped before it is checked, so what is checked is what is
    killed."""
    by_pid = {p.pid: p for p in procs}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for run_dir in runs.glob("*/"):
            if (run_dir / "checkpoint.pt").exists() and (owner := _owner(run_dir, by_pid)):
                os.kill(owner.pid, signal.SIGSTOP)
                if _owner(run_dir, by_pid) is owner and not (run_dir / "summary.json").exists():
                    owner.kill()
                    owner.wait()  # reaped: its pid is gone, so its claim is stale at once
                    return procs.index(owner), run_dir.name
                os.kill(owner.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no run was caught between its first checkpoint and its summary")


@pytest.fixture(scope="module")
def three_sweeps(tmp_path_factory):
    """Three ``pemn sweep`` processes started at once on a 6-run grid; one is killed (-9) in
    the middle of a run. Returns the sweep, the killed process's index and run, and the logs."""
    tmp = tmp_path_factory.mktemp("concurrent")
    path = _sweep(tmp, CONCURRENT.format(out=tmp / "runs", epochs=10,
                                         ratios=[0.5, 0.2, 0.1, 0.05, 0.02, 0.01]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    cmd = [sys.executable, "-m", "pemn.cli", "sweep", str(path), "--stale-after", "4"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    killed, run_name = _kill_mid_run(procs, tmp / "runs")
    logs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0 if p is not procs[killed] else -9 for p in procs], \
        logs
    return path, killed, run_name, logs


def test_three_concurrent_sweeps_train_each_run_once(three_sweeps):
    path, killed, run_name, logs = three_sweeps
    names = [c.name for c in expand(path)]
    lines = (path.parent / "runs" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["run"] for line in lines] == names  # each run once, grid order
    started = [[line.split()[1] for line in err.splitlines() if line.endswith(" ...")]
               for err in logs]
    assert started[killed][-1] == run_name  # killed in the middle of it; then its taker
    assert sorted(sum(started, [])) == sorted(names + [run_name]), logs  # trained it on
    assert not list((path.parent / "runs").glob("*/claim.*"))  # every claim released


def test_a_run_whose_process_is_killed_is_taken_over_and_resumed(three_sweeps):
    path, killed, run_name, logs = three_sweeps
    takers = [err for i, err in enumerate(logs) if f"{run_name}: taking over" in err]
    assert len(takers) == 1 and logs.index(takers[0]) != killed
    assert f"resumed {path.parent / 'runs' / run_name} at epoch" in takers[0], takers[0]
    assert (path.parent / "runs" / run_name / RESULT).is_file()
