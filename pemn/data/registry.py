"""What a dataset is (:class:`DatasetInfo`), its loaded form (:class:`Dataset`), and the registry
of readers (docs/DATASETS.md)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .files import DatasetError, reader_errors

__all__ = ["Dataset", "DatasetInfo", "check_options", "dataset_info", "list_datasets",
           "load_dataset", "register_dataset", "register_files_dataset", "split_validation"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's metadata: square images, labels in ``[0, num_classes)``, ``class_names`` None
    when they live in the files, ``mean`` and ``std`` per channel in 0..1 pixel units."""

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
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
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
        """What feeding a model trained on this dataset needs, as JSON (a ``.pemn`` header's)."""
        return {"name": self.name, "input_shape": list(self.input_shape),
                "mean": list(self.mean), "std": list(self.std),
                "class_names": None if self.class_names is None else list(self.class_names)}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test split: uint8 (N, C, H, W) images of ``info``'s shape and int64 (N,)
    labels in [0, num_classes); anything else raises :class:`DatasetError`."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self):
        shape = self.info.input_shape
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != shape \
                    or y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DatasetError(f"{self.name} {split} split must be uint8 (N, "
                                   f"{', '.join(map(str, shape))}) images and int64 (N,) labels, "
                                   f"got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
                raise DatasetError(f"{self.name} {split} labels must be in [0, {self.num_classes}),"
                                   f" got [{y.min().item()}, {y.max().item()}]")

    name = property(lambda self: self.info.name)
    num_classes = property(lambda self: self.info.num_classes)
    mean = property(lambda self: self.info.mean)
    std = property(lambda self: self.info.std)
    image_shape = property(lambda self: self.info.input_shape)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, num_classes={self.num_classes})")


# name -> (metadata, reader); metadata None: a dataset described by its files
_REGISTRY: dict[str, tuple[DatasetInfo | None, Callable]] = {}
# the metadata of datasets described by their files, read once per process
_FILES_INFO: dict[tuple, DatasetInfo] = {}


def register_dataset(info: DatasetInfo):
    """Decorator: register ``fn(root)`` returning train images, labels, test images, labels."""
    return _register(info.name, info)


def register_files_dataset(name: str):
    """Decorator: register ``fn(root, channels=0, image_size=0) -> Dataset`` read from its files."""
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
    """The metadata of ``name``: the registered one, or, for a dataset described by its files,
    the one :func:`load_dataset` finds there (once per process and root)."""
    info = _entry(name, options)[0]
    if info is not None:
        return info
    key = (name, str(Path(root).resolve()) if root else None, tuple(sorted(options.items())))
    if key not in _FILES_INFO:
        _FILES_INFO[key] = load_dataset(name, root, **options).info
    return _FILES_INFO[key]


def check_options(info: DatasetInfo, options: dict) -> None:
    """Refuse ``channels`` / ``image_size`` options (0: any) that ``info``'s images lack."""
    for key, value in options.items():
        if value and value != getattr(info, key):
            raise DatasetError(f"{info.name} images have {key} = {getattr(info, key)}, not "
                               f"data.{key} = {value}; only the folder dataset converts images")


def _entry(name: str, options: dict) -> tuple[DatasetInfo | None, Callable]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if _REGISTRY[name][0] is not None:
        check_options(_REGISTRY[name][0], options)
    return _REGISTRY[name]


def load_dataset(name: str, root: str | Path | None = None, **options: int) -> Dataset:
    """Load a registered dataset into memory from ``root`` (None: its default location; a
    dataset described by its files has none). ``options``: the ``channels`` and ``image_size``
    the images must have (0: any); the folder dataset converts its images to them. Raises
    ValueError for an unknown name (listing the valid ones) and DatasetError for files missing
    (saying how to get them), malformed, unsafe or too large for memory."""
    info, reader = _entry(name, options)
    if info is None and not root:
        raise DatasetError(f"the {name} dataset is read from its files: set data.root "
                           f"(pemn eval: --data-root)")
    with reader_errors(root or f"the default {name} location", f"{name} dataset"):
        return reader(root, **options) if info is None else Dataset(info, *reader(root))


def split_validation(ds: Dataset, fraction: float, seed: int = 0):
    """Hold out a seeded random ``fraction`` (in (0, 1)) of the training set, never of the test
    split: ``(ds with the rest of the training set, (val_images, val_labels))``."""
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
