"""Fixed-shape batches for the jitted evaluators.

Every batch has the same shape so each jitted function traces once: the ragged
last batch is zero-padded and carries a mask. Statistics passes (RESET, REPAIR)
use only full batches, because padding would bias batch statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from lmc.errors import UserError


def splits_of(data, train_subset: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (x, y), "test": (x, y)}` from an `lmc.data.Dataset` or a mapping of splits.

    `train_subset` keeps the first N training examples: a fixed subset, so curves
    of different methods are measured on the same images.
    """
    if hasattr(data, "train_x"):
        splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    elif isinstance(data, Mapping):
        splits = {name: tuple(xy) for name, xy in data.items()}
    else:
        raise UserError(
            f"data must be an lmc.data.Dataset or a dict split -> (x, y), got {type(data).__name__}"
        )
    if train_subset is not None:
        if train_subset <= 0:
            raise UserError(f"train_subset must be positive, got {train_subset}")
        if "train" not in splits:
            raise UserError("train_subset given but the data has no 'train' split")
        x, y = splits["train"]
        splits["train"] = (x[:train_subset], y[:train_subset])
    for name, (x, y) in splits.items():
        if len(x) != len(y) or len(x) == 0:
            raise UserError(f"split {name!r}: {len(x)} inputs and {len(y)} labels; need equal, > 0")
    return splits


def padded_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield `(x, y, mask)` batches of exactly `batch_size` rows, in order."""
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        xb, yb = np.asarray(x[start:stop]), np.asarray(y[start:stop])
        valid = len(xb)
        if valid < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - valid, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - valid, *yb.shape[1:]), yb.dtype)])
        yield xb, yb, np.arange(batch_size) < valid


def stats_batches(x: np.ndarray, batch_size: int, num_batches: int, seed: int) -> list[np.ndarray]:
    """Up to `num_batches` full batches of a fixed random permutation of `x`.

    A permutation (not the first rows) because some datasets are stored sorted by
    class, and batch statistics of a one-class batch are not population statistics.
    """
    if num_batches <= 0:
        raise UserError(f"stats_batches must be positive, got {num_batches}")
    batch_size = min(batch_size, len(x))
    order = np.random.default_rng(seed).permutation(len(x))
    count = min(num_batches, len(x) // batch_size)
    return [np.asarray(x[order[i * batch_size : (i + 1) * batch_size]]) for i in range(count)]
