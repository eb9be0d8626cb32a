"""Where the evaluator's arrays live: the default device, or data-parallel on a mesh.

Without a mesh everything goes to the default device. With an `lmc.runtime.sharding` mesh,
networks and statistics are replicated and every batch is split over the batch axes
(`sharding.shard_host_batch`: each process places its own rows of a batch that every
process holds in full), so the same jitted functions run data-parallel: XLA turns
the per-batch sums and BatchNorm/REPAIR batch moments into all-reduces, so the
statistics are those of the whole global batch, as on one device.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: object = None  # a jax.sharding.Mesh with lmc.runtime.sharding's batch axes, or None

    @property
    def ways(self) -> int:
        """How many devices a batch is split over."""
        if self.mesh is None:
            return 1
        from lmc.runtime import sharding

        return sharding.batch_devices(self.mesh)

    def eval_batch_size(self, batch_size: int) -> int:
        """Padded batches can grow to a multiple of the device count."""
        return -(-batch_size // self.ways) * self.ways

    def stats_batch_size(self, batch_size: int) -> int:
        """Statistics batches cannot be padded: shrink to a multiple instead."""
        size = batch_size // self.ways * self.ways
        if size == 0:
            raise UserError(
                f"statistics batches of {batch_size} rows cannot be split over {self.ways} "
                "devices; use a larger batch_size or fewer devices"
            )
        return size

    def replicate(self, tree):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        from lmc.runtime import sharding

        return sharding.replicate(tree, self.mesh)

    def batch(self, tree):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        from lmc.runtime import sharding

        return sharding.shard_host_batch(tree, self.mesh)

    def to_host(self, tree):
        """numpy copies; replicated results of a multi-process mesh are read locally."""

        def get(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                if x.is_fully_replicated:
                    x = x.addressable_data(0)
                else:
                    from jax.experimental import multihost_utils

                    x = multihost_utils.process_allgather(x, tiled=True)
            return np.asarray(x)

        return jax.tree.map(get, tree)
