"""Where `pemn eval` spends its time: evaluation of a packed demo-architecture model by batch size.

Usage (CPU under the project's lock; needs Fashion-MNIST, e.g. Debian's dataset-fashion-mnist):
    python benchmarks/eval_time.py --out benchmarks/results/eval_time.json

Packs ConvMixer-128/4 (1x28x28, RP 1e-3, untrained scores: the accuracy is not the point),
loads it as `pemn eval` does and runs ``pemn.train.evaluate`` over the 10,000 test images at each
batch size, recording wall, user and system seconds and minor page faults. Each activation of
this model takes ``batch * 128 * 14 * 14 * 4`` bytes: 100 MB at batch 1000, above glibc's
largest mmap threshold (32 MiB), so every such tensor is a fresh mapping whose pages the kernel
zeroes on first touch (the system time).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from timing import environment

import pemn
from pemn.data import load_dataset
from pemn.data.loader import BatchLoader
from pemn.models import create_model
from pemn.train import evaluate


def _packed_model(directory: str) -> torch.nn.Module:
    model = create_model("convmixer_128_d4", in_channels=1)
    pemn.apply_(model, pemn.RP(ratio=1e-3, order="copy"), seed=0)
    path = Path(directory) / "demo.pemn"
    pemn.artifact.save(model.eval(), path)
    return pemn.artifact.load(path)


def time_eval(model, ds, batch: int) -> dict:
    loader = BatchLoader(ds.test_images, ds.test_labels, batch, shuffle=False, mean=ds.mean,
                         std=ds.std)
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    evaluate(model, loader)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1000, 250, 100, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/eval_time.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion_mnist", None)
    with tempfile.TemporaryDirectory() as d:
        model = _packed_model(d)
    results = {}
    for batch in args.batches:
        results[batch] = r = time_eval(model, ds, batch)
        print(f"batch {batch:>5}: wall {r['wall_s']:6.2f} s  user {r['user_s']:6.2f} s  "
              f"sys {r['sys_s']:6.2f} s  minor faults {r['minor_faults']:,}")
    out = {"command": f"python benchmarks/eval_time.py --batches "
                      f"{' '.join(map(str, args.batches))} --threads {args.threads}",
           **environment(), "model": "convmixer_128_d4 (1x28x28), RP 1e-3, loaded .pemn",
           "images": len(ds.test_labels), "results": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
