"""Time one training step (forward, backward, AdamW) of every zoo family, dense vs masked.

Usage (CPU under the project's lock: other CPU-heavy work ruins 2-thread timings):
    python benchmarks/step_time.py --out benchmarks/results/step_time.json

For each case (model, input, batch: the families' CPU-sized defaults, fp32) the variants are a
plain dense model, Mask and RP 1e-3 (keep 0.5), plus ``mask_no_select``: Mask with the top-k
replaced by a copy of a precomputed mask, which splits the masked overhead into the selection
and everything else (STE backward, the masked-weight product, Python). Variants are interleaved,
min and median over repeats; ratios are to dense within the same run.
"""
from __future__ import annotations

import argparse
import json

import torch
from timing import environment, interleaved
from torch import nn

import pemn
from pemn import masking
from pemn.transform import accepts
from pemn.models import create_model

# name -> (model, model kwargs, input shape, batch)
CASES = {
    "mlp": ("mlp", {}, (1, 28, 28), 128),
    "convmixer_128_d4": ("convmixer_128_d4", {"in_channels": 1}, (1, 28, 28), 128),
    "resnet20": ("resnet20", {"in_channels": 1}, (1, 28, 28), 128),
    "resnet50_64px": ("resnet50", {"num_classes": 100}, (3, 64, 64), 32),
    "vit_tiny": ("vit_tiny", {}, (3, 32, 32), 64),
}
VARIANTS = {"dense": pemn.Dense(), "mask": pemn.Mask(),
            "rp1e-3": pemn.RP(ratio=1e-3, order="copy"),
            "mask_no_select": pemn.Mask()}


class _PrecomputedSelection:
    """Run ``step`` with every top-k answered by a copy of the mask it gave the first time."""

    def __init__(self, step) -> None:
        self.step, self.memo, self.real = step, {}, masking._select

    def _select(self, a, k, hint):
        key = (a.numel(), k)  # same-sized tensors may share one: only the time matters
        if key not in self.memo:
            self.memo[key] = self.real(a, k, None)[0]
        return self.memo[key].clone(), hint

    def __call__(self) -> None:
        masking._select = self._select
        try:
            self.step()
        finally:
            masking._select = self.real


def _step_fn(case: str, variant: str):
    name, kwargs, shape, batch = CASES[case]
    torch.manual_seed(0)
    strategy = VARIANTS[variant]
    seed = {"seed": 0} if "seed" in accepts(strategy) else {}  # Dense takes no seed
    model = pemn.apply_(create_model(name, **kwargs), strategy, **seed)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen)
    y = torch.randint(0, model.num_classes if hasattr(model, "num_classes") else 10, (batch,),
                      generator=gen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _PrecomputedSelection(step) if variant == "mask_no_select" else step


def bench_case(case: str, repeats: int) -> dict:
    steps = interleaved({v: _step_fn(case, v) for v in VARIANTS}, repeats)
    dense = steps["dense"]
    ratios = {v: {"min": t["min_s"] / dense["min_s"], "median": t["median_s"] / dense["median_s"]}
              for v, t in steps.items()}
    name, kwargs, shape, batch = CASES[case]
    return {"model": name, "kwargs": kwargs, "input": list(shape), "batch": batch,
            "step_time_s": steps, "ratio_to_dense": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/step_time.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for case in args.cases:
        results[case] = r = bench_case(case, args.repeats)
        for v, t in r["step_time_s"].items():
            ratio = r["ratio_to_dense"][v]
            print(f"{case:<17} {v:<15} min {1e3 * t['min_s']:9.2f} ms  median "
                  f"{1e3 * t['median_s']:9.2f} ms  ratio {ratio['min']:.3f} / {ratio['median']:.3f}")
    out = {"command": f"python benchmarks/step_time.py --cases {' '.join(args.cases)} "
                      f"--repeats {args.repeats} --threads {args.threads}",
           **environment(), "precision": "fp32", "optimizer": "AdamW", "keep_ratio": 0.5,
           "cases": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
