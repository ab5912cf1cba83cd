"""Checked ``.npz`` reading (headers checked before any data, never unpickled), the ``npz``
dataset, and the metadata of a dataset of your own (docs/DATASETS.md)."""
from __future__ import annotations

import zipfile
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch

from .files import DatasetError, open_regular, reader_errors, short
from .registry import Dataset, DatasetInfo, check_options

__all__ = ["MAX_IMAGES", "MAX_NPZ_BYTES", "MAX_SIDE", "describe", "holdout", "load_npz", "read_npz"]

MAX_IMAGES = 1_000_000  # per dataset, both splits
MAX_SIDE = 1024  # pixels, the side of a stored (or resized) image
MAX_PIXEL_BYTES = 1 << 32  # all images of a dataset together, as uint8
MAX_NPZ_BYTES = 1 << 33
_MAX_CLASSES = 100_000
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: Path, wanted: Collection[str], check: Callable[[str, np.dtype, tuple], None],
             what: str, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """The arrays of ``wanted`` in the archive ``path``; ``check(key, dtype, shape)`` sees each
    header first and raises to refuse it. Object arrays and oversized archives are refused."""
    out = {}
    with open_regular(path, max_bytes, what) as f, reader_errors(path, what), \
            zipfile.ZipFile(f) as z:
        for key in wanted:
            if f"{key}.npy" not in z.namelist():
                continue
            with z.open(f"{key}.npy") as member:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(member))
                if read_header is None:
                    raise DatasetError(f"{path}: {key} is not a .npy array of version 1 or 2")
                shape, fortran, dtype = read_header(member)
                if dtype.hasobject:
                    raise DatasetError(f"{path}: {key} holds Python objects; refusing to unpickle")
                check(key, dtype, shape)
                data = member.read(int(np.prod(shape)) * dtype.itemsize)
            order = "F" if fortran else "C"
            out[key] = np.frombuffer(data, dtype).reshape(shape, order=order).copy()
    return out


def holdout(labels: np.ndarray, keys: list) -> np.ndarray:
    """The fixed test split of a dataset given as one set: in each class, the images ranked
    0, 5, 10, ... by ``keys`` (20 %, and at least one of a class of two or more)."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = sorted(np.flatnonzero(labels == c), key=lambda i: keys[i])
        test[members[0::5] if len(members) > 1 else []] = True
    return test


def describe(name: str, train: tuple, test: tuple, class_names) -> Dataset:
    """A :class:`Dataset` whose metadata comes from its (images, labels) splits."""
    (x, y), (tx, ty) = train, test
    if len(y) == 0 or len(ty) == 0:
        raise DatasetError(f"{name}: the training and test splits must both hold images, got "
                           f"{len(y)} and {len(ty)}")
    num_classes = len(class_names) if class_names is not None else int(max(y.max(), ty.max())) + 1
    c = x.shape[1]  # per-channel mean and std in 0..1 units, in chunks (no float copy of x)
    total = torch.zeros(2, c, dtype=torch.float64)
    for chunk in x.split(4096):
        pixels = chunk.transpose(0, 1).reshape(c, -1).double() / 255
        total += torch.stack([pixels.sum(1), (pixels * pixels).sum(1)])
    n = max(x.numel() // c, 1)
    mean = total[0] / n
    # a constant channel would divide by zero; 1/255 is one grey level
    std = (total[1] / n - mean**2).clamp(min=0).sqrt().clamp(min=1 / 255)
    mean, std = (tuple(round(v, 4) for v in t.tolist()) for t in (mean, std))
    info = DatasetInfo(name, channels=c, num_classes=num_classes, image_size=x.shape[-1],
                       num_train=len(y), num_test=len(ty), mean=mean, std=std,
                       class_names=None if class_names is None else tuple(class_names))
    return Dataset(info, x, y, tx, ty)


def _check_array(path: Path, key: str, dtype: np.dtype, shape: tuple) -> None:
    if key.endswith("images"):
        ok = dtype == np.uint8 and len(shape) in (3, 4) and shape[1] == shape[2] \
            and (len(shape) == 3 or shape[3] in (1, 3))
        if not ok:
            raise DatasetError(f"{path}: {key} must be uint8 (N, S, S) or (N, S, S, C) with C = 1 "
                               f"or 3, got {dtype} {shape}")
        if shape[0] > MAX_IMAGES or shape[1] > MAX_SIDE \
                or int(np.prod(shape, dtype=np.uint64)) > MAX_PIXEL_BYTES:
            raise DatasetError(f"{path}: {key} {shape} is larger than the {MAX_IMAGES:,} images "
                               f"of at most {MAX_SIDE}x{MAX_SIDE} pixels (and "
                               f"{MAX_PIXEL_BYTES:,} bytes) a dataset may have")
    elif key.endswith("labels"):
        if dtype.kind not in "iu" or len(shape) != 1 or shape[0] > MAX_IMAGES:
            raise DatasetError(f"{path}: {key} must be integer (N,) labels, N <= {MAX_IMAGES:,}, "
                               f"got {dtype} {shape}")
    elif dtype.kind != "U" or len(shape) != 1 or shape[0] > _MAX_CLASSES or dtype.itemsize > 1024:
        raise DatasetError(f"{path}: class_names must be (K,) strings, got {dtype} {shape}")


def _split_arrays(path: Path, images: np.ndarray, labels: np.ndarray, classes) -> tuple:
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {len(images)} images but {len(labels)} labels")
    limit = len(classes) if classes is not None else _MAX_CLASSES
    if len(labels) and (labels.min() < 0 or labels.max() >= limit):
        raise DatasetError(f"{path}: labels must be in [0, {limit}), got "
                           f"[{labels.min()}, {labels.max()}]")
    x = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), \
        torch.from_numpy(labels.astype(np.int64))


def load_npz(root: str | Path, channels: int = 0, image_size: int = 0) -> Dataset:
    """The ``npz`` dataset of the archive ``root``; ``channels``, ``image_size``: checked only."""
    path = Path(root)
    keys = ("train_images", "train_labels", "test_images", "test_labels", "images", "labels",
            "class_names")
    a = read_npz(path, keys, lambda k, d, s: _check_array(path, k, d, s), "npz dataset")
    classes = [str(c) for c in a["class_names"]] if "class_names" in a else None
    if {"train_images", "train_labels", "test_images", "test_labels"} <= a.keys():
        train = _split_arrays(path, a["train_images"], a["train_labels"], classes)
        test = _split_arrays(path, a["test_images"], a["test_labels"], classes)
    elif {"images", "labels"} <= a.keys():
        x, y = _split_arrays(path, a["images"], a["labels"], classes)
        test_mask = torch.from_numpy(holdout(y.numpy(), list(range(len(y)))))
        train, test = (x[~test_mask], y[~test_mask]), (x[test_mask], y[test_mask])
    else:
        raise DatasetError(f"{path} must hold train_images, train_labels, test_images and "
                           f"test_labels, or images and labels; found {short(sorted(a))}")
    ds = describe("npz", train, test, classes)
    check_options(ds.info, {"channels": channels, "image_size": image_size})
    return ds
