"""``data.dataset = "folder"``: your own labelled images, one subfolder per class, decoded
once into a cache; also the image decoding and caching Tiny-ImageNet uses (docs/DATASETS.md)."""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pemn.fileio import atomic_write

from .files import DatasetError, inside, open_regular, reader_errors, short
from .npz import MAX_IMAGES, MAX_NPZ_BYTES, MAX_PIXEL_BYTES, MAX_SIDE, describe, holdout, read_npz
from .registry import Dataset

__all__ = ["MAX_FILE_BYTES", "MAX_SOURCE_PIXELS", "decode_images", "load_folder", "read_cache",
           "write_cache"]

SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FILE_BYTES = 1 << 25
MAX_SOURCE_PIXELS = 1 << 26  # 8192 x 8192; Pillow's own bomb limit is about 1.3x this
_CACHE_VERSION = "1"  # part of the fingerprint: a new decoding rebuilds old caches
log = logging.getLogger(__name__)


def _entries(folder: Path) -> list[os.DirEntry]:
    with reader_errors(folder, "dataset folder"), os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _classes(root: Path, tree: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for one tree."""
    out = {}
    for entry in _entries(tree):
        folder = inside(root, Path(entry.path))
        if not folder.is_dir():
            continue  # a stray file beside the class folders
        if not entry.name.isprintable():
            raise DatasetError(f"{tree}: class folder name {short(entry.name)} is not printable")
        out[entry.name] = [inside(root, Path(e.path)) for e in _entries(folder)
                           if e.name.lower().endswith(SUFFIXES)]
        if not out[entry.name]:
            raise DatasetError(f"{folder} holds no .png or .jpg image")
    return out


def _list_splits(root: Path) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]]]:
    """Class names and, per split, the image paths and labels."""
    split_trees = (root / "train").is_dir() and (root / "test").is_dir()
    trees = {s: _classes(root, inside(root, root / s)) for s in ("train", "test")} \
        if split_trees else {"all": _classes(root, root)}
    names = sorted(trees.get("train", trees.get("all", {})))
    if not names:
        raise DatasetError(f"{root} has no class folders: expected {root}/<class>/<image>.png "
                           f"or train/ and test/ trees of them")
    unknown = sorted(set(trees.get("test", {})) - set(names))
    if unknown:
        raise DatasetError(f"{root}/test has classes that train/ lacks: {short(unknown)}")
    splits = {s: ([p for c in names for p in t.get(c, [])],
                  np.array([i for i, c in enumerate(names) for _ in t.get(c, [])], np.int64))
              for s, t in trees.items()}
    count = sum(len(p) for p, _ in splits.values())
    if count > MAX_IMAGES:
        raise DatasetError(f"{root} holds {count:,} images, more than the {MAX_IMAGES:,} a "
                           f"dataset may have")
    if "all" in splits:
        paths, labels = splits.pop("all")
        test = holdout(labels, [hashlib.sha256(str(p.relative_to(root)).encode()).digest()
                                for p in paths])
        splits = {s: ([p for p, t in zip(paths, test) if t == want], labels[test == want])
                  for s, want in (("train", False), ("test", True))}
    return names, splits


def _fingerprint(root: Path, names: list[str], splits: dict, mode: str, size: int) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION} {mode} {size} {names}".encode())
    for split, (paths, _) in splits.items():
        for p in paths:
            with reader_errors(p, "image"):
                st = p.stat()
            h.update(f"{split}\t{p.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decode_images(paths: list[Path], mode: str, size: int, exact: bool = False) -> np.ndarray:
    """PNG/JPEG files -> uint8 (N, C, size, size) in Pillow ``mode`` ("L" or "RGB"), resized,
    or, ``exact``, refused unless already ``size`` x ``size``; decoded by threads."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("decoding images needs Pillow: pip install pillow") from None
    out = np.empty((len(paths), size, size, len(mode)), dtype=np.uint8)

    def decode(path: Path, i: int) -> None:
        with open_regular(path, MAX_FILE_BYTES, "dataset image") as f, \
                reader_errors(path, "image"), Image.open(f, formats=["PNG", "JPEG"]) as im:
            width, height = im.size  # from the header, before any pixel is decoded
            if exact and im.size != (size, size):
                raise DatasetError(f"{path} is {width}x{height}, expected {size}x{size}")
            if width * height > MAX_SOURCE_PIXELS:
                raise DatasetError(f"{path} is {width}x{height} pixels, more than the "
                                   f"{MAX_SOURCE_PIXELS:,} an image may have (a decompression "
                                   "bomb?)")
            im.draft(mode, (size, size))  # JPEG: decode at a reduced scale when that is enough
            im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(im).reshape(size, size, -1)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, paths, range(len(paths))))
    return out.transpose(0, 3, 1, 2)


