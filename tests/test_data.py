"""pemn.data: readers on tiny fixtures written in the real file formats, and the batch loader."""
from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import shutil
import struct
import sys
import tracemalloc
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pemn.data import (
    AugmentConfig,
    BatchLoader,
    DatasetError,
    cifar,
    dataset_info,
    idx,
    list_datasets,
    load_dataset,
    split_validation,
    tiny_imagenet,
)
from pemn.data.cifar import read_cifar_batch
from pemn.data.idx import load_idx_images, load_idx_labels
from pemn.data.loader import crop_flip

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MiB = 1 << 20


def refused_within(max_bytes, fn, match):
    """``fn()`` raises a DatasetError matching ``match`` while Python and numpy allocate at most
    ``max_bytes`` (tracemalloc sees both), i.e. before the allocation a hostile file asks for."""
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=match) as e:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < max_bytes, f"peak {peak:,} bytes"
    assert "\n" not in str(e.value)
    return e.value


# ---------------------------------------------------------------------------------------------
# Fixture writers
# ---------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's IDX: 00 00 08 <ndim>, big-endian uint32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as in the official CIFAR files (protocol 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x, which wrote the official files, named the module numpy.core.multiarray
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_batch(n, label_keys, num_classes, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }
    for key in label_keys:
        batch[key] = [int(v) for v in rng.integers(0, num_classes, n)]
    return batch


def write_cifar10(root: Path, n=4, protocol="py2"):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(n, [b"labels"], 10, seed=i)
        batches[name][b"empty"] = b""  # Python 3 writes it as bytes() at protocol 2
        (folder / name).write_bytes(py2_pickle(batches[name]) if protocol == "py2"
                                    else pickle.dumps(batches[name], protocol=protocol))
    return batches


def write_cifar100(root: Path, n=6):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batches = {name: cifar_batch(n, [b"fine_labels", b"coarse_labels"], 100, seed=i)
               for i, name in enumerate(["train", "test"])}
    for name, b in batches.items():
        (folder / name).write_bytes(py2_pickle(b))
    return batches


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_folder(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (5, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.shape == (12,)
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.num_classes == 10 and ds.mean == (0.1307,)


def test_fashion_mnist_from_root(tmp_path):
    write_idx_folder(tmp_path, gz=True)
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.name == "fashion_mnist" and ds.mean == (0.2860,) and ds.std == (0.3530,)


@pytest.mark.parametrize("corrupt, match", [
    ("bad_magic", "is not an IDX file"), ("wrong_ndim", "magic 0x00000801, expected 0x00000803"),
    ("truncated", "holds 2,342 data bytes but its header"), ("garbage", "is not an IDX file"),
    ("bad_gzip", "holds fewer data bytes than its header")])
def test_idx_malformed_raises(tmp_path, corrupt, match):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    data = {
        "bad_magic": b"\x08\x03\x00\x00" + good[4:],
        "wrong_ndim": idx_bytes(np.zeros(3, np.uint8)),
        "truncated": good[:-10],
        "garbage": b"\x00\x00",
        "bad_gzip": gzip.compress(good)[:-20],
    }[corrupt]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=match) as e:
        load_idx_images(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_idx_labels_count_mismatch(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8)))
    assert load_idx_labels(tmp_path / "train-labels-idx1-ubyte").shape == (7,)
    with pytest.raises(DatasetError, match="7 labels for 12 images"):
        load_dataset("mnist", root=tmp_path)


