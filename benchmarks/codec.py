"""Mask codec speed (mask bits per second) and size (bytes against the entropy bound).

Usage (CPU under the project's lock: other CPU-heavy work ruins 2-thread timings):
    flock /tmp/pemn-cpu.lock python benchmarks/codec.py --out benchmarks/results/codec.json

Three parts, all on random exact-k masks (a fixed seed):

- ``speed``: encode and decode of ``"bits"`` and both Huffman codecs at n = 65,536, 2**20
  and 25M, keep 0.5 and 0.1; calls interleaved, min and median over repeats. ``chosen`` is
  what :func:`choose_codec` picks for new files.
- ``sizes``: bytes of every codec and of the chosen one at n = 10k, 100k, 2**20 and 25M, keep
  0.5, 0.3, 0.1 and 0.01, as overhead over ``n H(k/n) / 8``.
- ``bound``: decode time and peak traced memory (numpy and Python allocations, the mask
  included) of every current codec for 2**28 mask bits at keep 0.5 and 0.1 (``--bound-bits 0``
  skips it).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tracemalloc

import numpy as np
import torch
from timing import environment, interleaved

from pemn.artifact.codec import choose_codec, get_codec

SPEED_SIZES = (65_536, 1 << 20, 25_000_000)
SIZE_SIZES = (10_000, 100_000, 1 << 20, 25_000_000)
SPEED_KEEPS = (0.5, 0.1)
SIZE_KEEPS = (0.5, 0.3, 0.1, 0.01)
CODECS = ("bits", "huffman-bytes", "huffman-gaps")


def random_mask(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """A flat bool mask with exactly ``k`` ones at random places."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, np.bool_)
    mask[rng.choice(n, size=k, replace=False)] = True
    return torch.from_numpy(mask)


def entropy_bytes(n: int, k: int) -> float:
    p = k / n
    return 0.0 if k in (0, n) else n * (-p * math.log2(p) - (1 - p) * math.log2(1 - p)) / 8


def speed_case(n: int, keep: float, repeats: int) -> dict:
    k = round(keep * n)
    mask = random_mask(n, k)
    data = {name: get_codec(name).encode(mask) for name in CODECS}
    for name in CODECS:  # a benchmark of a wrong answer is worth nothing
        assert torch.equal(get_codec(name).decode(data[name], n, k), mask), name
    fns = {f"encode {name}": (lambda c=get_codec(name): c.encode(mask)) for name in CODECS}
    fns |= {f"decode {name}": (lambda c=get_codec(name), d=data[name]: c.decode(d, n, k))
            for name in CODECS}
    times = interleaved(fns, repeats, warmup=1)
    codecs = {}
    for name in CODECS:
        enc, dec = times[f"encode {name}"], times[f"decode {name}"]
        codecs[name] = {
            "bytes": len(data[name]),
            "overhead_pct": round(100 * (len(data[name]) / entropy_bytes(n, k) - 1), 3),
            "encode_s": enc, "decode_s": dec,
            "encode_mbit_per_s": {"best": round(n / enc["min_s"] / 1e6, 1),
                                  "median": round(n / enc["median_s"] / 1e6, 1)},
            "decode_mbit_per_s": {"best": round(n / dec["min_s"] / 1e6, 1),
                                  "median": round(n / dec["median_s"] / 1e6, 1)},
        }
    return {"n": n, "keep": keep, "k": k, "repeats": repeats,
            "entropy_bytes": round(entropy_bytes(n, k), 1), "chosen": choose_codec(n, k),
            "codecs": codecs}


def size_case(n: int, keep: float) -> dict:
    k = round(keep * n)
    mask = random_mask(n, k, seed=1)
    sizes = {name: len(get_codec(name).encode(mask)) for name in CODECS}
    chosen, bound = choose_codec(n, k), entropy_bytes(n, k)
    return {"n": n, "keep": keep, "k": k, "entropy_bytes": round(bound, 1), "chosen": chosen,
            "chosen_overhead_pct": round(100 * (sizes[chosen] / bound - 1), 3),
            "bytes": sizes}


def bound_case(n: int, keep: float) -> list[dict]:
    """Decode time and peak traced memory of every current codec for one large mask."""
    rng = np.random.default_rng(2)
    mask = torch.from_numpy(rng.random(n, dtype=np.float32) < keep)  # about keep * n ones
    k = int(mask.count_nonzero())
    rows = []
    for name in ("bits", "huffman-bytes", "huffman-gaps"):
        codec = get_codec(name)
        data = codec.encode(mask)
        start = time.perf_counter()
        out = codec.decode(data, n, k)
        seconds = time.perf_counter() - start
        assert torch.equal(out, mask)
        del out
        tracemalloc.start()
        codec.decode(data, n, k)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"n": n, "keep": keep, "k": k, "codec": name, "bytes": len(data),
                     "chosen": name == choose_codec(n, k), "decode_s": round(seconds, 3),
                     "decode_peak_mb": round(peak / 2**20, 1), "mask_mb": round(n / 2**20, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/codec.json")
    parser.add_argument("--bound-bits", type=int, default=1 << 28)
    args = parser.parse_args()
    repeats = {65_536: 15, 1 << 20: 7, 25_000_000: 3}
    result = {"command": "flock /tmp/pemn-cpu.lock python benchmarks/codec.py --out "
                         f"{args.out}" + ("" if args.bound_bits == 1 << 28
                                          else f" --bound-bits {args.bound_bits}"),
              **environment(), "numpy": np.__version__, "speed": [], "sizes": [], "bound": []}
    for n in SPEED_SIZES:
        for keep in SPEED_KEEPS:
            result["speed"].append(case := speed_case(n, keep, repeats[n]))
            print(n, keep, case["chosen"], flush=True)
    for n in SIZE_SIZES:
        for keep in SIZE_KEEPS:
            result["sizes"].append(case := size_case(n, keep))
            print(n, keep, case["chosen"], case["chosen_overhead_pct"], "%", flush=True)
    if args.bound_bits:
        for keep in SPEED_KEEPS:
            result["bound"] += (rows := bound_case(args.bound_bits, keep))
            print(*rows, sep="\n", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
