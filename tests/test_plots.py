"""What the figures draw: the points, error bars and reference lines, read back from the axes.

tests/test_sweep.py checks which files a sweep's plots write; these check their content, from
results lines whose means and standard deviations are worked out by hand.
"""
import json
import math

import pytest

import pemn
from pemn import MagnitudePrune, RandomPrune
from pemn.config import RunConfig, to_dict
from pemn.experiments import plots

pytest.importorskip("matplotlib")

MODEL = "convmixer_64_d4"
# strategy -> (accuracy per seed, file bytes per seed, the paper's CR)
RUNS = {
    pemn.Dense(): ([90.0, 90.0], [40_000, 40_000], 0.0),
    pemn.Mask(): ([80.0, 82.0], [9_000, 9_000], 0.5),
    pemn.MP(): ([78.0, 78.0], [6_000, 6_000], 0.95),
    pemn.RP(1e-1): ([75.0, 77.0], [3_000, 3_200], 0.96),
    RandomPrune(0.9): ([70.0, 74.0], [8_000, 8_000], 0.9),
    MagnitudePrune(0.9): ([72.0, 72.0], [8_000, 8_000], 0.9),
}


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """plot_results over RUNS; returns {figure stem: its axes} instead of writing files."""
    return _draw(RUNS, tmp_path, monkeypatch)


def _draw(runs: dict, tmp_path, monkeypatch) -> dict:
    lines = []
    for i, (strategy, (accs, sizes, cr)) in enumerate(runs.items()):
        for seed, (acc, size) in enumerate(zip(accs, sizes)):
            cfg = RunConfig(name=f"r{i}-{seed}")
            cfg.model.name, cfg.mask.strategy, cfg.mask.seed = MODEL, strategy, seed
            summary = {"num_masked": 1000, "num_unique": 10, "compression_ratio": cr,
                       "best_test_acc": acc, "final_test_acc": acc - 1}
            lines.append({"run": cfg.name, "config": to_dict(cfg), "summary": summary,
                          "bytes": {"total": size}, "bytes_source": "artifact"})
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, _dir, stem: figures.update({stem: fig}) or [])
    plots.plot_results(results, tmp_path / "fig")
    return {stem: [ax for ax in fig.axes if ax.get_visible()] for stem, fig in figures.items()}


def _series(ax) -> dict[str, tuple[list, list, list]]:
    """label -> (x, y, half error bar) of each errorbar drawn on ``ax``."""
    out = {}
    for c in ax.containers:
        x, y = (list(v) for v in zip(*c.lines[0].get_xydata()))
        bars = [abs(s[1][1] - s[0][1]) / 2 for s in c.lines[2][0].get_segments()]
        out[c.get_label()] = (x, y, bars)
    return out


def _hlines(ax) -> dict[str, float]:
    return {line.get_label(): line.get_ydata()[0] for line in ax.lines
            if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]}


