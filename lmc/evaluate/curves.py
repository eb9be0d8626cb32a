"""Loss and error along the straight line between two networks, or another path.

One jitted function evaluates one batch for every alpha: the alphas are a
`lax.map` inside the trace (a scan, optionally vmapped in chunks of `alpha_chunk`),
and each network is interpolated inside it, so the only Python loop is over
fixed-shape batches and the whole curve compiles once per (model, batch shape).
The interpolation costs O(#params) per alpha and batch, against O(batch * #params)
for the forward pass, so a curve costs about as much as len(alphas) plain forward
passes (see benchmarks/curve_eval.py). A method whose networks between the endpoints
are not their weights' line (`lmc.align.continuous.circuit`) gives its own `path`: the same
evaluator, another function from (a, b, alpha) to the network at alpha.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError
from lmc.evaluate import metrics as metrics_lib
from lmc.evaluate import normalization
from lmc.evaluate.batching import padded_batches, splits_of
from lmc.evaluate.batching import stats_batches as draw_stats_batches
from lmc.evaluate.endpoints import (
    DEFAULT_NUM_ALPHAS,
    as_endpoint,
    check_alphas,
    check_finite,
    check_pair,
    lerp,
    map_alphas,
)
from lmc.evaluate.layer_hooks import affine_hook, layer_hooks
from lmc.evaluate.placement import Placement

DEFAULT_BATCH_SIZE = 512
DEFAULT_STATS_BATCHES = 10


def interpolation_curve(
    apply_fn,
    endpoint_a: dict,
    endpoint_b: dict,
    data,
    *,
    alphas=DEFAULT_NUM_ALPHAS,
    norm: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    train_subset: int | None = None,
    stats_batches: int = DEFAULT_STATS_BATCHES,
    repair_layers=None,
    alpha_chunk: int = 1,
    seed: int = 0,
    mesh=None,
    path=None,
) -> dict:
    """Mean cross-entropy and error of (1-a)*A + a*B for every alpha, on every split.

    Args:
      apply_fn: the model: an `lmc.models.Model`, a `flax.linen.Module` (its
        `__call__(x)` or `__call__(x, train)`), an `nnx.Module` or NNX
        `(graphdef, state)` (see `lmc.models.as_model`), a plain function
        `apply_fn(params, x) -> logits` (no model state), or a function `apply_fn(params,
        model_state, x, train) -> (logits, model_state)`. It is a static jit argument:
        pass the same (hashable) object every time to reuse the compiled evaluator.
      endpoint_a, endpoint_b: `{"params": ..., "model_state": ...}`, flax variables
        `{"params": ..., "batch_stats": ...}`, or raw params.
      data: an `lmc.data.Dataset`, or a dict split name -> (x, y) numpy arrays.
      alphas: number of evenly spaced alphas, or increasing floats from 0.0 to 1.0.
      norm: "none", "reset" or "repair" (see `normalization`); None or "auto" means
        "reset" for models with BatchNorm running statistics and "none" otherwise.
      batch_size: rows per batch (the last batch is padded and masked).
      train_subset: evaluate on the first N training examples only.
      stats_batches: full training batches (a fixed-seed permutation of the whole
        training set) used to recompute statistics for "reset" and "repair".
      repair_layers: layer keys for "repair" (see `layer_hooks`); None: the default.
      alpha_chunk: alphas vmapped together per scan step. 1 (a plain scan) keeps
        memory at one forward pass and matches `evaluate` bit for bit; larger
        chunks can help small models on accelerators.
      seed: seed of the statistics batches' permutation.
      mesh: an `lmc.runtime.sharding` mesh to run data-parallel on (batches split over its
        batch axes, rounded up to a multiple of their size); None: default device.
      path: `path(params_a, params_b, alpha) -> params` of the network at alpha, which
        `apply_fn` runs (its shape may differ from the endpoints'); traced, a static jit
        argument like `apply_fn`. None: `lerp`, the straight line. Needs norm "none".

    Returns:
      `{"alphas": [...], "<split>_loss": [...], "<split>_error": [...], ...}` (plain
      floats; errors are fractions of labels: of examples for classifiers, of tokens
      for (batch, time) targets), train before test for a Dataset. At alpha 0
      and 1 the values are the endpoints' own metrics, whatever `norm` (with a
      `path`, as far as its networks there compute the endpoints' functions).
    """
    apply_fn = as_apply_fn(apply_fn, "evaluate.interpolation_curve")
    a, b = as_endpoint(endpoint_a, "a"), as_endpoint(endpoint_b, "b")
    check_pair(a, b)
    alpha_values = check_alphas(alphas)
    if alpha_chunk < 1:
        raise UserError(f"alpha_chunk must be >= 1, got {alpha_chunk}")
    splits = splits_of(data, train_subset)
    norm = normalization.resolve_norm(norm, a["model_state"])
    if path is not None and norm != "none":
        raise UserError(f"norm={norm!r} interpolates along the straight line; a path needs 'none'")
    place = Placement(mesh)
    a, b = place.replicate(a), place.replicate(b)
    batches = []
    if norm != "none":
        if "train" not in splits:
            raise UserError(f"norm={norm!r} needs a 'train' split for its statistics")
        full_train = data.train_x if hasattr(data, "train_x") else splits["train"][0]
        size = place.stats_batch_size(min(batch_size, len(full_train)))
        batches = draw_stats_batches(full_train, size, stats_batches, seed)
    states, corrections = normalization.prepare(
        apply_fn, a, b, alpha_values, norm, batches, repair_layers, alpha_chunk, place
    )
    metrics = _evaluate_splits(
        apply_fn, a["params"], b["params"], alpha_values, states, corrections, splits,
        batch_size, alpha_chunk, place, path or lerp,
    )  # fmt: skip
    return {"alphas": alpha_values.tolist(), **{k: v.tolist() for k, v in metrics.items()}}


def evaluate(
    apply_fn,
    endpoint: dict,
    data,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    train_subset: int | None = None,
    mesh=None,
) -> dict:
    """Mean cross-entropy and error of one network: `{"train_loss": 0.01, ...}`.

    Runs the curve evaluator at the single alpha 0, so with the same `batch_size`
    and `train_subset` it returns exactly the values at the ends of every curve.
    """
    apply_fn = as_apply_fn(apply_fn, "evaluate.evaluate")
    e = as_endpoint(endpoint, "a")
    check_finite(e, "a")
    splits = splits_of(data, train_subset)
    place = Placement(mesh)
    params = place.replicate(e["params"])
    states = place.replicate(jax.tree.map(lambda s: np.asarray(s)[None], e["model_state"]))
    metrics = _evaluate_splits(
        apply_fn, params, params, np.zeros(1), states, {}, splits, batch_size, 1, place, lerp
    )
    return {k: float(v[0]) for k, v in metrics.items()}


def as_apply_fn(model, api: str = "lmc.evaluate"):
    """The evaluator's `apply_fn(params, model_state, x, train) -> (logits, model_state)`
    from any model lmc accepts (an `lmc.models.Model`, a `flax.linen.Module`, an
    `nnx.Module`; see `lmc.models.as_model`), such a function itself, or a plain
    `apply_fn(params, x) -> logits` (see `lmc.models.calling`)."""
    from lmc.models.calling import evaluator_fn

    return evaluator_fn(model, api)


def _evaluate_splits(
    apply_fn, params_a, params_b, alphas, states, corrections, splits, batch_size, alpha_chunk,
    place, path,
) -> dict[str, np.ndarray]:  # fmt: skip
    # One batch shape for all splits: one trace serves train and test.
    batch_size = place.eval_batch_size(min(batch_size, max(len(x) for x, _ in splits.values())))
    alphas_dev = place.replicate(np.asarray(alphas, np.float32))
    totals = {}
    for name, (x, y) in splits.items():
        loss_sum = place.replicate(np.zeros(len(alphas), np.float32))
        wrong = place.replicate(np.zeros(len(alphas), np.int32))
        for batch in padded_batches(x, y, batch_size):
            loss_sum, wrong = _eval_batch(
                apply_fn, params_a, params_b, alphas_dev, states, corrections,
                *place.batch(batch), loss_sum, wrong, alpha_chunk=alpha_chunk, path=path,
            )  # fmt: skip
        totals[name] = (loss_sum, wrong, int(np.prod(np.shape(y))))  # labels, not rows
    metrics = {}
    for name, (loss_sum, wrong, n) in place.to_host(totals).items():
        metrics[f"{name}_loss"] = np.asarray(loss_sum, np.float64) / n
        # Integer counts: errors are exact fractions, comparable across methods.
        metrics[f"{name}_error"] = np.asarray(wrong, np.float64) / n
    return metrics


@functools.partial(jax.jit, static_argnames=("apply_fn", "alpha_chunk", "path"))
def _eval_batch(apply_fn, params_a, params_b, alphas, states, corrections, x, y, mask,
                loss_sum, wrong, *, alpha_chunk, path=lerp):  # fmt: skip
    """Add one batch's summed loss and error count, for every alpha, to the totals."""

    def one(args):
        alpha, state, correction = args
        params = path(params_a, params_b, alpha)
        with layer_hooks(affine_hook(correction), keys=correction.keys()):
            logits, _ = apply_fn(params, state, x, False)
        # Labels may carry extra axes (a language model's (batch, time) targets): every
        # label position counts, padded rows none.
        loss = metrics_lib.cross_entropy(logits, y)
        miss = metrics_lib.wrong(logits, y)
        valid = mask.reshape(mask.shape + (1,) * (y.ndim - 1))
        return jnp.sum(jnp.where(valid, loss, 0.0)), jnp.sum(miss & valid, dtype=jnp.int32)

    batch_loss, batch_wrong = map_alphas(one, (alphas, states, corrections), alpha_chunk)
    return loss_sum + batch_loss, wrong + batch_wrong
