"""The training loop: one visible loop, a pure learning-rate function, per-epoch checkpoints.
Only parameters with ``requires_grad`` are optimised (for PEMN: scores, BN affine, biases)."""
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
from tqdm import tqdm

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
    """The device ``optim.device`` names ("auto": CUDA when present, else the CPU; a bare
    "cuda": this process's GPU); ConfigError for a name torch lacks or a missing GPU."""
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
    """The autocast dtype for ``optim.amp``; "auto": bf16 (fp16 on old GPUs) on CUDA and on CPUs
    with native bf16 (AVX512-BF16 or AMX), else fp32 (emulated bf16 is slower)."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return torch.bfloat16 if any(getattr(torch.cpu, c, lambda: False)() for c in native) \
            else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; each group's ``lr_scale`` multiplies the
    scheduled lr, ``score_lr_scale`` for mask scores."""
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
    # no autocast at all without a dtype: torch.autocast(enabled=False) would still switch off
    # a caller's autocast, and torch < 2.5 refuses device types it has none for (mps)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


# On CPU, eval forwards keep every activation under this size, so glibc reuses heap pages
# instead of zero-filling fresh mappings (docs/PERFORMANCE.md, `pemn eval`).
CPU_ACTIVATION_BYTES = 4 << 20


def _eval_chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Images per forward: the batch, or on CPU few enough for ``CPU_ACTIVATION_BYTES`` (eval
    mode has no batch statistics, so results do not change)."""
    if x.device.type != "cpu":
        return len(x)
    sizes = [0]

    def record(_module, _inputs, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(1, min(len(x), CPU_ACTIVATION_BYTES // max(max(sizes), 1)))


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp_dtype=None) -> float:
    """Top-1 accuracy in % over ``loader``, in eval mode, under autocast to ``amp_dtype``."""
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
    """Train ``model``, evaluating on ``eval_loaders`` (e.g. {"test": ..., "val": ...}) after
    each epoch; returns the per-epoch metrics. Rank 0 appends each epoch's metrics to
    ``run_dir`` and checkpoints it there, with ``meta`` as it is; ``resume`` continues from
    that checkpoint, if any, to the same metrics as an uninterrupted run."""
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
        show = progress and world.is_main and sys.stderr.isatty()  # no bars in CI logs
        with tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                  disable=not show, dynamic_ncols=True) as bar:
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
            state = {**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step,
                     "rng_cpu": torch.get_rng_state(), "history": history}
            save_checkpoint(state, run_dir.checkpoint)
            run_dir.append_metrics(record)
            log.info("epoch %d/%d  %s", epoch + 1, cfg.epochs, "  ".join(
                f"{k} {format_value(v, 4)}" for k, v in record.items() if k != "epoch"))
        world.barrier()
    return history
