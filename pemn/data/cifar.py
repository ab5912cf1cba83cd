"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, through an unpickler that
builds only dicts, lists, numbers, bytes and plain numeric arrays (docs/DATASETS.md)."""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from .files import DatasetError, read_regular, reader_errors, short

__all__ = ["MAX_FILE_BYTES", "read_cifar_batch", "load_cifar10", "load_cifar100"]

MAX_FILE_BYTES = 1 << 28  # 256 MiB; CIFAR-100's train file, the largest, is 155 MB
_DTYPES = frozenset(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)) | {"b1", "f2", "f4", "f8"}
_MAX_NDIM = 8


class _Refused(DatasetError):
    """Something a CIFAR file would never contain."""


class _Dtype:
    """Stands in for ``numpy.dtype(name, align, copy)``: plain bool, int and float types only."""

    def __init__(self, name, align=False, copy=True):
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        if not isinstance(name, str) or name not in _DTYPES:
            raise _Refused(f"numpy dtype {short(name)} (only {', '.join(sorted(_DTYPES))})")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, ...): structured dtypes are refused
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise _Refused("a structured or sub-array numpy dtype")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise _Refused(f"numpy byte order {short(order)}")
        self.dtype = self.dtype.newbyteorder(order)


class _StandIn:
    """What a pickle's names resolve to: a callable that refuses ``BUILD`` (setting attributes)."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise _Refused("BUILD (setting attributes) on a numpy name")


def _ndarray(*args):
    """``numpy.ndarray``: a marker for ``_reconstruct``; a call could view a byte as gigabytes."""
    raise _Refused("a direct numpy.ndarray(...) call (explicit buffer and strides)")


_NDARRAY = _StandIn(_ndarray)


class _Array:
    """Stands in for the empty array ``_reconstruct`` makes; ``BUILD`` gives it its data."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        # ndarray state: ([version,] shape, dtype, is_fortran, raw bytes)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("a numpy array state that is not (shape, dtype, order, bytes)")
        self.array = _make_array(*state[-4:])


def _make_array(shape, dtype, fortran, data) -> np.ndarray:
    """A read-only array over ``data``, which must be exactly as large as the shape says."""
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM \
            or not all(type(n) is int and n >= 0 for n in shape):
        raise _Refused(f"numpy array shape {short(shape)}")
    if not isinstance(getattr(dtype, "dtype", None), np.dtype) or type(fortran) not in (bool, int):
        raise _Refused("a numpy array without a plain dtype and a C/Fortran order flag")
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"numpy array data of type {type(data).__name__} (only raw bytes)")
    num_bytes = math.prod(shape) * dtype.dtype.itemsize  # Python ints: no overflow
    if len(data) != num_bytes:
        raise _Refused(f"a {dtype.dtype} array of shape {shape} ({num_bytes:,} bytes) over "
                       f"{len(data):,} bytes of data")
    return np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct(cls, shape, typecode):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``, as numpy writes it, only."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused("numpy _reconstruct with arguments numpy never writes")
    return _Array()


def _frombuffer(data, dtype, shape, order):
    """``numpy._core.numeric._frombuffer``, what pickle protocol 5 writes for an array."""
    if order not in ("C", "F"):
        raise _Refused(f"numpy _frombuffer with order {short(order)}")
    array = _Array()
    array.array = _make_array(shape, dtype, order == "F", data)
    return array


def _latin1(text, encoding):
    """``_codecs.encode(text, "latin1")``: how Python 3 writes bytes at pickle protocol < 3."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode of anything but a latin1 string")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """``bytes()``: how Python 3 writes ``b""`` at pickle protocol < 3; arguments are refused."""
    if args:
        raise _Refused("bytes(...) with arguments")
    return b""


# (module, name) a CIFAR pickle may ask for, mapped to immutable stand-ins; nothing is imported
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _StandIn(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _StandIn(_reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _StandIn(_frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _StandIn(_frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn(_Dtype),
    ("_codecs", "encode"): _StandIn(_latin1),
    ("__builtin__", "bytes"): _StandIn(_empty_bytes),
    ("builtins", "bytes"): _StandIn(_empty_bytes),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(short(f"{module}.{name}", quote=False)) from None


def _resolve(value: object) -> object:
    if isinstance(value, _Array):
        if value.array is None:
            raise _Refused("a numpy array without data")
        return value.array
    return value


def read_cifar_batch(path: str | Path,
                     label_key: bytes = b"labels") -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR pickle (e.g. ``data_batch_1``) -> uint8 (N, 3, 32, 32) images and int64 (N,)
    labels (``label_key``: ``b"fine_labels"`` for CIFAR-100); a DatasetError for anything else."""
    path = Path(path)
    with reader_errors(path, "CIFAR pickle"):
        raw = read_regular(path, MAX_FILE_BYTES, "CIFAR pickle")
        try:
            batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
            if isinstance(batch, dict):  # the values' stand-in arrays become numpy arrays
                batch = {k: _resolve(v) for k, v in batch.items()}
        except _Refused as e:
            raise DatasetError(f"{path}: refusing to load {e} from a CIFAR pickle; the official "
                               "files hold only dicts, lists and numpy arrays") from None
        except (DatasetError, MemoryError):
            raise  # MemoryError: reader_errors words it
        except Exception as e:  # any parse error of an untrusted file
            raise DatasetError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: "
                               f"{short(str(e), quote=False)})") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DatasetError(f"{path} must hold a dict with keys b'data' and {label_key!r}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: b'data' must be a uint8 array (N, 3072), "
                           f"got {_describe(data)}")
    wrong = DatasetError(f"{path}: {label_key!r} must hold {data.shape[0]} integers, got "
                         f"{_describe(labels)}")
    # the length, then every entry a plain int, before np.asarray: a few KB of pickle can make
    # each entry a reference to one shared nested list, which asarray would expand in full
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != data.shape[0] \
            or isinstance(labels, list) and not all(type(y) is int for y in labels):
        raise wrong
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise wrong
    with reader_errors(path, "CIFAR pickle"):  # the copy may run out of memory
        images = torch.from_numpy(data.copy(order="C")).view(-1, 3, 32, 32)  # R, G, B planes
        return images, torch.from_numpy(labels.astype(np.int64))


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array {short(x.shape)}"
    if isinstance(x, list):
        return f"a list of {len(x)}" + (f", the first a {type(x[0]).__name__}" if x else "")
    return type(x).__name__


def load_cifar10(root: str | Path = "data"):
    """CIFAR-10's four split tensors from ``root/cifar-10-batches-py`` (or that folder)."""
    train = tuple(f"data_batch_{i}" for i in range(1, 6))
    return _load(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", train, "test_batch",
                 b"labels")


def load_cifar100(root: str | Path = "data"):
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``, as :func:`load_cifar10`."""
    return _load(root, "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test",
                 b"fine_labels")


def _load(root, name: str, archive: str, train_files: tuple[str, ...], test_file: str,
          label_key: bytes):
    root = Path(root)
    folder = root if root.name == name else root / name  # root may be the folder itself
    if not all((folder / f).exists() for f in (*train_files, test_file)):
        raise DatasetError(f"{name} not found: download https://www.cs.toronto.edu/~kriz/"
                           f"{archive} and extract it so that {root.resolve() / name} exists "
                           f"(or pass root=<folder containing {name}>)")
    splits = []
    for files in (train_files, (test_file,)):
        parts = [read_cifar_batch(folder / f, label_key) for f in files]
        splits += [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]
    return tuple(splits)
