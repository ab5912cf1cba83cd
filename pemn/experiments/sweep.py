"""Sweeps: a TOML grid of run configs, run one after another, one results line per run.

A sweep file has these top-level keys (anything else is an error):

``base_config``
    Optional path to a run recipe (``configs/*.toml``), **relative to the sweep file**, so a
    sweep works from any working directory: ``base_config = "../cifar10_resnet32.toml"``.
``seeds``
    Optional list of ints, crossed with every run; a seed sets both ``mask.seed`` (random
    weights, scores, baseline masks) and ``optim.seed`` (data order, augmentation). Runs are
    ordered seed by seed, so a partial sweep already covers the whole grid once.
``name``
    Optional run-name template; see *Run names* below.
``results``
    Optional path of the results file, JSON lines (relative to the working directory, like
    ``out_dir``); default ``<out_dir>/results.jsonl``. Two sweeps may share an ``out_dir`` (and
    so reuse each other's identical runs) as long as they write different results files.
``[base]``
    Overrides for every run, as dotted keys (``"optim.lr" = 0.005``) or nested tables
    (``[base.optim]``). Tables are merged into the recipe, never replaced wholesale.
``[grid]`` or ``[[grid]]``
    Axes expanded as a cartesian product. A key with a dot (or ``out_dir``) is a config key and
    its list holds values: ``"mask.strategy" = [{ name = "mp" }, { name = "rp", ratio = 1e-3 }]``
    (a strategy table replaces the base's strategy whole); to vary a list-valued field, give a
    list of lists. Any other key is an axis *label* whose list holds tables of overrides, so one
    entry can set several keys at once:
    ``strategy = [{ "mask.strategy" = { name = "dense" }, "optim.lr" = 0.005 }]``.
    Several ``[[grid]]`` tables are expanded one after the other (a union of sub-grids): this
    is how "PEMN strategies, plus baselines at four CRs" or "dense with its own lr" are said.
``[[points]]``
    Explicit override sets, one run each (per seed), added after the grids.

Keys are checked by the config machinery (:func:`pemn.config.from_dict`): an unknown key fails
with the valid ones and a close match. The pruning baselines take the paper's compression ratio
as a strategy argument: ``{ name = "random_prune", cr = 0.9 }``.

*Run names.* Each run gets ``name`` set so that its directory is unique and stable (resume
relies on it). With a ``name`` template, ``{field}`` takes ``dataset``, ``model``,
``strategy`` (the strategy's tag: ``rp0.001``, ``rp0.001p`` for permuted,
``random_prune-cr0.9``), ``seed``,
``epochs``, ``auto`` (:meth:`RunConfig.run_name`) or any dotted config key
(``{model.kwargs.dim}``, ``{optim.lr}``). Without one, the name is ``run_name()`` plus a
``-<leaf><value>`` tag for each key the run's own grid entry or point sets that ``run_name()``
does not encode (``-dim64``, ``-lr0.005``). Two runs with the same name are an error.

A finished run is never retrained; a killed one resumes from its checkpoint through
``pemn.run.run(cfg, resume=True)``. If a run directory holds a different config than the sweep
now asks for, the sweep stops rather than mix results.

*Results.* Each finished run appends one JSON line to the results file: ``run`` (its name),
``config`` (the resolved config, :func:`pemn.config.to_dict`), ``summary`` (its metrics,
``summary.json``) and ``bytes`` (the packed artifact by section, ``header``, ``masks``,
``prototype``, ``norm``, ``other`` and ``total``, with ``bytes_source = "artifact"``; for
pruning baselines, which have no artifact, ``total`` by :func:`pemn.storage.formula_bytes` and
``bytes_source = "formula"``), and ``readings``: the packed model in every storage reading at
``exact`` and ``fp16`` precision (:func:`result_record`; the competitor strategies of
``pemn.competitors`` are packed too). :func:`export_csv` writes a flat CSV of it.

Example::

    >>> from pemn.experiments import expand, load_sweep, run_sweep
    >>> len(expand(load_sweep("configs/sweeps/fmnist_cpu.toml")))
    78
    >>> run_sweep("configs/sweeps/fmnist_cpu.toml", limit=2)  # doctest: +SKIP
    PosixPath('runs/fmnist_cpu/results.jsonl')
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from pemn.config import (
    ConfigError,
    RunConfig,
    flatten,
    format_value,
    from_dict,
    to_dict,
    unflatten,
    validate,
)
from pemn.data import dataset_info
from pemn.distributed import World
from pemn.fileio import atomic_write
from pemn.run import RunDir, check_same_config, run
from pemn.storage import size_report, storage_readings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Sweep", "load_sweep", "expand", "run_sweep", "describe_sweep", "result_record",
           "record_results", "read_records", "export_csv", "CSV_COLUMNS"]

log = logging.getLogger(__name__)

SWEEP_KEYS = ("base_config", "seeds", "name", "results", "base", "grid", "points")
CSV_COLUMNS = ("run", "dataset", "model", "model_kwargs", "strategy", "label", "keep_ratio",
               "seed", "epochs", "lr", "P", "U", "CR", "bytes", "bytes_source", "best_test_acc",
               "final_test_acc", "best_val_acc", "test_acc_at_best_val", "wall_s",
               "images_per_s")
# keys that RunConfig.run_name() already encodes (no extra name tag for them), besides the
# strategy's arguments (its tag holds them)
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


# ------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------

def _overrides(table: Any, where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of config keys, got {table!r}")
    flat = flatten(table)
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


def _grid_axes(grid: dict, where: str) -> list[list[dict]]:
    axes, pending = [], list(grid.items())
    while pending:  # TOML dotted keys (mask.keep_ratio = [...]) arrive as nested tables
        key, value = pending.pop(0)
        if isinstance(value, dict):
            pending[:0] = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            axes.append(_axis_values(key, value, where))
    return axes


def _expand_grid(grid: Any, where: str) -> list[dict]:
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must be a table of axes, got {grid!r}")
    axes = _grid_axes(grid, where)
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def _field(data: dict, key: str, path: Path, check, what: str, default):
    value = data.get(key, default)
    if not check(value):
        raise ConfigError(f"{key} in {path} must be {what}, got {value!r}")
    return value


def _is_seed(s) -> bool:
    return s is None or isinstance(s, int) and not isinstance(s, bool)


def load_sweep(path: str | Path) -> Sweep:
    """Parse a sweep file (see the module docstring for its keys).

    Raises:
        ConfigError: unknown top-level keys, bad values, a missing base config.
    """
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r} in {path}; valid keys: "
                          f"{', '.join(SWEEP_KEYS)}")
    base = flatten(_read_toml(path.parent / data["base_config"])) if "base_config" in data else {}
    base.update(_overrides(data.get("base", {}), f"[base] of {path}"))
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    points = data.get("points", [])
    if not isinstance(points, list):
        raise ConfigError(f"points in {path} must be an array of tables ([[points]])")
    sets = [s for i, g in enumerate(grids) for s in _expand_grid(g, f"[[grid]] {i} of {path}")]
    sets += [_overrides(p, f"points[{i}] of {path}") for i, p in enumerate(points)]
    seeds = _field(data, "seeds", path, lambda v: isinstance(v, list) and v and all(map(_is_seed, v)),
                   "a non-empty list of ints", [None])
    name = _field(data, "name", path, lambda v: isinstance(v, str), "a template string", "")
    results = _field(data, "results", path, lambda v: isinstance(v, str), "a path string", "")
    return Sweep(path, base, sets or [{}], seeds, name, results)


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


# ------------------------------------------------------------------------------------------
# Expansion into RunConfigs
# ------------------------------------------------------------------------------------------

def _build(sweep: Sweep, overrides: dict, seed: int | None) -> RunConfig:
    flat = {k: v for k, v in sweep.base.items()
            if not any(k == o or k.startswith(o + ".") for o in overrides)}
    flat.update(overrides)
    if seed is not None:
        flat.update({"mask.seed": seed, "optim.seed": seed})
    try:
        cfg = from_dict(RunConfig, unflatten(flat))
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{sweep.path}, run {overrides or '[base]'}: {e}") from None
    return cfg


def _run_name(sweep: Sweep, cfg: RunConfig, overrides: dict) -> str:
    if not sweep.name:
        tags = [f"-{k.rsplit('.', 1)[-1]}{format_value(v)}" for k, v in overrides.items()
                if k not in _NAMED_KEYS and not k.startswith("mask.strategy.")
                and not isinstance(v, (dict, list))]
        return cfg.run_name() + "".join(tags)
    flat = flatten(to_dict(cfg))
    fields = {"dataset": cfg.data.dataset, "model": cfg.model.name, "seed": cfg.mask.seed,
              "epochs": cfg.optim.epochs, "strategy": cfg.mask.strategy.tag(),
              "auto": cfg.run_name()}

    def field(match: re.Match) -> str:
        key = match.group(1)
        if key not in fields and key not in flat:
            raise ConfigError(f"name template {sweep.name!r} of {sweep.path}: {{{key}}} has no "
                              f"value for run {cfg.run_name()}")
        return format_value(fields[key] if key in fields else flat[key])

    return re.sub(r"\{([^{}]+)\}", field, sweep.name)


def expand(sweep: Sweep | str | Path) -> list[RunConfig]:
    """Every run of a sweep, seed by seed, each with a unique ``name``.

    Raises:
        ConfigError: a bad key or value in some combination, or two runs with the same name.
    """
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


# ------------------------------------------------------------------------------------------
# Results: one JSON line per run, and a CSV export
# ------------------------------------------------------------------------------------------

def _bytes(summary: dict, run_dir: RunDir) -> tuple[dict, str]:
    """The artifact's bytes by section (every strategy has one; an old run may lack it)."""
    if run_dir.artifact.is_file():
        return size_report(run_dir.artifact)["bytes"], "artifact"
    return {}, "none"