def test_fashion_mnist_default_dirs(tmp_path, monkeypatch):
    import pemn.data.datasets as data
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="fashion_mnist not found in") as e:
        load_dataset("fashion_mnist")
    assert str(tmp_path / "system") in str(e.value)
    assert str(tmp_path / "data" / "fashion_mnist") in str(e.value)
    write_idx_folder(tmp_path / "data" / "fashion_mnist", gz=False)
    assert load_dataset("fashion_mnist").train_images.shape == (12, 1, 28, 28)
    write_idx_folder(tmp_path / "system", n_train=3, gz=True)  # the system folder comes first
    assert load_dataset("fashion_mnist").train_images.shape == (3, 1, 28, 28)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="fashion_mnist not found in") as e:
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    msg = str(e.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "nowhere" in msg and "\n" not in msg


def gzip_bomb(header: bytes, num_mib: int) -> bytes:
    """``header`` then ``num_mib`` MiB of zeros, gzipped into about 1 KB per MiB: after a full
    flush a deflate block needs nothing before it, so one compressed MiB can be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    mib = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + mib * num_mib + c.flush()  # the trailer's checksum is wrong: never reached


def idx_header(*shape) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_gzip_bomb_inflates_no_further_than_the_header_says(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_bomb(idx_header(2, 28, 28), 2600))  # 2.6 MB -> 2.6 GB
    assert path.stat().st_size < 3 * MiB
    refused_within(16 * MiB, lambda: load_idx_images(path), r"more data bytes than its header")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_declared_sizes_are_checked_before_allocation(tmp_path, gz):
    path = tmp_path / "train-images-idx3-ubyte"
    for shape, match in [((2**31, 2**31, 4), r"\(2147483648, 2147483648, 4\), 18,446,744,073,"
                          r"709,551,616 bytes, more than max_bytes=268,435,456"),
                         ((100_000, 28, 28), "gzip bytes left can inflate to" if gz
                          else "holds 784 data bytes but its header")]:
        data = idx_header(*shape) + bytes(784)
        path.write_bytes(gzip.compress(data) if gz else data)
        refused_within(MiB, lambda: load_idx_images(path), match)


def test_idx_trailing_data_and_special_files(tmp_path):
    good = idx_bytes(np.zeros(3, np.uint8))
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(good) + gzip.compress(b"more"))  # a second gzip member
    with pytest.raises(DatasetError, match="more data bytes"):
        load_idx_labels(path)
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer forever
    for special in (tmp_path / "fifo", tmp_path, Path("/dev/zero")):
        with pytest.raises(DatasetError, match="must be a regular file"):
            load_idx_labels(special)


def test_out_of_memory_is_a_dataset_error(tmp_path, monkeypatch):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(idx.np, "empty", no_memory)
    with pytest.raises(DatasetError, match="labels: not enough memory to read this IDX file"):
        load_idx_labels(path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_mutated_idx_files_raise_only_dataset_errors(tmp_path, gz):
    good = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    good = gzip.compress(good) if gz else good
    for path in _mutants(good, tmp_path / "images"):
        try:
            load_idx_images(path)
        except DatasetError:
            pass


def _mutants(good: bytes, path, count: int = 300):
    """Write ``count`` copies of ``good`` with 1-3 random bytes changed and a random cut to
    ``path``, one at a time; yields the path after each write."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        data = bytearray(good)
        for i in rng.integers(0, len(data), rng.integers(1, 4)):
            data[i] = rng.integers(0, 256)
        path.write_bytes(bytes(data[:rng.integers(0, len(data) + 1)]))
        yield path


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5], ids=["py2", "py3-protocol2",
                                                           "py3-protocol4", "py3-protocol5"])
