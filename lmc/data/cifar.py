"""CIFAR-10/100 from the standard python-pickle batches (`cifar-10-batches-py`)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from lmc.data.dataset import Dataset, normalize
from lmc.errors import UserError

_LAYOUT = {
    # name -> (env var, train files, test files, label key, classes)
    "cifar10": (
        "LMC_CIFAR10_DIR",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("LMC_CIFAR100_DIR", ["train"], ["test"], b"fine_labels", 100),
}
_HOW = (
    "download and untar the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(cifar-10-python.tar.gz / cifar-100-python.tar.gz) and point config.data.dir at the "
    "extracted directory"
)


def _read(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int32)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as e:
        raise UserError(f"cannot read CIFAR batch {path}: {e!r}; the file is corrupt") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(
            f"CIFAR batch {path}: data shape {data.shape} with {len(labels)} labels; expected "
            "(N, 3072) with N labels"
        )
    # Stored as N x (3 x 32 x 32) channel-major; models take NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(name: str, directory: str | None = None) -> Dataset:
    env_var, train_files, test_files, label_key, classes = _LAYOUT[name]
    chosen = directory or os.environ.get(env_var)
    if not chosen:
        raise UserError(f"dataset {name!r} needs config.data.dir or ${env_var}. To get it, {_HOW}.")
    path = Path(chosen)
    missing = [f for f in train_files + test_files if not (path / f).exists()]
    if missing:
        raise UserError(f"dataset {name!r}: {path} lacks {', '.join(missing)}. To get it, {_HOW}.")
    train = [_read(path / f, label_key) for f in train_files]
    test = [_read(path / f, label_key) for f in test_files]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    test_x = np.concatenate([x for x, _ in test])
    test_y = np.concatenate([y for _, y in test])
    train_x, test_x = normalize(train_x, test_x)
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes=classes, augmentable=True)