def _readings(run_dir: RunDir) -> dict:
    """The artifact's model packed in each storage reading, ``exact`` and ``fp16`` (real
    bytes, :func:`pemn.storage.storage_readings`); empty without an artifact."""
    if not run_dir.artifact.is_file():
        return {}
    from pemn.artifact import load
    model = load(run_dir.artifact)
    header = model.pemn_header  # the same dataset and metadata as the file
    return {precision: storage_readings(model, precision, dataset=header.dataset,
                                        metadata=header.metadata)
            for precision in ("exact", "fp16")}


def result_record(cfg: RunConfig, summary: dict, run_dir: RunDir) -> dict:
    """The results line of a finished run: its name, resolved config, metrics and bytes.

    ``readings`` holds every storage reading of the packed model at both precisions, e.g.
    ``{"exact": {"total": ...}, "fp16": {"total": ..., ...}}``; a ``Sparse`` run also has
    ``mask_fp32``, ``bitmap_fp32``, ``csr`` and ``values_only`` in each.
    """
    sizes, source = _bytes(summary, run_dir)
    return {"run": cfg.name, "config": to_dict(cfg), "summary": summary, "bytes": sizes,
            "bytes_source": source, "readings": _readings(run_dir)}


def read_records(path: str | Path) -> list[dict]:
    """The lines of a results file (none if it does not exist yet).

    Raises:
        ValueError: a line that is not a pemn results record.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i} is not JSON: {e}") from None
        if not isinstance(record, dict) or not {"run", "config", "summary"} <= record.keys():
            raise ValueError(f"{path}:{i} is not a pemn results line (run, config, summary)")
        records.append(record)
    return records


def record_results(configs: list[RunConfig], path: str | Path) -> int:
    """Append a line for every finished run of ``configs`` that ``path`` does not hold yet.

    Returns:
        How many lines were appended.
    """
    path = Path(path)
    done = {r["run"] for r in read_records(path)}
    new = [c for c in configs if c.name not in done and RunDir.of(c).finished]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for cfg in new:
                run_dir = RunDir.of(cfg)
                f.write(json.dumps(result_record(cfg, run_dir.read_summary(), run_dir)) + "\n")
    return len(new)


def csv_row(record: dict) -> dict:
    """One flat :data:`CSV_COLUMNS` row of a results line."""
    cfg, s = from_dict(RunConfig, record["config"]), record["summary"]
    strategy = cfg.mask.strategy
    return {"run": record["run"], "dataset": cfg.data.dataset, "model": cfg.model.name,
            "model_kwargs": json.dumps(cfg.model.kwargs, sort_keys=True, separators=(",", ":")),
            "strategy": strategy.tag(), "label": strategy.label(),
            "keep_ratio": strategy.keep_ratio(cfg.mask.keep_ratio), "seed": cfg.mask.seed,
            "epochs": cfg.optim.epochs, "lr": cfg.optim.lr, "P": s["num_masked"],
            "U": s["num_unique"], "CR": s["compression_ratio"],
            "bytes": record["bytes"]["total"], "bytes_source": record["bytes_source"],
            **{k: s.get(k, "") for k in CSV_COLUMNS[15:]}}


def export_csv(results: str | Path, csv_path: str | Path) -> Path:
    """Write the results lines as a flat CSV (:data:`CSV_COLUMNS`), for spreadsheets."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in read_records(results))
    atomic_write(Path(csv_path), out.getvalue().encode())
    return Path(csv_path)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------

