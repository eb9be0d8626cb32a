"""The one in-memory form every data source returns."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset held in host memory.

    Images are float32 NHWC, already normalized (zero mean, unit variance per
    channel using train statistics), labels int32. Sources differ only in how they
    fill these arrays, so everything downstream (batching, augmentation, models)
    is source-agnostic.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    # Random crop + flip is standard for CIFAR-type natural images, wrong for digits.
    augmentable: bool = False
    kind: ClassVar[str] = "image"  # "text" for lmc.data.text.TextDataset

    def train_batch(
        self, data_seed: int, step: int, batch_size: int, process: int = 0, num_processes: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """This process's share of the global training batch at `step` (pure function)."""
        from lmc.data.order import process_batch_indices

        idx = process_batch_indices(
            data_seed, step, batch_size, self.num_train, process, num_processes
        )
        return self.train_x[idx], self.train_y[idx]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])


def normalize(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardize per channel with train statistics (uint8 or float input, NHWC)."""
    train_x = train_x.astype(np.float32)
    test_x = test_x.astype(np.float32)
    axes = tuple(range(train_x.ndim - 1))
    mean = train_x.mean(axis=axes, keepdims=True)
    std = train_x.std(axis=axes, keepdims=True) + 1e-6
    return (train_x - mean) / std, (test_x - mean) / std
