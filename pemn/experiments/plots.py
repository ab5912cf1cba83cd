"""Results lines -> the paper's figures (Figs. 3-5), a frontier, a table (docs/SWEEPS.md)."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import statistics
from pathlib import Path
from typing import Sequence

from pemn.competitors import Sparse
from pemn.config import MaskConfig, RunConfig, from_dict
from pemn.experiments.figures import paper_accuracy
from pemn.experiments.results import READINGS, read_records
from pemn.fill import FILLS, MP, RP, STRATEGIES, Dense, Strategy

__all__ = ["read_results", "group_results", "plot_results", "summary_table", "series_label",
           "METRICS"]

# best_val_acc picks hyperparameters (runs with data.val_fraction > 0); the others report.
METRICS = ("best_test_acc", "final_test_acc", "test_acc_at_best_val", "best_val_acc")


def read_results(paths: str | Path | Sequence[str | Path]) -> list[dict]:
    """The lines of one or several results files (read as one), each ``config`` a RunConfig;
    ValueError for a line that is not a results line or a config this pemn cannot read."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [{**r, "config": from_dict(RunConfig, r["config"])}
            for path in paths for r in read_records(path)]


def _kwargs_key(cfg: RunConfig) -> str:
    return json.dumps(cfg.model.kwargs, sort_keys=True)


def _arch_labels(rows: list[dict]) -> dict[tuple, str]:
    """(model, kwargs json) -> a label naming the kwargs that vary, and width and depth."""
    archs = {(r["config"].model.name, _kwargs_key(r["config"])) for r in rows}
    varying = {k for _, kw in archs for k, v in json.loads(kw).items()
               if len({json.dumps(json.loads(o).get(k)) for _, o in archs}) > 1}
    short = {"dim": "w", "depth": "d"}  # always shown when set: they override the name's
    labels = {}
    for model, kw in archs:
        kwargs = json.loads(kw)
        tags = [f"{short[k]}{kwargs[k]}" if k in short else f"{k}={kwargs[k]}"
                for k in sorted(varying | (short.keys() & kwargs.keys())) if k in kwargs]
        labels[(model, kw)] = " ".join([model, *tags])
    return labels


def _family(name: str) -> str:
    """``vit_tiny`` -> ``vit``, ``convmixer_128_d4`` -> ``convmixer``: the zoo family."""
    return name.split("_", 1)[0]


def _file_bytes(r: dict, precision: str) -> tuple[int, dict]:
    """The run's file bytes at ``precision`` and its other storage readings there."""
    if precision == "exact" and "exact" not in r.get("readings", {}):
        return r["bytes"]["total"], {}
    try:
        readings = r["readings"][precision]
    except KeyError:
        raise ValueError(f"run {r['run']} has no {precision} reading; record it again with "
                         "this pemn (delete the results file, then pemn sweep --collect)") \
            from None
    return readings["total"], {k: v for k, v in readings.items() if k != "total"}


