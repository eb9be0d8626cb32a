"""What an endpoint is, how a pair is checked, and the straight line between two.

An endpoint is a plain dict `{"params": ..., "model_state": ...}` (model_state is
optional and `{}` for models without BatchNorm): exactly what `Model.init`, the
trainer and the checkpoints hand around, so nothing here knows about Flax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError

DEFAULT_NUM_ALPHAS = 25


def as_endpoint(endpoint, name: str) -> dict:
    """Normalize `endpoint` to `{"params", "model_state"}`: it may be that form, flax
    variables `{"params", "batch_stats"}`, or raw params (a dict without "params")."""
    if not isinstance(endpoint, Mapping):
        raise UserError(
            f"endpoint {name} must be a dict (params, {{'params', 'model_state'}} or flax "
            f"variables), got {type(endpoint).__name__}"
        )
    if "params" not in endpoint:
        return {"params": endpoint, "model_state": {}}
    extra = set(endpoint) - {"params", "model_state", "batch_stats"}
    if extra or {"model_state", "batch_stats"} <= set(endpoint):
        raise UserError(
            f"endpoint {name} has keys {sorted(endpoint)}; give {{'params', 'model_state'}}, "
            "flax variables {'params', 'batch_stats'}, or the params alone"
        )
    state = endpoint.get("model_state") or endpoint.get("batch_stats") or {}
    return {"params": endpoint["params"], "model_state": state}


def check_pair(a: dict, b: dict) -> None:
    """Both endpoints finite, same tree structure, same leaf shapes; errors name the path."""
    for name, endpoint in (("a", a), ("b", b)):
        check_finite(endpoint, name)
    for part in ("params", "model_state"):
        flat_a = dict(jax.tree_util.tree_flatten_with_path(a[part])[0])
        flat_b = dict(jax.tree_util.tree_flatten_with_path(b[part])[0])
        if flat_a.keys() != flat_b.keys():
            only_a = sorted(jax.tree_util.keystr(k) for k in flat_a.keys() - flat_b.keys())
            only_b = sorted(jax.tree_util.keystr(k) for k in flat_b.keys() - flat_a.keys())
            raise UserError(
                f"endpoints a and b have different {part} trees: only in a {only_a[:5]}, "
                f"only in b {only_b[:5]}; both must come from the same model"
            )
        for path, leaf_a in flat_a.items():
            shape_a, shape_b = np.shape(leaf_a), np.shape(flat_b[path])
            if shape_a != shape_b:
                raise UserError(
                    f"{part}{jax.tree_util.keystr(path)} has shape {shape_a} in endpoint a but "
                    f"{shape_b} in endpoint b; both must come from the same model config"
                )


def check_finite(endpoint: dict, name: str) -> None:
    """A NaN/Inf weight makes every interpolated network NaN too; say which one up front."""
    for part in ("params", "model_state"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(endpoint[part])[0]:
            leaf = np.asarray(leaf)
            if np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)):
                bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
                raise UserError(
                    f"endpoint {name}: {part}{jax.tree_util.keystr(path)} has {bad} non-finite "
                    f"value(s) (NaN/Inf); the checkpoint is diverged, pick an earlier one"
                )


def check_alphas(alphas) -> np.ndarray:
    """An int n means n evenly spaced alphas; a sequence must run from 0 to 1, increasing.

    Both ends are required because every barrier is measured against f(0) and f(1).
    """
    if isinstance(alphas, int | np.integer) and not isinstance(alphas, bool):
        if alphas < 3:
            raise UserError(f"need at least 3 alphas (0, a midpoint and 1), got {int(alphas)}")
        return np.linspace(0.0, 1.0, int(alphas), dtype=np.float64)
    if not isinstance(alphas, Sequence | np.ndarray):
        raise UserError(f"alphas must be an int or a sequence of floats, got {alphas!r}")
    values = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if values.size < 3:
        raise UserError(f"need at least 3 alphas (0, a midpoint and 1), got {values.tolist()}")
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise UserError(f"alphas must lie in [0, 1], got {values.tolist()}")
    if values[0] != 0.0 or values[-1] != 1.0 or np.any(np.diff(values) <= 0):
        raise UserError(
            "alphas must increase strictly from 0.0 to 1.0 (barriers compare against both "
            f"endpoints), got {values.tolist()}"
        )
    return values


def lerp(tree_a, tree_b, alpha):
    """(1 - alpha) * a + alpha * b.

    Written in this form (not a + alpha * (b - a)) so that alpha = 0 and alpha = 1
    reproduce the endpoints bit for bit.
    """
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, tree_a, tree_b)


def lerp_stacked(tree_a, tree_b, alphas):
    """`lerp` for every alpha at once; leaves gain a leading alpha axis."""
    alphas = jnp.asarray(alphas, jnp.float32)

    def one(a, b):
        w = alphas.reshape((-1,) + (1,) * jnp.ndim(a))
        return (1 - w) * a + w * b

    return jax.tree.map(one, tree_a, tree_b)


def map_alphas(fn, xs, alpha_chunk: int = 1):
    """`fn` over the leading (alpha) axis of `xs` inside a trace.

    A scan by default: one network in memory at a time, and each step is the same
    computation as a single forward pass. Chunks > 1 vmap that many alphas per step.
    """
    return jax.lax.map(fn, xs, batch_size=alpha_chunk if alpha_chunk > 1 else None)
