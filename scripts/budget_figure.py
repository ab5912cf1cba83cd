"""The frontier against the training budget: a table and a figure of test accuracy per family
and width against epochs, from the results lines of configs/sweeps/fmnist_budget.toml (and of
fmnist_budget_retuned.toml: a family trained at two learning rates is drawn once per lr).

    python scripts/budget_figure.py docs/results/fmnist_budget.jsonl \
        docs/results/fmnist_budget_retuned.jsonl -o docs/figures/budget

Prints a markdown table (mean +- std over seeds, n = number of seeds, fp16 file kB) and, per
byte budget, the gap of PEMN to the best other family at each training length. Writes
``<out>/budget.png`` and ``.svg``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _family(strategy: dict) -> str:
    name = strategy["name"]
    if name == "quantized":
        return f"Int{strategy['bits']} QAT"
    if name == "rp":
        return "PEMN (RP 1e-3)"
    if name == "sparse":
        return f"Sparse {strategy['density']:g}"
    return {"binary": "Binary", "mask": "PEMN (Mask)", "pranc": "PRANC"}.get(name, name)


def _groups(paths: list[str]) -> dict[tuple, dict]:
    """(family, width, epochs) -> accuracies (one per seed) and fp16 file bytes; a family
    trained at several learning rates is one family per lr (``Int4 QAT, lr 0.05``)."""
    runs: dict[tuple, dict] = defaultdict(lambda: {"acc": [], "bytes": []})
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            cfg, s = r["config"], r["summary"]
            kwargs = cfg["model"]["kwargs"]
            family = _family(s["strategy"]) + (
                "" if kwargs["depth"] == 4 else f", depth {kwargs['depth']}")
            key = (family, kwargs["dim"], s["epochs"], cfg["optim"]["lr"])
            runs[key]["acc"].append(s["final_test_acc"])
            runs[key]["bytes"].append(r["readings"]["fp16"]["total"])
    lrs = defaultdict(set)
    for family, _, _, lr in runs:
        lrs[family].add(lr)
    return {(f"{family}, lr {lr:g}" if len(lrs[family]) > 1 else family, width, epochs): g
            for (family, width, epochs, lr), g in runs.items()}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _budget(kb: float) -> str:
    """The sweep's two budgets (its file bytes land near 6 and 16 kB)."""
    return "about 16 kB" if kb > 10 else "about 6 kB"


def table(groups: dict[tuple, dict]) -> str:
    lines = ["| budget | family | width | epochs | fp16 kB | test acc % | n |",
             "|---|---|---|---|---|---|---|"]
    for (family, width, epochs), g in sorted(groups.items(),
                                             key=lambda kv: (_budget(max(kv[1]["bytes"]) / 1000),
                                                             kv[0])):
        kb = statistics.mean(g["bytes"]) / 1000
        m, s = _mean_std(g["acc"])
        lines.append(f"| {_budget(kb)} | {family} | {width} | {epochs} | {kb:.1f} | "
                     f"{m:.2f} ± {s:.2f} | {len(g['acc'])} |")
    return "\n".join(lines)


def gaps(groups: dict[tuple, dict]) -> str:
    """PEMN's mean minus the best other family's mean, per budget and epochs."""
    by_budget: dict[tuple, dict[str, float]] = defaultdict(dict)
    for (family, width, epochs), g in groups.items():
        kb = statistics.mean(g["bytes"]) / 1000
        by_budget[(_budget(kb), epochs)][f"{family} w{width}"] = statistics.mean(g["acc"])
    out = []
    for (budget, epochs), means in sorted(by_budget.items()):
        pemn = {k: v for k, v in means.items() if k.startswith("PEMN")}
        others = {k: v for k, v in means.items() if not k.startswith("PEMN")}
        if pemn and others:
            (pk, pv), (ok, ov) = max(pemn.items(), key=lambda kv: kv[1]), \
                max(others.items(), key=lambda kv: kv[1])
            out.append(f"{budget}, {epochs} epochs: {pk} {pv:.2f} vs {ok} {ov:.2f}: "
                       f"{pv - ov:+.2f} points")
    return "\n".join(out)


def figure(groups: dict[tuple, dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({_budget(statistics.mean(g["bytes"]) / 1000) for g in groups.values()},
                     reverse=True)
    families = sorted({family for family, _, _ in groups})
    colors = {f: f"C{i}" for i, f in enumerate(families)}  # one colour per family, every panel
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        series = defaultdict(list)
        for (family, width, epochs), g in groups.items():
            kb = statistics.mean(g["bytes"]) / 1000
            if _budget(kb) == budget:
                label = f"{family}, width {width} ({kb:.1f} kB)"
                series[family, label].append((epochs, *_mean_std(g["acc"])))
        for (family, label), points in sorted(series.items()):
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points], marker="o", capsize=3, label=label,
                        color=colors[family])
        ax.set_xscale("log")
        ax.set_xticks(sorted({e for (_, _, e) in groups}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training epochs")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"Fashion-MNIST, ConvMixer depth 4, {budget} (fp16 file)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"budget.{ext}", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("-o", "--out-dir", type=Path)
    args = parser.parse_args()
    groups = _groups(args.results)
    print(table(groups))
    print()
    print(gaps(groups))
    if args.out_dir:
        figure(groups, args.out_dir)


if __name__ == "__main__":
    main()
