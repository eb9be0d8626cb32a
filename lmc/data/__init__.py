"""Data sources, step-indexed batch order and on-device augmentation.

`load(name, ...)` returns a `Dataset` (NHWC float32 arrays in host memory) for:
digits, fashion_mnist, mnist, kmnist, cifar10, cifar100, tfds:<name>, synthetic.
"""

from __future__ import annotations

from lmc.data.augment import crop_and_flip
from lmc.data.dataset import Dataset
from lmc.data.order import batch_indices, epoch_permutation, process_batch_indices, steps_per_epoch
from lmc.errors import UserError

IMAGE_SOURCES = ("digits", "fashion_mnist", "mnist", "kmnist", "cifar10", "cifar100", "synthetic")


def load(name: str, directory: str | None = None, **options) -> Dataset:
    """Load dataset `name`; `directory` overrides the default location where one applies."""
    if name == "digits":
        from lmc.data.digits import load_digits

        return load_digits()
    if name in ("fashion_mnist", "mnist", "kmnist"):
        from lmc.data.idx import load_idx_dataset

        return load_idx_dataset(name, directory)
    if name in ("cifar10", "cifar100"):
        from lmc.data.cifar import load_cifar

        return load_cifar(name, directory)
    if name == "synthetic":
        from lmc.data.synthetic import load_synthetic

        return load_synthetic(**options)
    if name.startswith("tfds:"):
        from lmc.data.tfds_source import load_tfds

        return load_tfds(name[len("tfds:") :], data_dir=directory)
    if name.startswith("text:"):
        from lmc.data.text import load_text

        return load_text(name[len("text:") :], directory, **options)
    valid = ", ".join((*IMAGE_SOURCES, "tfds:<name>", "text:<code|prose|mixed|dir|tfds:name>"))
    raise UserError(f"unknown dataset {name!r}; valid datasets: {valid}")


__all__ = [
    "Dataset",
    "load",
    "batch_indices",
    "process_batch_indices",
    "epoch_permutation",
    "steps_per_epoch",
    "crop_and_flip",
]
