"""Config: every shipped config and sweep round-trips through its dict; strategy keys."""
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import pemn
from pemn.config import (
    ConfigError,
    OptimConfig,
    RunConfig,
    flatten,
    format_value,
    from_dict,
    load_config,
    to_dict,
    unflatten,
)
from pemn.experiments import expand
from pemn.fill import STRATEGIES
from pemn.train import make_optimizer

CONFIGS = Path(__file__).parent.parent / "configs"


def _round_trip(cfg: RunConfig) -> RunConfig:
    return from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_round_trip(path):
    cfg = load_config(path)
    assert _round_trip(cfg) == cfg
    assert to_dict(cfg)["mask"]["strategy"]["name"] == cfg.mask.strategy.name


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_sweeps_round_trip(path):
    configs = expand(path)
    assert configs and all(_round_trip(c) == c for c in configs)


def test_demo_config_is_rp_1e3_in_the_defaults():
    cfg = load_config(CONFIGS / "fmnist_convmixer.toml")
    assert cfg.mask.strategy == pemn.RP(1e-3) and cfg.optim.nesterov
    assert cfg.mask.strategy.values == "signed_constant" and cfg.mask.strategy.order == "permuted"


@pytest.mark.parametrize("overrides, strategy", [
    (["mask.strategy.ratio=0.01"], pemn.RP(0.01)),  # an argument of the file's strategy
    (["mask.strategy=mp"], pemn.MP()),  # a bare name: that strategy's defaults
    (['mask.strategy={name="random_prune", cr=0.92}'], pemn.RandomPrune(0.92)),
    (["mask.strategy=mp", "mask.strategy={name='rp', order='permuted'}"],
     pemn.RP(1e-3, "permuted")),
])
def test_strategy_overrides(tmp_path, overrides, strategy):
    f = tmp_path / "c.toml"
    f.write_text('[mask]\nstrategy = { name = "rp", ratio = 0.1 }\n')
    assert load_config(f, overrides).mask.strategy == strategy


def test_strategy_arguments_apply_to_the_default():
    assert load_config(None, ["mask.strategy.order=permuted"]).mask.strategy == pemn.RP(
        1e-3, "permuted")


@pytest.mark.parametrize("overrides, match", [
    (["mask.ratio=0.1"], "unknown config key 'mask.ratio'"),
    (["mask.strategy={name='rp', ratio=2}"], r"mask\.strategy: RP ratio must be in \(0, 1\]"),
    (["mask.strategy=mp", "mask.strategy.ratio=0.1"], "'mask.strategy' is a value"),
    (["mask.strategy={name='mp', ratio=0.1}"], "bad arguments for strategy 'mp'"),
    (["mask.strategy=quantized", "mask.keep_ratio=0.3"], "leave mask.keep_ratio out"),
    (["mask.strategy={name='random_prune', cr=0.9}", "mask.keep_ratio=0.1"],
     "leave mask.keep_ratio out"),
])
def test_bad_strategy_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_flatten_keeps_a_strategy_whole_and_merges_sections():
    flat = flatten({"mask": {"strategy": {"name": "rp", "ratio": 0.1}, "seed": 1},
                    "model": {"kwargs": {"dim": 64}}, "optim.lr": 0.5})
    assert flat == {"mask.strategy": {"name": "rp", "ratio": 0.1}, "mask.seed": 1,
                    "model.kwargs.dim": 64, "optim.lr": 0.5}
    assert unflatten({"mask.strategy.ratio": 0.2, "mask.strategy": {"name": "rp"}}) == {
        "mask": {"strategy": {"name": "rp", "ratio": 0.2}}}


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_nesterov_follows_the_config(nesterov):
    opt = make_optimizer(torch.nn.Linear(2, 2), OptimConfig(optimizer="sgd", nesterov=nesterov))
    assert opt.defaults["nesterov"] is nesterov


def test_values_are_formatted_for_people():
    assert format_value(0.1 * 3) == "0.3"  # not 0.30000000000000004
    assert (format_value(1e-3), format_value(3), format_value(pemn.RP(1e-2))) == (
        "0.001", "3", "RP 1e-2")
    assert (format_value(80128, 4, ","), format_value(2 / 3, 4), format_value(True, 4, ",")) == (
        "80,128", "0.6667", "True")  # for people: grouped counts, short floats


RESULTS = Path(__file__).parent.parent / "docs" / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_committed_results_name_every_strategy_field(path):
    # A stored strategy reads with today's defaults: a line that left a field out would change
    # meaning the day that field's default changes (as values and order once did). A preset
    # name (random_prune) is a constructor's arguments, not a strategy's fields.
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for stored in (record["config"]["mask"]["strategy"], record["summary"]["strategy"]):
            cls = STRATEGIES.get(stored["name"])
            assert cls is None or set(stored) == {"name", *(f.name for f in fields(cls))}


def test_the_paper_lines_of_the_cpu_grid_read_as_normal_values_in_copy_order():
    lines = [json.loads(line) for line in (RESULTS / "fmnist_cpu.jsonl").read_text().splitlines()]
    fills = [from_dict(RunConfig, r["config"]).mask.strategy for r in lines]
    fills = [s for s in fills if s.name in ("mask", "one_layer", "mp", "rp")]
    assert len(fills) == 48 and all(s.values == "normal" for s in fills)
    assert all(s.order == "copy" for s in fills if s.name == "rp")
