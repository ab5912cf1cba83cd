"""`pemn eval` end to end (the command a user runs), this tree against an earlier revision.

Usage (CPU under the project's lock; needs Fashion-MNIST, e.g. Debian's dataset-fashion-mnist):
    python benchmarks/eval_cli.py --baseline abcc11d --out benchmarks/results/eval_cli.json

Packs ConvMixer-128/4 (1x28x28, RP 1e-3, untrained scores: the accuracy is not the point) with
this tree, then runs ``python -m pemn.cli eval MODEL.pemn --dataset fashion_mnist`` over the
10,000 test images, once with this tree's ``pemn`` and once with the baseline revision's
(extracted by ``git archive``), interleaved, recording wall, user and system seconds of each
process: start-up, loading and evaluation together.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import environment

import pemn
from pemn.config import load_config
from pemn.data import dataset_info
from pemn.run import model_from_config

ROOT = Path(__file__).resolve().parents[1]


def _artifact(directory: Path) -> Path:
    cfg = load_config(ROOT / "configs" / "fmnist_convmixer.toml")
    path = directory / "demo.pemn"
    pemn.save(model_from_config(cfg).eval(), path, dataset=dataset_info(cfg.data.dataset))
    return path


def _baseline_tree(revision: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "pemn"],
                             check=True, capture_output=True).stdout
    directory.mkdir()
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def _run_eval(tree: Path, artifact: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pemn.cli", "eval", str(artifact), "--dataset",
                          "fashion_mnist", "--json"], env=env, check=True, capture_output=True,
                         text=True).stdout
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "accuracy": json.loads(out)["accuracy"]}


def _summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("wall_s", "user_s", "sys_s"):
        values = [r[key] for r in runs]
        out[key] = {"min": round(min(values), 2), "median": round(statistics.median(values), 2)}
    out["accuracy"] = runs[0]["accuracy"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="git revision to compare with")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/eval_cli.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        artifact = _artifact(Path(d))
        trees = {"baseline": _baseline_tree(args.baseline, Path(d) / "baseline"),
                 "this tree": ROOT}
        runs = {label: [] for label in trees}
        for _ in range(args.repeats):
            for label, tree in trees.items():
                runs[label].append(_run_eval(tree, artifact))
    results = {label: _summary(r) for label, r in runs.items()}
    ratio = results["baseline"]["wall_s"]["median"] / results["this tree"]["wall_s"]["median"]
    report = {"command": "python " + " ".join(sys.argv), "baseline": args.baseline,
              **environment(), "images": 10_000, "results": results,
              "median_wall_speedup": round(ratio, 2)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
