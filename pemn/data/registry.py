"""What a dataset is (:class:`DatasetInfo`), its loaded form (:class:`Dataset`), and the registry.

A dataset is registered once with its metadata and a reader ``fn(root) -> (train_images,
train_labels, test_images, test_labels)``. The metadata answers questions that need no file
(channels, classes, image size, number of training images, normalisation), so a model can be
built or a sweep budgeted without reading the data.

A dataset of your own (an image folder, an ``.npz``) is registered without metadata, by
:func:`register_files_dataset`: its reader ``fn(root, channels, image_size) -> Dataset`` finds
the classes, mean and std in the files, so :func:`dataset_info` reads them (through a cache).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import DatasetError, reader_errors

__all__ = ["Dataset", "DatasetInfo", "dataset_info", "list_datasets",
           "load_dataset", "register_dataset", "register_files_dataset", "split_validation"]

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Reader = Callable[[str | Path | None], Splits]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's metadata, known without reading its files.

    Args:
        name: registry name.
        channels: image channels C.
        num_classes: number of classes; labels are in ``[0, num_classes)``.
        image_size: images are square, ``image_size`` x ``image_size`` pixels.
        num_train, num_test: images in the official training and test splits.
        class_names: one name per class index, or None when the names live in the files.
        mean, std: per-channel normalisation the loader applies, in 0..1 pixel units:
            ``x = (pixel / 255 - mean) / std``.
    """

    name: str
    channels: int
    num_classes: int
    image_size: int
    num_train: int
    num_test: int
    class_names: tuple[str, ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels \
                or min(self.std) <= 0:
            raise ValueError(f"dataset {self.name!r}: mean and std need {self.channels} values "
                             f"(std > 0), got mean={self.mean} std={self.std}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.image_size, self.image_size)

    def as_header(self) -> dict:
        """What a user needs to feed a model trained on this dataset, as JSON values (the
        ``dataset`` entry of a ``.pemn`` header)."""
        return {"name": self.name, "input_shape": list(self.input_shape),
                "mean": list(self.mean), "std": list(self.std),
                "class_names": None if self.class_names is None else list(self.class_names)}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset, train and test split, as uint8 tensors.

    Args:
        info: the registered metadata; images must have its (C, H, W).
        train_images, test_images: uint8 (N, C, H, W).
        train_labels, test_labels: int64 (N,), in [0, num_classes).

    Raises:
        DatasetError: tensors of the wrong dtype or shape, or labels out of range.
    """

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self):
        for split in ("train", "test"):
            self._check_split(split)

    def _check_split(self, split: str) -> None:
        x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != self.info.input_shape \
                or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise DatasetError(f"{self.name} {split} split must be uint8 (N, "
                               f"{', '.join(map(str, self.info.input_shape))}) images and int64 "
                               f"(N,) labels, got {x.dtype} {tuple(x.shape)} and {y.dtype} "
                               f"{tuple(y.shape)}")
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise DatasetError(f"{self.name} {split} labels must be in [0, {self.num_classes}), "
                               f"got [{y.min().item()}, {y.max().item()}]")

    name = property(lambda self: self.info.name, doc="Registry name.")
    num_classes = property(lambda self: self.info.num_classes, doc="Number of classes.")
    mean = property(lambda self: self.info.mean, doc="Per-channel mean, 0..1 pixel units.")
    std = property(lambda self: self.info.std, doc="Per-channel std, 0..1 pixel units.")
    image_shape = property(lambda self: self.info.input_shape, doc="(C, H, W).")

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, num_classes={self.num_classes})")


# name -> (metadata, reader); metadata None: a dataset described by its files
_REGISTRY: dict[str, tuple[DatasetInfo | None, Callable]] = {}


def register_dataset(info: DatasetInfo):
    """Decorator: register ``fn(root) -> (train_images, train_labels, test_images, test_labels)``
    under ``info.name``; ``root=None`` means the dataset's default location."""
    return _register(info.name, info)


def register_files_dataset(name: str):
    """Decorator: register ``fn(root, channels=0, image_size=0) -> Dataset``, a dataset whose
    metadata is read from the files at ``root`` (required); 0 leaves a size to the reader."""
    return _register(name, None)


def _register(name: str, info: DatasetInfo | None):
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = (info, fn)
        return fn
    return wrap


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str, root: str | Path | None = None, **options: int) -> DatasetInfo:
    """The metadata of ``name``: the registered one, without reading any file, or, for a
    dataset described by its files, the one :func:`load_dataset` finds in them.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        DatasetError: as :func:`load_dataset`, for a dataset described by its files, or
            ``options`` a registered dataset does not have.

    Example:
        >>> dataset_info("cifar10").class_names[:2]
        ('airplane', 'automobile')
    """
    info = _entry(name, options)[0]
    return load_dataset(name, root, **options).info if info is None else info


def _entry(name: str, options: dict) -> tuple[DatasetInfo | None, Callable]:
    """The registry entry of ``name``, refusing ``options`` a registered dataset lacks."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    info = _REGISTRY[name][0]
    for key, value in options.items() if info is not None else ():
        if value and value != getattr(info, key):  # only a folder converts its images
            raise DatasetError(f"{name} images have {key} = {getattr(info, key)}, not data.{key}"
                               f" = {value}; only the folder dataset converts images")
    return _REGISTRY[name]


def load_dataset(name: str, root: str | Path | None = None, **options: int) -> Dataset:
    """Load a registered dataset into memory.

    Args:
        name: one of :func:`list_datasets`.
        root: folder holding the files; None uses the dataset's default location (a dataset
            described by its files has none).
        **options: ``channels`` and ``image_size``: what the images must have (0: any); the
            folder dataset converts its images to them.

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        DatasetError: files missing (the message says how to get them), malformed, unsafe,
            or too large for memory.

    Example:
        >>> ds = load_dataset("fashion_mnist")
        >>> ds.train_images.shape
        torch.Size([60000, 1, 28, 28])
    """
    info, reader = _entry(name, options)
    if info is None:
        if not root:
            raise DatasetError(f"the {name} dataset is read from its files: set data.root "
                               f"(pemn eval: --data-root)")
        with reader_errors(root, f"{name} dataset"):
            return reader(root, **options)
    with reader_errors(root or f"the default {name} location", f"{name} dataset"):
        return Dataset(info, *reader(root))


def split_validation(ds: Dataset, fraction: float, seed: int = 0):
    """Hold out a seeded random fraction of the training set for validation.

    The test split is untouched, so model selection on the returned validation set never sees
    the test images.

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
