"""Per-example loss and error of a classifier (or a per-token language model).

Whole-split evaluation lives in `lmc.train.evaluate_sharded` (training) and
`lmc.evaluate` (endpoints and curves)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example (or per-token) softmax cross-entropy in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def wrong(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)
