"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), bundled with sklearn.

No download is needed, which makes it the dataset for fast end-to-end tests. Pixel values
0..16 are rescaled to uint8 0..255 (``round(v * 255 / 16)``). The dataset has no official
split: a ``numpy.random.RandomState(SPLIT_SEED)`` permutation puts its last 20% (359 images)
in the test set.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import DatasetError, reader_errors

__all__ = ["load_digits"]

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits():
    """Returns ``(train_images, train_labels, test_images, test_labels)``.

    Images are uint8 (N, 1, 8, 8); labels int64 in [0, 10). Train has 1,438 images, test 359.

    Raises:
        DatasetError: scikit-learn is not installed, or its bundled file cannot be read.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: "
                           "pip install 'pemn[digits]'") from None
    with reader_errors("scikit-learn's bundled digits", "dataset"):
        bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    # RandomState, not default_rng: numpy freezes its stream, so the split never changes.
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    num_test = int(round(TEST_FRACTION * len(labels)))
    train, test = perm[:-num_test], perm[-num_test:]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in
                 (images[train], labels[train], images[test], labels[test]))
