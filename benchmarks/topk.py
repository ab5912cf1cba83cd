"""Exact per-tensor top-k masks: pemn's counting search against topk, sort and kthvalue.

Usage (under the project's CPU lock; where CUDA exists the same command adds a CUDA run):
    python benchmarks/topk.py --out benchmarks/results/topk.json

For each n, scores ~ N(0, 1) and keep 0.5, every method builds a {0, 1} mask of exactly
``num_kept(n, 0.5)`` entries from the scores (|scores| included in the time):

- ``topk``: ``topk(k, sorted=False)`` then ``index_fill_`` (the previous CPU method; ties in
  arbitrary order);
- ``sort``: stable ``argsort`` then ``index_fill_`` (the previous CUDA method; the reference);
- ``kthvalue``: threshold at the k-th value, ``>=`` (exact only without ties);
- ``counting_cold``: ``pemn.masking`` with no hint (a sample gives the first threshold);
- ``counting_warm``: ``pemn.masking`` with the hint its previous call left, as in training.

Before every call the scores move one simulated training step (``--drift`` times their std,
Gaussian, alternating sign), untimed. Calls are interleaved; min and median over repeats.
"""
from __future__ import annotations

import argparse
import json

import torch
from timing import environment, interleaved

from pemn import masking

SIZES = [65_536, 401_408, 2_359_296, 8_388_608, 25_000_000]


def _methods(scores: torch.Tensor, k: int) -> dict:
    n = scores.numel()
    hint = [None]

    def topk():
        idx = scores.abs().topk(k, sorted=False).indices
        return torch.zeros_like(scores).index_fill_(0, idx, 1)

    def sort():
        idx = scores.abs().argsort(descending=True, stable=True)[:k]
        return torch.zeros_like(scores).index_fill_(0, idx, 1)

    def kthvalue():
        a = scores.abs()
        return (a >= a.kthvalue(n - k + 1).values).to(scores.dtype)

    def counting_cold():
        return masking._select(scores.abs(), k, None)[0]

    def counting_warm():
        mask, hint[0] = masking._select(scores.abs(), k, hint[0])
        return mask

    return {"topk": topk, "sort": sort, "kthvalue": kthvalue, "counting_cold": counting_cold,
            "counting_warm": counting_warm}


def bench(n: int, keep: float, drift: float, repeats: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(n, generator=gen).to(device)
    noise = (drift * torch.randn(n, generator=gen)).to(device)
    k = masking.num_kept(n, keep)
    fns = _methods(scores, k)
    expected = fns["sort"]()
    for name, fn in fns.items():  # every method must give the same mask on these scores
        if not torch.equal(fn(), expected):
            raise AssertionError(f"{name} differs from the stable sort at n={n}")

    def step():
        scores.add_(noise)
        noise.neg_()
    return interleaved(fns, repeats, before=step, device=device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    p.add_argument("--devices", nargs="+", default=default, help="default: cpu, and cuda if any")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--drift", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/topk.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if "cuda" in args.devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: CUDA is not available here")
    results = {}
    for device in args.devices:
        results[device] = {}
        for n in args.sizes:
            results[device][n] = row = bench(n, args.keep, args.drift, args.repeats, device)
            best = min(row, key=lambda m: row[m]["median_s"])
            print(f"{device:<5} n={n:>11,}  " + "  ".join(
                f"{m} {1e3 * t['median_s']:8.2f}" for m, t in row.items())
                + f"  ms (median)  fastest: {best}")
    out = {"command": "python benchmarks/topk.py " + " ".join(
               ["--devices " + " ".join(args.devices), f"--keep {args.keep}",
                f"--drift {args.drift}", f"--repeats {args.repeats}", f"--threads {args.threads}",
                "--sizes " + " ".join(map(str, args.sizes))]),
           **environment(), "results_s": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
