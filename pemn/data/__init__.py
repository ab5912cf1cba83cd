"""Datasets as uint8 tensors, a name registry, and a device-resident batch loader.

``load_dataset(name, root)`` parses a dataset once into a :class:`Dataset` of uint8 image tensors
(N, C, H, W) and int64 labels, with the per-channel normalisation constants of the PEMN recipe
(spec §8.1). Nothing here downloads: when files are missing, the error says how to get them.

| name            | images            | classes | files looked for                                    |
|-----------------|-------------------|---------|-----------------------------------------------------|
| ``fashion_mnist``| 60k/10k 1x28x28  | 10      | IDX files in root, else /usr/share/datasets/fashion-mnist, else ./data/fashion_mnist |
| ``mnist``       | 60k/10k 1x28x28   | 10      | IDX files in root, else ./data/mnist                |
| ``cifar10``     | 50k/10k 3x32x32   | 10      | root/cifar-10-batches-py (root defaults to ./data)  |
| ``cifar100``    | 50k/10k 3x32x32   | 100     | root/cifar-100-python                               |
| ``tiny_imagenet``| 100k/10k 3x64x64 | 200     | root/tiny-imagenet-200 (test = official val)        |
| ``digits``      | 1438/359 1x8x8    | 10      | bundled with scikit-learn                           |
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .errors import DatasetError
from .idx import load_idx_images, load_idx_labels
from .loader import AugmentConfig, BatchLoader
from .tiny_imagenet import load_tiny_imagenet

__all__ = ["dataset_shape", 
    "AugmentConfig", "BatchLoader", "Dataset", "DatasetError", "list_datasets", "load_dataset",
    "register_dataset", "split_validation",
]

DEFAULT_ROOT = Path("data")  # relative to the working directory
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset, train and test split, as uint8 tensors.

    Args:
        name: registry name.
        train_images, test_images: uint8 (N, C, H, W).
        train_labels, test_labels: int64 (N,), in [0, num_classes).
        num_classes: number of classes.
        mean, std: per-channel normalisation constants in 0..1 pixel units (length C).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 \
                    or y.shape != (x.shape[0],):
                raise DatasetError(f"{self.name} {split} split must be uint8 (N, C, H, W) images "
                                   f"and int64 (N,) labels, got {x.dtype} {tuple(x.shape)} and "
                                   f"{y.dtype} {tuple(y.shape)}")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
                raise DatasetError(f"{self.name} {split} labels must be in [0, {self.num_classes}), "
                                   f"got [{y.min().item()}, {y.max().item()}]")
        if len(self.mean) != self.image_shape[0] or len(self.std) != self.image_shape[0]:
            raise DatasetError(f"{self.name}: mean and std need one value per channel")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, num_classes={self.num_classes})")


# ---------------------------------------------------------------------------------------------
# Registry: name -> function(root) -> Dataset
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[[str | Path | None], Dataset]] = {}


def register_dataset(name: str):
    """Decorator: register ``fn(root) -> Dataset`` under ``name``."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return wrap


# (channels, classes) per dataset, so a model can be built without reading the data.
_SHAPES = {"fashion_mnist": (1, 10), "mnist": (1, 10), "digits": (1, 10),
           "cifar10": (3, 10), "cifar100": (3, 100), "tiny_imagenet": (3, 200)}


def dataset_shape(name: str) -> tuple[int, int]:
    """``(in_channels, num_classes)`` of a registered dataset, without loading it."""
    if name not in _SHAPES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return _SHAPES[name]


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a registered dataset into memory.

    Args:
        name: one of :func:`list_datasets`.
        root: folder holding the files; None uses the defaults in the module table.

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        DatasetError: files missing (the message says how to get them) or malformed.

    Example:
        >>> ds = load_dataset("fashion_mnist")
        >>> ds.train_images.shape
        torch.Size([60000, 1, 28, 28])
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return _REGISTRY[name](root)