def read_cache(path: Path, limits: dict[str, tuple[str, tuple]], what: str,
               max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """All the arrays ``limits`` names of a decoded-images cache, each refused from its header
    unless it has the dtype and shape of ``limits[key]`` (a first dimension N may be smaller)."""
    def check(key, dtype, shape):
        want, largest = limits[key]
        if dtype != np.dtype(want) or len(shape) != len(largest) or shape[1:] != largest[1:] \
                or shape[:1] > largest[:1]:
            dims = ", ".join([f"N <= {n}" for n in largest[:1]] + [str(n) for n in largest[1:]])
            raise DatasetError(f"{path}: {key} is {dtype} {shape}, expected {np.dtype(want)} "
                               f"({dims}); delete the cache to rebuild it")

    arrays = read_npz(path, limits, check, what, max_bytes)
    missing = set(limits) - set(arrays)
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(sorted(missing))}; delete it to rebuild")
    return arrays


def write_cache(path: Path, arrays: dict) -> None:
    """``np.savez`` of ``arrays`` to ``path`` atomically; a read-only folder only logs."""
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:  # decoded again next time
        log.info("not caching the decoded images to %s: %s", path, e)


def _cached(path: Path, fingerprint: str, limits: dict) -> dict | None:
    """The cache's arrays if it holds this folder as it is now, else None (rebuild it)."""
    if not path.exists():
        return None
    try:
        arrays = read_cache(path, limits, "dataset cache")
    except DatasetError as e:
        log.info("rebuilding the dataset cache: %s", e)
        return None
    same_sizes = all(arrays[k].shape == shape for k, (_, shape) in limits.items())
    return arrays if same_sizes and str(arrays["fingerprint"]) == fingerprint else None


def load_folder(root: str | Path, channels: int = 0, image_size: int = 0) -> Dataset:
    """The ``folder`` dataset at ``root``: images converted to ``channels`` 1 or 3 (0: 3) and
    ``image_size`` 1 to :data:`MAX_SIDE` (0: 32); a DatasetError names any bad file."""
    channels, size = channels or 3, image_size or 32
    if channels not in (1, 3) or not 0 < size <= MAX_SIDE:
        raise DatasetError(f"the folder dataset converts images to data.channels = 1 or 3 and "
                           f"data.image_size in [1, {MAX_SIDE}], got {channels} and {size}")
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: data.root of the folder dataset must be a folder with one "
                           f"subfolder of images per class")
    root = Path(root).resolve()  # the user's own choice of folder may be a symlink
    names, splits = _list_splits(root)
    count = sum(len(p) for p, _ in splits.values())
    if count * channels * size * size > MAX_PIXEL_BYTES:
        raise DatasetError(f"{root}: {count:,} images of {channels}x{size}x{size} exceed the "
                           f"{MAX_PIXEL_BYTES:,} bytes a dataset may take; lower data.image_size")
    mode = "L" if channels == 1 else "RGB"
    fingerprint = _fingerprint(root, names, splits, mode, size)
    cache = inside(root, root / f".pemn-cache-{channels}x{size}.npz")
    limits = {"fingerprint": ("U64", ())}
    for s, (paths, _) in splits.items():
        limits[f"{s}_images"] = ("u1", (len(paths), channels, size, size))
        limits[f"{s}_labels"] = ("i8", (len(paths),))
    arrays = _cached(cache, fingerprint, limits)
    if arrays is None:
        arrays = {"fingerprint": np.array(fingerprint)}
        for s, (paths, labels) in splits.items():
            arrays[f"{s}_images"], arrays[f"{s}_labels"] = decode_images(paths, mode, size), labels
        write_cache(cache, arrays)
    t = {k: torch.as_tensor(v) for k, v in arrays.items() if k != "fingerprint"}
    return describe("folder", (t["train_images"], t["train_labels"]),
                    (t["test_images"], t["test_labels"]), names)
