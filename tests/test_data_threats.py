"""Hostile dataset files of issue 23, each from its repro: refused with one DatasetError line
within 2 s and 300 MB of traced memory, and a valid multi-member gzip IDX file read in full."""
import gzip
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest

from pemn.data import DatasetError, cifar
from pemn.data.cifar import read_cifar_batch
from pemn.data.idx import load_idx_images


def _refused(fn, match, megabytes=300, seconds=2.0):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DatasetError, match=match) as err:
            fn()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < megabytes * 2**20 and elapsed < seconds, (peak, elapsed)
    assert "\n" not in str(err.value)


def test_cifar_labels_of_shared_nested_lists_are_refused_before_asarray(tmp_path):
    """Issue 23 (2): one label that is a list of shared lists is a few KB of pickle, and
    ``np.asarray`` would expand it to 10**8 integers (800 MB)."""
    inner = [0] * 1000
    labels = [[[inner] * 1000] * 100]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": labels},
                                  protocol=2))
    assert path.stat().st_size < 20_000
    _refused(lambda: read_cifar_batch(path), r"b'labels' must hold 1 integers, got a list of 1")


_STATES = {  # what BUILD is given: a __dict__ update, or slot state set with setattr
    "dict": b"}X\x01\x00\x00\x00xK\x01s",
    "slots": b"N}X\x0c\x00\x00\x00__defaults__)s\x86",
    "class": b"N}X\t\x00\x00\x00__class__cbuiltins\nbytes\ns\x86",
}


@pytest.mark.parametrize("state", list(_STATES))
@pytest.mark.parametrize("module, name", list(cifar._ALLOWED))
def test_cifar_pickle_cannot_change_the_reader(tmp_path, module, name, state):
    """Issue 23 (3): BUILD on a name a pickle resolves set attributes of the reader's own
    stand-ins (``__defaults__``, ``__class__``) for the rest of the process."""
    before = {key: (type(v), v._fn, getattr(v._fn, "__defaults__", None))
              for key, v in cifar._ALLOWED.items()}
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + _STATES[state] + b"b.")
    _refused(lambda: read_cifar_batch(path), "BUILD")
    after = {key: (type(v), v._fn, getattr(v._fn, "__defaults__", None))
             for key, v in cifar._ALLOWED.items()}
    assert after == before
    assert not hasattr(cifar._ALLOWED[(module, name)], "x")


def test_idx_gzip_of_several_members_is_read_in_full(tmp_path):
    """Issue 23 (7): ``cat a.gz b.gz`` is a valid gzip file; only its first member was read,
    so the file was refused as truncated. Cut anywhere, header included, it loads."""
    values = np.arange(60, dtype=np.uint8)
    good = bytes([0, 0, 8, 3]) + struct.pack(">3I", 3, 4, 5) + values.tobytes()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    for cut in (0, 2, 4, 9, 16, 40, len(good)):
        path.write_bytes(gzip.compress(good[:cut]) + gzip.compress(good[cut:]))
        assert load_idx_images(path).flatten().tolist() == values.tolist(), cut
    path.write_bytes(b"".join(gzip.compress(good[i:i + 7]) for i in range(0, len(good), 7)))
    assert load_idx_images(path).shape == (3, 1, 4, 5)
    path.write_bytes(gzip.compress(good) + b"\x00garbage")  # not a gzip member
    _refused(lambda: load_idx_images(path), "corrupt gzip")