def group_results(rows: list[dict], metric: str = "best_test_acc",
                  precision: str = "exact", series: Sequence[str] = ()) -> list[dict]:
    """Mean and std of ``metric`` over seeds per group, in first-appearance order (docs/SWEEPS.md);
    ValueError for an unknown metric or precision, a metric no row has, a run without a reading
    at ``precision``, or ``series`` that match no group."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if precision not in READINGS:
        raise ValueError(f"precision must be one of {READINGS}, got {precision!r}")
    labels = _arch_labels(rows)
    # ViT and ConvMixer rows in one file are different series even with the same strategy
    families = {_family(r["config"].model.name) for r in rows}
    groups: dict[tuple, dict] = {}
    for r in rows:
        cfg, s = r["config"], r["summary"]
        if s.get(metric) is None:
            continue
        strategy = cfg.mask.strategy
        arch = labels[(cfg.model.name, _kwargs_key(cfg))]
        keep = strategy.keep_ratio(cfg.mask.keep_ratio)
        zoo_depth = cfg.model.name.rpartition("_d")[2]  # convmixer_128_d4 -> 4
        key = (cfg.data.dataset, arch, strategy, keep, cfg.optim.epochs, cfg.optim.lr,
               cfg.optim.score_lr_scale)
        g = groups.setdefault(key, {
            "dataset": cfg.data.dataset, "arch": arch, "model": cfg.model.name,
            "depth": cfg.model.kwargs.get("depth", int(zoo_depth) if zoo_depth.isdigit() else None),
            "folded": bool(cfg.model.kwargs.get("fold", False)),
            "strategy": strategy, "keep_ratio": keep, "epochs": cfg.optim.epochs,
            "lr": cfg.optim.lr, "score_lr_scale": cfg.optim.score_lr_scale,
            "family": _family(cfg.model.name) if len(families) > 1 else None,
            "P": s["num_masked"], "U": s["num_unique"],
            "CR": s["compression_ratio"], "values": [], "files": []})
        g["values"].append(s[metric])
        g["files"].append(_file_bytes(r, precision))
    if rows and not groups:
        raise ValueError(f"no row of the results has a value for {metric!r}")
    for g in groups.values():
        v = g["values"]
        sizes, readings = zip(*g.pop("files"))
        g.update(mean=statistics.fmean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0,
                 min=min(v), max=max(v), n=len(v), bytes=statistics.fmean(sizes),
                 readings={k: statistics.fmean(x[k] for x in readings)
                           for k in set.intersection(*map(set, readings))})
    _split_series(groups.values())
    kept = [g for g in groups.values()
            if not series or any(fnmatch.fnmatchcase(series_label(g), p) for p in series)]
    if groups and not kept:
        names = sorted({series_label(g) for g in groups.values()})
        raise ValueError(f"no series matches {list(series)}; the results have: "
                         + ", ".join(repr(n) for n in names))
    return kept


def _split_series(groups) -> None:
    """A line runs along one size knob. Among the groups of one line (:func:`_line_label`,
    dataset and model family): where they span several models and several keep ratios, each
    keep ratio is a series of its own (``keep_series``; at one model the line runs across its
    keep ratios); epochs or lr that differ always split the line (``epochs_series``,
    ``lr_series``)."""
    lines: dict[tuple, list[dict]] = {}
    for g in groups:
        lines.setdefault((g["dataset"], _line_label(g), g.get("family")), []).append(g)
    for same in lines.values():
        several = {k: len({g[k] for g in same}) > 1 for k in ("arch", "keep_ratio", "epochs", "lr")}
        for g in same:
            g.update(keep_series=several["arch"] and several["keep_ratio"],
                     epochs_series=several["epochs"], lr_series=several["lr"])


def _sort_key(s: Strategy) -> tuple:
    """Registry order, then the least compressed first (RP 1e-1 before 1e-2)."""
    args = tuple(-v if isinstance(v, (int, float)) else v for v in dataclasses.astuple(s))
    return (list(STRATEGIES).index(s.name), -s.keep_ratio(1.0), args)


def _is_mask_fill(s: Strategy) -> bool:
    """A point of Fig. 3's x axis: a weight fill behind a mask (not Dense, not a baseline)."""
    return type(s) in FILLS.values() and not isinstance(s, Dense)


def _finish(ax, title: str, xlabel: str | None, metric: str, legend_size: int = 7) -> None:
    """The labels, grid and legend every panel has."""
    kind = "validation" if metric == "best_val_acc" else "test"
    ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{kind} accuracy (%), {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=legend_size)


def _errorbar(ax, groups: list[dict], x: list[float], **style) -> None:
    ax.errorbar(x, [g["mean"] for g in groups], yerr=[g["std"] for g in groups], capsize=3,
                **style)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def _panels(plt, n: int, width: float = 5.0):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _fig3(plt, groups: list[dict], metric: str):
    """Accuracy along the strategy axis, one panel per (dataset, model family)."""
    pemn = [g for g in groups if _is_mask_fill(g["strategy"])]
    if not pemn:
        return None
    cats = sorted({g["strategy"] for g in pemn}, key=_sort_key)
    panels = sorted({(g["dataset"], _family(g["model"])) for g in pemn})
    fig, axes = _panels(plt, len(panels), width=max(5.0, 0.7 * len(cats) + 1.5))
    for ax, (dataset, family) in zip(axes, panels):
        mine = [g for g in groups if (g["dataset"], _family(g["model"])) == (dataset, family)]
        for i, arch in enumerate(dict.fromkeys(g["arch"] for g in mine)):  # CSV order
            color = f"C{i % 10}"
            line = sorted((g for g in mine if g["arch"] == arch and _is_mask_fill(g["strategy"])),
                          key=lambda g: _sort_key(g["strategy"]))
            _errorbar(ax, line, [cats.index(g["strategy"]) for g in line], color=color,
                      marker="o", ms=4, label=arch)
            for g in (g for g in mine if g["arch"] == arch and isinstance(g["strategy"], Dense)):
                ax.axhline(g["mean"], color=color, ls="--", lw=1, label=f"{arch} Dense")
        ax.set_xticks(range(len(cats)), [s.label() for s in cats], rotation=45, ha="right")
        _finish(ax, f"{dataset}: {family}", None, metric)
    fig.suptitle("Accuracy as unique values shrink (mean ± std over seeds)")
    return fig


