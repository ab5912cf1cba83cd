"""Tiny-ImageNet (200 classes, 64x64 RGB) from the standard ``tiny-imagenet-200/`` folder, the
official validation set as the test set, decoded once into a cache (docs/DATASETS.md)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .files import DatasetError, inside, read_regular, reader_errors, short
from .folder import decode_images, read_cache, write_cache

__all__ = ["MAX_TRAIN_PER_CLASS", "MAX_VAL", "load_tiny_imagenet"]

TINY_DIR = "tiny-imagenet-200"
SIZE = 64
MAX_CLASSES = 200  # the official sizes, also the most this reader accepts
MAX_TRAIN_PER_CLASS = 500
MAX_VAL = 10_000
_MAX_TEXT_BYTES = 1 << 24  # wnids.txt and val_annotations.txt (the latter is ~0.3 MB)
_MAX_CACHE_BYTES = 1 << 32  # the full cache holds 1.35 GB of arrays
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one path component, no "..", no "/"


def _path(folder: Path, *parts: str) -> Path:
    """``folder/parts``, each part one plain name, resolved inside ``folder``."""
    for part in parts:
        if not _NAME.fullmatch(part):
            raise DatasetError(f"{folder}: refusing the path component {short(part)}: names in a "
                               "Tiny-ImageNet folder are plain file or folder names")
    return inside(folder, folder.joinpath(*parts))


def _read_text(folder: Path, *parts: str) -> str:
    path = _path(folder, *parts)
    with reader_errors(path, "Tiny-ImageNet text file"):
        return read_regular(path, _MAX_TEXT_BYTES, "Tiny-ImageNet text file").decode("utf-8")


def _read_wnids(folder: Path) -> list[str]:
    wnids = sorted(set(_read_text(folder, "wnids.txt").split()))
    if not 0 < len(wnids) <= MAX_CLASSES:
        raise DatasetError(f"{folder / 'wnids.txt'} lists {len(wnids)} classes, expected 1 to "
                           f"{MAX_CLASSES}")
    for wnid in wnids:
        _path(folder, "train", wnid)  # refuse "/etc", "..", ... before any listing
    return wnids


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        images = _path(folder, "train", wnid, "images")
        files = sorted(_path(folder, *p.relative_to(folder).parts) for p in images.glob("*.JPEG"))
        if not files:
            raise DatasetError(f"no JPEGs in {images}")
        if len(files) > MAX_TRAIN_PER_CLASS:
            raise DatasetError(f"{images} holds {len(files)} JPEGs, more than the "
                               f"{MAX_TRAIN_PER_CLASS} of Tiny-ImageNet")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    annotations = folder / "val" / "val_annotations.txt"
    lines = [line for line in _read_text(folder, "val", "val_annotations.txt").splitlines()
             if line.strip()]
    if len(lines) > MAX_VAL:
        raise DatasetError(f"{annotations} lists {len(lines)} images, more than the {MAX_VAL} "
                           "of Tiny-ImageNet")
    paths, labels = [], []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{annotations} line {line_no} must be 'file<TAB>wnid<TAB>...' "
                               "with a wnid from wnids.txt")
        paths.append(_path(folder, "val", "images", fields[0]))
        labels.append(index[fields[1]])
    return paths, labels


def load_tiny_imagenet(root: str | Path = "data"):
    """Tiny-ImageNet's four split tensors from ``root/tiny-imagenet-200`` (or that folder)."""
    root = Path(root)
    folder = root if root.name == TINY_DIR else root / TINY_DIR
    if not (folder / "wnids.txt").exists():
        raise DatasetError("Tiny-ImageNet not found: download http://cs231n.stanford.edu/"
                           f"tiny-imagenet-200.zip and unzip it so that {folder.resolve()}/"
                           "wnids.txt exists")
    folder = folder.resolve()  # the user's own choice of folder may be a symlink
    cache_path = _path(folder, "pemn_cache_v1.npz")
    max_train = MAX_CLASSES * MAX_TRAIN_PER_CLASS
    limits = {"train_images": ("u1", (max_train, 3, SIZE, SIZE)),
              "train_labels": ("i8", (max_train,)),
              "test_images": ("u1", (MAX_VAL, 3, SIZE, SIZE)), "test_labels": ("i8", (MAX_VAL,))}
    if cache_path.exists():
        arrays = read_cache(cache_path, limits, "Tiny-ImageNet cache (delete it to rebuild)",
                            _MAX_CACHE_BYTES)
    else:
        wnids = _read_wnids(folder)
        arrays = {"wnids": np.array(wnids)}
        for split, (paths, labels) in (("train", _train_files(folder, wnids)),
                                       ("test", _val_files(folder, wnids))):
            arrays[f"{split}_images"] = decode_images(paths, "RGB", SIZE, exact=True)
            arrays[f"{split}_labels"] = np.array(labels, dtype=np.int64)
        write_cache(cache_path, arrays)
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in limits)
