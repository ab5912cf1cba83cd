"""One run from a config (data -> model -> any strategy through ``pemn.apply_`` -> train ->
summary), and a model built from a config or a checkpoint."""
from __future__ import annotations

import contextlib
import logging
import platform
import re
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pemn import fill, stats
from pemn.checkpoint import CheckpointError
from pemn.config import ConfigError, ModelConfig, RunConfig, to_dict
from pemn.data import DatasetInfo, dataset_info, load_dataset, split_validation
from pemn.data.loader import AugmentConfig, BatchLoader
from pemn.distributed import World, setup, teardown
from pemn.models import create_model, data_args
from pemn.rundir import RunDir, RunError, check_same_config
from pemn.train import resolve_device, train
from pemn.transform import accepts, apply_

__all__ = ["run", "build_model", "model_from_config", "model_from_checkpoint", "data_info",
           "model_kwargs", "summarize", "is_out_of_memory", "memory_text"]

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is Python or torch (CPU or CUDA) failing to allocate memory."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def memory_text(error: BaseException) -> str:
    """How much an allocation failure asked for, for people."""
    asked = re.search(r"allocate (\d+) bytes", str(error))
    return f"asked for {int(asked[1]) / 1e9:.3g} GB at once" if asked else type(error).__name__


@contextlib.contextmanager
def _enough_memory(error: type[Exception], what: str):
    """Turn an allocation failure while building ``what`` into one clear ``error``."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise error(f"not enough memory to build {what} ({memory_text(e)})") from None


def _describe_model(name, kwargs: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"model {name}({args})"


def build_model(cfg: RunConfig, **given) -> torch.nn.Module:
    """``create_model`` (``given`` from the data, overridden by ``model.kwargs``), then
    ``pemn.apply_`` of the strategy with the ``mask`` options it uses."""
    model = create_model(cfg.model.name, **{**given, **cfg.model.kwargs})
    m = cfg.mask
    return apply_(model, m.strategy, **{k: getattr(m, k) for k in accepts(m.strategy)})


def data_info(cfg: RunConfig) -> DatasetInfo:
    """The metadata of ``cfg``'s dataset (a folder's or an npz's, read from its files)."""
    d = cfg.data
    return dataset_info(d.dataset, d.root or None, channels=d.channels, image_size=d.image_size)


def model_kwargs(cfg: RunConfig, info: DatasetInfo) -> dict:
    """The ``pemn.models.DATA_ARGS`` that ``cfg``'s model accepts, as ``info`` gives them; a
    ``model.kwargs`` value the data cannot train raises ConfigError (a larger head is logged)."""
    c, s = info.channels, info.image_size
    said = {"in_channels": c, "img_size": s, "in_features": c * s * s,
            "num_classes": info.num_classes}
    given = {k: said[k] for k in data_args(cfg.model.name)}
    user = cfg.model.kwargs
    differ = sorted(k for k in given.keys() & user.keys() if user[k] != given[k])
    bigger_head = [k for k in differ if k == "num_classes" and isinstance(user[k], int)
                   and user[k] > given[k]]
    bad = [k for k in differ if k not in bigger_head]
    if bad:
        raise ConfigError("; ".join(f"model.kwargs.{k} = {user[k]!r}, but {info.name} gives "
                                    f"{given[k]}" for k in bad) + "; remove it to take the data's")
    if bigger_head:
        log.warning("model.kwargs.num_classes = %s: %d logits beyond %s's %d classes never see "
                    "a label", user["num_classes"], user["num_classes"] - given["num_classes"],
                    info.name, given["num_classes"])
    return given


def model_from_config(cfg: RunConfig, info: DatasetInfo | None = None) -> nn.Module:
    """:func:`build_model` given what the data says (``info``, default :func:`data_info`); a
    bad model name (ValueError) is reported before any data file is read, and a model too
    large for memory is a RunError."""
    data_args(cfg.model.name)  # the cheap check first: an unknown name raises ValueError
    given = model_kwargs(cfg, info or data_info(cfg))
    with _enough_memory(RunError, _describe_model(cfg.model.name, {**given, **cfg.model.kwargs})):
        return build_model(cfg, **given)