def test_cifar10_round_trip(tmp_path, protocol):
    batches = write_cifar10(tmp_path, n=4, protocol=protocol)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_labels.dtype == torch.int64
    assert ds.train_labels.tolist() == sum((batches[f"data_batch_{k}"][b"labels"]
                                            for k in range(1, 6)), [])
    # row layout: 1024 red values, then green, then blue, each plane row-major 32x32
    row = batches["data_batch_2"][b"data"][1]
    img = ds.train_images[4 + 1]
    assert img[0, 0, 0] == row[0] and img[0, 0, 31] == row[31] and img[0, 1, 0] == row[32]
    assert img[1, 5, 7] == row[1024 + 5 * 32 + 7] and img[2, 31, 31] == row[3071]
    assert ds.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_root_may_be_the_folder_itself(tmp_path):
    write_cifar10(tmp_path)
    assert len(load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py").test_labels) == 4


def test_cifar100_fine_labels(tmp_path):
    batches = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.train_images.shape == (6, 3, 32, 32) and ds.num_classes == 100
    assert ds.train_labels.tolist() == batches["train"][b"fine_labels"]
    assert np.array_equal(ds.test_images.reshape(6, -1).numpy(), batches["test"][b"data"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = cifar_batch(4, [b"labels"], 10, seed=0)
    batch[b"labels"] = _Evil(marker)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match="refusing to load") as e:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_3" in str(e.value)
    assert not marker.exists()


def test_cifar_wrong_content_raises(tmp_path):
    write_cifar10(tmp_path)
    bad = cifar_batch(4, [b"labels"], 10, seed=0)
    bad[b"data"] = bad[b"data"][:, :100]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable CIFAR pickle"):
        load_dataset("cifar10", root=tmp_path)


class _Reduce:
    """Pickles as ``fn(*args)`` (then ``BUILD state`` if given), without running anything."""

    def __init__(self, fn, args, state=None):
        self.value = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.value


def _array_state(shape, dtype, data, fortran=False):
    """What numpy's own pickles say: ``_reconstruct(ndarray, (0,), b"b")``, then its state."""
    from numpy._core.multiarray import _reconstruct
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


@pytest.mark.parametrize("data,match", [
    # the 121-byte file: a 1-byte buffer viewed with zero strides as 10000 x 3072
    (_Reduce(np.ndarray, ((10000, 3072), np.dtype(np.uint8), b"\0", 0, (0, 0))),
     r"refusing to load a direct numpy.ndarray\(...\) call"),
    (_Reduce(np.ndarray, ((10, 3072), np.dtype(np.uint8), bytes(3072), 3071, (-1, 1))),
     r"numpy.ndarray\(...\)"),
    (_array_state((10000, 3072), np.dtype(np.uint8), bytes(16)),
     r"array of shape \(10000, 3072\) \(30,720,000 bytes\) over 16 bytes"),
    (_array_state((1, 3072), np.dtype(np.uint8), bytes(3073)), r"over 3,073 bytes"),
    (_array_state((-1, 3072), np.dtype(np.uint8), b""), r"shape \(-1, 3072\)"),
    (_array_state((1, 3072), np.dtype(object), [0] * 3072), r"numpy dtype 'O8'"),
    (_array_state((1, 3072), np.dtype([("a", "u1")]), bytes(3072)), r"numpy dtype 'V1'"),
    (_Reduce(codecs.encode, ("eA==", "base64")), r"_codecs.encode of anything but a latin1"),
    (_Reduce(bytes, (10**12,)), r"bytes\(...\) with arguments"),
], ids=["zero-strides", "negative-strides", "undersized", "oversized", "negative-shape",
        "object-dtype", "structured-dtype", "codecs-base64", "bytes-size"])
def test_hostile_cifar_arrays_are_refused_before_allocation(tmp_path, data, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0]}, protocol=4))
    err = refused_within(MiB, lambda: read_cifar_batch(path), match)
    assert str(path) in str(err)