def describe_sweep(path: str | Path, limit: int | None = None) -> str:
    """The plan of a sweep: one line per run (done or to do) and a size estimate."""
    configs = expand(path)[:limit]
    done = [RunDir.of(c).finished for c in configs]
    lines = [f"{'done' if d else 'todo'}  {c.name}" for c, d in zip(configs, done)]
    todo = [c for c, d in zip(configs, done) if not d]
    epochs = sum(c.optim.epochs for c in todo)
    images = sum(c.optim.epochs * dataset_info(c.data.dataset).num_train for c in todo)
    lines.append(f"{len(configs)} runs ({len(configs) - len(todo)} done, {len(todo)} to do): "
                 f"{epochs} epochs, {images / 1e6:.1f} M training images to go")
    spent = [RunDir.of(c).read_summary() for c, d in zip(configs, done) if d]
    if spent and todo:
        per_epoch = sum(s["wall_s"] for s in spent) / sum(s["epochs"] for s in spent)
        lines.append(f"estimate at the done runs' pace ({per_epoch:.1f} s/epoch): "
                     f"{per_epoch * epochs / 3600:.1f} h")
    return "\n".join(lines)


def run_sweep(path: str | Path, results: str | Path | None = None, limit: int | None = None,
              collect_only: bool = False) -> Path:
    """Run a sweep's configs in order, skipping finished runs; return the results path.

    Each run goes through ``pemn.run.run(cfg, resume=True, progress=False)``, so a killed
    sweep resumes where it stopped. After every run its artifact is packed and its line
    appended to the results; at the end the CSV export (same path, ``.csv``) is rewritten.

    Args:
        path: the sweep TOML.
        results: the results JSONL (default: the sweep's ``results`` key, else
            ``<out_dir>/results.jsonl`` of the first run).
        limit: only the first ``limit`` runs of the sweep.
        collect_only: train nothing; pack the finished runs and record them (e.g. while
            another process is still running part of the grid).

    Raises:
        ConfigError: a bad sweep file, or a run directory holding a different config.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    sweep = load_sweep(path)
    all_configs = expand(sweep)
    configs = all_configs[:limit]
    out = Path(results or sweep.results or Path(all_configs[0].out_dir) / "results.jsonl")
    main = World.from_env().is_main  # under torchrun only rank 0 writes results
    for i, cfg in enumerate(configs, 1):
        run_dir = RunDir.of(cfg)
        check_same_config(cfg, run_dir, "delete it or change the sweep's name template")
        if run_dir.finished:
            log.info("[%d/%d] %s: done already, best %.2f %%", i, len(configs), cfg.name,
                     run_dir.read_summary()["best_test_acc"])
        elif collect_only:
            continue
        else:
            log.info("[%d/%d] %s ...", i, len(configs), cfg.name)
            s = run(cfg, resume=True, progress=False)
            log.info("[%d/%d] %s: best %.2f %%, final %.2f %%, %.0f s", i, len(configs),
                     cfg.name, s["best_test_acc"], s["final_test_acc"], s["wall_s"])
        if main:
            _pack(cfg, run_dir)
            record_results([cfg], out)
    if main:
        export_csv(out, out.with_suffix(".csv"))
    return out


def _pack(cfg: RunConfig, run_dir: RunDir) -> None:
    """Write the run's ``.pemn`` artifact, so the results hold real bytes on disk.

    Every strategy has one, the pruning baselines (``Sparse`` presets) included.
    """
    if run_dir.artifact.exists():
        return
    from pemn.run import pack_trained
    pack_trained(run_dir.path, run_dir.artifact)
