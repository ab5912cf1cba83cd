"""Tiny-ImageNet (200 classes, 64x64 RGB) from the standard ``tiny-imagenet-200/`` folder.

Layout: ``wnids.txt`` (one WordNet id per line), ``train/<wnid>/images/*.JPEG`` (500 per
class), ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (tab-separated: file name, wnid,
bounding box). The validation set serves as the test set, as in the PEMN code (spec §7).

Class index = position of the wnid in ``sorted(wnids)``, the order torchvision's ImageFolder
gives the ``train/`` folders. Decoding 110,000 JPEGs takes about a minute, so the decoded
tensors are cached to ``tiny-imagenet-200/pemn_cache_v1.npz`` when the folder is writable;
delete that file to rebuild it.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError

__all__ = ["load_tiny_imagenet"]

TINY_DIR = "tiny-imagenet-200"
CACHE_NAME = "pemn_cache_v1.npz"
SIZE = 64
log = logging.getLogger(__name__)


def _pil_image():
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("decoding Tiny-ImageNet JPEGs needs Pillow: pip install pillow") from None
    return Image


def _decode_all(paths: list[Path]) -> np.ndarray:
    """JPEG files -> uint8 array (N, 64, 64, 3). Pillow releases the GIL while decoding."""
    image_mod = _pil_image()
    out = np.empty((len(paths), SIZE, SIZE, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        try:
            with image_mod.open(paths[i]) as im:
                im = im.convert("RGB")  # a few Tiny-ImageNet images are greyscale
                if im.size != (SIZE, SIZE):
                    raise DatasetError(f"{paths[i]} is {im.size[0]}x{im.size[1]}, expected 64x64")
                out[i] = np.asarray(im)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"cannot decode {paths[i]} ({type(e).__name__}: {e})") from e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(paths))))
    return out


def _read_wnids(folder: Path) -> list[str]:
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise DatasetError(f"{folder / 'wnids.txt'} lists no classes")
    return wnids


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise DatasetError(f"no JPEGs in {folder / 'train' / wnid / 'images'}")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    annotations = folder / "val" / "val_annotations.txt"
    paths, labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{annotations} line {line_no} must be 'file<TAB>wnid<TAB>...' "
                               "with a wnid from wnids.txt")
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, labels


def _decode_folder(folder: Path) -> dict[str, np.ndarray]:
    wnids = _read_wnids(folder)
    arrays = {"wnids": np.array(wnids)}
    for split, (paths, labels) in (("train", _train_files(folder, wnids)),
                                   ("test", _val_files(folder, wnids))):
        arrays[f"{split}_images"] = _decode_all(paths).transpose(0, 3, 1, 2)  # (N, 3, 64, 64)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.int64)
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (tmp + rename) so an interrupted run never leaves a broken cache."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        log.info("not caching Tiny-ImageNet to %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise DatasetError(f"{path} is a corrupt cache ({e}); delete it to rebuild") from e


def load_tiny_imagenet(root: str | Path = "data", cache: bool = True):
    """Tiny-ImageNet from ``root/tiny-imagenet-200`` (or ``root`` being that folder).

    Args:
        root: folder containing ``tiny-imagenet-200``.
        cache: read/write the decoded ``.npz`` cache inside the dataset folder.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: uint8 (N, 3, 64, 64) and
        int64 labels in [0, 200); the test split is the official validation set.

    Raises:
        DatasetError: folder missing (the message says how to get it), bad annotations, an
            undecodable image, or Pillow not installed.
    """
    root = Path(root)
    folder = root if root.name == TINY_DIR else root / TINY_DIR
    if not (folder / "wnids.txt").is_file():
        raise DatasetError(
            f"Tiny-ImageNet not found: download http://cs231n.stanford.edu/tiny-imagenet-200.zip "
            f"and unzip it so that {folder.resolve()}/wnids.txt exists"
        )
    cache_path = folder / CACHE_NAME
    if cache and cache_path.is_file():
        arrays = _read_cache(cache_path)
    else:
        arrays = _decode_folder(folder)
        if cache:
            _write_cache(cache_path, arrays)
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in
                 ("train_images", "train_labels", "test_images", "test_labels"))
