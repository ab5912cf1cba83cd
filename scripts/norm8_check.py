"""Does storing the norm layers at 8 bits cost accuracy? For each finished run directory, pack
it at fp16 and at norm8 (``pemn pack --precision``), evaluate both files on the test split
(``pemn eval``) and print one line: bytes, accuracies and the difference (norm8 - fp16).

    python scripts/norm8_check.py runs/fmnist_budget/*-e3-s0 [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pemn.evaluate import evaluate_path
from pemn.trained import pack_trained

PRECISIONS = ("fp16", "norm8")


def check(run_dir: str | Path, out_dir: Path) -> dict:
    """``<precision>_bytes`` and ``<precision>_acc`` (test, %) of the run packed at each."""
    row = {}
    for precision in PRECISIONS:
        out = out_dir / f"{Path(run_dir).name}-{precision}.pemn"
        path, row[f"{precision}_bytes"] = pack_trained(run_dir, out, precision=precision)
        row[f"{precision}_acc"] = evaluate_path(path, split="test")["accuracy"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out-dir", help="keep the packed files here (default: a temporary folder)")
    args = p.parse_args()
    print(f"{'run':<64}{'fp16 B':>9}{'norm8 B':>9}{'fp16 %':>8}{'norm8 %':>9}{'diff':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for run_dir in args.run_dirs:
            r = check(run_dir, out_dir)
            print(f"{Path(run_dir).name:<64}{r['fp16_bytes']:>9,}{r['norm8_bytes']:>9,}"
                  f"{r['fp16_acc']:>8.2f}{r['norm8_acc']:>9.2f}"
                  f"{r['norm8_acc'] - r['fp16_acc']:>+7.2f}", flush=True)


if __name__ == "__main__":
    main()
