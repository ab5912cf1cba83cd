"""Results of a sweep: one results line per finished run, the results file, and a CSV export.

Each finished run writes its own results line, ``result.json`` in its directory; the
results file (JSON lines, in grid order) is assembled from them under a lock, so concurrent
sweeps neither lose nor duplicate a line. A line holds ``run`` (its name), ``config`` (the
resolved config, :func:`pemn.config.to_dict`), ``summary`` (``summary.json``) and ``bytes`` (the
packed artifact by section, ``header``, ``masks``, ``prototype``, ``norm``, ``other`` and
``total``, with ``bytes_source = "artifact"``: every strategy, the pruning baselines included,
is priced by its real file), and ``readings``: the packed model in every storage reading at
``exact`` and ``fp16`` precision (:func:`result_record`). :func:`export_csv` writes a flat CSV of it.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
from pathlib import Path

from pemn.config import RunConfig, from_dict, to_dict
from pemn.fileio import atomic_write
from pemn.rundir import RunDir
from pemn.storage import size_report, storage_readings

__all__ = ["result_record", "write_result", "read_records", "record_results", "csv_row",
           "export_csv", "CSV_COLUMNS", "RESULT"]

RESULT = "result.json"  # a finished run's results line, in its run directory
CSV_COLUMNS = ("run", "dataset", "model", "model_kwargs", "strategy", "label", "keep_ratio",
               "seed", "epochs", "lr", "P", "U", "CR", "bytes", "bytes_source", "best_test_acc",
               "final_test_acc", "best_val_acc", "test_acc_at_best_val", "wall_s",
               "images_per_s")


def _bytes(run_dir: RunDir) -> tuple[dict, str]:
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
    model = load(run_dir.artifact, max_elements=2**31)  # the sweep's own file (PRANC: k * P)
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
    sizes, source = _bytes(run_dir)
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
    """Assemble ``path`` from the result files of ``configs`` (in their order) and rewrite its
    CSV export. A lock orders the assemblers, so the last one sees every finished run. Lines
    already there for other runs (another sweep sharing the file) are kept, first; a run of
    ``configs`` without a result file keeps its old line.

    Returns:
        How many runs the file gained.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # released when the file closes
        old = {r["run"]: json.dumps(r) for r in read_records(path)}
        grid = {c.name: RunDir.of(c).path / RESULT for c in configs}
        new = {name: r.read_text().strip() for name, r in grid.items() if r.is_file()}
        lines = [line for name, line in old.items() if name not in grid]
        lines += [new.get(name) or old[name] for name in grid if name in new or name in old]
        atomic_write(path, "".join(line + "\n" for line in lines).encode())
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
    """Write the results lines as a flat CSV (:data:`CSV_COLUMNS`), for spreadsheets."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in read_records(results))
    atomic_write(Path(csv_path), out.getvalue().encode())
    return Path(csv_path)


def write_result(cfg: RunConfig, run_dir: RunDir) -> None:
    """Pack a finished run and write its result file (atomically: a line is whole or absent)."""
    _pack(cfg, run_dir)
    record = result_record(cfg, run_dir.read_summary(), run_dir)
    atomic_write(run_dir.path / RESULT, (json.dumps(record) + "\n").encode())


def _pack(cfg: RunConfig, run_dir: RunDir) -> None:
    """Write the run's ``.pemn`` artifact, so the results hold real bytes on disk.

    Every strategy has one, the pruning baselines (``Sparse`` presets) included.
    """
    if run_dir.artifact.exists():
        return
    from pemn.trained import pack_trained
    pack_trained(run_dir.path, run_dir.artifact)
