"""Datasets of your own: ``folder`` (one subfolder of PNG/JPEG images per class) and ``npz``,
on tiny fixtures written in tmp_path; and a folder trained, packed and evaluated end to end."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from pemn.data import DatasetError, dataset_info, folder, load_dataset, npz

Image = pytest.importorskip("PIL.Image")
RNG = np.random.default_rng(0)


def _images(root, per_class, classes=("cat", "dog", "eel"), size=(10, 14), suffix=".png"):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}{suffix}")
    return root


def _png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with almost no data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def test_one_tree_is_split_per_class_and_described_by_its_training_split(tmp_path):
    root = _images(tmp_path / "imgs", per_class=6)
    (root / "notes.txt").write_text("not a class")  # stray files are ignored
    ds = load_dataset("folder", root)
    info = ds.info
    assert info.class_names == ("cat", "dog", "eel") and info.input_shape == (3, 32, 32)
    assert (info.num_train, info.num_test) == (12, 6)  # 2 of each 6 (ranks 0 and 5) are test
    assert ds.test_labels.bincount().tolist() == [2, 2, 2]
    x = ds.train_images.double() / 255
    assert info.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert info.std == pytest.approx(x.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)
    assert info.as_header()["class_names"] == ["cat", "dog", "eel"]
    grey = load_dataset("folder", root, channels=1, image_size=8)
    assert grey.train_images.shape == (12, 1, 8, 8)
    assert torch.equal(grey.test_labels, ds.test_labels)  # the split is the same at any size


def test_train_and_test_trees(tmp_path):
    _images(tmp_path / "train", per_class=3)
    _images(tmp_path / "test", per_class=1, classes=("dog",))
    ds = load_dataset("folder", tmp_path, image_size=4)
    assert (ds.info.num_train, ds.info.num_test, ds.test_labels.tolist()) == (9, 1, [1])
    _images(tmp_path / "test", per_class=1, classes=("fox",))
    with pytest.raises(DatasetError, match=r"test has classes that train/ lacks: \['fox'\]"):
        load_dataset("folder", tmp_path)


def test_cache_is_used_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    root = _images(tmp_path, per_class=3)
    first = load_dataset("folder", root, image_size=8)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == \
        [".pemn-cache-3x8.npz"]  # and no temporary file left behind
    decoded = []
    real = folder.decode_images
    monkeypatch.setattr(folder, "decode_images", lambda *a: decoded.append(1) or real(*a))
    again = load_dataset("folder", root, image_size=8)
    assert not decoded and torch.equal(again.train_images, first.train_images)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "cat" / "0.png")  # edited
    os.utime(root / "cat" / "0.png", ns=(1, 1))
    edited = load_dataset("folder", root, image_size=8)
    assert decoded and not torch.equal(torch.cat([edited.train_images, edited.test_images]),
                                       torch.cat([first.train_images, first.test_images]))
    (root / ".pemn-cache-3x8.npz").write_bytes(b"garbage")  # a broken cache is rebuilt
    assert torch.equal(load_dataset("folder", root, image_size=8).train_images,
                       edited.train_images)


def test_read_only_folder_loads_without_a_cache(tmp_path, monkeypatch):
    root = _images(tmp_path, per_class=2)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(folder, "atomic_write", refuse)
    assert load_dataset("folder", root).info.num_train == 3


@pytest.mark.parametrize("attack", ["file", "class_folder", "cache"])
def test_nothing_outside_the_root_is_read(tmp_path, attack):
    root = _images(tmp_path / "root", per_class=2)
    outside = _images(tmp_path / "secret", per_class=1, classes=("x",))
    if attack == "file":
        (root / "cat" / "link.png").symlink_to(outside / "x" / "0.png")
    elif attack == "class_folder":
        (root / "leak").symlink_to(outside / "x")
    else:  # the cache read and written in the folder
        (root / ".pemn-cache-3x32.npz").symlink_to(outside / "x" / "0.png")
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_dataset("folder", root)


def test_bombs_special_files_and_caps_are_refused(tmp_path, monkeypatch):
    root = _images(tmp_path, per_class=2)
    bomb = root / "dog" / "bomb.png"
    bomb.write_bytes(_png(9000, 9000))  # Pillow itself would decode it
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bomb.png is 9000x9000 pixels, more than"):
            load_dataset("folder", root)
        assert tracemalloc.get_traced_memory()[1] < 50 << 20  # refused before decoding
    finally:
        tracemalloc.stop()
    bomb.unlink()
    os.mkfifo(root / "dog" / "fifo.png")  # opening it must not block
    with pytest.raises(DatasetError, match="fifo.png: a dataset image must be a regular file"):
        load_dataset("folder", root)
    (root / "dog" / "fifo.png").unlink()
    monkeypatch.setattr(folder, "MAX_IMAGES", 3)
    with pytest.raises(DatasetError, match="holds 6 images, more than the 3"):
        load_dataset("folder", root)
    with pytest.raises(DatasetError, match=r"data.channels = 1 or 3 .* got 2 and 32"):
        load_dataset("folder", root, channels=2)


def test_dataset_info_reads_the_files_once(tmp_path):
    root = _images(tmp_path, per_class=2)
    info = dataset_info("folder", root, image_size=8)
    for image in root.rglob("*.png"):  # read again, the folder would have changed
        image.unlink()
    assert dataset_info("folder", root, image_size=8) == info
    with pytest.raises(DatasetError, match="holds no .png"):  # other options: read anew
        dataset_info("folder", root, image_size=4)


def test_an_unreadable_image_is_named(tmp_path):
    root = _images(tmp_path, per_class=2)
    (root / "eel" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DatasetError, match=r"eel/broken.jpg: cannot read this image"):
        load_dataset("folder", root)


def test_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(DatasetError, match="read from its files: set data.root"):
        dataset_info("folder")
    with pytest.raises(DatasetError, match="must be a folder with one subfolder"):
        load_dataset("folder", tmp_path / "missing")
    with pytest.raises(DatasetError, match="has no class folders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty holds no .png or .jpg image"):
        load_dataset("folder", tmp_path)
    with pytest.raises(DatasetError, match="digits images have image_size = 8, not data.image"):
        dataset_info("digits", image_size=32)


# npz
# ---------------------------------------------------------------------------------------------

def test_npz_splits_class_names_and_layouts(tmp_path):
    x = RNG.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", train_images=x[:15], train_labels=np.arange(15) % 2,
             test_images=x[15:], test_labels=np.zeros(5, np.uint8),
             class_names=np.array(["no", "yes"]))
    ds = load_dataset("npz", tmp_path / "a.npz")
    assert ds.info.class_names == ("no", "yes") and ds.image_shape == (3, 6, 6)
    assert torch.equal(ds.train_images[3], torch.from_numpy(x[3]).permute(2, 0, 1))
    np.savez_compressed(tmp_path / "b.npz", images=x[:, :, :, 0], labels=np.arange(20) % 4)
    ds = load_dataset("npz", tmp_path / "b.npz")
    assert (ds.info.num_train, ds.info.num_test, ds.num_classes) == (16, 4, 4)
    with pytest.raises(DatasetError, match="npz images have channels = 1, not data.channels = 3"):
        load_dataset("npz", tmp_path / "b.npz", channels=3)


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((2, 4, 4), np.float32), "labels": np.zeros(2, int)}, "must be uint8"),
    ({"images": np.zeros((2, 4, 5), np.uint8), "labels": np.zeros(2, int)}, "must be uint8"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, int)}, "2 images but 3"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, r"in \[0, "),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 2]),
      "class_names": np.array(["a", "b"])}, r"labels must be in \[0, 2\)"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1], object)},
     "holds Python objects"),
    ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "must hold train_images"),
])
def test_malformed_npz_is_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(DatasetError, match=match):
        load_dataset("npz", tmp_path / "x.npz")


def test_npz_declared_sizes_are_checked_before_reading(tmp_path):
    """An .npy header may declare any shape: refused before an allocation of that size."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (100_000, 1024, 1024)}
    path = tmp_path / "huge.npz"
    import io
    import zipfile
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue() + b"\0" * 64)
        z.writestr("labels.npy", buf.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="larger than the 1,000,000 images"):
            load_dataset("npz", path)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
        tracemalloc.stop()
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="huge.npz: cannot read this npz dataset"):
        load_dataset("npz", path)
    assert npz.MAX_SIDE == 1024


