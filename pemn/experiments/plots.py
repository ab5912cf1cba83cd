"""Results CSV (from :func:`pemn.experiments.run_sweep`) -> paper-style figures and tables.

* Fig. 3 style (PEMN.md §9.1): test accuracy along Mask -> One-layer -> MP -> RP 1e-1 ... 1e-5,
  one line per model, Dense as a dashed horizontal line in the same colour;
* Fig. 4/5 style (§9.2-9.3): accuracy against the paper's compression ratio (%), PEMN (MP and
  RP, the paper's "Ours") next to the Random and Minimum (magnitude) pruning baselines, one
  panel per model that has baseline runs;
* the same against kilobytes on disk (the CSV's ``bytes`` column / 1000, log scale).

Every point is the mean over seeds with ± one standard deviation (sample std; 0 for one seed).
Plots read only the CSV (STYLE.md §2.15).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from pemn.experiments.figures import paper_accuracy
from pemn.experiments.sweep import CSV_COLUMNS

__all__ = ["read_results", "group_results", "plot_results", "summary_table", "METRICS"]

METRICS = ("best_test_acc", "final_test_acc", "test_acc_at_best_val")
_NUMERIC = ("ratio", "keep_ratio", "seed", "epochs", "lr", "P", "U", "CR", "bytes",
            "best_test_acc", "final_test_acc", "best_val_acc", "test_acc_at_best_val", "wall_s",
            "images_per_s")
_PEMN_ORDER = ("mask", "one_layer", "mp", "rp")  # Fig. 3's x axis, rp sorted by ratio desc
_BASELINES = {"random_prune": "Random", "magnitude_prune": "Minimum"}
_NAMES = {"dense": "Dense", "mask": "Mask", "one_layer": "One-layer", "mp": "MP", "rp": "RP"}


# ------------------------------------------------------------------------------------------
# Reading and grouping
# ------------------------------------------------------------------------------------------

def read_results(csv_path: str | Path) -> list[dict]:
    """Rows of a results CSV with numbers as floats (ints where whole) and "" as None."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        missing = [c for c in ("run", "model", "strategy", "seed") if c not in row]
        if missing:
            raise ValueError(f"{csv_path} is not a pemn results CSV (no {missing}; expected "
                             f"columns {', '.join(CSV_COLUMNS)})")
        for key in _NUMERIC:
            value = row.get(key) or None
            row[key] = None if value is None else float(value)
        row["kwargs"] = json.loads(row.get("model_kwargs") or "{}")
    return rows


