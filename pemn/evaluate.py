"""Evaluate a finished or running training: a run directory or a checkpoint file."""
from __future__ import annotations

from pathlib import Path

import torch

from pemn.checkpoint import load_checkpoint
from pemn.config import RunConfig, from_dict
from pemn.data import dataset_shape, load_dataset
from pemn.data.loader import BatchLoader
from pemn.run import build_model
from pemn.train import CHECKPOINT, evaluate

__all__ = ["evaluate_path", "load_trained"]


def load_trained(path: str | Path) -> tuple[torch.nn.Module, RunConfig]:
    """The model (eval mode, CPU) and config of a run directory or ``checkpoint.pt``."""
    path = Path(path)
    ckpt = path / CHECKPOINT if path.is_dir() else path
    if not ckpt.exists():
        raise FileNotFoundError(f"{path}: no run directory with {CHECKPOINT}, nor a checkpoint")
    state = load_checkpoint(ckpt)
    cfg = from_dict(RunConfig, state["config"])
    model = build_model(cfg, *dataset_shape(cfg.data.dataset))
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def evaluate_path(path, split: str = "test", data_root: str | None = None) -> dict:
    model, cfg = load_trained(path)
    ds = load_dataset(cfg.data.dataset, data_root or cfg.data.root or None)
    images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
    loader = BatchLoader(images, labels, cfg.optim.eval_batch_size, shuffle=False,
                         mean=ds.mean, std=ds.std)
    return {"path": str(path), "dataset": ds.name, "split": split,
            "num_images": len(labels), "accuracy": evaluate(model, loader)}
