"""One-time conversion of the CPU grid's old results CSV into results lines (no retraining).

The CSV was written before sweeps recorded one JSON line per run. Each row becomes the line
``pemn sweep`` writes today: the resolved config (from ``configs/sweeps/fmnist_cpu.toml``,
matched by model width, strategy tag and seed), the row's metrics as the summary, and its
bytes (``total`` only: the CSV kept no sections). Run from the repository root:

    python docs/results/from_csv.py docs/results/fmnist_cpu.csv docs/results/fmnist_cpu.jsonl
"""
import csv
import json
import sys

from pemn.config import to_dict
from pemn.experiments import expand

_INTS = ("P", "U", "seed", "epochs", "bytes")
_SUMMARY = {"P": "num_masked", "U": "num_unique", "CR": "compression_ratio"}
_METRICS = ("best_test_acc", "final_test_acc", "best_val_acc", "test_acc_at_best_val",
            "wall_s", "images_per_s")


def _number(key: str, text: str):
    return int(text) if key in _INTS else float(text)


def convert(csv_path: str, out_path: str) -> int:
    configs = {(c.model.name, c.mask.strategy.tag(), c.mask.seed): c
               for c in expand("configs/sweeps/fmnist_cpu.toml")}
    lines = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            dim = json.loads(row["model_kwargs"])["dim"]
            tag = row["run"].split("-d4-")[1].rsplit("-e", 1)[0]  # ...-d4-<tag>-e3-s0
            cfg = configs[(f"convmixer_{dim}_d4", tag, int(row["seed"]))]
            summary = {"run": cfg.name, "model": cfg.model.name, "dataset": cfg.data.dataset,
                       "strategy": to_dict(cfg)["mask"]["strategy"],
                       "keep_ratio": float(row["keep_ratio"]), "seed": cfg.mask.seed,
                       "epochs": cfg.optim.epochs}
            summary.update({new: _number(old, row[old]) for old, new in _SUMMARY.items()})
            summary.update({k: float(row[k]) for k in _METRICS if row[k]})
            lines.append({"run": cfg.name, "config": to_dict(cfg), "summary": summary,
                          "bytes": {"total": int(row["bytes"])},
                          "bytes_source": row["bytes_source"]})
    with open(out_path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return len(lines)


if __name__ == "__main__":
    print(convert(*sys.argv[1:3]), "lines")
