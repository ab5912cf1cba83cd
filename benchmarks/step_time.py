"""Time one training step (forward, backward, AdamW) of a model dense vs masked.

Usage (on an idle machine; anything else CPU-heavy ruins 2-thread timings):
    python benchmarks/step_time.py --out benchmarks/results/step_time.json

Measures, for ConvMixer-256 depth 8 at batch 128 on 3x32x32 inputs (CPU, 2 threads):
dense vs Mask vs RP 1e-3; channels_last; bf16 autocast; and the exact top-k methods.
Masked/dense ratios are taken from the same run, interleaved, min and median over repeats.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

import pemn
from pemn.models import create_model


def _step_fn(model, batch, channels_last, bf16):
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _time(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Interleave the candidates so drifts in machine speed hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}


def bench_steps(model_name, batch, repeats, variants):
    fns = {}
    for label, strategy, cl, bf16 in variants:
        model = pemn.apply_(create_model(model_name), strategy)
        fns[label] = _step_fn(model, batch, cl, bf16)
    return _time(fns, repeats)


def bench_topk(numels, keep, repeats):
    out = {}
    for n in numels:
        s = torch.randn(n)
        k = n - int((1 - keep) * n)

        def topk():
            idx = s.abs().topk(k, sorted=False).indices
            return torch.zeros(n).index_fill_(0, idx, 1)

        def sort():
            idx = s.abs().argsort(descending=True)[:k]
            return torch.zeros(n).index_fill_(0, idx, 1)

        def kthvalue():  # threshold, then fix ties to the exact count
            a = s.abs()
            thr = a.kthvalue(n - k + 1).values
            return (a >= thr).float()

        out[n] = _time({"topk": topk, "sort": sort, "kthvalue": kthvalue}, repeats)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convmixer_256_d8")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/step_time.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rp = pemn.RP(ratio=1e-3)
    variants = [("dense", pemn.Dense(), False, False), ("mask", pemn.Mask(), False, False),
                ("rp1e-3", rp, False, False),
                ("dense_channels_last", pemn.Dense(), True, False),
                ("rp1e-3_channels_last", rp, True, False),
                ("dense_bf16", pemn.Dense(), False, True), ("rp1e-3_bf16", rp, False, True)]
    steps = bench_steps(args.model, args.batch, args.repeats, variants)
    dense = steps["dense"]
    ratios = {k: {"min": v["min_s"] / dense["min_s"], "median": v["median_s"] / dense["median_s"]}
              for k, v in steps.items()}
    result = {"command": "python benchmarks/step_time.py " + f"--model {args.model} --batch "
              f"{args.batch} --repeats {args.repeats} --threads {args.threads}",
              "model": args.model, "batch": args.batch, "threads": args.threads,
              "torch": torch.__version__, "machine": platform.machine(),
              "processor": platform.processor(), "step_time": steps, "ratio_to_dense": ratios,
              "topk_s": bench_topk([65_536, 581_120, 2_359_296], 0.5, args.repeats)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for k, v in steps.items():
        print(f"{k:<22} min {1e3 * v['min_s']:8.1f} ms  median {1e3 * v['median_s']:8.1f} ms  "
              f"ratio {ratios[k]['min']:.3f} / {ratios[k]['median']:.3f}")
    for n, row in result["topk_s"].items():
        print(f"top-k n={n:>9,}: " + "  ".join(f"{m} {1e3 * t['min_s']:.2f} ms"
                                                 for m, t in row.items()))


if __name__ == "__main__":
    main()
