"""Sweeps: grid expansion of the shipped sweep files, errors, a tiny real sweep, plots, table."""
import csv
import json
import logging
from pathlib import Path

import pytest

from pemn.config import ConfigError, to_dict
from pemn.experiments import (
    CSV_COLUMNS,
    collect_results,
    expand,
    plot_results,
    run_sweep,
    summary_table,
)
from pemn.models import list_models

SWEEPS = Path(__file__).parent.parent / "configs" / "sweeps"


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
    by = {(c.model.kwargs["dim"], c.mask.strategy) for c in seed0}
    assert {s for d, s in by if d == 64} == {"dense", "mask", "one_layer", "mp", "rp"}
    assert {s for d, s in by if d == 128} >= {"random_prune", "magnitude_prune"}
    assert sorted(c.mask.ratio for c in seed0 if c.mask.strategy == "rp"
                  and c.model.kwargs["dim"] == 64) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    for c in seed0:
        real_weights = c.mask.strategy in ("dense", "random_prune", "magnitude_prune")
        assert c.optim.lr == (0.005 if real_weights else 0.05), c.name
        assert c.model.kwargs == {"dim": c.model.kwargs["dim"], "depth": 4, "patch_size": 4,
                                  "kernel_size": 5}
        assert (c.optim.epochs, c.optim.batch_size, c.data.dataset) == (3, 128, "fashion_mnist")
    keeps = sorted(c.mask.keep_ratio for c in seed0 if c.mask.strategy == "random_prune")
    assert keeps == pytest.approx([31 / 32 - cr for cr in (0.96, 0.94, 0.92, 0.90)])
    assert "fashion_mnist-convmixer-w128-d4-random_prune-cr0.9-e3-s0" in {c.name for c in seed0}


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
mask.ratio = [0.5]
''')
    configs = expand(path)
    assert [c.optim.weight_decay for c in configs] == [0.0, 0.1]
    assert all((c.model.name, c.optim.epochs, c.optim.lr, c.mask.ratio, c.mask.seed)
               == ("mlp", 7, 0.1, 0.5, 3) for c in configs)
    assert configs[0].name == configs[0].run_name() and configs[0].name.endswith("-weight_decay0")


def test_points_and_cr_sugar(tmp_path):
    path = _sweep(tmp_path, '''
[[points]]
"mask.strategy" = "magnitude_prune"
"mask.cr" = 0.94
[[points]]
mask = { strategy = "rp", ratio = 0.01 }
''')
    prune, rp = expand(path)
    assert prune.mask.keep_ratio == pytest.approx(0.02875) and rp.mask.ratio == 0.01


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("seed = [0]", "unknown sweep key 'seed'"),
    ("seeds = []", "non-empty list of ints"),
    ('[grid]\n"mask.strategi" = ["rp"]', r"mask\.strategi.*did you mean 'mask\.strategy'"),
    ('[grid]\nstrategy = [{ "mask.ratioo" = 0.1 }]', r"mask\.ratioo"),
    ("[base]\noptim.lrr = 0.1", r"optim\.lrr"),
    ('[grid]\n"optim.lr" = 0.1', "must be a non-empty list"),
    ('[grid]\n"mask.cr" = [0.9]', "applies to the pruning baselines"),
    ('[[points]]\n"mask.strategy" = "random_prune"\n"mask.cr" = 0.97', "out of reach"),
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
    (tmp_path / cfg.name).mkdir()
    (tmp_path / cfg.name / "config.json").write_text(json.dumps({**to_dict(cfg), "optim": {
        **to_dict(cfg)["optim"], "lr": 123.0}}))
    with pytest.raises(ConfigError, match="optim.lr"):
        run_sweep(path)


# ------------------------------------------------------------------------------------------
# A tiny real sweep: 2 strategies x 2 seeds on digits
# ------------------------------------------------------------------------------------------

TINY = '''
seeds = [0, 1]
[base]
out_dir = "{out}"
"data.dataset" = "digits"
"model.name" = "convmixer"
"model.kwargs" = {{ dim = 8, depth = 1 }}
"optim.epochs" = 1
"optim.batch_size" = 64
"optim.eval_batch_size" = 500
[grid]
strategy = [{{ "mask.strategy" = "rp", "mask.ratio" = 1e-2 }},
            {{ "mask.strategy" = "random_prune", "mask.cr" = 0.9, "optim.lr" = 0.005 }}]
