"""Interleaved timing shared by the benchmarks in this folder.

Candidates run in turn, repeat after repeat, so a drift in machine speed (other processes on a
shared CPU, turbo, thermal) hits all of them alike; min and median are both reported because the
min shows what the code can do and the median what a loaded machine gave.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                before: Callable[[], object] | None = None,
                device: str = "cpu") -> dict[str, dict[str, float]]:
    """Time each function ``repeats`` times, interleaved.

    Args:
        fns: label -> function of no arguments.
        repeats: timed calls per function.
        warmup: untimed calls per function first.
        before: called, untimed, before every call (e.g. to move the scores one step).
        device: "cuda" synchronises around each call, so the time covers the kernels.

    Returns:
        label -> {"min_s": ..., "median_s": ...}.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            if before:
                before()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            if before:
                before()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[label].append(time.perf_counter() - t)
    return {k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}


def environment() -> dict[str, str | int]:
    """What the numbers were measured on."""
    env = {"torch": torch.__version__, "machine": platform.machine(),
           "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    return env
