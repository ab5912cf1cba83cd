"""CIFAR-10 and CIFAR-100 from the official "python version" pickles (Krizhevsky, 2009).

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``;
``cifar-100-python/`` holds ``train`` and ``test``. Each is a Python 2 pickle of a dict with
``b"data"``, a uint8 numpy array (N, 3072) whose rows are the red plane, then green, then blue,
each 32x32 row-major, and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

Pickles can run arbitrary code when loaded, so they are read with an unpickler that resolves
only the three numpy names an array needs and refuses everything else.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError

__all__ = ["read_cifar_batch", "load_cifar10", "load_cifar100"]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _reconstruct():
    try:  # numpy >= 2 moved the module; the official files name the old one
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


# (module, name) pairs an ndarray pickle needs, mapped to objects without importing by name.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, numbers, bytes and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refusing to load {module}.{name} from a CIFAR pickle: the official files only "
                "contain numpy arrays, so this file is not one of them"
            ) from None


def _unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None
    except Exception as e:  # any parse error of an untrusted file
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


def read_cifar_batch(path: str | Path, label_key: bytes = b"labels") -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR pickle file.

    Args:
        path: e.g. ``cifar-10-batches-py/data_batch_1``.
        label_key: ``b"labels"`` for CIFAR-10, ``b"fine_labels"`` for CIFAR-100.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,).

    Raises:
        DatasetError: not a dict of the expected keys, shapes and dtypes, or an unsafe pickle.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DatasetError(f"{path} must hold a dict with keys b'data' and {label_key!r}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: b'data' must be a uint8 array (N, 3072), got {_describe(data)}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {label_key!r} must hold {data.shape[0]} integers, "
                           f"got {_describe(labels)}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)  # R, G, B planes
    return images, torch.from_numpy(labels.astype(np.int64))


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array {x.shape}"
    return type(x).__name__


def _find_dir(root: str | Path, name: str) -> Path | None:
    """``root/name``, or ``root`` itself when the user pointed at the extracted folder."""
    root = Path(root)
    for d in (root / name, root):
        if d.name == name and d.is_dir():
            return d
    return None


def _read_split(folder: Path, files: tuple[str, ...], label_key: bytes):
    parts = [read_cifar_batch(folder / f, label_key) for f in files]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _missing(root: Path, name: str, archive: str) -> DatasetError:
    return DatasetError(
        f"{name} not found: download https://www.cs.toronto.edu/~kriz/{archive} and extract it "
        f"so that {root.resolve() / name} exists (or pass root=<folder containing {name}>)"
    )


def load_cifar10(root: str | Path = "data"):
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` being that folder).

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: 50,000 / 10,000 images,
        uint8 (N, 3, 32, 32), labels int64 in [0, 10).

    Raises:
        DatasetError: folder or files missing (the message says how to get them), or malformed.
    """
    return _load(root, CIFAR10_DIR, "cifar-10-python.tar.gz", _CIFAR10_TRAIN, "test_batch",
                 b"labels")


def load_cifar100(root: str | Path = "data"):
    """CIFAR-100 (fine labels, 100 classes) from ``root/cifar-100-python``.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: 50,000 / 10,000 images,
        uint8 (N, 3, 32, 32), labels int64 in [0, 100).

    Raises:
        DatasetError: folder or files missing (the message says how to get them), or malformed.
    """
    return _load(root, CIFAR100_DIR, "cifar-100-python.tar.gz", ("train",), "test",
                 b"fine_labels")


def _load(root, name: str, archive: str, train_files: tuple[str, ...], test_file: str,
          label_key: bytes):
    folder = _find_dir(root, name)
    if folder is None or not all((folder / f).is_file() for f in (*train_files, test_file)):
        raise _missing(Path(root), name, archive)
    return (*_read_split(folder, train_files, label_key),
            *_read_split(folder, (test_file,), label_key))
