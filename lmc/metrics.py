"""Loss and error of a classifier, and a jitted pass over a whole dataset split."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example (or per-token) softmax cross-entropy in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def wrong(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)


def padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Fixed-size batches with a 0/1 mask, so the last ragged batch reuses the same trace."""
    n = len(x)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        mask = np.ones(len(xb), np.float32)
        if len(xb) < batch_size:
            pad = batch_size - len(xb)
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad, *yb.shape[1:]), yb.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        yield xb, yb, mask


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _sums(apply_fn, params, model_state, x, y, mask):
    logits, _ = apply_fn(params, model_state, x, False)
    per_example = mask.reshape(mask.shape + (1,) * (y.ndim - 1))
    ce = cross_entropy(logits, y) * per_example
    err = wrong(logits, y) * per_example
    count = jnp.sum(per_example * jnp.ones_like(ce))
    return jnp.stack([ce.sum(), err.sum(), count])


def evaluate(apply_fn, params, model_state, x, y, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and error fraction of the model over (x, y), in eval mode."""
    totals = np.zeros(3)
    for xb, yb, mask in padded_batches(x, y, batch_size):
        totals += np.asarray(_sums(apply_fn, params, model_state, xb, yb, mask))
    return {"loss": float(totals[0] / totals[2]), "error": float(totals[1] / totals[2])}
