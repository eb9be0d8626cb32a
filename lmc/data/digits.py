"""scikit-learn's bundled 8x8 handwritten digits: real data that ships with the package."""

import numpy as np

from lmc.data.dataset import Dataset, normalize

# Fixed split: the first 1500 images (a shuffle with a fixed seed) train, the rest test.
_SPLIT_SEED = 0
_NUM_TRAIN = 1500


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    x, y = x[order], y[order]
    train_x, test_x = normalize(x[:_NUM_TRAIN], x[_NUM_TRAIN:])
    return Dataset("digits", train_x, y[:_NUM_TRAIN], test_x, y[_NUM_TRAIN:], num_classes=10)