_PRUNED = {"uniform": "Random", "magnitude": "Minimum"}  # the paper's pruning baselines


def _pruned(s: Strategy) -> str | None:
    """The allocation of a pruning baseline (a Sparse preset, every layer sparse), else None."""
    baseline = isinstance(s, Sparse) and not s.dense_ends and s.allocation in _PRUNED
    return s.allocation if baseline else None


def _compression(plt, groups: list[dict], metric: str, x_of, xlabel: str, logx: bool):
    """PEMN vs Random/Minimum baselines against a storage measure, one panel per model."""
    keys = sorted({(g["dataset"], g["arch"]) for g in groups if _pruned(g["strategy"])})
    if not keys:
        return None
    fig, axes = _panels(plt, len(keys))
    for ax, (dataset, arch) in zip(axes, keys):
        mine = [g for g in groups if (g["dataset"], g["arch"]) == (dataset, arch)]
        # PEMN: the paper's "Ours" strategies (MP, RP), as points (several share CR ~ 96.87 %)
        pemn = sorted((g for g in mine if isinstance(g["strategy"], (MP, RP))),
                      key=lambda g: _sort_key(g["strategy"]))
        if pemn:
            _errorbar(ax, pemn, [x_of(g) for g in pemn], marker="o", ms=5, ls="none", color="C0",
                      label="PEMN")
        for i, g in enumerate(pemn):
            ax.annotate(g["strategy"].label(), (x_of(g), g["mean"]), fontsize=6,
                        xytext=(4, 4 - 8 * (i % 2)), textcoords="offset points")
        for i, (kind, title) in enumerate(_PRUNED.items()):
            pts = sorted((g for g in mine if _pruned(g["strategy"]) == kind), key=x_of)
            _errorbar(ax, pts, [x_of(g) for g in pts], marker="s^vD"[i % 4], ms=4,
                      color=f"C{i + 1}", label=title)
        for g in (g for g in mine if isinstance(g["strategy"], Dense)):
            ax.axhline(g["mean"], color="k", ls="--", lw=1, label="Dense")
            if logx:
                ax.plot([x_of(g)], [g["mean"]], "k*", ms=7)
        if logx:
            _log_axis(ax)
        _finish(ax, f"{dataset}: {arch}", xlabel, metric)
    return fig


def _line_label(g: dict) -> str:
    """The strategy family with its levers, score lr scale, depth and folded blocks."""
    label = g["strategy"].family_label()
    if g["score_lr_scale"] != 1.0:
        label += f" (score lr x{g['score_lr_scale']:g})"
    if g["depth"] not in (None, 4):
        label += f", depth {g['depth']}"
    if g.get("folded"):
        label += ", folded"
    return label


def series_label(g: dict) -> str:
    """A frontier line: the strategy with its levers, plus what else sets it apart."""
    label = _line_label(g)
    default_keep = g["strategy"].keep_ratio(MaskConfig.keep_ratio)
    if g.get("keep_series") and g["keep_ratio"] != default_keep:
        label += f", keep {g['keep_ratio']:g}"
    if g.get("epochs_series"):
        label += f", {g['epochs']} epochs"
    if g.get("lr_series"):
        label += f", lr {g['lr']:g}"
    if g.get("family"):
        label += f", {g['family']}"
    return label


_LEGEND_INSIDE = 10  # more entries than this hide the points: the legend goes beside them
_READING_NAMES = {"csr": "CSR", "values_only": "values only (CR as sparsity)"}


