"""Deterministic Gaussian clusters: a fast, dependency-free dataset for tests."""

import numpy as np

from lmc.data.dataset import Dataset


def load_synthetic(
    num_train: int = 512,
    num_test: int = 256,
    shape: tuple[int, ...] = (8, 8, 1),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 1.0,
) -> Dataset:
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    centers = rng.normal(size=(num_classes, dim)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, num_classes, size=n).astype(np.int32)
        x = centers[y] + noise * rng.normal(size=(n, dim)).astype(np.float32)
        return x.reshape((n, *shape)).astype(np.float32), y

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(num_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes=num_classes)
