"""Accuracy of a trained model (run directory, checkpoint or ``.pemn`` artifact) on a split."""
from __future__ import annotations

from pathlib import Path

from pemn.data import load_dataset
from pemn.data.loader import BatchLoader
from pemn.rundir import RunError
from pemn.trained import load_trained
from pemn.train import evaluate

__all__ = ["evaluate_path", "SPLITS"]

SPLITS = ("test", "train")


def evaluate_path(path: str | Path, split: str = "test", data_root: str | None = None,
                  dataset: str | None = None, batch_size: int = 1000,
                  form: str = "train") -> dict:
    """``path``, ``dataset``, ``split``, ``num_images`` and the top-1 ``accuracy`` (in %) of
    what :func:`pemn.trained.load_trained` loads, on a split of ``dataset`` (default: the one
    the source records, read where the run read it); RunError if none is given or recorded."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    trained = load_trained(path, form=form)
    dataset = dataset or trained.dataset
    if dataset is None:
        raise RunError(f"{path} does not record its dataset; pass --dataset "
                       f"(e.g. --dataset fashion_mnist)")
    # the recorded channels and size, so a folder's images are converted as in training
    options = trained.data_options if dataset == trained.dataset else {}
    ds = load_dataset(dataset, data_root or trained.data_root, **options)
    images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
    loader = BatchLoader(images, labels, batch_size, shuffle=False, mean=ds.mean, std=ds.std)
    return {"path": str(path), "dataset": ds.name, "split": split,
            "num_images": len(labels), "accuracy": evaluate(trained.model, loader)}
