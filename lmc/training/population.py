"""The vmapped population step: K siblings trained by one jitted step.

The children of a spawn (or K independent inits) differ only in their seeds, so their
train steps have identical shapes: stacking their states on a leading axis and
`jax.vmap`-ing the one train step trains all of them with one kernel launch per op
(see benchmarks/bench_population.py). The loop (`lmc.training.loop`) does the rest,
exactly as for one network.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lmc.models import conv


def stack(trees: Sequence):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, k: int) -> list:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def population_step(step_fn):
    """vmap of a train step over (state, x, y, aug key) stacked on axis 0, jitted with
    the stacked state donated.

    Traced with XLA's convolution weight gradient: lmc's tap gradient
    (`lmc.models.conv`) is a `linear_call`, which JAX cannot batch."""
    batched = jax.vmap(step_fn)

    def step(*args):
        with conv.weight_grad_path("xla"):
            return batched(*args)

    return jax.jit(step, donate_argnums=(0,))
