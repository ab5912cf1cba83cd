"""Time loading PEMN artifacts, compare file sizes with the formulas, and eval speed.

Usage (on an idle machine; other CPU-heavy work ruins 2-thread timings):
    python benchmarks/artifact_load.py --out benchmarks/results/artifact_load.json

For ConvMixer-256/8 (CIFAR-10 head) with RP 1e-3 and Mask at keep ratio 0.5 (and RP 1e-3 at
0.1, entropy-coded), no training, random scores and BN statistics:

- ``load`` (read, check, rebuild, regenerate, set masks and BN) at 2 threads and at 1, and the
  regeneration of the prototypes alone, min and median over repeats, CPU;
- the real file bytes next to ``ceil(P/8) + BN`` and ``n H(k/n) / 8``;
- eval forward time of the loaded model (masked weights cached under no_grad in eval mode)
  against a plain dense model of the same architecture, interleaved, batch 128 at 32x32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pemn
from pemn.artifact import load, save
from pemn.models import create_model
from pemn.storage import size_report

CASES = [("rp_1e-3_keep_0.5", pemn.RP(ratio=1e-3, order="copy"), 0.5),
         ("mask_keep_0.5", pemn.Mask(), 0.5),
         ("rp_1e-3_keep_0.1", pemn.RP(ratio=1e-3, order="copy"), 0.1)]


def _trained(strategy, keep_ratio):
    model = pemn.apply_(create_model("convmixer_256_d8"), strategy, keep_ratio=keep_ratio, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point() and not name.endswith("_fixed"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def _times(fn, repeats: int) -> dict:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return {"min_s": min(out), "median_s": statistics.median(out), "repeats": repeats}


def _eval_speed(loaded, repeats: int, batch: int) -> dict:
    dense = create_model("convmixer_256_d8").eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fns = {"loaded_pemn": lambda: loaded(x), "plain_dense": lambda: dense(x)}
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up; the first masked forward fills the mask cache
            fn()
        cached = loaded.blocks[0][1].weight is loaded.blocks[0][1].weight
        for _ in range(repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    out = {k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}
    out["ratio_median"] = out["loaded_pemn"]["median_s"] / out["plain_dense"]["median_s"]
    out.update(batch=batch, repeats=repeats, masked_weight_cached_in_eval=cached)
    return out


def _case(name, strategy, keep_ratio, tmp: Path, repeats: int) -> dict:
    model = _trained(strategy, keep_ratio)
    path = tmp / f"{name}.pemn"
    save(model, path)
    report = size_report(path)
    b = report["bytes"]
    spec = model.pemn_spec
    return {
        "file_bytes": b["total"],
        "bytes": b,
        "num_masked": report["num_masked"],
        "num_unique": report["num_unique"],
        "mask_codecs": report["mask_codecs"],
        "mask_bits_plus_bn_bytes": report["mask_bitmap_bytes"] + b["norm"] + b["other"],
        "mask_entropy_bytes": round(report["mask_entropy_bytes"], 1),
        "masks_over_entropy": b["masks"] / max(report["mask_entropy_bytes"], 1),
        "paper_bytes": report["paper_bytes"],
        "paper_compression_ratio": report["paper_compression_ratio"],
        "file_compression_ratio": report["file_compression_ratio"],
        "load": _times(lambda: load(path), repeats),
        "load_1_thread": _one_thread(lambda: _times(lambda: load(path), repeats)),
        "regenerate_prototypes": _times(lambda: spec.plan.generate(spec.seed), repeats),
    }


def _one_thread(fn):
    """On a busy 2-core machine torch's 2-thread pool stalls on every small op; 1 thread
    shows what the loader itself costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/artifact_load.json")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": {"torch": torch.__version__, "python": platform.python_version(),
                           "threads": args.threads, "cpu": platform.processor() or
                           platform.machine(), "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy, keep in CASES:
            results[name] = _case(name, strategy, keep, Path(tmp), args.repeats)
            r = results[name]
            print(f"{name:>18}: {r['file_bytes']:>9,} B (mask bits + BN "
                  f"{r['mask_bits_plus_bn_bytes']:,} B), load median "
                  f"{r['load']['median_s'] * 1e3:.0f} ms ({args.threads} threads), "
                  f"{r['load_1_thread']['median_s'] * 1e3:.0f} ms (1 thread)")
        loaded = load(Path(tmp) / "rp_1e-3_keep_0.5.pemn")
    results["eval_speed_rp_1e-3"] = _eval_speed(loaded, args.repeats, args.batch)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(f"eval: loaded/dense median ratio {results['eval_speed_rp_1e-3']['ratio_median']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