def test_cifar_special_and_oversized_files(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    os.mkfifo(folder / "test_batch")
    with pytest.raises(DatasetError, match="test_batch: a CIFAR pickle must be a regular file"):
        load_dataset("cifar10", root=tmp_path)
    monkeypatch.setattr(cifar, "MAX_FILE_BYTES", 1000)
    with pytest.raises(DatasetError, match=r"data_batch_1 is \d[\d,]* bytes, more than the 1,000"):
        load_dataset("cifar10", root=tmp_path)


def test_mutated_cifar_pickles_raise_only_dataset_errors(tmp_path):
    good = py2_pickle(cifar_batch(2, [b"labels"], 10, seed=0))
    for path in _mutants(good, tmp_path / "batch"):
        try:
            read_cifar_batch(path)
        except DatasetError:
            pass


@pytest.mark.parametrize("name,archive,folder", [
    ("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python"),
])
def test_missing_cifar_says_how_to_get_it(tmp_path, name, archive, folder):
    with pytest.raises(DatasetError, match=f"{folder} not found: download") as e:
        load_dataset(name, root=tmp_path)
    msg = str(e.value)
    assert archive in msg and str(tmp_path.resolve() / folder) in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet
# ---------------------------------------------------------------------------------------------

def write_tiny_imagenet(root: Path):
    Image = pytest.importorskip("PIL.Image")
    folder = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # unsorted on purpose: labels follow sorted order
    (folder / "wnids.txt").parent.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {"n01": (200, 30, 60), "n02": (20, 180, 90)}
    for wnid in wnids:
        d = folder / "train" / wnid / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), colours[wnid]).save(d / f"{wnid}_{i}.JPEG", quality=95)
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n01", "n02", "n02"]):
        Image.new("RGB", (64, 64), colours[wnid]).save(folder / "val/images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    Image.new("L", (64, 64), 128).save(folder / "val/images/val_3.JPEG")  # greyscale, as some are
    lines.append("val_3.JPEG\tn01\t1\t2\t30\t40")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_round_trip_and_cache(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    ds = load_dataset("tiny_imagenet", root=tmp_path)
    assert ds.train_images.shape == (6, 3, 64, 64) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (4, 3, 64, 64)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]  # n01 -> 0, n02 -> 1
    assert ds.test_labels.tolist() == [0, 1, 1, 0]
    mean_rgb = ds.train_images[0].float().mean((1, 2))
    assert torch.allclose(mean_rgb, torch.tensor([200.0, 30.0, 60.0]), atol=4)
    assert (ds.test_images[3].float() - 128).abs().max() <= 2  # grey -> three equal channels
    assert (folder / "pemn_cache_v1.npz").is_file()
    for jpeg in folder.rglob("*.JPEG"):  # the second load must come from the cache
        jpeg.unlink()
    again = load_dataset("tiny_imagenet", root=tmp_path)
    assert torch.equal(again.train_images, ds.train_images)
    assert torch.equal(again.test_labels, ds.test_labels)


def test_tiny_imagenet_bad_annotation_and_missing(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset("tiny_imagenet", root=tmp_path)
    with pytest.raises(DatasetError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny_imagenet", root=tmp_path / "empty")


def plant_outside(tmp_path) -> Path:
    """A valid 64x64 JPEG outside the dataset folder: loading it would prove a read outside."""
    Image = pytest.importorskip("PIL.Image")
    outside = tmp_path / "outside" / "x.JPEG"
    outside.parent.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(outside)
    return outside


def record_opens(monkeypatch) -> list[Path]:
    """From now on, every path a dataset reader opens (they all go through pemn.data.files)."""
    import pemn.data.files as files
    paths, real_open = [], os.open

    def spy(path, *args, **kwargs):
        paths.append(Path(path).resolve())
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(files.os, "open", spy)
    return paths


@pytest.mark.parametrize("attack", ["absolute-val", "dotdot-val", "absolute-wnid", "dotdot-wnid",
                                    "symlink-image", "symlink-wnids", "symlink-train-dir"])
def test_tiny_imagenet_never_reads_outside_its_folder(tmp_path, monkeypatch, attack):
    folder = write_tiny_imagenet(tmp_path / "root")
    outside = plant_outside(tmp_path)
    val = folder / "val" / "val_annotations.txt"
    if attack == "absolute-val":
        val.write_text(f"{outside}\tn01\t0\t0\t1\t1\n")
    elif attack == "dotdot-val":
        val.write_text("../../../../outside/x.JPEG\tn01\t0\t0\t1\t1\n")
    elif attack in ("absolute-wnid", "dotdot-wnid"):
        wnid = str(outside.parent) if attack == "absolute-wnid" else "../../outside"
        (folder / "wnids.txt").write_text(f"n01\nn02\n{wnid}\n")
    elif attack == "symlink-image":
        (folder / "train" / "n01" / "images" / "evil.JPEG").symlink_to(outside)
    elif attack == "symlink-wnids":
        (outside.parent / "wnids.txt").write_text("n01\nn02\n")
        (folder / "wnids.txt").unlink()
        (folder / "wnids.txt").symlink_to(outside.parent / "wnids.txt")
    else:
        shutil.rmtree(folder / "train" / "n02")
        (folder / "train" / "n02").symlink_to(outside.parent, target_is_directory=True)
        (outside.parent / "images").mkdir()
        (outside.parent / "images" / "n02_0.JPEG").write_bytes(outside.read_bytes())
    opened = record_opens(monkeypatch)
    with pytest.raises(DatasetError, match="refusing") as e:
        load_dataset("tiny_imagenet", root=tmp_path / "root")
    assert "\n" not in str(e.value)
    assert all(p.is_relative_to(folder.resolve()) for p in opened), opened


def test_tiny_imagenet_special_and_oversized_files(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    folder = write_tiny_imagenet(tmp_path)
    big = folder / "val" / "images" / "val_0.JPEG"
    Image.new("RGB", (2000, 64)).save(big)
    with pytest.raises(DatasetError, match="val_0.JPEG is 2000x64, expected 64x64"):
        load_dataset("tiny_imagenet", root=tmp_path)
    big.unlink()
    os.mkfifo(big)  # a reader that opened it would wait for a writer forever
    with pytest.raises(DatasetError, match="must be a regular file"):
        load_dataset("tiny_imagenet", root=tmp_path)
    monkeypatch.setattr(tiny_imagenet, "MAX_VAL", 3)
    with pytest.raises(DatasetError, match="lists 4 images, more than the 3 of Tiny-ImageNet"):
        load_dataset("tiny_imagenet", root=tmp_path)


def npz_with_header(path: Path, arrays: dict, declared: dict):
    """An .npz whose members are ``arrays``, except that each key in ``declared`` has a .npy
    header declaring that (dtype, shape) followed by no data."""
    with zipfile.ZipFile(path, "w") as z:
        for key, value in arrays.items():
            with z.open(f"{key}.npy", "w") as f:
                if key in declared:
                    dtype, shape = declared[key]
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
                else:
                    np.lib.format.write_array(f, value)


@pytest.mark.parametrize("declared,match", [
    ({"train_images": (np.uint8, (10**7, 3, 64, 64))}, r"\(N <= 100000, 3, 64, 64\)"),
    ({"test_images": (np.uint8, (4, 3, 32, 32))}, r"test_images is uint8 \(4, 3, 32, 32\)"),
    ({"test_labels": (np.float32, (4,))}, r"test_labels is float32"),
])
def test_tiny_imagenet_hostile_cache_is_refused_before_reading(tmp_path, declared, match):
    folder = write_tiny_imagenet(tmp_path)
    load_dataset("tiny_imagenet", root=tmp_path)  # writes the cache
    cache = folder / "pemn_cache_v1.npz"
    with np.load(cache) as z:
        arrays = {k: z[k] for k in z.files}
    npz_with_header(cache, arrays, declared)
    refused_within(MiB, lambda: load_dataset("tiny_imagenet", root=tmp_path), match)


# ---------------------------------------------------------------------------------------------
# Registry, digits, validation split, real data
# ---------------------------------------------------------------------------------------------

def test_registry_names_and_unknown_name():
    assert list_datasets() == sorted(["cifar10", "cifar100", "digits", "fashion_mnist", "folder",
                                      "mnist", "npz", "tiny_imagenet"])
    with pytest.raises(ValueError, match="valid names: cifar10, cifar100, digits"):
        load_dataset("imagenet")


def test_dataset_info_without_files():
    info = dataset_info("fashion_mnist")
    assert (info.channels, info.num_classes, info.image_size) == (1, 10, 28)
    assert info.num_train == 60000 and info.class_names[0] == "T-shirt/top"
    assert dataset_info("cifar10").class_names[-1] == "truck"
    assert dataset_info("cifar100").class_names[:2] == ("apple", "aquarium_fish")
    assert dataset_info("tiny_imagenet").class_names is None
    header = dataset_info("cifar10").as_header()
    assert header["input_shape"] == [3, 32, 32] and header["mean"] == [0.4914, 0.4822, 0.4465]
    for name in set(list_datasets()) - {"folder", "npz"}:  # those two are read from files
        info = dataset_info(name)
        assert info.name == name and len(info.mean) == info.channels
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid names: cifar10"):
        dataset_info("imagenet")


def test_loaded_images_must_match_the_registered_shape(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 27, 28), np.uint8)))
    with pytest.raises(DatasetError, match=r"mnist test split must be uint8 \(N, 1, 28, 28\)"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "tiny_imagenet"])
