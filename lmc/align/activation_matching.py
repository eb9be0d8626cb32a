"""Activation matching (Git Re-Basin, Ainsworth et al. 2022, section 3.1).

For each permutation, correlate A's and B's hidden features over training batches
and solve one linear assignment on the summed correlation matrices. The features are
found in the traced program (`lmc.align.trace`): the activations that feed a
contraction along the permutation's axis (post-nonlinearity, as in the paper), so no
model-specific hooks are needed. Statistics are streamed with one jitted step that
evaluates both models; the per-feature means and standard deviations it gathers are
returned for REPAIR-style corrections (Jordan et al. 2022).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from lmc.align.checks import check_finite, check_same_structure
from lmc.align.rules import CALL_PRIMITIVES
from lmc.align.spec import PermutationSpec, check_sizes, resolve
from lmc.align.trace import analyze_function, analyze_model, model_shapes, tree_paths
from lmc.align.weight_matching import solve_assignment
from lmc.errors import UserError

CALLS = CALL_PRIMITIVES


def eval_with_probes(closed, args, wanted: set) -> dict:
    """Evaluate a ClosedJaxpr and return the values of the `wanted` (context, var) keys.

    Call-like equations on the way to a wanted value are interpreted (their inner
    values get keys with the equation's index appended to the context); everything
    else is bound as usual. Meant to run under `jax.jit`.
    """
    captured: dict = {}
    prefixes = {ctx[:k] for ctx, _ in wanted for k in range(1, len(ctx) + 1)}

    def run(jaxpr, consts, vals, context):
        env = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def write(v, x):
            env[v] = x
            if (context, v) in wanted:
                captured[(context, v)] = x

        for v, x in zip(jaxpr.constvars, consts, strict=True):
            write(v, x)
        for v, x in zip(jaxpr.invars, vals, strict=True):
            write(v, x)
        for i, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            if (*context, i) in prefixes and eqn.primitive.name in CALLS and inner is not None:
                outs = run(
                    getattr(inner, "jaxpr", inner),
                    getattr(inner, "consts", ()),
                    invals,
                    (*context, i),
                )
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                outs = outs if eqn.primitive.multiple_results else [outs]
            for v, x in zip(eqn.outvars, outs, strict=True):
                write(v, x)
        return [read(v) for v in jaxpr.outvars]

    run(closed.jaxpr, closed.consts, args, ())
    return captured


def _features(x, axis: int, inner: int, n: int):
    """(samples, n): the permuted factor of `axis` last, everything else is samples."""
    shape = x.shape
    axis %= x.ndim
    x = x.reshape((*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :]))
    return jnp.moveaxis(x, axis + 1, -1).reshape((-1, n)).astype(jnp.float32)


def _batch_stats(a, b):
    """Centered statistics of one batch (merged with Chan et al.'s parallel formulas)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    da, db = a - mean_a, b - mean_b
    return {
        "count": jnp.float32(a.shape[0]),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "m2_a": (da * da).sum(0),
        "m2_b": (db * db).sum(0),
        "cross": da.T @ db,
    }


def _merge(s, t):
    n = s["count"] + t["count"]
    w = s["count"] * t["count"] / jnp.maximum(n, 1.0)
    dma, dmb = t["mean_a"] - s["mean_a"], t["mean_b"] - s["mean_b"]
    frac = t["count"] / jnp.maximum(n, 1.0)
    return {
        "count": n,
        "mean_a": s["mean_a"] + dma * frac,
        "mean_b": s["mean_b"] + dmb * frac,
        "m2_a": s["m2_a"] + t["m2_a"] + dma * dma * w,
        "m2_b": s["m2_b"] + t["m2_b"] + dmb * dmb * w,
        "cross": s["cross"] + t["cross"] + jnp.outer(dma, dmb) * w,
    }


def _is_model(obj) -> bool:
    return all(hasattr(obj, a) for a in ("module", "init", "apply"))


def _shape_struct(x) -> jax.ShapeDtypeStruct:
    """The input's shape and its own dtype: token ids must stay integers (an embedding
    lookup of float ids is another program, or no program at all)."""
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype)


def _first_input(batch):
    if isinstance(batch, dict):
        for key in ("x", "image", "images", "inputs"):
            if key in batch:
                return batch[key]
        raise UserError(f"activation_matching: batch dict has no input key (keys {sorted(batch)})")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def activation_matching(
    spec: PermutationSpec,
    apply_fn_or_model: Callable | Any,
    params_a,
    params_b,
    batches: Iterable,
    *,
    max_batches: int | None = None,
):
    """Permutations of B's units maximizing the correlation of A's and B's activations.

    `apply_fn_or_model`: an `lmc.models` Model (then `params_*` are combined trees
    {'params', 'model_state'}, or params alone for models without state; eval mode is
    used) or any pure `apply_fn(params, x)`. `batches` yields inputs, or (x, y)
    tuples. Returns `(perms, info)`; `info['stats'][name]` lists, per activation site,
    the means and standard deviations of A and of aligned B (for REPAIR).
    """
    t0 = time.perf_counter()
    batches = iter(batches)
    try:
        first = next(batches)
    except StopIteration:
        raise UserError("activation_matching needs at least one batch") from None
    x0 = _shape_struct(_first_input(first))
    tree_a, tree_b = params_a, params_b
    model = apply_fn_or_model if _is_model(apply_fn_or_model) else None
    if model is not None:
        if "params" not in tree_a:
            tree_a, tree_b = ({"params": t, "model_state": {}} for t in (tree_a, tree_b))
        expected = [p for p, _ in tree_paths(model_shapes(model, x0)[0])]
        if [p for p, _ in tree_paths(tree_a)] != expected:
            raise UserError(
                "activation_matching: params_a does not match the model; for models "
                "with BatchNorm pass {'params': ..., 'model_state': ...} trees"
            )
    check_same_structure([tree_a, tree_b], ["params_a", "params_b"])
    check_finite(tree_a, "params_a")
    check_finite(tree_b, "params_b")

    steps: dict = {}  # one traced program (and jitted step) per input shape

    def step_for(x):
        key = (x.shape, str(x.dtype))
        if key not in steps:
            if model is not None:
                analysis = analyze_model(model, x)
            else:
                analysis = analyze_function(apply_fn_or_model, tree_a, x)
            steps[key] = _make_step(analysis, _sites(spec, analysis))
        return steps[key]

    stats, count = None, 0
    for batch in itertools.chain([first], batches):
        if max_batches is not None and count >= max_batches:
            break
        x = jnp.asarray(_first_input(batch))
        step, sites = step_for(x)
        if not sites:
            break
        stats = step(_zero_stats(sites) if stats is None else stats, tree_a, tree_b, x)
        count += 1
    sizes = check_sizes(*resolve(spec, tree_a))
    if not stats:
        warnings.warn(
            "activation matching found no activations to correlate (empty spec?); "
            "returning identity permutations",
            stacklevel=2,
        )
        return {n: jnp.arange(s) for n, s in sizes.items()}, {
            "stats": {},
            "batches": 0,
            "wall_s": time.perf_counter() - t0,
        }
    perms, info_stats = {}, {}
    for name, per_site in stats.items():
        corr = sum(_correlation(s) for s in per_site)
        perms[name] = jnp.asarray(solve_assignment(corr))
        info_stats[name] = [_site_stats(s, perms[name]) for s in per_site]
    for name in spec.axes:  # permutations without activations in the program
        if name not in perms:
            perms[name] = jnp.arange(sizes[name])
    return perms, {"stats": info_stats, "batches": count, "wall_s": time.perf_counter() - t0}


def _correlation(s) -> np.ndarray:
    std_a = np.sqrt(np.asarray(s["m2_a"], np.float64))
    std_b = np.sqrt(np.asarray(s["m2_b"], np.float64))
    return np.asarray(s["cross"], np.float64) / (np.outer(std_a, std_b) + 1e-12)


def _site_stats(s, perm) -> dict:
    count = max(float(s["count"]), 1.0)
    perm = np.asarray(perm)
    std = lambda m2: np.sqrt(np.asarray(m2) / count)  # noqa: E731
    return {
        "mean_a": np.asarray(s["mean_a"]),
        "std_a": std(s["m2_a"]),
        "mean_b": np.asarray(s["mean_b"])[perm],
        "std_b": std(s["m2_b"])[perm],
        "count": count,
    }


def _make_step(analysis, sites):
    """The jitted accumulator for one traced program: (stats, tree_a, tree_b, x) -> stats."""
    wanted = {key for entries in sites.values() for key, _, _, _ in entries}

    def probe(tree, x):
        leaves = [leaf for _, leaf in tree_paths(tree)] + jax.tree.leaves(x)
        return eval_with_probes(analysis.jaxpr, leaves, wanted)

    @jax.jit
    def step(stats, tree_a, tree_b, x):
        fa, fb = probe(tree_a, x), probe(tree_b, x)
        new = {}
        for name, entries in sites.items():
            new[name] = []
            for i, (key, axis, inner, n) in enumerate(entries):
                s = _batch_stats(
                    _features(fa[key], axis, inner, n), _features(fb[key], axis, inner, n)
                )
                new[name].append(_merge(stats[name][i], s))
        return new

    return step, sites


def _zero_stats(sites) -> dict:
    """Empty running statistics (count 0), so the jitted step has one signature."""
    zero = lambda n: {
        "count": jnp.float32(0),
        "mean_a": jnp.zeros(n),
        "mean_b": jnp.zeros(n),  # noqa: E731
        "m2_a": jnp.zeros(n),
        "m2_b": jnp.zeros(n),
        "cross": jnp.zeros((n, n)),
    }
    return {name: [zero(n) for *_, n in entries] for name, entries in sites.items()}


def _sites(spec: PermutationSpec, analysis) -> dict[str, list[tuple[Any, int, int, int]]]:
    """spec name -> [(probe key, axis, inner, size)], matching permutations by their axes."""
    by_ref = {r: name for name, refs in analysis.spec.axes.items() for r in refs}
    sites = {}
    for name, refs in spec.axes.items():
        found = {by_ref[r] for r in refs if r in by_ref}
        if len(found) != 1:
            raise UserError(
                f"activation matching: permutation {name!r} does not correspond to one "
                f"permutation of the traced program (found {sorted(found) or 'none'}); was the "
                "spec made for this model?"
            )
        derived = found.pop()
        n = analysis.spec.sizes[derived]
        sites[name] = [
            (key, axis, inner, n) for key, axis, inner in analysis.probes.get(derived, [])
        ]
        if not sites[name]:
            del sites[name]
    return sites