def _frontier(plt, groups: list[dict], metric: str, precision: str):
    """Accuracy against file bytes (log axis), one panel per dataset, a line per series."""
    if len(groups) < 2:  # two points: two series, or one line (PRANC's k, widths)
        return None
    datasets = list(dict.fromkeys(g["dataset"] for g in groups))
    fig, axes = _panels(plt, len(datasets), width=7.0)
    for ax, dataset in zip(axes, datasets):
        mine = [g for g in groups if g["dataset"] == dataset]
        by_strategy = sorted(mine, key=lambda g: _sort_key(g["strategy"]))
        names = list(dict.fromkeys(map(series_label, by_strategy)))
        for i, name in enumerate(names):
            pts = sorted((g for g in mine if series_label(g) == name), key=lambda g: g["bytes"])
            style = dict(marker="os^vDP*Xhp<>"[i % 12], ms=4, color=_color(plt, i, len(names)))
            _errorbar(ax, pts, [g["bytes"] / 1000 for g in pts],
                      ls="--" if "depth" in name else "-", label=name, **style)
            for reading, ls in (("csr", ":"), ("values_only", "-.")):  # sparse: other readings
                if all(reading in g["readings"] for g in pts):
                    _errorbar(ax, pts, [g["readings"][reading] / 1000 for g in pts], ls=ls,
                              mfc="none", label=f"{name}, {_READING_NAMES[reading]}", **style)
        _log_axis(ax)
        _finish(ax, f"{dataset}: accuracy against actual bytes",
                f"file size (kB, log scale; {precision} files)", metric, legend_size=6)
        if len(ax.get_legend_handles_labels()[1]) > _LEGEND_INSIDE:  # beside, off the points
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _color(plt, i: int, n: int):
    """Ten distinct colours; past ten, tab20's dark shades first, then its light ones."""
    if n <= 10:
        return f"C{i}"
    return plt.get_cmap("tab20")((2 * i) % 20 + (2 * i) // 20 % 2)


def _log_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_results(results: str | Path | Sequence[str | Path], out_dir: str | Path,
                 metric: str = "best_test_acc", prefix: str = "",
                 precision: str = "exact", series: Sequence[str] = ()) -> list[Path]:
    """Write the figures the results support as PNG and SVG (docs/SWEEPS.md); return the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    groups = group_results(read_results(results), metric, precision, series)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "fig3_unique_values": _fig3(plt, groups, metric),
        "fig45_compression_ratio": _compression(
            plt, groups, metric, lambda g: 100 * g["CR"], "paper compression ratio (%)", False),
        "fig45_kilobytes": _compression(
            plt, groups, metric, lambda g: g["bytes"] / 1000, "size on disk (kB)", True),
        "frontier_bytes": _frontier(plt, groups, metric, precision),
    }
    paths = []
    for stem, fig in figures.items():
        if fig is not None:
            fig.tight_layout()
            paths += _save(fig, out_dir, prefix + stem)
            plt.close(fig)
    return paths


def _cr_cell(group: dict) -> str:
    """The paper's CR prices a mask: blank for a trained-weight family that records 0
    (int4, binary, PRANC); Dense, the paper's CR-0 reference, keeps its 0.000."""
    no_mask = group["CR"] == 0 and type(group["strategy"]) not in FILLS.values()
    return "" if no_mask else f"{100 * group['CR']:.3f}"


def summary_table(results: str | Path | Sequence[str | Path],
                  metric: str = "best_test_acc", precision: str = "exact",
                  series: Sequence[str] = ()) -> str:
    """A markdown table of :func:`group_results`: mean ± std of ``metric``, n seeds."""
    groups = group_results(read_results(results), metric, precision, series)
    archs = list(dict.fromkeys((g["dataset"], g["arch"]) for g in groups))
    groups.sort(key=lambda g: (archs.index((g["dataset"], g["arch"])), _sort_key(g["strategy"])))
    paper = [paper_accuracy(g["dataset"], g["model"], g["strategy"].tag()) for g in groups]
    other = [k for k in _READING_NAMES if any(k in g["readings"] for g in groups)]
    head = ["dataset", "model", "strategy", "keep", "lr", "P", "U", "CR (%)", "kB",
            *(f"kB {_READING_NAMES[k]}" for k in other), f"{metric} (%)", "n"] \
        + (["paper (%)"] if any(p is not None for p in paper) else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, p in zip(groups, paper):
        acc = f"{g['mean']:.2f} ± {g['std']:.2f}" if g["n"] > 1 else f"{g['mean']:.2f}"
        readings = [f"{g['readings'][k] / 1000:,.1f}" if k in g["readings"] else ""
                    for k in other]
        cells = [g["dataset"], g["arch"], series_label(g), f"{g['keep_ratio']:g}", f"{g['lr']:g}",
                 f"{g['P']:,}", f"{g['U']:,}", _cr_cell(g),
                 f"{g['bytes'] / 1000:,.1f}", *readings, acc, str(g["n"])]
        if len(head) > len(cells):
            cells.append("" if p is None else f"{p:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