def test_a_denied_folder_is_a_dataset_error(tmp_path, monkeypatch, name):
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    for method in ("stat", "resolve"):
        monkeypatch.setattr(Path, method, denied)
    with pytest.raises(DatasetError, match="PermissionError"):
        load_dataset(name, root=tmp_path)

def test_digits():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    assert ds.train_images.shape == (1438, 1, 8, 8) and ds.test_images.shape == (359, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.max() == 255
    assert set(ds.train_labels.unique().tolist()) == set(range(10))
    info = dataset_info("digits")
    assert (info.num_train, info.num_test) == (len(ds.train_labels), len(ds.test_labels))
    x = ds.train_images.float() / 255  # the documented constants are the training split's
    assert abs(x.mean().item() - ds.mean[0]) < 1e-3 and abs(x.std().item() - ds.std[0]) < 1e-3
    assert torch.equal(load_dataset("digits").test_labels, ds.test_labels)  # fixed split


def test_split_validation(tmp_path):
    write_idx_folder(tmp_path, n_train=50)
    ds = load_dataset("mnist", root=tmp_path)
    train, (vx, vy) = split_validation(ds, 0.2, seed=3)
    assert len(train.train_labels) == 40 and vx.shape == (10, 1, 28, 28) and len(vy) == 10
    assert torch.equal(train.test_images, ds.test_images)
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([train.train_images, vx])}
    assert len(rows) == 50  # disjoint, and together the whole training set
    _, (vx2, _) = split_validation(ds, 0.2, seed=3)
    assert torch.equal(vx, vx2)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        split_validation(ds, 1.0)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_dataset("fashion_mnist")
    assert ds.train_images.shape == (60000, 1, 28, 28)
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert dataset_info("fashion_mnist").num_train == len(ds.train_labels)
    x = ds.train_images.float() / 255
    assert abs(x.mean().item() - 0.2860) < 1e-3 and abs(x.std().item() - 0.3530) < 1e-3


