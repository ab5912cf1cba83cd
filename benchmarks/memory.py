"""Memory and latency of a loaded artifact in each form (``pemn.load(..., form=...)``).

For each case (model, strategy) the artifact is written once; then, each in a fresh process,
the plain dense model (``create_model``, the reference) and every form is loaded and run once
at batch 1, reporting:

- ``held_bytes``: bytes of every distinct tensor storage the model holds (parameters, buffers,
  the eval-mode cache of masked weights), the quantity the targets are about;
- ``peak_rss_bytes``: the process's peak resident memory (VmHWM) after load + one forward,
  interpreter and torch included (so it has a constant floor of a few hundred MB);
- ``logits_as_dense_form``: that forward's logits equal the ``dense`` form's, bit for bit
  (the reference has random weights of its own: False).

Latency: in one process, the dense reference and each form run interleaved at each case's
points (batch, input size); min and median of ``--repeats`` rounds, as ratios to the dense
reference in the same round.

    python benchmarks/memory.py --repeats 5 --out benchmarks/results/memory.json

Run it on an otherwise idle machine (timings are worthless next to other CPU-heavy work);
``--repeats 0`` measures memory only, which other work does not disturb.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import pemn
from pemn.masking import cached_tensors
from pemn.models import create_model

# name -> (zoo model, kwargs, strategy, latency points as (batch, input shape without batch));
# the first point's input is also the one the memory runs use. ResNet-50 at 224x224 and batch
# 64 would take ~10 s a forward here, so batch 64 runs at 112x112. Every strategy is in the
# library's defaults (permuted RP, signed constants), the configuration a user gets.
_R50 = [(1, (3, 224, 224)), (1, (3, 112, 112)), (64, (3, 112, 112))]
CASES = {
    "resnet50-mask": ("resnet50", {}, pemn.Mask(), _R50),
    "resnet50-mp": ("resnet50", {}, pemn.MP(), _R50),
    "resnet50-rp1e-3": ("resnet50", {}, pemn.RP(ratio=1e-3), _R50),
    "vit_512_d8-rp1e-3": ("vit_512_d8", {}, pemn.RP(ratio=1e-3), [(1, (3, 32, 32)),
                                                                  (64, (3, 32, 32))]),
}
FORMS = ("dense_reference", *pemn.artifact.FORMS)


def held_bytes(model: torch.nn.Module) -> int:
    storages = {}
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for m in model.modules() for t in cached_tensors(m)]  # eval-mode caches
    for t in tensors:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def _load(form: str, path: str, arch: str, kwargs: dict) -> torch.nn.Module:
    if form == "dense_reference":
        return create_model(arch, **kwargs).eval()
    return pemn.load(path, form=form)


def measure_one(form: str, path: str, arch: str, kwargs: dict, shape) -> dict:
    """In this (fresh) process: load, one forward at batch 1 (a seeded input), held bytes,
    peak RSS and the logits' SHA-256."""
    model = _load(form, path, arch, kwargs)
    with torch.no_grad():
        y = model(torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)))
    return {"held_bytes": held_bytes(model), "peak_rss_bytes": _peak_rss_bytes(),
            "logits_sha256": hashlib.sha256(y.numpy().tobytes()).hexdigest()}


def _peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries a parent's peak
    across fork + exec into it, so every child of a big benchmark process would report it."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _latency(models: dict, shape, batch: int, repeats: int) -> dict:
    x = torch.randn(batch, *shape)
    times = {f: [] for f in models}
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up (and the train form's cache)
        for _ in range(repeats):
            for form, m in models.items():  # interleaved
                start = time.perf_counter()
                m(x)
                times[form].append(time.perf_counter() - start)
    ref = times["dense_reference"]
    return {form: {"min_s": min(t), "median_s": statistics.median(t),
                   "ratio_min": min(a / b for a, b in zip(t, ref)),
                   "ratio_median": statistics.median(a / b for a, b in zip(t, ref))}
            for form, t in times.items()}


def run_case(name: str, repeats: int, tmp: Path) -> dict:
    arch, kwargs, strategy, points = CASES[name]
    shape = points[0][1]
    model = pemn.apply_(create_model(arch, **kwargs), strategy, seed=0)
    path = tmp / f"{name}.pemn"
    num_bytes = pemn.save(model, path)
    del model
    memory = {}
    for form in FORMS:  # each in a fresh process: peak RSS is per process
        out = subprocess.run([sys.executable, __file__, "--one", form, str(path), arch,
                              json.dumps(kwargs), json.dumps(list(shape))],
                             capture_output=True, text=True, check=True)
        memory[form] = json.loads(out.stdout)
    ref, logits = memory["dense_reference"]["held_bytes"], memory["dense"]["logits_sha256"]
    for m in memory.values():
        m["held_vs_dense"] = m["held_bytes"] / ref
        m["logits_as_dense_form"] = m.pop("logits_sha256") == logits  # bit for bit
    models = {f: _load(f, str(path), arch, kwargs) for f in FORMS} if repeats else {}
    latency = {f"batch_{b}_{'x'.join(map(str, s))}": _latency(models, s, b, repeats)
               for b, s in points if repeats}
    return {"file_bytes": num_bytes, "memory": memory, "latency": latency}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", default="benchmarks/results/memory.json")
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        form, path, arch, kwargs, shape = args.one
        print(json.dumps(measure_one(form, path, arch, json.loads(kwargs), json.loads(shape))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(name, args.repeats, Path(tmp)) for name in args.cases}
    report = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
              "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "cpu_count": __import__("os").cpu_count(), "cases": results}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for name, r in results.items():
        print(f"{name}: file {r['file_bytes']:,} B")
        for form, m in r["memory"].items():
            lat = "  ".join(f"{k} {v[form]['ratio_median']:.2f}" for k, v in r["latency"].items())
            print(f"  {form:16s} held {m['held_bytes'] / 2**20:8.1f} MiB "
                  f"({m['held_vs_dense']:.3f}x)  peak RSS {m['peak_rss_bytes'] / 2**20:7.0f} MiB"
                  f"  latency/dense {lat}")


if __name__ == "__main__":
    main()
