"""Step-indexed data order: the batch at step t is a pure function of (data_seed, t).

As in levanter, nothing about the iterator is stored: resuming at step t, or spawning
a child from the parent's step-k checkpoint, just asks for batch t. Each epoch is a
fresh permutation of the training set drawn from fold_in(data_seed, epoch); batches
never straddle epochs (the remainder of each epoch is dropped).
"""

from __future__ import annotations

import functools

import numpy as np

from lmc.errors import UserError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    if batch_size <= 0:
        raise UserError(f"config.batch_size must be positive, got {batch_size}")
    if batch_size > num_examples:
        raise UserError(
            f"config.batch_size={batch_size} exceeds the {num_examples} training examples"
        )
    return num_examples // batch_size


@functools.lru_cache(maxsize=8)
def epoch_permutation(data_seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of epoch `epoch`. Uses NumPy's Philox so it is cheap on the host and
    identical across platforms and JAX versions."""
    rng = np.random.Generator(np.random.Philox(key=[data_seed, epoch]))
    perm = rng.permutation(num_examples)
    perm.setflags(write=False)
    return perm


def batch_indices(data_seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """Indices into the training set of the global batch at `step`."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, within = divmod(step, per_epoch)
    perm = epoch_permutation(data_seed, epoch, num_examples)
    return perm[within * batch_size : (within + 1) * batch_size]


def process_batch_indices(
    data_seed: int, step: int, batch_size: int, num_examples: int, process: int, num_processes: int
) -> np.ndarray:
    """This process's contiguous share of the global batch (multi-host loading)."""
    if batch_size % num_processes:
        raise UserError(
            f"config.batch_size={batch_size} is not divisible by the {num_processes} processes"
        )
    idx = batch_indices(data_seed, step, batch_size, num_examples)
    share = batch_size // num_processes
    return idx[process * share : (process + 1) * share]