def test_fig3_draws_each_strategys_mean_and_std_and_dense_as_a_line(drawn):
    [ax] = drawn["fig3_unique_values"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Mask", "MP", "RP 1e-1"]
    x, y, err = _series(ax)[MODEL]
    assert (x, y) == ([0, 1, 2], [81.0, 78.0, 76.0])
    assert err == pytest.approx([math.sqrt(2), 0.0, math.sqrt(2)])  # sample std of 2 seeds
    assert _hlines(ax)[f"{MODEL} Dense"] == 90.0


def test_keep_ratios_split_a_series_only_where_it_also_spans_models():
    one_model = [{"dataset": "d", "arch": "w128", "strategy": pemn.Mask(), "keep_ratio": k,
                  "score_lr_scale": 1.0, "depth": 4, "epochs": 3, "lr": 0.05} for k in (0.5, 0.2)]
    plots._split_series(one_model)  # the line runs across keep ratios
    assert [plots.series_label(g) for g in one_model] == ["Mask", "Mask"]
    widths = [*one_model, {**one_model[1], "arch": "w144"}]
    plots._split_series(widths)  # the lines run across widths, one per keep ratio
    assert [plots.series_label(g) for g in widths] == ["Mask", "Mask, keep 0.2", "Mask, keep 0.2"]
    g = widths[1]
    # families whose keep is their own (density, every weight stored) are not relabelled
    sparse = pemn.Sparse(0.1)
    assert plots.series_label({**g, "strategy": sparse, "keep_ratio": 0.1}) == sparse.label()
    int4 = pemn.Quantized(4)
    assert plots.series_label({**g, "strategy": int4, "keep_ratio": 1.0}) == int4.label()


def test_a_crowded_frontier_has_its_legend_beside_the_points(tmp_path, monkeypatch):
    from matplotlib.colors import to_rgba

    more = {pemn.RP(10.0 ** -e): ([70.0, 71.0], [2_000 * e, 2_000 * e], 0.9) for e in range(2, 8)}
    [ax] = _draw({**RUNS, **more}, tmp_path, monkeypatch)["frontier_bytes"]
    legend = ax.get_legend()
    assert len(legend.get_texts()) > plots._LEGEND_INSIDE
    ax.figure.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    colors = [to_rgba(c.lines[0].get_color()) for c in ax.containers]
    assert len(colors) > 10 and len(set(colors)) == len(colors)  # no two lines alike
    [few] = _draw(RUNS, tmp_path, monkeypatch)["frontier_bytes"]
    few.figure.canvas.draw()
    assert few.get_legend().get_window_extent().x1 <= few.get_window_extent().x1


def test_only_dense_is_drawn_as_the_dense_line(tmp_path, monkeypatch):
    # Quantized and Binary store no mask either, yet they are competitors, not the reference
    runs = {**RUNS, pemn.Quantized(8): ([60.0, 60.0], [5_000, 5_000], 0.0),
            pemn.Binary(): ([50.0, 50.0], [2_000, 2_000], 0.0)}
    drawn = _draw(runs, tmp_path, monkeypatch)
    for stem in ("fig3_unique_values", "fig45_compression_ratio", "fig45_kilobytes"):
        [ax] = drawn[stem]
        dense = [line.get_ydata()[0] for line in ax.lines if line.get_label().endswith("Dense")]
        assert dense == [90.0], stem


def test_compression_figures_put_pemn_and_baselines_at_their_cr_and_bytes(drawn):
    [ax] = drawn["fig45_compression_ratio"]
    s = _series(ax)
    assert s["PEMN"][:2] == ([95.0, 96.0], [78.0, 76.0])  # MP, RP: the paper's "Ours"
    assert s["Random"][:2] == ([90.0], [72.0]) and s["Random"][2] == pytest.approx([2 * 2**.5])
    assert s["Minimum"][:2] == ([90.0], [72.0])
    assert _hlines(ax)["Dense"] == 90.0
    [ax] = drawn["fig45_kilobytes"]
    s = _series(ax)
    assert s["PEMN"][:2] == ([6.0, 3.1], [78.0, 76.0])  # mean bytes / 1000
    assert s["Random"][:2] == ([8.0], [72.0])


def test_frontier_draws_one_line_per_strategy_at_its_file_size(drawn):
    [ax] = drawn["frontier_bytes"]
    s = {label: xy[:2] for label, xy in _series(ax).items()}
    assert s == {"Dense": ([40.0], [90.0]), "Mask": ([9.0], [81.0]), "MP": ([6.0], [78.0]),
                 "RP 1e-1": ([3.1], [76.0]), RandomPrune(0.9).label(): ([8.0], [72.0]),
                 MagnitudePrune(0.9).label(): ([8.0], [72.0])}
    assert ax.get_xscale() == "log"


def test_paper_accuracy_is_found_by_the_papers_own_strategy():
    from pemn.experiments import paper_accuracy

    paper_rp = pemn.RP(1e-3, "copy", values="normal")  # the paper's RP: normal values, copy order
    assert paper_accuracy("cifar10", "convmixer_256_d6", paper_rp.tag()) == 88.51
    assert paper_accuracy("cifar10", "resnet32", pemn.MP(values="normal").tag()) == 86.29
    assert paper_accuracy("cifar10", "convmixer_256_d6", pemn.RP(1e-3).tag()) is None  # our default
    assert paper_accuracy("fashion_mnist", "convmixer_256_d6", paper_rp.tag()) is None


def test_another_line_of_the_strategy_does_not_split_this_one_but_epochs_and_lr_do():
    one_model = [{"dataset": "d", "arch": "w128", "strategy": pemn.Mask(), "keep_ratio": k,
                  "score_lr_scale": 1.0, "depth": 4, "family": None, "epochs": 3, "lr": 0.05}
                 for k in (0.5, 0.2)]
    for other in ({"depth": 8, "arch": "w128 d8"}, {"score_lr_scale": 3.0, "arch": "w64"},
                  {"family": "vit", "arch": "vit_tiny"}):  # lines of their own
        plots._split_series([*one_model, {**one_model[0], **other}])
        assert [plots.series_label(g) for g in one_model] == ["Mask", "Mask"], other
    # runs of other lengths or learning rates are not sizes: never one line
    runs = [one_model[0], {**one_model[0], "epochs": 30}]
    plots._split_series(runs)
    assert [plots.series_label(g) for g in runs] == ["Mask, 3 epochs", "Mask, 30 epochs"]
    runs = [one_model[0], {**one_model[0], "lr": 0.1}]
    plots._split_series(runs)
    assert [plots.series_label(g) for g in runs] == ["Mask, lr 0.05", "Mask, lr 0.1"]


def test_one_line_across_prancs_k_is_a_frontier(tmp_path, monkeypatch):
    from pemn.pranc import PRANC

    runs = {PRANC(k=1372): ([86.0, 86.2], [5_960, 5_960], 0.0),
            PRANC(k=6400): ([88.0, 88.4], [16_013, 16_013], 0.0)}
    [ax] = _draw(runs, tmp_path, monkeypatch)["frontier_bytes"]
    x, y, _ = _series(ax)["PRANC"]
    assert (x, y) == ([5.96, 16.013], [86.1, 88.2])
