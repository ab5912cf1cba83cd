"""Experiments: sweeps (``run_sweep``), their results lines, and the paper-style figures and
tables (``plot_results``, ``summary_table``; matplotlib is imported only to draw)."""
from pemn.experiments.figures import FIG3, FIG4, FIG5, PAPER_CIFAR10, paper_accuracy
from pemn.experiments.plots import group_results, plot_results, read_results, summary_table
from pemn.experiments.results import (
    CSV_COLUMNS,
    export_csv,
    read_records,
    record_results,
    result_record,
)
from pemn.experiments.sweep import Sweep, describe_sweep, expand, load_sweep, run_sweep

__all__ = ["Sweep", "load_sweep", "expand", "run_sweep", "describe_sweep", "record_results",
           "result_record", "read_records", "export_csv", "CSV_COLUMNS", "plot_results",
           "summary_table", "read_results", "group_results", "FIG3", "FIG4", "FIG5",
           "PAPER_CIFAR10", "paper_accuracy"]