def _arch_labels(rows: list[dict]) -> dict[tuple, str]:
    """(model, kwargs json) -> a short label naming only the kwargs that vary in the file."""
    archs = {(r["model"], r.get("model_kwargs") or "{}") for r in rows}
    varying = {k for _, kw in archs for k, v in json.loads(kw).items()
               if len({json.dumps(json.loads(o).get(k)) for _, o in archs}) > 1}
    short = {"dim": "w", "depth": "d"}
    labels = {}
    for model, kw in archs:
        kwargs = json.loads(kw)
        tags = [f"{short[k]}{kwargs[k]}" if k in short else f"{k}={kwargs[k]}"
                for k in sorted(varying) if k in kwargs]
        labels[(model, kw)] = " ".join([model, *tags])
    return labels


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group_results(rows: list[dict], metric: str = "best_test_acc") -> list[dict]:
    """Mean and std of ``metric`` over seeds for each (dataset, model, strategy, ...) group.

    Returns:
        One dict per group, in order of first appearance, with the group's keys (``dataset``,
        ``arch`` label, ``model``, ``strategy``, ``ratio``, ``order``, ``keep_ratio``,
        ``epochs``, ``lr``), ``P``, ``U``, ``CR``, ``bytes`` (mean), ``mean``, ``std``, ``min``,
        ``max``, ``n`` and ``values``.

    Raises:
        ValueError: an unknown metric or one that no row has.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    labels = _arch_labels(rows)
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r[metric] is None:
            continue
        ratio = r["ratio"] if r["strategy"] == "rp" else None
        keep = r["keep_ratio"] if r["strategy"] in _BASELINES else None
        order = r["order"] if r["strategy"] == "rp" else ""
        arch = labels[(r["model"], r.get("model_kwargs") or "{}")]
        key = (r["dataset"], arch, r["strategy"], ratio, order, keep, r["epochs"], r["lr"])
        g = groups.setdefault(key, {
            "dataset": r["dataset"], "arch": arch, "model": r["model"],
            "strategy": r["strategy"], "ratio": ratio, "order": order, "keep_ratio": keep,
            "epochs": r["epochs"], "lr": r["lr"], "P": r["P"], "U": r["U"], "CR": r["CR"],
            "values": [], "bytes_all": []})
        g["values"].append(r[metric])
        g["bytes_all"].append(r["bytes"])
    if rows and not groups:
        raise ValueError(f"no row of the results has a value for {metric!r}")
    for g in groups.values():
        v = g["values"]
        g.update(mean=statistics.fmean(v), std=_std(v), min=min(v), max=max(v), n=len(v),
                 bytes=statistics.fmean(g.pop("bytes_all")))
    return list(groups.values())


def _ratio_text(ratio: float) -> str:
    exp = math.log10(ratio)
    return f"1e{round(exp)}" if abs(exp - round(exp)) < 1e-9 else f"{ratio:g}"


def strategy_label(g: dict) -> str:
    """"RP 1e-3", "RP 1e-3 (permuted)", "Random @ CR 90 %", "One-layer", ..."""
    s = g["strategy"]
    if s == "rp":
        return f"RP {_ratio_text(g['ratio'])}" + (" (permuted)" if g["order"] == "permuted"
                                                   else "")
    if s in _BASELINES:
        return f"{_BASELINES[s]} @ CR {100 * (31 / 32 - g['keep_ratio']):.3g} %"  # nominal
    return _NAMES.get(s, s)


def _sort_key(g: dict) -> tuple:
    order = ("dense", *_PEMN_ORDER, *_BASELINES)
    rank = order.index(g["strategy"]) if g["strategy"] in order else len(order)
    return (rank, -(g["ratio"] or 0), g["order"], g["CR"] or 0)


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


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
    pemn = [g for g in groups if g["strategy"] in _PEMN_ORDER]
    if not pemn:
        return None
    cats = sorted({(g["strategy"], g["ratio"], g["order"]): g for g in pemn}.values(),
                  key=_sort_key)
    xs = {(g["strategy"], g["ratio"], g["order"]): i for i, g in enumerate(cats)}
    panels = sorted({(g["dataset"], g["model"].split("_")[0]) for g in pemn})
    fig, axes = _panels(plt, len(panels), width=max(5.0, 0.7 * len(cats) + 1.5))
    for ax, (dataset, family) in zip(axes, panels):
        mine = [g for g in groups if g["dataset"] == dataset
                and g["model"].split("_")[0] == family]
        for i, arch in enumerate(dict.fromkeys(g["arch"] for g in mine)):  # CSV order
            color = f"C{i % 10}"
            line = sorted((g for g in mine if g["arch"] == arch and g["strategy"] in _PEMN_ORDER),
                          key=_sort_key)
            x = [xs[(g["strategy"], g["ratio"], g["order"])] for g in line]
            ax.errorbar(x, [g["mean"] for g in line], yerr=[g["std"] for g in line], color=color,
                        marker="o", ms=4, capsize=3, label=arch)
            for g in (g for g in mine if g["arch"] == arch and g["strategy"] == "dense"):
                ax.axhline(g["mean"], color=color, ls="--", lw=1, label=f"{arch} Dense")
        ax.set_xticks(range(len(cats)), [strategy_label(g) for g in cats], rotation=45,
                      ha="right")
        ax.set_title(f"{dataset}: {family}")
        ax.set_ylabel(f"test accuracy (%), {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy as unique values shrink (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def _compression(plt, groups: list[dict], metric: str, x_of, xlabel: str, logx: bool):
    """PEMN vs Random/Minimum baselines against a storage measure, one panel per model."""
    keys = sorted({(g["dataset"], g["arch"]) for g in groups if g["strategy"] in _BASELINES})
    if not keys:
        return None
    fig, axes = _panels(plt, len(keys))
    for ax, (dataset, arch) in zip(axes, keys):
        mine = [g for g in groups if (g["dataset"], g["arch"]) == (dataset, arch)]
        # PEMN: the paper's "Ours" strategies (MP, RP), as points (several share CR ~ 96.87 %)
        pemn = sorted((g for g in mine if g["strategy"] in ("mp", "rp")), key=_sort_key)
        if pemn:
            ax.errorbar([x_of(g) for g in pemn], [g["mean"] for g in pemn],
                        yerr=[g["std"] for g in pemn], marker="o", ms=5, ls="none", capsize=3,
                        color="C0", label="PEMN")
        for i, g in enumerate(pemn):
            ax.annotate(strategy_label(g), (x_of(g), g["mean"]), fontsize=6,
                        xytext=(4, 4 - 8 * (i % 2)), textcoords="offset points")
        for (s, label), marker, color in zip(_BASELINES.items(), ("s", "^"), ("C1", "C2")):
            pts = sorted((g for g in mine if g["strategy"] == s), key=x_of)
            if pts:
                ax.errorbar([x_of(g) for g in pts], [g["mean"] for g in pts],
                            yerr=[g["std"] for g in pts], marker=marker, ms=4, capsize=3,
                            color=color, label=label)
        for g in (g for g in mine if g["strategy"] == "dense"):
            ax.axhline(g["mean"], color="k", ls="--", lw=1, label="Dense")
            if logx:
                ax.plot([x_of(g)], [g["mean"]], "k*", ms=7)
        if logx:
            _log_axis(ax)
        ax.set_title(f"{dataset}: {arch}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test accuracy (%), {metric}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _log_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_results(csv_path: str | Path, out_dir: str | Path, metric: str = "best_test_acc",
                 prefix: str = "") -> list[Path]:
    """Write the paper-style figures for a results CSV as PNG and SVG.

    Files (each as ``.png`` and ``.svg``, only those the data supports):
    ``fig3_unique_values`` (needs Mask/One-layer/MP/RP rows), ``fig45_compression_ratio`` and
    ``fig45_kilobytes`` (need baseline rows), each prefixed by ``prefix``.

    Args:
        csv_path: a results CSV written by :func:`pemn.experiments.run_sweep`.
        out_dir: created if missing.
        metric: ``best_test_acc`` (the paper's protocol), ``final_test_acc`` or
            ``test_acc_at_best_val``.
        prefix: prepended to every file name.

    Returns:
        The paths written.
    """
    groups = group_results(read_results(csv_path), metric)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    figures = {
        "fig3_unique_values": _fig3(plt, groups, metric),
        "fig45_compression_ratio": _compression(
            plt, groups, metric, lambda g: 100 * g["CR"], "paper compression ratio (%)", False),
        "fig45_kilobytes": _compression(
            plt, groups, metric, lambda g: g["bytes"] / 1000,
            "size (kB: 1-bit masks + fp32 stored values + BN/biases)", True),
    }
    paths = []
    for stem, fig in figures.items():
        if fig is not None:
            paths += _save(fig, out_dir, prefix + stem)
            plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------

def summary_table(csv_path: str | Path, metric: str = "best_test_acc") -> str:
    """A markdown table: mean ± std of ``metric`` per (model, strategy) group, with n seeds.

    A "paper" column with the paper's CIFAR-10 number is added when any group has one
    (:mod:`pemn.experiments.figures`).
    """
    groups = group_results(read_results(csv_path), metric)
    archs = list(dict.fromkeys((g["dataset"], g["arch"]) for g in groups))
    groups.sort(key=lambda g: (archs.index((g["dataset"], g["arch"])), _sort_key(g)))
    paper = [paper_accuracy(g["dataset"], g["model"], _tag(g)) for g in groups]
    head = ["dataset", "model", "strategy", "lr", "P", "U", "CR (%)", "kB",
            f"{metric} (%)", "n"] + (["paper (%)"] if any(p is not None for p in paper) else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, p in zip(groups, paper):
        acc = f"{g['mean']:.2f} ± {g['std']:.2f}" if g["n"] > 1 else f"{g['mean']:.2f}"
        cells = [g["dataset"], g["arch"], strategy_label(g), f"{g['lr']:g}",
                 f"{g['P']:,.0f}", f"{g['U']:,.0f}", f"{100 * g['CR']:.3f}",
                 f"{g['bytes'] / 1000:,.1f}", acc, str(g["n"])]
        if len(head) > len(cells):
            cells.append("" if p is None else f"{p:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tag(g: dict) -> str:
    """The strategy tag of :func:`pemn.experiments.sweep.strategy_tag` for a group."""
    if g["strategy"] == "rp":
        return f"rp{g['ratio']:g}{'p' if g['order'] == 'permuted' else ''}"
    if g["strategy"] in _BASELINES:
        return f"{g['strategy']}-cr{round(31 / 32 - g['keep_ratio'], 6):g}"
    return g["strategy"]
