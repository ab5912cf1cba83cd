"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): no download, so the dataset of
fast end-to-end tests. Pixels 0..16 become uint8 ``round(v * 255 / 16)``; with no official
split, the last 20 % (359) of a ``RandomState(SPLIT_SEED)`` permutation is the test set.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import DatasetError, reader_errors

__all__ = ["load_digits"]

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits():
    """``(train_images, train_labels, test_images, test_labels)``: uint8 (N, 1, 8, 8) and int64;
    a DatasetError without scikit-learn."""
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
