"""One run from a config: data -> model -> PEMN (or a baseline) -> train -> summary.json.

The run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (atomic, every epoch) and ``summary.json`` (written last, so its
presence means the run finished).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from pemn import baselines, fill, stats
from pemn.config import ConfigError, RunConfig, from_dict, to_dict
from pemn.data import load_dataset, split_validation
from pemn.data.loader import AugmentConfig, BatchLoader
from pemn.distributed import World, setup, teardown
from pemn.models import create_model
from pemn.train import resolve_device, train
from pemn.transform import apply_

__all__ = ["run", "build_model", "load_run_config", "RunError", "SUMMARY"]

log = logging.getLogger(__name__)
SUMMARY = "summary.json"
CONFIG = "config.json"


class RunError(ValueError):
    """A run directory in the wrong state (exists, missing, unfinished)."""


def build_model(cfg: RunConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    """``create_model`` + the configured PEMN strategy or pruning baseline."""
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, **cfg.model.kwargs}
    model = create_model(cfg.model.name, **kwargs)
    m = cfg.mask
    if m.strategy in baselines.BASELINES:
        return baselines.prune_(model, m.strategy, keep_ratio=m.keep_ratio, seed=m.seed)
    strategy = fill.strategy_from_dict(
        {"name": m.strategy, **({"ratio": m.ratio, "order": m.order} if m.strategy == "rp"
                                else {})})
    return apply_(model, strategy, keep_ratio=m.keep_ratio, seed=m.seed)


def _loaders(cfg: RunConfig, ds, device, world: World):
    d, o = cfg.data, cfg.optim
    val = None
    if d.val_fraction > 0:
        ds, val = split_validation(ds, d.val_fraction, seed=cfg.mask.seed)
    if d.limit_train:
        ds = replace(ds, train_images=ds.train_images[: d.limit_train],
                     train_labels=ds.train_labels[: d.limit_train])
    augment = AugmentConfig(crop_padding=d.crop_padding, flip=d.flip, erase_prob=d.erase_prob,
                            randaugment=tuple(d.randaugment) or None,
                            color_jitter=d.color_jitter)
    if o.batch_size % world.world_size:
        raise ConfigError(f"optim.batch_size {o.batch_size} must be divisible by the "
                          f"{world.world_size} processes")
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=o.channels_last)
    train_loader = BatchLoader(ds.train_images, ds.train_labels, o.batch_size // world.world_size,
                               shuffle=True, augment=augment, seed=o.seed, rank=world.rank,
                               world_size=world.world_size, drop_last=True, **common)
    evals = {"test": BatchLoader(ds.test_images, ds.test_labels, o.eval_batch_size,
                                 shuffle=False, **common)}
    if val is not None:
        evals["val"] = BatchLoader(val[0], val[1], o.eval_batch_size, shuffle=False, **common)
    return train_loader, evals


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG})")
    return from_dict(RunConfig, json.loads(path.read_text()))


def _prepare_dir(run_dir: Path, cfg: RunConfig, resume: bool, world: World) -> None:
    exists = (run_dir / CONFIG).exists()
    world.barrier()  # every rank looks before rank 0 writes, so all ranks agree
    if exists and not resume:
        raise RunError(f"run directory {run_dir} already exists; pass --resume to continue it "
                       f"or choose another name (name=...)")
    if world.is_main and not exists:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    world.barrier()


def summarize(cfg: RunConfig, model, history: list[dict], seconds: float) -> dict:
    s = stats(model)
    best = max(history, key=lambda h: h["test_acc"])
    out = {"run": cfg.run_name(), "model": cfg.model.name, "dataset": cfg.data.dataset,
           "strategy": cfg.mask.strategy, "ratio": cfg.mask.ratio if cfg.mask.strategy == "rp"
           else None, "order": cfg.mask.order, "keep_ratio": cfg.mask.keep_ratio,
           "seed": cfg.mask.seed, "epochs": cfg.optim.epochs, **s.as_dict(),
           "final_test_acc": history[-1]["test_acc"], "best_test_acc": best["test_acc"],
           "images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
           "wall_s": round(seconds, 1), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.machine()}
    if "val_acc" in history[-1]:
        best_val = max(history, key=lambda h: h["val_acc"])
        out.update(best_val_acc=best_val["val_acc"], test_acc_at_best_val=best_val["test_acc"])
    return out


def run(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train one configuration in ``cfg.out_dir / cfg.run_name()``; returns the summary."""
    world = setup(resolve_device(cfg.optim.device, World()))
    try:
        device = resolve_device(cfg.optim.device, world)
        run_dir = Path(cfg.out_dir) / cfg.run_name()
        _prepare_dir(run_dir, cfg, resume, world)
        if (run_dir / SUMMARY).exists():
            log.info("%s already finished", run_dir)
            return json.loads((run_dir / SUMMARY).read_text())
        t0 = time.perf_counter()
        ds = load_dataset(cfg.data.dataset, cfg.data.root or None)
        torch.manual_seed(cfg.optim.seed * world.world_size + world.rank)
        model = build_model(cfg, ds.image_shape[0], ds.num_classes).to(device)
        if cfg.optim.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_loader, evals = _loaders(cfg, ds, device, world)
        if world.is_main:
            log.info("%s: %s on %s, %d train batches/epoch, device %s, %d process(es)",
                     run_dir.name, cfg.model.name, ds.name, len(train_loader), device,
                     world.world_size)
        history = train(model, train_loader, evals, cfg.optim, run_dir, world, to_dict(cfg),
                        resume=resume, progress=progress)
        summary = summarize(cfg, model, history, time.perf_counter() - t0)
        if world.is_main:
            (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        world.barrier()
        return summary
    finally:
        teardown(world)
