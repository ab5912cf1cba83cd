"""Datasets as uint8 tensors, their metadata, a name registry, and a device-resident loader.
Nothing downloads; every reader failure is a :class:`DatasetError` (docs/DATASETS.md)."""
from __future__ import annotations

from . import datasets as _datasets  # noqa: F401  (registers the datasets)
from .files import DatasetError
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

__all__ = ["AugmentConfig", "BatchLoader", "Dataset", "DatasetError", "DatasetInfo", "dataset_info",
           "list_datasets", "load_dataset", "register_dataset", "register_files_dataset",
           "split_validation"]