# End to end
# ---------------------------------------------------------------------------------------------

def test_folder_trains_packs_and_evaluates_from_the_command_line(tmp_path):
    root = tmp_path / "imgs"
    for k, c in enumerate(("dark", "light")):  # two easy classes: grey levels apart
        (root / c).mkdir(parents=True)
        for i in range(10):
            level = 40 + 160 * k + RNG.integers(0, 30, (12, 12, 3))
            Image.fromarray(level.astype(np.uint8)).save(root / c / f"{i}.png")

    def pemn(*args):
        r = subprocess.run([sys.executable, "-m", "pemn.cli", *args], cwd=tmp_path,
                           capture_output=True, text=True, env={**os.environ,
                                                                 "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    pemn("train", "data.dataset=folder", f"data.root={root}", "data.image_size=8",
         "model.name=mlp", "optim.epochs=2", "optim.batch_size=4", "optim.lr=0.01",
         "out_dir=runs", "name=own", "--no-progress")
    assert "wrote runs/own/model.pemn" in pemn("pack", "runs/own")
    from pemn import load
    header = load(tmp_path / "runs/own/model.pemn").pemn_header.dataset
    assert header["class_names"] == ["dark", "light"] and header["input_shape"] == [3, 8, 8]
    result = json.loads(pemn("eval", "runs/own/model.pemn", "--data-root", str(root), "--json"))
    assert (result["dataset"], result["num_images"]) == ("folder", 4)
    assert result["accuracy"] == json.loads(pemn("eval", "runs/own", "--json"))["accuracy"]
