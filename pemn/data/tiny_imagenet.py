"""Tiny-ImageNet (200 classes, 64x64 RGB) from the standard ``tiny-imagenet-200/`` folder.

Layout: ``wnids.txt`` (one WordNet id per line), ``train/<wnid>/images/*.JPEG`` and
``val/images/*.JPEG`` listed in ``val/val_annotations.txt`` (file, wnid, box; tab-separated).
The validation set is the test set, as in the PEMN authors' code. Class index = position of the
wnid in ``sorted(wnids)`` (torchvision ImageFolder's order). Decoding takes about a minute, so
the arrays are cached to ``tiny-imagenet-200/pemn_cache_v1.npz`` when the folder is writable;
delete that file to rebuild it.

Hostile folders: every path, from ``wnids.txt``, ``val_annotations.txt`` or a listing, must be
plain names that resolve inside the dataset folder; only regular files are read; an image's
size is checked before it is decoded; splits and cached arrays may not exceed the official
sizes (:data:`MAX_TRAIN_PER_CLASS`, :data:`MAX_VAL`), so memory stays bounded.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError, reader_errors, short
from .files import inside, read_regular
from .folder import decode_images, read_cache, write_cache

__all__ = ["MAX_TRAIN_PER_CLASS", "MAX_VAL", "load_tiny_imagenet"]

TINY_DIR = "tiny-imagenet-200"
CACHE_NAME = "pemn_cache_v1.npz"
SIZE = 64
MAX_TRAIN_PER_CLASS = 500  # the official split sizes, also the most this reader accepts
MAX_VAL = 10_000
_MAX_TEXT_BYTES = 1 << 24  # wnids.txt and val_annotations.txt (the latter is ~0.3 MB)
_MAX_CACHE_BYTES = 1 << 32  # the full cache holds 1.35 GB of arrays
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one path component, no "..", no "/"


def _path(folder: Path, *parts: str) -> Path:
    """``folder/parts``, each part one plain name, resolved inside ``folder``."""
    for part in parts:
        if not _NAME.fullmatch(part) or part.strip(".") == "":
            raise DatasetError(f"{folder}: refusing the path component {short(part)}: names in a "
                               "Tiny-ImageNet folder are plain file or folder names")
    return inside(folder, folder.joinpath(*parts))


def _read_text(folder: Path, *parts: str) -> str:
    path = _path(folder, *parts)
    with reader_errors(path, "Tiny-ImageNet text file"):
        return read_regular(path, _MAX_TEXT_BYTES, "Tiny-ImageNet text file").decode("utf-8")


def _read_wnids(folder: Path, max_classes: int) -> list[str]:
    wnids = sorted(set(_read_text(folder, "wnids.txt").split()))
    if not 0 < len(wnids) <= max_classes:
        raise DatasetError(f"{folder / 'wnids.txt'} lists {len(wnids)} classes, expected 1 to "
                           f"{max_classes}")
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


def load_tiny_imagenet(root: str | Path = "data", cache: bool = True, max_classes: int = 200):
    """Tiny-ImageNet from ``root/tiny-imagenet-200`` (or ``root`` being that folder), with at
    most ``max_classes`` classes; ``cache``: read/write the decoded cache.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: uint8 (N, 3, 64, 64) and
        int64 labels; the test split is the official validation set.

    Raises:
        DatasetError: folder missing (the message says how to get it), bad annotations, a path
            that leaves the folder, an undecodable image, a split larger than the official
            one, a corrupt cache, or Pillow not installed.
    """
    with reader_errors(root, "Tiny-ImageNet folder"):  # e.g. a denied stat or resolve
        return _load(Path(root), cache, max_classes)


def _load(root: Path, cache: bool, max_classes: int):
    folder = root if root.name == TINY_DIR else root / TINY_DIR
    if not (folder / "wnids.txt").exists():
        raise DatasetError(
            f"Tiny-ImageNet not found: download http://cs231n.stanford.edu/tiny-imagenet-200.zip "
            f"and unzip it so that {folder.resolve()}/wnids.txt exists"
        )
    folder = folder.resolve()  # the user's own choice of folder may be a symlink
    cache_path = _path(folder, CACHE_NAME)
    max_train = max_classes * MAX_TRAIN_PER_CLASS
    limits = {"train_images": ("u1", (max_train, 3, SIZE, SIZE)),
              "train_labels": ("i8", (max_train,)),
              "test_images": ("u1", (MAX_VAL, 3, SIZE, SIZE)), "test_labels": ("i8", (MAX_VAL,))}
    if cache and cache_path.exists():
        arrays = read_cache(cache_path, limits, "Tiny-ImageNet cache (delete it to rebuild)",
                            _MAX_CACHE_BYTES)
    else:
        wnids = _read_wnids(folder, max_classes)
        arrays = {"wnids": np.array(wnids)}
        for split, (paths, labels) in (("train", _train_files(folder, wnids)),
                                       ("test", _val_files(folder, wnids))):
            arrays[f"{split}_images"] = decode_images(paths, "RGB", SIZE, exact=True)
            arrays[f"{split}_labels"] = np.array(labels, dtype=np.int64)
        if cache:
            write_cache(cache_path, arrays)
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in limits)
