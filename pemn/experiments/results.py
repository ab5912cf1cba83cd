"""A sweep's results lines, the results file and its CSV export (docs/SWEEPS.md)."""
from __future__ import annotations

import csv
import fcntl
import io
import json
from pathlib import Path

from pemn.artifact import load
from pemn.config import RunConfig, from_dict, to_dict
from pemn.fileio import atomic_write
from pemn.rundir import RunDir
from pemn.storage import size_report, storage_readings
from pemn.trained import pack_trained

__all__ = ["result_record", "write_result", "read_records", "record_results", "csv_row",
           "export_csv", "CSV_COLUMNS", "RESULT", "READINGS"]

RESULT = "result.json"  # a finished run's results line, in its run directory
READINGS = ("exact", "fp16", "norm8")  # the precisions a results line prices the run at
CSV_COLUMNS = ("run", "dataset", "model", "model_kwargs", "strategy", "label", "keep_ratio",
               "seed", "epochs", "lr", "P", "U", "CR", "bytes", "bytes_source", "best_test_acc",
               "final_test_acc", "best_val_acc", "test_acc_at_best_val", "wall_s", "images_per_s")


def result_record(cfg: RunConfig, summary: dict, run_dir: RunDir) -> dict:
    """The results line of a finished run (docs/SWEEPS.md, "Results lines")."""
    record = {"run": cfg.name, "config": to_dict(cfg), "summary": summary, "bytes": {},
              "bytes_source": "none", "readings": {}}
    if run_dir.artifact.is_file():
        model = load(run_dir.artifact)
        header = model.pemn_header  # the same dataset and metadata as the file
        record.update(bytes=size_report(run_dir.artifact)["bytes"], bytes_source="artifact",
                      readings={p: storage_readings(model, p, dataset=header.dataset,
                                                    metadata=header.metadata)
                                for p in READINGS})
    return record


def write_result(cfg: RunConfig, run_dir: RunDir) -> None:
    """Pack a finished run and write its results line atomically (whole or absent)."""
    if not run_dir.artifact.exists():
        pack_trained(run_dir.path, run_dir.artifact)
    record = result_record(cfg, run_dir.read_summary(), run_dir)
    atomic_write(run_dir.path / RESULT, (json.dumps(record) + "\n").encode())


def read_records(path: str | Path) -> list[dict]:
    """The lines of a results file (none if it does not exist yet); ValueError for a line
    that is not a pemn results record."""
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
    """Assemble ``path`` from the result files of ``configs`` (in their order) under a lock and
    rewrite its CSV export; return how many runs the file gained. Lines of other runs are kept,
    first; a run of ``configs`` without a result file keeps its old line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # released when the file closes
        old = {r["run"]: r for r in read_records(path)}
        grid = {c.name: RunDir.of(c).path / RESULT for c in configs}
        new = {name: json.loads(r.read_text()) for name, r in grid.items() if r.is_file()}
        records = [r for name, r in old.items() if name not in grid]
        records += [new.get(name) or old[name] for name in grid if name in new or name in old]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())
        export_csv(path, path.with_suffix(".csv"))
    return len(new.keys() - old.keys())


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
            "bytes": record["bytes"].get("total", ""), "bytes_source": record["bytes_source"],
            **{k: s.get(k, "") for k in CSV_COLUMNS[15:]}}


def export_csv(results: str | Path, csv_path: str | Path) -> Path:
    """Write the lines of a results file as a flat CSV (:data:`CSV_COLUMNS`), for spreadsheets."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in read_records(results))
    atomic_write(csv_path, out.getvalue().encode())
    return Path(csv_path)