def split_validation(ds: Dataset, fraction: float, seed: int = 0):
    """Hold out a seeded random fraction of the training set for validation.

    The test split is untouched, so model selection on the returned validation set never sees
    the test images (the PEMN code reports the best test accuracy instead, spec §8.4).

    Args:
        ds: dataset to split.
        fraction: share of the training images held out, in (0, 1).
        seed: seed of the permutation (torch CPU generator).

    Returns:
        ``(train_ds, (val_images, val_labels))``: ``ds`` with a reduced training set, and the
        held-out uint8 images and int64 labels.
    """
    n = len(ds.train_labels)
    num_val = int(round(fraction * n))
    if not 0.0 < fraction < 1.0 or not 0 < num_val < n:
        raise ValueError(f"fraction must be in (0, 1) and leave both parts non-empty, got "
                         f"{fraction!r} for {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = perm[num_val:].sort().values, perm[:num_val].sort().values
    train = replace(ds, train_images=ds.train_images[train_idx],
                    train_labels=ds.train_labels[train_idx])
    return train, (ds.train_images[val_idx], ds.train_labels[val_idx])


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx_files(folder: Path) -> list[Path] | None:
    """The four IDX files in ``folder``, each gzipped or not, or None if any is missing."""
    found = []
    for stem in _IDX_FILES:
        candidates = [folder / (stem + ext) for ext in (".gz", "")]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _load_idx_dataset(name, dirs, hint, mean, std) -> Dataset:
    for d in dirs:
        files = _find_idx_files(Path(d))
        if files is not None:
            x_train, y_train = load_idx_images(files[0]), load_idx_labels(files[1])
            x_test, y_test = load_idx_images(files[2]), load_idx_labels(files[3])
            for x, y, f in ((x_train, y_train, files[1]), (x_test, y_test, files[3])):
                if len(x) != len(y):
                    raise DatasetError(f"{f} has {len(y)} labels for {len(x)} images")
            return Dataset(name, x_train, y_train, x_test, y_test, 10, mean, std)
    where = " or ".join(str(Path(d).resolve()) for d in dirs)
    files = ", ".join(s + ".gz" for s in _IDX_FILES)
    raise DatasetError(f"{name} not found in {where}: {hint}put the four IDX files {files} "
                       f"(gzipped or not) in {Path(dirs[-1]).resolve()}")


@register_dataset("fashion_mnist")
def _fashion_mnist(root) -> Dataset:
    dirs = [root] if root is not None else [FASHION_MNIST_SYSTEM_DIR, DEFAULT_ROOT / "fashion_mnist"]
    return _load_idx_dataset("fashion_mnist", dirs, "run `sudo apt-get install dataset-fashion-mnist` "
                             "or ", mean=(0.2860,), std=(0.3530,))


@register_dataset("mnist")
def _mnist(root) -> Dataset:
    dirs = [root if root is not None else DEFAULT_ROOT / "mnist"]
    return _load_idx_dataset("mnist", dirs, "", mean=(0.1307,), std=(0.3081,))


@register_dataset("cifar10")
def _cifar10(root) -> Dataset:
    return Dataset("cifar10", *load_cifar10(root if root is not None else DEFAULT_ROOT), 10,
                   mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


@register_dataset("cifar100")
def _cifar100(root) -> Dataset:
    return Dataset("cifar100", *load_cifar100(root if root is not None else DEFAULT_ROOT), 100,
                   mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))


@register_dataset("tiny_imagenet")
def _tiny_imagenet(root) -> Dataset:
    # ImageNet constants, as the PEMN code uses for Tiny-ImageNet (spec §8.1)
    return Dataset("tiny_imagenet", *load_tiny_imagenet(root if root is not None else DEFAULT_ROOT),
                   200, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@register_dataset("digits")
def _digits(root) -> Dataset:
    # mean/std of the training split's pixels (0..1 units), measured once: 0.3054 / 0.3757
    return Dataset("digits", *load_digits(), 10, mean=(0.3054,), std=(0.3757,))
