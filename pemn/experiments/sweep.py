"""Sweeps: a TOML grid of run configs, run by any number of processes (docs/SWEEPS.md)."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from pemn import config
from pemn.config import ConfigError, RunConfig
from pemn.distributed import World
from pemn.experiments.claims import STALE_AFTER, try_claim
from pemn.experiments.results import RESULT, record_results, write_result
from pemn.run import data_info, run
from pemn.rundir import RunDir, check_same_config

__all__ = ["Sweep", "load_sweep", "expand", "run_sweep", "describe_sweep", "shard_of"]

log = logging.getLogger(__name__)

SWEEP_KEYS = ("base_config", "seeds", "name", "results", "base", "grid", "points")
# keys that RunConfig.run_name() encodes (no name tag for them), besides the strategy's arguments
_NAMED_KEYS = {"data.dataset", "model.name", "mask.strategy", "mask.keep_ratio", "optim.epochs",
               "mask.seed", "optim.seed"}


@dataclasses.dataclass
class Sweep:
    """A parsed sweep file: base config keys and the override sets to cross with seeds."""

    path: Path
    base: dict  # {dotted key: value}: recipe file, then [base]
    override_sets: list[dict]  # {dotted key: value}, one per run before seeding
    seeds: list[int | None]
    name: str = ""  # run-name template, "" = run_name() + tags
    results: str = ""  # results JSONL, "" = <out_dir>/results.jsonl


def _overrides(table: Any, where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of config keys, got {table!r}")
    flat = config.flatten(table)
    if "name" in flat:
        raise ConfigError(f"{where} sets 'name'; sweeps name their runs, use the top-level "
                          f"name template instead")
    return flat


def _axis_values(key: str, values: Any, where: str) -> list[dict]:
    """One axis of a grid -> a list of override sets."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of values (put constants "
                          f"in [base]), got {values!r}")
    if "." in key or key in {f.name for f in dataclasses.fields(RunConfig)}:
        return [_overrides({key: v}, where) for v in values]
    # a label axis: each entry sets several keys at once
    return [_overrides(v, f"{where} {key}[{i}]") for i, v in enumerate(values)]


