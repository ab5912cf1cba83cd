"""Sweeps: a TOML grid of run configs, run one after another, results rewritten as one CSV.

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
    Optional path of the results CSV (relative to the working directory, like ``out_dir``);
    default ``<out_dir>/results.csv``. Two sweeps may share an ``out_dir`` (and so reuse each
    other's identical runs) as long as they write different CSVs.
``[base]``
    Overrides for every run, as dotted keys (``"optim.lr" = 0.005``) or nested tables
    (``[base.optim]``). Tables are merged into the recipe, never replaced wholesale.
``[grid]`` or ``[[grid]]``
    Axes expanded as a cartesian product. A key with a dot (or ``out_dir``) is a config key and
    its list holds values: ``"mask.ratio" = [1e-1, 1e-2]``; to vary a list-valued field, give a
    list of lists. Any other key is an axis *label* whose list holds tables of overrides, so one
    entry can set several keys at once:
    ``strategy = [{ "mask.strategy" = "mp" }, { "mask.strategy" = "rp", "mask.ratio" = 1e-3 }]``.
    Several ``[[grid]]`` tables are expanded one after the other (a union of sub-grids): this
    is how "PEMN strategies, plus baselines at four CRs" or "dense with its own lr" are said.
``[[points]]``
    Explicit override sets, one run each (per seed), added after the grids.

``"mask.cr"`` is sugar for the pruning baselines: the paper's compression ratio (a fraction,
e.g. 0.90), turned into ``mask.keep_ratio = 31/32 - cr`` by
:func:`pemn.baselines.keep_ratio_for_cr` (1-bit mask + fp32 kept values, PEMN.md §5.5). It is
an error on a PEMN or dense run.

*Run names.* Each run gets ``name`` set so that its directory is unique and stable (resume
relies on it). With a ``name`` template, ``{field}`` takes ``dataset``, ``model``,
``strategy`` (``rp0.001``, ``rp0.001p`` for permuted, ``random_prune-cr0.9``), ``seed``,
``epochs``, ``auto`` (:meth:`RunConfig.run_name`) or any dotted config key
(``{model.kwargs.dim}``, ``{optim.lr}``). Without one, the name is ``run_name()`` plus a
``-<leaf><value>`` tag for each key the run's own grid entry or point sets that ``run_name()``
does not encode (``-dim64``, ``-lr0.005``). Two runs with the same name are an error.

A finished run (``summary.json`` present) is never retrained; a killed one resumes from its
checkpoint through ``pemn.run.run(cfg, resume=True)``. If a run directory holds a different
config than the sweep now asks for, the sweep stops rather than mix results.

Example::

    >>> from pemn.experiments import expand, load_sweep, run_sweep
    >>> len(expand(load_sweep("configs/sweeps/fmnist_cpu.toml")))
    78
    >>> run_sweep("configs/sweeps/fmnist_cpu.toml", limit=2)  # doctest: +SKIP
    PosixPath('runs/fmnist_cpu/results.csv')
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import itertools
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, get_type_hints

from pemn.baselines import BASELINES, keep_ratio_for_cr
from pemn.config import ConfigError, RunConfig, from_dict, to_dict, validate
from pemn.run import SUMMARY, run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Sweep", "load_sweep", "expand", "run_sweep", "describe_sweep", "collect_results",
           "result_row", "strategy_tag", "CSV_COLUMNS", "ARTIFACT_FILE"]

log = logging.getLogger(__name__)

SWEEP_KEYS = ("base_config", "seeds", "name", "results", "base", "grid", "points")
CSV_COLUMNS = ("run", "model", "model_kwargs", "dataset", "strategy", "ratio", "order",
               "keep_ratio", "seed", "epochs", "lr", "P", "U", "CR", "bytes", "bytes_source",
               "best_test_acc", "final_test_acc", "best_val_acc", "test_acc_at_best_val",
               "wall_s", "images_per_s")
ARTIFACT_FILE = "model.pemn"  # read for the bytes column when a run directory holds one
CR_KEY = "mask.cr"
# keys that RunConfig.run_name() already encodes (no extra name tag for them)
_NAMED_KEYS = {"data.dataset", "model.name", "mask.strategy", "mask.ratio", "mask.order",
               "mask.keep_ratio", CR_KEY, "optim.epochs", "mask.seed", "optim.seed"}
# differences in these keys do not make an existing run directory a different run
_IGNORED_KEYS = {"out_dir", "name", "optim.device", "optim.eval_batch_size"}
# training-set sizes, for the dry-run estimate only (images per epoch)
_TRAIN_IMAGES = {"digits": 1438, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
                 "cifar100": 50000, "tiny_imagenet": 100000}


@dataclasses.dataclass
class Sweep:
    """A parsed sweep file: a base config dict and the override sets to cross with seeds."""

    path: Path
    base: dict  # nested RunConfig dict: recipe file merged with [base]
    override_sets: list[dict]  # flat {dotted key: value}, one per run before seeding
    seeds: list[int | None]
    name: str = ""  # run-name template, "" = run_name() + tags
    results: str = ""  # results CSV, "" = <out_dir>/results.csv


# ------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------

def _flatten(table: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1}, "mask.ratio": 2}`` -> ``{"optim.lr": 1, "mask.ratio": 2}``.

    Dict-typed config fields (``model.kwargs``) flatten too, so tables always merge.
    """
    out = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _check_key(key: str, where: str) -> None:
    """Raise ConfigError unless ``key`` names a RunConfig field (or a dict field's entry)."""
    if key == CR_KEY:
        return
    cls, parts = RunConfig, key.split(".")
    for i, part in enumerate(parts):
        hints = get_type_hints(cls)
        if part not in hints:
            done = ".".join(parts[:i])
            names = [f"{done}.{n}" if done else n for n in hints]
            close = difflib.get_close_matches(".".join(parts[: i + 1]), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {where}{hint}; valid keys here: "
                              f"{', '.join(names)}")
        typ = hints[part]
        if not dataclasses.is_dataclass(typ):
            if typ is dict or i == len(parts) - 1:
                return  # a dict field takes any entry (model.kwargs.dim)
            raise ConfigError(f"config key {key!r} in {where}: {'.'.join(parts[: i + 1])!r} "
                              f"is not a section")
        cls = typ
    raise ConfigError(f"{key!r} in {where} is a section; set one of its keys")


