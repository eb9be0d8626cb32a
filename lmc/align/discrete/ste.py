"""Straight-through estimator for permutation learning (Git Re-Basin, Algorithm 2).

Learn proxy weights W whose projection onto B's permutation orbit, P(W) =
apply_permutation(weight_matching(W, B), B), makes the midpoint (A + P(B)) / 2 a
low-loss model. The projection is not differentiable; the straight-through estimator
uses W + stop_gradient(P(B) - W) in the forward pass, so gradients reach W as if the
projection were the identity. W starts at A and the first projection is plain
weight matching; later projections are warm-started from the previous permutations,
so each step costs only a sweep or two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from lmc.align.discrete.weight_matching import weight_matching
from lmc.align.spec import PermutationSpec, apply_permutation
from lmc.errors import UserError


def ste(
    spec: PermutationSpec,
    params_a,
    params_b,
    loss_fn: Callable,
    batches: Iterable,
    *,
    key=None,
    steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    max_iter: int = 100,
    alpha: float | tuple[float, float] = 0.5,
    init=None,
):
    """Permutations of B learned with the straight-through estimator.

    `loss_fn(params, batch) -> scalar` is evaluated on the midpoint between A and the
    straight-through projection of B (params in the same tree layout as `params_a`).
    `batches` yields whatever `loss_fn` takes; `steps` caps how many are used.
    `optimizer` defaults to Adam(1e-3) as in the paper. Returns `(perms, info)` with
    `info['losses']` (midpoint loss per step), `info['init_objective']` (the weight
    matching warm start) and `sweeps` (total weight-matching sweeps).

    `alpha`: the interpolation weight the loss is taken at; a pair (lo, hi) draws it
    uniformly per step from `key` (the path loss of Theus et al. 2025's learned
    matching: weights around the midpoint, so the whole middle of the path gets
    low loss, not one point). `init`: permutations to start from instead of weight
    matching from the identity (e.g. the nested heads solution).
    """
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    optimizer = optimizer or optax.adam(1e-3)
    if isinstance(alpha, (tuple, list)):
        lo, hi = (float(a) for a in alpha)
        if not 0.0 <= lo <= hi <= 1.0:
            raise UserError(f"ste: alpha range must satisfy 0 <= lo <= hi <= 1, got {alpha}")
    else:
        lo = hi = float(alpha)
    perms, wm_info = weight_matching(
        spec, params_a, params_b, key=key, max_iter=max_iter, init=init
    )
    proxy = jax.tree.map(jnp.asarray, params_a)
    opt_state = optimizer.init(proxy)
    alpha_key = jax.random.fold_in(key, 2**31 - 1)

    @jax.jit
    def update(
        proxy, opt_state, params_a, projected, batch, t
    ):  # A as an argument: no big constants
        def midpoint_loss(w):
            straight = jax.tree.map(lambda w, p: w + jax.lax.stop_gradient(p - w), w, projected)
            mid = jax.tree.map(lambda a, b: (1 - t) * a + t * b, params_a, straight)
            return loss_fn(mid, batch)

        loss, grads = jax.value_and_grad(midpoint_loss)(proxy)
        updates, opt_state = optimizer.update(grads, opt_state, proxy)
        return optax.apply_updates(proxy, updates), opt_state, loss

    losses, sweeps = [], wm_info["sweeps"]
    for i, batch in enumerate(batches):
        if steps is not None and i >= steps:
            break
        if i > 0:  # step 0 projects A itself: the weight matching warm start
            perms, info = weight_matching(
                spec, proxy, params_b, key=jax.random.fold_in(key, i), max_iter=max_iter, init=perms
            )
            sweeps += info["sweeps"]
        projected = apply_permutation(spec, perms, params_b)
        t = jax.random.uniform(jax.random.fold_in(alpha_key, i), (), minval=lo, maxval=hi)
        proxy, opt_state, loss = update(proxy, opt_state, params_a, projected, batch, t)
        if not jnp.isfinite(loss):
            raise UserError(
                f"ste: the midpoint loss became {float(loss)} at step {i}; lower the learning rate"
            )
        losses.append(float(loss))
    if losses:  # the permutations of the final proxy
        perms, info = weight_matching(
            spec,
            proxy,
            params_b,
            key=jax.random.fold_in(key, len(losses)),
            max_iter=max_iter,
            init=perms,
        )
        sweeps += info["sweeps"]
    return perms, {
        "losses": losses,
        "steps": len(losses),
        "sweeps": sweeps,
        "init_objective": wm_info["objective"],
        "wall_s": time.perf_counter() - t0,
    }