def _expand_grid(grid: Any, where: str) -> list[dict]:
    """A grid table -> one override set per combination of its axes."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must be a table of axes, got {grid!r}")
    axes, pending = [], list(grid.items())
    while pending:  # TOML dotted keys (mask.keep_ratio = [...]) arrive as nested tables
        key, value = pending.pop(0)
        if isinstance(value, dict):
            pending[:0] = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            axes.append(_axis_values(key, value, where))
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def load_sweep(path: str | Path) -> Sweep:
    """Parse a sweep file (docs/SWEEPS.md); ConfigError for unknown top-level keys, bad
    values or a missing base config."""
    path = Path(path)
    data = config.read_file(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r} in {path}; valid keys: "
                          f"{', '.join(SWEEP_KEYS)}")
    recipe = config.read_file(path.parent / data["base_config"]) if "base_config" in data else {}
    base = config.flatten(recipe)
    base.update(_overrides(data.get("base", {}), f"[base] of {path}"))
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    points = data.get("points", [])
    if not isinstance(points, list):
        raise ConfigError(f"points in {path} must be an array of tables ([[points]])")
    sets = [s for i, g in enumerate(grids) for s in _expand_grid(g, f"[[grid]] {i} of {path}")]
    sets += [_overrides(p, f"points[{i}] of {path}") for i, p in enumerate(points)]
    seeds = data.get("seeds", [None])  # None: the base's own seeds
    if "seeds" in data and not (isinstance(seeds, list) and seeds
                                and all(type(v) is int for v in seeds)):
        raise ConfigError(f"seeds in {path} must be a non-empty list of ints, got {seeds!r}")
    for key in ("name", "results"):  # a run-name template, a path
        if not isinstance(data.get(key, ""), str):
            raise ConfigError(f"{key} in {path} must be a string, got {data[key]!r}")
    return Sweep(path, base, sets or [{}], seeds, data.get("name", ""), data.get("results", ""))


def _build(sweep: Sweep, overrides: dict, seed: int | None) -> RunConfig:
    flat = {k: v for k, v in sweep.base.items()
            if not any(k == o or k.startswith(o + ".") for o in overrides)}
    flat.update(overrides)
    if seed is not None:
        flat.update({"mask.seed": seed, "optim.seed": seed})
    try:
        cfg = config.from_dict(RunConfig, config.unflatten(flat))
        config.validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{sweep.path}, run {overrides or '[base]'}: {e}") from None
    return cfg


def _run_name(sweep: Sweep, cfg: RunConfig, overrides: dict) -> str:
    if not sweep.name:
        tags = [f"-{k.rsplit('.', 1)[-1]}{config.format_value(v)}" for k, v in overrides.items()
                if k not in _NAMED_KEYS and not k.startswith("mask.strategy.")
                and not isinstance(v, (dict, list))]
        return cfg.run_name() + "".join(tags)
    flat = config.flatten(config.to_dict(cfg))
    fields = {"dataset": cfg.data.dataset, "model": cfg.model.name, "seed": cfg.mask.seed,
              "epochs": cfg.optim.epochs, "strategy": cfg.mask.strategy.tag(),
              "auto": cfg.run_name()}

    def field(match: re.Match) -> str:
        key = match.group(1)
        if key not in fields and key not in flat:
            raise ConfigError(f"name template {sweep.name!r} of {sweep.path}: {{{key}}} has no "
                              f"value for run {cfg.run_name()}")
        return config.format_value(fields[key] if key in fields else flat[key])

    return re.sub(r"\{([^{}]+)\}", field, sweep.name)


def expand(sweep: Sweep | str | Path) -> list[RunConfig]:
    """Every run of a sweep, seed by seed, each with a unique ``name``; ConfigError for a bad
    key or value in some combination, or two runs with the same name."""
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    configs, seen = [], {}
    for seed in sweep.seeds:
        for overrides in sweep.override_sets:
            cfg = _build(sweep, overrides, seed)
            cfg.name = _run_name(sweep, cfg, overrides)
            key = str(Path(cfg.out_dir) / cfg.name)
            if key in seen:
                raise ConfigError(f"two runs of {sweep.path} are both named {cfg.name!r} "
                                  f"({seen[key]} and {overrides}); add the key that differs to "
                                  f"the name template")
            seen[key] = overrides
            configs.append(cfg)
    return configs


def shard_of(shard: str | None = None, env=os.environ) -> tuple[int, int]:
    """``(K, N)`` from ``"K/N"``; without it, from a Slurm job array's variables; else (0, 1).
    ConfigError unless two integers with ``0 <= K < N``."""
    where, text = "--shard", shard
    if shard is None and "SLURM_ARRAY_TASK_ID" in env:
        names = [f"SLURM_ARRAY_TASK_{n}" for n in ("ID", "MIN", "STEP", "COUNT")]
        where = ", ".join(f"{n}={env[n]}" for n in names if n in env)
        task, first, step, count = (env.get(n, "") for n in names)
        text = "none"
        with contextlib.suppress(ValueError, ZeroDivisionError):
            text = f"{(int(task) - int(first or 0)) // int(step or 1)}/{int(count)}"
    m = re.fullmatch(r"(\d+)/(\d+)", (text or "0/1").strip())
    if not m or int(m[1]) >= int(m[2]):
        raise ConfigError(f"{where}: a shard is K/N with 0 <= K < N (e.g. 0/4), got {text}")
    return int(m[1]), int(m[2])


def describe_sweep(path: str | Path, limit: int | None = None, shard: str | None = None) -> str:
    """The plan of a sweep (or of one shard): one line per run, done or to do, and its cost."""
    k, n = shard_of(shard)
    configs = expand(path)[:limit][k::n]
    done = [RunDir.of(c).finished for c in configs]
    lines = [f"{'done' if d else 'todo'}  {c.name}" for c, d in zip(configs, done)]
    todo = [c for c, d in zip(configs, done) if not d]
    epochs = sum(c.optim.epochs for c in todo)
    images = sum(c.optim.epochs * data_info(c).num_train for c in todo)  # a folder's: read
    lines.append(f"{len(configs)} runs ({len(configs) - len(todo)} done, {len(todo)} to do): "
                 f"{epochs} epochs, {images / 1e6:.1f} M training images to go")
    spent = [RunDir.of(c).read_summary() for c, d in zip(configs, done) if d]
    if spent and todo:
        per_epoch = sum(s["wall_s"] for s in spent) / sum(s["epochs"] for s in spent)
        lines.append(f"estimate at the done runs' pace ({per_epoch:.1f} s/epoch): "
                     f"{per_epoch * epochs / 3600:.1f} h")
    return "\n".join(lines)


def run_sweep(path: str | Path, results: str | Path | None = None, limit: int | None = None,
              collect_only: bool = False, shard: str | None = None,
              stale_after: float | None = None) -> Path:
    """Claim, train (resume), pack and record the runs of a sweep (or of one shard) until every
    one has finished, by this or another process; return the results path (docs/SWEEPS.md).
    ConfigError: a bad sweep file or shard, or a run directory holding a different config."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    k, n = shard_of(shard)
    sweep = load_sweep(path)
    all_configs = expand(sweep)
    out = Path(results or sweep.results or Path(all_configs[0].out_dir) / "results.jsonl")
    stale_after = STALE_AFTER if stale_after is None else stale_after
    if not stale_after > 0:
        raise ConfigError(f"--stale-after is a time in seconds, > 0; got {stale_after}")
    world = World.from_env()
    configs = all_configs[:limit][k::n]
    todo, pause = list(enumerate(configs, 1)), min(stale_after / 4, 10.0)
    while todo:
        held = []
        for i, cfg in todo:
            state = _run_one(cfg, f"[{i}/{len(configs)}]", world, collect_only, stale_after)
            held += [(i, cfg)] if state == "held" else []
            if state == "recorded" and world.is_main:
                record_results(all_configs, out)
        if held:
            log.info("waiting for %d run(s) that other processes hold: %s", len(held),
                     ", ".join(c.name for _, c in held))
            time.sleep(pause)
        todo = held
    if world.is_main:
        record_results(all_configs, out)
    return out


def _run_one(cfg: RunConfig, step: str, world: World, collect_only: bool,
             stale_after: float) -> str:
    """One run: "held" by another process, or "recorded" now, or "done" (nothing to do)."""
    run_dir = RunDir.of(cfg)
    check_same_config(cfg, run_dir, "delete it or change the sweep's name template")
    result = run_dir.path / RESULT
    if result.is_file():
        log.info("%s %s: done already", step, cfg.name)
        return "done"
    claim = None  # collecting trains nothing; the ranks of one torchrun world train together
    if not collect_only and world.world_size == 1:
        claim = try_claim(run_dir.path, stale_after)
        if claim is None:
            return "held"
    with claim or contextlib.nullcontext():
        if result.is_file() or collect_only and not run_dir.finished:  # done since we looked
            return "done"
        if not run_dir.finished:
            log.info("%s %s ...", step, cfg.name)
            s = run(cfg, resume=True, progress=False)
            log.info("%s %s: best %.2f %%, final %.2f %%, %.0f s", step, cfg.name,
                     s["best_test_acc"], s["final_test_acc"], s["wall_s"])
        if not world.is_main or claim is not None and not claim.held():  # a taker records it
            return "done"
        write_result(cfg, run_dir)
        return "recorded"
