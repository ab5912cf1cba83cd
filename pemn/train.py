"""The training loop: one visible loop, a pure learning-rate function, per-epoch checkpoints.

Recipes (those of the paper's code, arXiv 2210.06699 section 4): the ConvMixer recipe is AdamW
with a per-iteration triangular schedule ``0 -> lr at 40 % -> lr/20 at 80 % -> 0``; ResNet uses
SGD with cosine decay. Only parameters with ``requires_grad`` are optimised (for PEMN: scores,
BN affine, biases).
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pemn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pemn.config import ConfigError, OptimConfig, format_value
from pemn.distributed import World
from pemn.masking import FIXED, SCORES

__all__ = ["lr_at", "train", "evaluate", "train_one_epoch", "resolve_device", "autocast_dtype"]

log = logging.getLogger(__name__)
# What a resumed run needs from its checkpoint.
RESUME_KEYS = ("model", "optimizer", "scaler", "epoch", "step", "rng_cpu", "history")


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate after ``step`` of ``total_steps`` optimizer steps (a pure function)."""
    t = cfg.epochs * step / total_steps  # fractional epoch, as the official code
    if cfg.schedule == "triangular":
        e = cfg.epochs
        knots = [0, e * 2 // 5, e * 4 // 5, e] if e >= 5 else [0, 0.4 * e, 0.8 * e, e]
        return float(np.interp(t, knots, [0, cfg.lr, cfg.lr / 20, 0]))
    if t < cfg.warmup_epochs:
        return cfg.lr * t / cfg.warmup_epochs
    progress = (t - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(name: str, world: World) -> torch.device:
    """The device ``optim.device`` names; "auto" is CUDA when present, else the CPU, and a bare
    "cuda" is this process's GPU (``world.local_rank``).

    Raises:
        ConfigError: a name torch does not know, or a CUDA device this machine lacks.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"optim.device must be auto, cpu, cuda or cuda:N, got {name!r}") \
            from None
    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", world.local_rank)
    if device.index >= torch.cuda.device_count():  # 0 without CUDA
        raise ConfigError(f"optim.device {name!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s) for torch "
                          f"{torch.__version__}; use optim.device=cpu or auto")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``optim.amp``. "auto" is bf16 (fp16 on old GPUs) on CUDA, and bf16
    on CPUs with native bf16 instructions (AVX512-BF16 or AMX), where it was about 1.9x faster
    in benchmarks/step_time.py; elsewhere fp32, since emulated bf16 is slower."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; mask scores get ``lr * score_lr_scale``.

    Each group's ``lr_scale`` multiplies the scheduled lr (see :func:`train_one_epoch`).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scores = [p for n, p in named if n.endswith(SCORES)]
    others = [p for n, p in named if not n.endswith(SCORES)]
    groups = [{"params": ps, "lr_scale": scale}
              for ps, scale in ((others, 1.0), (scores, cfg.score_lr_scale)) if ps]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# On CPU, glibc serves large allocations (always above 32 MiB, and smaller ones once the heap
# is trimmed) with fresh mappings whose pages the kernel zero-fills on every forward: with
# 100 MB activations (ConvMixer-128 at batch 1000) that was most of `pemn eval`'s time.
# Activations below this size are reused from the heap.
CPU_ACTIVATION_BYTES = 4 << 20


def _largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the largest tensor a module of ``model`` returns for the input ``x``."""
    sizes = [0]

    def record(_module, _inputs, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def _eval_chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Images per forward: the whole batch, or on CPU as many as keep every activation under
    ``CPU_ACTIVATION_BYTES`` (the result does not depend on it: eval mode has no batch
    statistics)."""
    if x.device.type != "cpu":
        return len(x)
    per_image = _largest_activation(model, x[:1])
    return max(1, min(len(x), CPU_ACTIVATION_BYTES // max(per_image, 1)))


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp_dtype=None) -> float:
    """Top-1 accuracy in % over every batch of ``loader`` (in eval mode, under autocast to
    ``amp_dtype`` if given)."""
    model.eval()
    correct = total = 0
    chunk = None
    for x, y in loader:
        with _autocast(x.device, amp_dtype):
            chunk = chunk or _eval_chunk(model, x)
            for xs, ys in zip(x.split(chunk), y.split(chunk)):
                correct += (model(xs).argmax(1) == ys).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


def train_one_epoch(model, loader, opt, scaler, cfg: OptimConfig, step: int, total_steps: int,
                    amp_dtype, progress) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean train loss, step after the epoch)."""
    model.train()
    loss_sum = torch.zeros(())
    for x, y in loader:
        step += 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg) * group.get("lr_scale", 1.0)
        with _autocast(x.device, amp_dtype):
            loss = nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        loss_sum += loss.detach().float().cpu()
        progress.update(1)
    return loss_sum.item() / max(len(loader), 1), step


def _wrap_ddp(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    if not world.distributed:
        return model
    # The frozen random weights are identical on every rank (regenerated from the seed), so
    # DDP need not broadcast them each step; BN statistics still are.
    frozen = [n for n, _ in model.named_buffers() if n.endswith(FIXED)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm  # degrades to nothing when stderr is not a terminal (CI logs)
    return tqdm(total=total, desc=desc, leave=False, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True)


def _state(model, opt, scaler, epoch, step, history, meta) -> dict:
    return {**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
            "rng_cpu": torch.get_rng_state(), "history": history}


def _resume(run_dir, model, opt, scaler, world: World) -> tuple[int, int, list[dict]]:
    """Restore the last checkpoint; returns (epochs done, optimizer steps done, metrics)."""
    state = load_checkpoint(run_dir.checkpoint, keys=RESUME_KEYS)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {run_dir.checkpoint} does not fit this run: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    log.info("resumed %s at epoch %d", run_dir.path, state["epoch"])
    if world.is_main:  # the metrics file may hold a line the checkpoint does not: rewrite it
        run_dir.write_metrics(state["history"])
    return state["epoch"], state["step"], state["history"]


def train(model: nn.Module, train_loader, eval_loaders: dict, cfg: OptimConfig, run_dir,
          world: World, meta: dict, resume: bool = False, progress: bool = True) -> list[dict]:
    """Train ``model`` and evaluate on ``eval_loaders`` (e.g. {"test": ..., "val": ...}).

    Args:
        run_dir: the run's :class:`pemn.rundir.RunDir`; rank 0 appends to its metrics and writes
            its checkpoint (atomically) after every epoch.
        meta: JSON-like entries stored in every checkpoint as they are (the run's config and
            the model's constructor arguments).
        resume: continue from the checkpoint, if there is one; the run then ends with the same
            metrics as an uninterrupted one.

    Returns:
        The per-epoch metrics.

    Raises:
        CheckpointError: resuming from a checkpoint that is unreadable or incomplete.
    """
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(cfg.amp, device)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, step, history = 0, 0, []
    if resume and run_dir.checkpoint.exists():
        start_epoch, step, history = _resume(run_dir, model, opt, scaler, world)
    ddp_model = _wrap_ddp(model, device, world)
    total_steps = cfg.epochs * len(train_loader)
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        with _progress(len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}",
                       progress and world.is_main) as bar:
            loss, step = train_one_epoch(ddp_model, train_loader, opt, scaler, cfg, step,
                                         total_steps, amp_dtype, bar)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "train_loss": round(loss, 5),
                  "images_per_s": round(train_loader.num_samples * world.world_size / seconds, 1),
                  "epoch_s": round(seconds, 2), "lr": lr_at(step, total_steps, cfg)}
        for split, loader in eval_loaders.items():
            record[f"{split}_acc"] = round(evaluate(model, loader, amp_dtype), 3)
        history.append(record)
        if world.is_main:
            save_checkpoint(_state(model, opt, scaler, epoch + 1, step, history, meta),
                            run_dir.checkpoint)
            run_dir.append_metrics(record)
            log.info("epoch %d/%d  %s", epoch + 1, cfg.epochs, "  ".join(
                f"{k} {format_value(v, 4)}" for k, v in record.items() if k != "epoch"))
        world.barrier()
    return history
