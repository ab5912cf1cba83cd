"""Datasets as uint8 tensors, their metadata, a name registry, and a device-resident loader.

``dataset_info(name)`` gives a dataset's metadata, ``load_dataset(name, root)`` a
:class:`Dataset` of uint8 (N, C, H, W) images and int64 labels. Nothing downloads: a missing
file's error says how to get it. Every reader failure, hostile files included, is a
:class:`DatasetError`.

| name              | images           | classes | files looked for                               |
|-------------------|------------------|---------|------------------------------------------------|
| ``fashion_mnist`` | 60k/10k 1x28x28  | 10      | IDX files in root, else                        |
|                   |                  |         | /usr/share/datasets/fashion-mnist, else        |
|                   |                  |         | ./data/fashion_mnist                           |
| ``mnist``         | 60k/10k 1x28x28  | 10      | IDX files in root, else ./data/mnist           |
| ``cifar10``       | 50k/10k 3x32x32  | 10      | root/cifar-10-batches-py (root: ./data)        |
| ``cifar100``      | 50k/10k 3x32x32  | 100     | root/cifar-100-python                          |
| ``tiny_imagenet`` | 100k/10k 3x64x64 | 200     | root/tiny-imagenet-200 (test = official val)   |
| ``digits``        | 1438/359 1x8x8   | 10      | bundled with scikit-learn                      |
| ``folder``        | yours, resized   | folders | root/<class>/*.png, *.jpg (or train/, test/)   |
| ``npz``           | yours, uint8     | labels  | the .npz file root                             |

``folder`` and ``npz`` read their classes, mean and std from the files (the training split);
``load_dataset("folder", root, channels=1, image_size=28)`` converts the images.
"""
from __future__ import annotations

from . import datasets as _datasets  # noqa: F401  (registers the datasets above)
from .errors import DatasetError
from .loader import AugmentConfig, BatchLoader
from .registry import (
    Dataset,
    DatasetInfo,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    register_files_dataset,
    split_validation,
)

__all__ = [
    "AugmentConfig", "BatchLoader", "Dataset", "DatasetError", "DatasetInfo", "dataset_info",
    "list_datasets", "load_dataset", "register_dataset", "register_files_dataset",
    "split_validation",
]