'''


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = _sweep(tmp, TINY.format(out=tmp / "runs"))
    return path, run_sweep(path)


def test_tiny_sweep_writes_results(tiny_sweep):
    path, csv_path = tiny_sweep
    assert csv_path == path.parent / "runs" / "results.csv"
    rows = _rows(csv_path)
    assert len(rows) == 4 and list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        ("rp", "0"), ("random_prune", "0"), ("rp", "1"), ("random_prune", "1")]
    for r in rows:
        p, u = int(r["P"]), int(r["U"])
        # PEMN runs are packed, so their bytes are the real file; baselines use the formula.
        assert r["bytes_source"] == ("artifact" if r["strategy"] == "rp" else "formula")
        assert int(r["bytes"]) > -(-p // 8) + 4 * u
        if r["strategy"] == "rp":
            assert int(r["bytes"]) == (csv_path.parent / r["run"] / "model.pemn").stat().st_size
        assert 0 <= float(r["best_test_acc"]) <= 100 and r["run"].startswith("digits-convmixer")
    assert float(rows[1]["keep_ratio"]) == pytest.approx(0.06875)
    assert float(rows[1]["CR"]) == pytest.approx(0.9, abs=0.01)  # per-layer rounding of kept


def test_bytes_column_prefers_the_artifact(tiny_sweep, tmp_path):
    path, _ = tiny_sweep
    configs = expand(path)
    artifact = Path(configs[0].out_dir) / configs[0].name / "model.pemn"
    artifact.write_bytes(b"x" * 1234)
    try:
        rows = _rows(collect_results(configs, tmp_path / "r.csv"))
    finally:
        artifact.unlink()
    assert (rows[0]["bytes"], rows[0]["bytes_source"]) == ("1234", "artifact")
    assert rows[1]["bytes_source"] == "formula"


def test_second_sweep_does_not_retrain(tiny_sweep, caplog):
    path, csv_path = tiny_sweep
    summaries = sorted((path.parent / "runs").glob("*/summary.json"))
    before = [s.stat().st_mtime_ns for s in summaries]
    with caplog.at_level(logging.INFO, logger="pemn.experiments.sweep"):
        assert run_sweep(path) == csv_path
    assert [s.stat().st_mtime_ns for s in summaries] == before
    assert len(_rows(csv_path)) == 4
    assert "[4/4]" in caplog.text and "done already" in caplog.text


def test_collect_only_rewrites_results_without_training(tiny_sweep):
    path, csv_path = tiny_sweep
    csv_path.unlink()
    summaries = sorted((path.parent / "runs").glob("*/summary.json"))
    before = [s.stat().st_mtime_ns for s in summaries]
    assert run_sweep(path, collect_only=True) == csv_path
    assert len(_rows(csv_path)) == 4
    assert [s.stat().st_mtime_ns for s in summaries] == before


def test_dry_run_and_limit(tiny_sweep, caplog):
    path, _ = tiny_sweep
    with caplog.at_level(logging.INFO, logger="pemn.experiments.sweep"):
        run_sweep(path, dry_run=True, limit=3)
    assert "3 runs (3 done, 0 to do)" in caplog.text


def test_plots_and_table_from_tiny_sweep(tiny_sweep, tmp_path):
    _, csv_path = tiny_sweep
    paths = plot_results(csv_path, tmp_path / "fig")
    assert {p.name for p in paths} == {f"{s}.{e}" for s in ("fig3_unique_values",
                                       "fig45_compression_ratio", "fig45_kilobytes")
                                       for e in ("png", "svg")}
    assert all(p.stat().st_size > 1000 for p in paths)
    table = summary_table(csv_path).splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per (model, strategy) group
    assert "RP 1e-2" in table[2] and "Random @ CR 90 %" in table[3]
    assert all(row.rstrip(" |").endswith("2") for row in table[2:])  # n = 2 seeds


# ------------------------------------------------------------------------------------------
# Plots over a synthetic CSV with every strategy (no training)
# ------------------------------------------------------------------------------------------

def _synthetic_csv(path: Path) -> Path:
    strategies = [("dense", "", 0.5), ("mask", "", 0.5), ("one_layer", "", 0.5), ("mp", "", 0.5),
                  *[("rp", r, 0.5) for r in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)],
                  *[(s, "", 31 / 32 - cr) for s in ("random_prune", "magnitude_prune")
                    for cr in (0.9, 0.92, 0.94, 0.96)]]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for dim in (64, 128):
            for i, (s, ratio, keep) in enumerate(strategies):
                for seed in (0, 1, 2):
                    cr = 31 / 32 - keep if s in ("random_prune", "magnitude_prune") else 0.9
                    w.writerow({"run": f"r{dim}{i}{seed}", "model": "convmixer", "dataset": "x",
                                "model_kwargs": json.dumps({"dim": dim, "depth": 4}),
                                "strategy": s, "ratio": ratio, "order": "copy",
                                "keep_ratio": keep, "seed": seed, "epochs": 3, "lr": 0.05,
                                "P": 1000, "U": 10, "CR": cr, "bytes": 2000 + 100 * i,
                                "bytes_source": "formula", "best_test_acc": 80 + i + seed,
                                "final_test_acc": 79 + i})
    return path


@pytest.mark.parametrize("metric", ["best_test_acc", "final_test_acc"])
def test_plots_and_table_cover_every_strategy(tmp_path, metric):
    csv_path = _synthetic_csv(tmp_path / "results.csv")
    paths = plot_results(csv_path, tmp_path / "fig", metric=metric, prefix="x_")
    assert len(paths) == 6 and all(p.name.startswith("x_") and p.stat().st_size for p in paths)
    table = summary_table(csv_path, metric=metric).splitlines()
    assert len(table) == 2 + 2 * 17
    assert "convmixer w64" in table[2] and "Dense" in table[2]
    if metric == "best_test_acc":
        assert "81.00 ± 1.00 | 3" in table[2]  # seeds 0, 1, 2 -> 80, 81, 82
