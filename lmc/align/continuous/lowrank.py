"""Capacity control for learned matching: a low-rank correction that is no symmetry.

Learned matching fits thousands of numbers on training data, so a low barrier after
it could come from the fit itself rather than from the symmetry. The control spends
about the same number of free parameters, the same batches, steps, optimizer and
interpolation weights on a correction that changes B's function: B' = B + Delta,
Delta = s * U V^T / sqrt(r) on every matrix-shaped leaf (viewed as the split of its
axes closest to square), s the leaf's RMS so that the generators' and the factors'
steps are of the same relative size. V starts at zero (B' = B at step 0), U is a
fixed-seed Gaussian and both are learned. The engine then measures the line from A
to B' against B''s own endpoint loss, so a correction that lowers the path by
damaging B shows up in B''s endpoint metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmc.align.continuous import learned
from lmc.align.spec import Path, get_leaf, set_leaves
from lmc.align.tracing.trace import tree_paths
from lmc.errors import UserError


def square_split(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of the leaf viewed as leading axes x trailing axes, the split whose
    sides are closest in size (an attention kernel (d, H, d_h) -> (d, H d_h))."""
    splits = [(int(np.prod(shape[:k])), int(np.prod(shape[k:]))) for k in range(1, len(shape))]
    return min(splits, key=lambda rc: abs(np.log(rc[0] / rc[1])))


def matrices(params) -> dict[Path, tuple[int, int]]:
    """Every leaf with at least two axes, as (rows, cols)."""
    return {p: square_split(np.shape(x)) for p, x in tree_paths(params) if np.ndim(x) >= 2}


def rank_for(params, budget: int) -> int:
    """The rank whose factors over all matrices hold about `budget` numbers (at least 1)."""
    per_rank = sum(r + c for r, c in matrices(params).values())
    return max(1, round(budget / per_rank))


def lowrank_control(
    params_a,
    params_b,
    loss_fn: Callable,
    batches: Iterable,
    *,
    rank: int,
    key=None,
    steps: int = 300,
    learning_rate: float = 1e-2,
    alpha: tuple[float, float] = (0.2, 0.8),
    holdout: Sequence = (),
    eval_every: int = 50,
):
    """B + Delta (rank `rank` per matrix) trained on the path loss of `learned_matching`
    with its budget; returns (params of B', info with `losses`, `steps`, `rank`,
    `free_parameters`)."""
    t0 = time.perf_counter()
    if int(rank) < 1:
        raise UserError(f"lowrank control: rank must be a positive integer, got {rank!r}")
    key = jax.random.key(0) if key is None else key
    pa = jax.tree.map(jnp.asarray, params_a)
    pb = jax.tree.map(jnp.asarray, params_b)
    shapes = matrices(params_b)
    if not shapes:
        raise UserError("lowrank control: the model has no matrix-shaped parameter to correct")
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    theta = {"/".join(p): {"u": jnp.asarray(rng.normal(size=(r, rank)), jnp.float32),
                           "v": jnp.zeros((c, rank), jnp.float32)}
             for p, (r, c) in shapes.items()}  # fmt: skip
    scale = {"/".join(p): float(np.sqrt(np.mean(np.square(get_leaf(params_b, p))))) + 1e-8
             for p in shapes}  # fmt: skip

    def corrected(theta):
        updates = {}
        for p in shapes:
            t, x = theta["/".join(p)], get_leaf(pb, p)
            delta = scale["/".join(p)] * (t["u"] @ t["v"].T) / np.sqrt(rank)
            updates[p] = x + delta.reshape(x.shape)
        return set_leaves(pb, updates)

    def path_loss(theta, batch, a):
        return loss_fn(jax.tree.map(lambda x, y: (1 - a) * x + a * y, pa, corrected(theta)), batch)

    lo, hi = (float(a) for a in alpha)
    alphas = np.asarray(jax.random.uniform(key, (int(steps),), minval=lo, maxval=hi))
    theta, info = learned.fit(path_loss, theta, batches, steps=steps, learning_rate=learning_rate,
                              alphas=alphas, holdout=holdout, eval_every=eval_every)  # fmt: skip
    out = jax.tree.map(np.asarray, corrected(theta))
    free = sum((r + c) * int(rank) for r, c in shapes.values())
    info.update(rank=int(rank), free_parameters=free, seconds=time.perf_counter() - t0)
    return out, info