# ---------------------------------------------------------------------------------------------
# BatchLoader
# ---------------------------------------------------------------------------------------------

def make_data(n=101, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n)


def loader(images, labels, batch_size=10, augment=None, **kw):
    c = images.shape[1]
    kw.setdefault("shuffle", True)
    return BatchLoader(images, labels, batch_size, augment=augment, mean=(0.5,) * c,
                       std=(0.25,) * c, **kw)


def batches(ld):
    return [(x.clone(), y.clone()) for x, y in ld]


def test_loader_normalises_without_augmentation():
    x, y = make_data()
    out = batches(loader(x, y, shuffle=False))
    assert len(out) == 11 and out[-1][0].shape == (1, 3, 8, 8)
    first, labels = out[0]
    assert first.dtype == torch.float32 and first.is_contiguous()
    assert labels.tolist() == list(range(10))
    assert torch.allclose(first, (x[:10].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_loader_deterministic_and_changes_with_epoch():
    x, y = make_data()
    aug = AugmentConfig(crop_padding=2, flip=True, erase_prob=0.5)
    a, b = loader(x, y, augment=aug, seed=7), loader(x, y, augment=aug, seed=7)
    for (xa, ya), (xb, yb) in zip(batches(a), batches(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order0 = a.indices()
    a.set_epoch(1)
    assert not torch.equal(order0, a.indices())
    assert not torch.equal(order0, loader(x, y, seed=8).indices())
    assert sorted(order0.tolist()) == list(range(101))


def test_loader_shards_are_disjoint_and_equal():
    x, y = make_data(n=101)
    shards = [loader(x, y, batch_size=8, rank=r, world_size=2, seed=1) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    idx = [s.indices() for s in shards]
    assert len(idx[0]) == len(idx[1]) == 50 and len(shards[0]) == len(shards[1]) == 7
    assert not set(idx[0].tolist()) & set(idx[1].tolist())
    seen = torch.cat([yy for xx, yy in batches(shards[0])])
    assert torch.equal(seen, idx[0])  # labels are the indices here
    assert len(loader(x, y, batch_size=16, rank=1, world_size=2, drop_last=True)) == 3


def test_crop_is_a_window_of_the_zero_padded_image():
    x, _ = make_data(n=32, c=2)
    out = crop_flip(x, 2, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert hits
        shifts.add(hits[0])
    assert len(shifts) > 5


def test_flip_flips_some_samples():
    x, y = make_data(n=64)
    (out, labels), = batches(loader(x, y, batch_size=64, shuffle=False,
                                    augment=AugmentConfig(flip=True)))
    ref = (x.float() / 255 - 0.5) / 0.25
    same = [torch.allclose(out[i], ref[i], atol=1e-5) for i in range(64)]
    flipped = [torch.allclose(out[i], ref[i].flip(-1), atol=1e-5) for i in range(64)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54


def test_erasing_zeros_a_rectangle():
    x = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    (out, _), = batches(loader(x, torch.arange(64), batch_size=64,
                               augment=AugmentConfig(erase_prob=1.0)))
    erased = 0
    for img in out:
        zero = img[0] == 0
        assert torch.equal(zero, img[1] == 0) and torch.equal(zero, img[2] == 0)  # all channels
        if zero.any():
            erased += 1
            rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
            box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all() and zero.sum() == box.numel()  # exactly one filled rectangle
            assert 0.01 <= box.numel() / 256 <= 0.4
    assert erased >= 60  # a box fits almost always; none erased only if 10 draws all fail


def test_channels_last_and_device():
    x, y = make_data(n=20)
    xb, yb = next(iter(loader(x, y, channels_last=True, augment=AugmentConfig(crop_padding=1))))
    assert xb.is_contiguous(memory_format=torch.channels_last) and yb.dtype == torch.int64


@pytest.mark.parametrize("kwargs", [
    {"crop_padding": -1}, {"crop_padding": 2.0}, {"flip": "yes"}, {"erase_prob": 1.5},
    {"erase_prob": float("nan")}, {"color_jitter": -0.1}, {"randaugment": (2,)},
    {"randaugment": (2, 40)}, {"randaugment": "2,9"},
], ids=str)
def test_invalid_augment_values_raise(kwargs):
    with pytest.raises(ValueError, match="augment."):
        AugmentConfig(**kwargs)


def test_unknown_augment_key_raises():
    with pytest.raises(TypeError, match="unexpected keyword argument 'cutout'"):
        AugmentConfig(cutout=8)
    assert AugmentConfig(randaugment=[2, 9]).randaugment == (2, 9)


def test_bad_loader_arguments_raise():
    x, y = make_data(n=10)
    with pytest.raises(ValueError, match="uint8"):
        loader(x.float(), y)
    with pytest.raises(ValueError, match="rank"):
        loader(x, y, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no batch"):
        loader(x, y, batch_size=11, drop_last=True)
    with pytest.raises(ValueError, match="one per channel"):
        BatchLoader(x, y, 4, shuffle=False, mean=(0.5,), std=(0.2,))


def test_torchvision_ops_need_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if not installed
    x, y = make_data(n=10)
    with pytest.raises(ImportError, match="randaugment needs torchvision; pip install 'pemn"):
        loader(x, y, augment=AugmentConfig(randaugment=(2, 9)))
    with pytest.raises(ImportError, match="set augment.color_jitter to 0"):
        loader(x, y, augment=AugmentConfig(color_jitter=0.2))


def test_torchvision_ops_run_per_image_with_our_seed(monkeypatch):
    """Plumbing only, with a stand-in torchvision: ops see uint8 images one at a time."""
    class AddNoise:  # uses torch's global generator, as torchvision does
        def __init__(self, **kw):
            self.kw = kw

        def __call__(self, img):
            assert img.dtype == torch.uint8 and img.dim() == 3
            return img.add(torch.randint(0, 3, (), dtype=torch.uint8))

    v2 = types.SimpleNamespace(RandAugment=AddNoise, ColorJitter=AddNoise,
                               Compose=lambda ops: lambda img: ops[0](img))
    transforms = types.ModuleType("torchvision.transforms")
    transforms.v2 = v2
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    x, y = make_data(n=40)
    aug = AugmentConfig(randaugment=(2, 9))
    state = torch.get_rng_state()
    first, second = batches(loader(x, y, augment=aug)), batches(loader(x, y, augment=aug))
    assert torch.equal(torch.get_rng_state(), state)  # global generator restored
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
