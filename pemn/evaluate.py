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


def evaluate_path(path, split: str = "test", data_root: str | None = None,
                  dataset: str | None = None) -> dict:
    """Accuracy of a run directory, checkpoint or ``.pemn`` artifact on a dataset split.

    An artifact does not name its dataset: pass ``dataset`` for it.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".pemn":
        if dataset is None:
            raise ValueError(f"{path} is an artifact, which does not record its dataset; "
                             f"pass --dataset (e.g. --dataset fashion_mnist)")
        from pemn.artifact import load
        model, root = load(path), data_root
    else:
        model, cfg = load_trained(path)
        dataset, root = dataset or cfg.data.dataset, data_root or cfg.data.root or None
    ds = load_dataset(dataset, root)
    images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
    loader = BatchLoader(images, labels, 1000, shuffle=False, mean=ds.mean, std=ds.std)
    return {"path": str(path), "dataset": ds.name, "split": split,
            "num_images": len(labels), "accuracy": evaluate(model, loader)}