def _overrides(table: Any, where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of config keys, got {table!r}")
    flat = _flatten(table)
    for key in flat:
        if key == "name":
            raise ConfigError(f"{where} sets 'name'; sweeps name their runs, use the top-level "
                              f"name template instead")
        _check_key(key, where)
    return flat


def _axis_values(key: str, values: Any, where: str) -> list[dict]:
    """One axis of a grid -> a list of flat override dicts."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of values (put constants "
                          f"in [base]), got {values!r}")
    if "." in key or key in get_type_hints(RunConfig):
        _check_key(key, where)
        return [_flatten({key: v}) for v in values]
    # a label axis: each entry sets several keys at once
    return [_overrides(v, f"{where} {key}[{i}]") for i, v in enumerate(values)]


def _grid_axes(grid: dict, where: str) -> list[list[dict]]:
    axes, pending = [], list(grid.items())
    while pending:  # TOML dotted keys (mask.ratio = [...]) arrive as nested tables
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


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file (see the module docstring for its keys).

    Raises:
        ConfigError: unknown top-level or config keys, bad values, a missing base config.
    """
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r} in {path}; valid keys: "
                          f"{', '.join(SWEEP_KEYS)}")
    base: dict = {}
    if "base_config" in data:
        base = _read_toml(path.parent / data["base_config"])
    for key, value in _overrides(data.get("base", {}), f"[base] of {path}").items():
        _set(base, key, value)
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    points = data.get("points", [])
    if not isinstance(points, list):
        raise ConfigError(f"points in {path} must be an array of tables ([[points]])")
    sets = [s for i, g in enumerate(grids) for s in _expand_grid(g, f"[[grid]] {i} of {path}")]
    sets += [_overrides(p, f"points[{i}] of {path}") for i, p in enumerate(points)]
    seeds = data.get("seeds", [None])
    if (not isinstance(seeds, list) or not seeds
            or not all(s is None or isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"seeds in {path} must be a non-empty list of ints, got {seeds!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"name in {path} must be a template string, got {name!r}")
    results = data.get("results", "")
    if not isinstance(results, str):
        raise ConfigError(f"results in {path} must be a path string, got {results!r}")
    return Sweep(path, base, sets or [{}], seeds, name, results)


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


def _set(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = copy.deepcopy(value)


# ------------------------------------------------------------------------------------------
# Expansion into RunConfigs
# ------------------------------------------------------------------------------------------

def _build(sweep: Sweep, overrides: dict, seed: int | None) -> RunConfig:
    data = copy.deepcopy(sweep.base)
    overrides = dict(overrides)
    if seed is not None:
        overrides.update({"mask.seed": seed, "optim.seed": seed})
    cr = overrides.pop(CR_KEY, _get(data, CR_KEY))
    data.get("mask", {}).pop("cr", None)
    for key, value in overrides.items():
        _set(data, key, value)
    cfg = from_dict(RunConfig, data)
    if cr is not None:
        if cfg.mask.strategy not in BASELINES:
            raise ConfigError(f"{CR_KEY} = {cr} applies to the pruning baselines "
                              f"{sorted(BASELINES)}, not to mask.strategy = "
                              f"{cfg.mask.strategy!r}")
        try:
            cfg.mask.keep_ratio = round(keep_ratio_for_cr(cr), 10)  # 0.06875, not ...998
        except ValueError as e:
            raise ConfigError(f"{CR_KEY}: {e}") from None
    validate(cfg)
    return cfg


def _get(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def strategy_tag(cfg: RunConfig) -> str:
    """``rp0.001`` (``p`` suffix when permuted), ``random_prune-cr0.9``, or the strategy."""
    m = cfg.mask
    if m.strategy == "rp":
        return f"rp{m.ratio:g}{'p' if m.order == 'permuted' else ''}"
    if m.strategy in BASELINES:
        return f"{m.strategy}-cr{round(31 / 32 - m.keep_ratio, 6):g}"
    return m.strategy


def _run_name(sweep: Sweep, cfg: RunConfig, overrides: dict) -> str:
    if not sweep.name:
        tags = [f"-{k.rsplit('.', 1)[-1]}{_fmt(v)}" for k, v in overrides.items()
                if k not in _NAMED_KEYS and not isinstance(v, (dict, list))]
        return cfg.run_name() + "".join(tags)
    flat = _flatten(to_dict(cfg))
    fields = {"dataset": cfg.data.dataset, "model": cfg.model.name, "seed": cfg.mask.seed,
              "epochs": cfg.optim.epochs, "strategy": strategy_tag(cfg), "auto": cfg.run_name()}

    def field(match: re.Match) -> str:
        key = match.group(1)
        if key not in fields and key not in flat:
            raise ConfigError(f"name template {sweep.name!r} of {sweep.path}: {{{key}}} has no "
                              f"value for run {cfg.run_name()}")
        return _fmt(fields[key] if key in fields else flat[key])

    return re.sub(r"\{([^{}]+)\}", field, sweep.name)


def expand(sweep: Sweep | str | Path) -> list[RunConfig]:
    """Every run of a sweep, seed by seed, each with a unique ``name``.

    Raises:
        ConfigError: a bad value in some combination, or two runs with the same name.
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
# Results
# ------------------------------------------------------------------------------------------

def _bytes(summary: dict, run_dir: Path) -> tuple[int, str]:
    """Artifact file size if the run saved one, else the paper-style formula (PEMN.md §5.4).

    Formula: dense ``4 (P + other)``; PEMN ``ceil(P/8) + 4 U + 4 other``; baselines the same
    with U = the kept weights (fp32 values behind a 1-bit mask). ``other`` = BN, biases and
    unmasked tensors in fp32.
    """
    artifact = run_dir / ARTIFACT_FILE
    if artifact.is_file():
        return artifact.stat().st_size, "artifact"
    p, u, other = summary["num_masked"], summary["num_unique"], summary["num_other_params"]
    if summary["strategy"] == "dense":
        return 4 * (p + other), "formula"
    return math.ceil(p / 8) + 4 * u + 4 * other, "formula"


def result_row(cfg: RunConfig, summary: dict, run_dir: Path) -> dict:
    """One CSV row (:data:`CSV_COLUMNS`) from a run's config and ``summary.json``."""
    num_bytes, source = _bytes(summary, run_dir)
    row = {k: summary.get(k) for k in CSV_COLUMNS}
    row.update(run=cfg.name or summary["run"], model_kwargs=json.dumps(cfg.model.kwargs,
               sort_keys=True, separators=(",", ":")), lr=cfg.optim.lr, P=summary["num_masked"],
               U=summary["num_unique"], CR=summary["compression_ratio"], bytes=num_bytes,
               bytes_source=source)
    return {k: "" if v is None else v for k, v in row.items()}


def collect_results(configs: list[RunConfig], results_csv: str | Path) -> Path:
    """(Re)write ``results_csv`` from the summaries of every finished run in ``configs``.

    Rewriting (atomically) instead of appending keeps one row per run whatever happened before.
    """
    rows = []
    for cfg in configs:
        run_dir = Path(cfg.out_dir) / cfg.name
        if (run_dir / SUMMARY).is_file():
            rows.append(result_row(cfg, json.loads((run_dir / SUMMARY).read_text()), run_dir))
    path = Path(results_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------

def _comparable(config: dict) -> dict:
    return {k: v for k, v in _flatten(config).items() if k not in _IGNORED_KEYS}


def _check_existing(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume or reuse a run directory that was made by a different config.

    Only keys present on both sides are compared, so a config field added to ``pemn`` later
    does not orphan finished runs.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return
    old, new = _comparable(json.loads(path.read_text())), _comparable(to_dict(cfg))
    diff = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    if diff:
        raise ConfigError(f"{run_dir} was made with a different config ({', '.join(diff)}: "
                          f"{[old.get(k) for k in diff]} there, {[new.get(k) for k in diff]} "
                          f"now); delete it or change the sweep's name template")


def describe_sweep(path: str | Path, limit: int | None = None) -> str:
    """The plan of a sweep: one line per run (done or to do) and a size estimate."""
    configs = expand(path)[:limit]
    done = [(Path(c.out_dir) / c.name / SUMMARY).is_file() for c in configs]
    lines = [f"{'done' if d else 'todo'}  {c.name}" for c, d in zip(configs, done)]
    todo = [c for c, d in zip(configs, done) if not d]
    epochs = sum(c.optim.epochs for c in todo)
    images = sum(c.optim.epochs * _TRAIN_IMAGES.get(c.data.dataset, 0) for c in todo)
    lines.append(f"{len(configs)} runs ({len(configs) - len(todo)} done, {len(todo)} to do): "
                 f"{epochs} epochs, {images / 1e6:.1f} M training images to go")
    spent = [json.loads((Path(c.out_dir) / c.name / SUMMARY).read_text())
             for c, d in zip(configs, done) if d]
    if spent and todo:
        per_epoch = sum(s["wall_s"] for s in spent) / sum(s["epochs"] for s in spent)
        lines.append(f"estimate at the done runs' pace ({per_epoch:.1f} s/epoch): "
                     f"{per_epoch * epochs / 3600:.1f} h")
    return "\n".join(lines)


def run_sweep(path: str | Path, results_csv: str | Path | None = None, dry_run: bool = False,
              limit: int | None = None, collect_only: bool = False) -> Path:
    """Run a sweep's configs in order, skipping finished runs; return the results CSV path.

    Each run goes through ``pemn.run.run(cfg, resume=True, progress=False)``, so a killed
    sweep resumes where it stopped. After every run the CSV (default
    ``<out_dir>/results.csv`` of the first run) is rewritten from all finished summaries.

    Args:
        path: the sweep TOML.
        results_csv: where to write the results (default: the sweep's ``results`` key, else
            ``<out_dir>/results.csv``).
        dry_run: only log the plan (:func:`describe_sweep`); nothing is trained or written.
        limit: only the first ``limit`` runs of the sweep.
        collect_only: train nothing; pack the finished runs and rewrite the CSV (e.g. while
            another process is still running part of the grid).

    Raises:
        ConfigError: a bad sweep file, or a run directory holding a different config.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    sweep = load_sweep(path)
    all_configs = expand(sweep)
    configs = all_configs[:limit]
    csv_path = Path(results_csv or sweep.results or Path(all_configs[0].out_dir) / "results.csv")
    if dry_run:
        log.info("%s", describe_sweep(path, limit))
        return csv_path
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the CSV
    for i, cfg in enumerate(configs, 1):
        run_dir = Path(cfg.out_dir) / cfg.name
        _check_existing(cfg, run_dir)
        if collect_only and not (run_dir / SUMMARY).is_file():
            continue
        if (run_dir / SUMMARY).is_file():
            s = json.loads((run_dir / SUMMARY).read_text())
            log.info("[%d/%d] %s: done already, best %.2f %%", i, len(configs), cfg.name,
                     s["best_test_acc"])
        else:
            log.info("[%d/%d] %s ...", i, len(configs), cfg.name)
            s = run(cfg, resume=True, progress=False)
            log.info("[%d/%d] %s: best %.2f %%, final %.2f %%, %.0f s", i, len(configs),
                     cfg.name, s["best_test_acc"], s["final_test_acc"], s["wall_s"])
        if main:
            _pack(cfg, run_dir)
            collect_results(all_configs, csv_path)
    if main:
        collect_results(all_configs, csv_path)
    return csv_path


def _pack(cfg, run_dir: Path) -> None:
    """Write the run's ``.pemn`` artifact, so the results hold real bytes on disk.

    Pruning baselines have no artifact format (their kept weights are trained values); their
    bytes come from the formula of :func:`_bytes`.
    """
    if cfg.mask.strategy in BASELINES or (run_dir / ARTIFACT_FILE).exists():
        return
    from pemn.artifact import save
    from pemn.run import load_model
    save(load_model(run_dir), run_dir / ARTIFACT_FILE)