def model_from_checkpoint(state: dict, cfg: RunConfig, path: Path) -> nn.Module:
    """The model a checkpoint's ``state`` holds, built as its ``model_args`` say; a
    CheckpointError for bad ``model_args``, no memory, or a state that does not fit."""
    args = state["model_args"]
    if not (isinstance(args, dict) and isinstance(args.get("name"), str)
            and isinstance(args.get("kwargs"), dict)):
        raise CheckpointError(f"checkpoint {path}: model_args must hold a name and a kwargs "
                              f"dict, got {str(args)[:80]!r}")
    kwargs = args["kwargs"]
    what = f"{_describe_model(args.get('name'), kwargs)} from checkpoint {path}"
    # model_args, not the config's model section, say what was built
    cfg = replace(cfg, model=ModelConfig(name=args.get("name"), kwargs=kwargs))
    with _enough_memory(CheckpointError, what):
        model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {what}: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return model.eval()


def _loaders(cfg: RunConfig, ds, device, world: World):
    d, o = cfg.data, cfg.optim
    val = None
    if d.val_fraction > 0:
        ds, val = split_validation(ds, d.val_fraction, seed=cfg.mask.seed)
    if d.limit_train:
        ds = replace(ds, train_images=ds.train_images[: d.limit_train],
                     train_labels=ds.train_labels[: d.limit_train])
    augment = AugmentConfig(crop_padding=d.crop_padding, flip=d.flip, erase_prob=d.erase_prob,
                            randaugment=tuple(d.randaugment) or None, color_jitter=d.color_jitter)
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


def summarize(cfg: RunConfig, model, history: list[dict], seconds: float) -> dict:
    s = stats(model)
    best = max(history, key=lambda h: h["test_acc"])
    out = {"run": cfg.run_name(), "model": cfg.model.name, "dataset": cfg.data.dataset,
           "strategy": fill.strategy_to_dict(cfg.mask.strategy),
           "keep_ratio": cfg.mask.strategy.keep_ratio(cfg.mask.keep_ratio),
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
    """Train one configuration in ``RunDir.of(cfg)`` and return its summary (a finished run's
    without training). RunError: the directory exists and ``resume`` is False, or the model
    does not fit in memory."""
    data_args(cfg.model.name)  # an unknown model name fails before any file is read or written
    world = World.from_env()
    device = resolve_device(cfg.optim.device, world)
    setup(world, device)
    try:
        run_dir = RunDir.of(cfg)
        started = run_dir.started
        world.barrier()  # every rank looks before rank 0 writes, so all ranks agree
        if started and not resume:
            raise RunError(f"run directory {run_dir.path} already exists; pass --resume to "
                           f"continue it or choose another name (name=...)")
        check_same_config(cfg, run_dir, "delete it or choose another name (name=...)")
        if world.is_main and not started:
            run_dir.write_config(cfg)
        world.barrier()
        if run_dir.finished:
            log.info("%s already finished", run_dir.path)
            return run_dir.read_summary()
        t0 = time.perf_counter()
        d = cfg.data
        ds = load_dataset(d.dataset, d.root or None, channels=d.channels, image_size=d.image_size)
        torch.manual_seed(cfg.optim.seed * world.world_size + world.rank)
        model = model_from_config(cfg, ds.info).to(device)
        if cfg.optim.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_loader, evals = _loaders(cfg, ds, device, world)
        if world.is_main:
            log.info("%s: %s on %s, %d train batches/epoch, device %s, %d process(es)",
                     run_dir.path.name, cfg.model.name, ds.name, len(train_loader), device,
                     world.world_size)
        meta = {"config": to_dict(cfg), "model_args": model.model_args}
        history = train(model, train_loader, evals, cfg.optim, run_dir, world, meta,
                        resume=resume, progress=progress)
        summary = summarize(cfg, model, history, time.perf_counter() - t0)
        if world.is_main:
            run_dir.write_summary(summary)
        world.barrier()
        return summary
    finally:
        teardown(world)
