"""The registered datasets: metadata, default location and reader of each. Mean and std: each
training split's, per channel in 0..1 units; Tiny-ImageNet's are ImageNet's (as the authors')."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cifar import load_cifar10, load_cifar100
from .files import DatasetError, reader_errors
from .folder import load_folder
from .idx import load_idx_splits
from .npz import load_npz
from .registry import DatasetInfo, register_dataset, register_files_dataset
from .tiny_imagenet import load_tiny_imagenet

__all__ = ["DEFAULT_ROOT", "FASHION_MNIST_SYSTEM_DIR"]

DEFAULT_ROOT = Path("data")  # relative to the working directory
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist

_DIGITS = tuple(str(d) for d in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
            "Bag", "Ankle boot")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
            "truck")
_CIFAR100 = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())

FASHION_MNIST = DatasetInfo("fashion_mnist", channels=1, num_classes=10, image_size=28,
                            num_train=60000, num_test=10000, class_names=_FASHION,
                            mean=(0.2860,), std=(0.3530,))
MNIST = DatasetInfo("mnist", channels=1, num_classes=10, image_size=28, num_train=60000,
                    num_test=10000, class_names=_DIGITS, mean=(0.1307,), std=(0.3081,))
CIFAR10 = DatasetInfo("cifar10", channels=3, num_classes=10, image_size=32, num_train=50000,
                      num_test=10000, class_names=_CIFAR10, mean=(0.4914, 0.4822, 0.4465),
                      std=(0.2471, 0.2435, 0.2616))
CIFAR100 = DatasetInfo("cifar100", channels=3, num_classes=100, image_size=32, num_train=50000,
                       num_test=10000, class_names=_CIFAR100, mean=(0.5071, 0.4867, 0.4408),
                       std=(0.2675, 0.2565, 0.2761))
# class names are WordNet ids read from wnids.txt, so they are not known without the files
TINY_IMAGENET = DatasetInfo("tiny_imagenet", channels=3, num_classes=200, image_size=64,
                            num_train=100000, num_test=10000, class_names=None,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DIGITS = DatasetInfo("digits", channels=1, num_classes=10, image_size=8, num_train=1438,
                     num_test=359, class_names=_DIGITS, mean=(0.3054,), std=(0.3757,))


@register_dataset(DIGITS)
def _digits(root):
    """scikit-learn's bundled 8x8 digits, pixels 0..16 as ``round(v * 255 / 16)``; the test set
    is the last 20 % of a ``RandomState(0)`` permutation (there is no official split)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: "
                           "pip install 'pemn[digits]'") from None
    with reader_errors("scikit-learn's bundled digits", "dataset"):
        bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    # RandomState, not default_rng: numpy freezes its stream, so the split never changes.
    perm = np.random.RandomState(0).permutation(len(labels))
    train, test = perm[:-DIGITS.num_test], perm[-DIGITS.num_test:]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in
                 (images[train], labels[train], images[test], labels[test]))


register_dataset(FASHION_MNIST)(lambda root: load_idx_splits(
    "fashion_mnist", [root] if root else [FASHION_MNIST_SYSTEM_DIR, DEFAULT_ROOT / "fashion_mnist"],
    "run `sudo apt-get install dataset-fashion-mnist` or "))
register_dataset(MNIST)(lambda root: load_idx_splits("mnist", [root or DEFAULT_ROOT / "mnist"]))
register_dataset(CIFAR10)(lambda root: load_cifar10(root or DEFAULT_ROOT))
register_dataset(CIFAR100)(lambda root: load_cifar100(root or DEFAULT_ROOT))
register_dataset(TINY_IMAGENET)(lambda root: load_tiny_imagenet(root or DEFAULT_ROOT))
register_files_dataset("folder")(load_folder)
register_files_dataset("npz")(load_npz)
