"""Experiments: sweeps over run configs, their results CSV, and the paper-style figures.

    >>> from pemn.experiments import run_sweep, plot_results, summary_table
    >>> csv_path = run_sweep("configs/sweeps/fmnist_cpu.toml")      # doctest: +SKIP
    >>> plot_results(csv_path, "docs/figures")                      # doctest: +SKIP
    >>> print(summary_table(csv_path))                              # doctest: +SKIP

matplotlib is imported only when a figure is drawn.
"""
from pemn.experiments.figures import FIG3, FIG4, FIG5, PAPER_CIFAR10, paper_accuracy
from pemn.experiments.plots import group_results, plot_results, read_results, summary_table
from pemn.experiments.sweep import (
                                    CSV_COLUMNS,
                                    Sweep,
                                    collect_results,
                                    describe_sweep,
                                    expand,
                                    load_sweep,
                                    result_row,
                                    run_sweep,
                                    strategy_tag,
)

__all__ = ["Sweep", "load_sweep", "expand", "run_sweep", "describe_sweep", "collect_results",
           "result_row", "strategy_tag", "CSV_COLUMNS", "plot_results", "summary_table",
           "read_results", "group_results", "FIG3", "FIG4", "FIG5", "PAPER_CIFAR10",
           "paper_accuracy"]
