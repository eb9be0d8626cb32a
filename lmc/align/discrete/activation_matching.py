"""Activation matching (Git Re-Basin, Ainsworth et al. 2022, section 3.1).

For each permutation, correlate A's and B's hidden features over training batches
and solve one linear assignment on the summed correlation matrices. The features are
found in the traced program (`lmc.align.tracing.trace`): the activations that feed a
contraction along the permutation's axis (post-nonlinearity, as in the paper), so no
model-specific hooks are needed. Statistics are streamed with one jitted step that
evaluates both models; the per-feature means and standard deviations it gathers are
returned for REPAIR-style corrections (Jordan et al. 2022).

Nested specs (`spec_from_model(..., nested=True)`: heads as units, one within-head
permutation per head) are matched as families, like `lmc.align.discrete.nested` does on
weights: a nested permutation's features keep the head axis, so its statistics are
the (heads * n) x (heads * n) cross-correlations of all within-head units. For each
pair (head i of A, head g of B) the best within-head assignment gives a head-pair
score; the head permutation is the assignment on those scores (plus the correlation of
the head permutation's own features), and each matched pair keeps its within-head
assignment. With activations fixed this maximizes the summed correlation exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from lmc.align.discrete.weight_matching import solve_assignment
from lmc.align.inputs import check_finite, check_same_structure
from lmc.align.spec import PermutationSpec, check_sizes, identity, nested_units, resolve
from lmc.align.tracing.calls import called
from lmc.align.tracing.trace import analyze_function, analyze_model, model_shapes, tree_paths
from lmc.errors import UserError


def eval_with_probes(closed, args, wanted: set) -> dict:
    """Evaluate a ClosedJaxpr and return the values of the `wanted` (context, var) keys.

    Call-like equations on the way to a wanted value are interpreted (their inner
    values get keys with the equation's index appended to the context); everything
    else is bound as usual. A scan on the way is replayed with `jax.lax.scan`, its
    body interpreted and the wanted values inside it stacked as extra outputs: they
    come back with a leading axis per enclosing scan. Meant to run under `jax.jit`.
    """
    prefixes = {ctx[:k] for ctx, _ in wanted for k in range(1, len(ctx) + 1)}
    # Values are collected under integer ids: scan outputs must be sortable pytrees.
    ids = {key: i for i, key in enumerate(wanted)}

    def run(jaxpr, consts, vals, context, sink):
        env = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def write(v, x):
            env[v] = x
            if (context, v) in ids:
                sink[ids[(context, v)]] = x

        for v, x in zip(jaxpr.constvars, consts, strict=True):
            write(v, x)
        for v, x in zip(jaxpr.invars, vals, strict=True):
            write(v, x)
        for i, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            here = (*context, i)
            call = called(eqn)
            if here in prefixes and eqn.primitive.name == "scan":
                outs = scan(eqn, invals, here, sink)
            elif here in prefixes and call is not None:
                outs = run(*call, invals, here, sink)
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                outs = outs if eqn.primitive.multiple_results else [outs]
            for v, x in zip(eqn.outvars, outs, strict=True):
                write(v, x)
        return [read(v) for v in jaxpr.outvars]

    def scan(eqn, invals, here, sink):
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]
        body = p["jaxpr"]

        def step(carry, x):
            captured: dict = {}
            outs = run(body.jaxpr, body.consts, [*consts, *carry, *x], here, captured)
            return list(outs[:ncarry]), (list(outs[ncarry:]), captured)

        carry, (ys, captured) = jax.lax.scan(
            step, list(init), list(xs), length=p["length"], reverse=p["reverse"]
        )
        sink.update(captured)
        return [*carry, *ys]

    captured: dict = {}
    run(closed.jaxpr, closed.consts, args, (), captured)
    return {key: captured[i] for key, i in ids.items() if i in captured}


def _features(x, site, mode: str):
    """(samples, n); (L, samples, n) for a stacked permutation; (samples, heads * n),
    head-major, for a nested one.

    `x` is the captured value, with one leading axis per scan enclosing the site. The
    permuted factor of the site's axis goes last; axes carrying other permutations
    are summed over (B's order along them is unknown), except a nested permutation's
    head axis (the first of them), which goes second to last; everything else is
    samples.
    """
    _, axis, inner, other, n, lead = site
    ndim = x.ndim - lead
    axis, other = axis % ndim + lead, tuple(k % ndim + lead for k in other)
    head = other[0] if mode == "nested" else None
    summed = other[1:] if mode == "nested" else other
    if summed:
        x = x.sum(axis=summed, keepdims=True)
    shape = x.shape
    x = x.reshape((*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :]))
    if mode == "nested":
        x = jnp.moveaxis(x, (head if head < axis else head + 2, axis + 1), (-2, -1))
        return x.reshape((-1, x.shape[-2] * n)).astype(jnp.float32)
    x = jnp.moveaxis(x, axis + 1, -1)
    if mode == "stacked":  # the site is inside the scan: its leading axis is the layer
        return x.reshape((x.shape[0], -1, n)).astype(jnp.float32)
    return x.reshape((-1, n)).astype(jnp.float32)


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


def _as_model(obj):
    """An `lmc.models.Model` for a Model or a flax.linen.Module; None for a function."""
    from lmc.models import as_model, is_model
    from lmc.models.calling import check_plain_fn

    if is_model(obj):
        return as_model(obj)
    check_plain_fn(obj, 2, "align.activation_matching")  # apply_fn(params, x)
    return None


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
    the means and standard deviations of A and of aligned B (for REPAIR); (heads, n)
    arrays for a nested permutation. A nested `spec` (heads as units, see
    `spec_from_model(..., nested=True)`) is matched head pair by head pair (module
    docstring).
    """
    t0 = time.perf_counter()
    batches = iter(batches)
    try:
        first = next(batches)
    except StopIteration:
        raise UserError("activation_matching needs at least one batch") from None
    x0 = _shape_struct(_first_input(first))
    tree_a, tree_b = params_a, params_b
    model = _as_model(apply_fn_or_model)
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

    # On the device once: host arrays would be copied again by every step. (Reading
    # host trees per call, A and B in separate calls, was measured to raise the peak
    # on the CPU backend: A's activations then leave the call whole.)
    tree_a, tree_b = jax.device_put((tree_a, tree_b))
    nested = bool(nested_units(spec))
    steps: dict = {}  # one traced program (and jitted step) per input shape

    def step_for(x):
        key = (x.shape, str(x.dtype))
        if key not in steps:
            if model is not None:
                analysis = analyze_model(model, x, nested=nested)
            else:
                analysis = analyze_function(apply_fn_or_model, tree_a, x, nested=nested)
            steps[key] = _make_step(analysis, _sites(spec, analysis), spec, tree_a, x)
        return steps[key]

    stats, count = None, 0
    for batch in itertools.chain([first], batches):
        if max_batches is not None and count >= max_batches:
            break
        x = jnp.asarray(_first_input(batch))
        step, sites = step_for(x)
        if not sites:
            break
        stats = step(_zero_stats(spec, sites) if stats is None else stats, tree_a, tree_b, x)
        # One step in flight: every queued step would hold its own activations.
        jax.block_until_ready(stats)
        count += 1
    sizes = check_sizes(*resolve(spec, tree_a))
    if not stats:
        warnings.warn(
            "activation matching found no activations to correlate (empty spec?); "
            "returning identity permutations",
            stacklevel=2,
        )
        return _identity(spec, sizes), {
            "stats": {},
            "batches": 0,
            "wall_s": time.perf_counter() - t0,
        }
    perms, info_stats = _solve_all(spec, stats)
    for name, p in _identity(spec, sizes).items():  # permutations without activations
        perms.setdefault(name, p)
    return perms, {"stats": info_stats, "batches": count, "wall_s": time.perf_counter() - t0}


def _mode(spec: PermutationSpec, name: str) -> str:
    if name in nested_units(spec):
        return "nested"
    return "stacked" if name in spec.stacks else "plain"


def _solve_all(spec: PermutationSpec, stats: dict) -> tuple[dict, dict]:
    """Permutations and per-site statistics from the accumulated statistics: head
    families first (`_solve_family`), then stacked and plain permutations."""
    perms, info_stats = {}, {}
    families: dict[str, list[str]] = {}
    for w, h in nested_units(spec).items():
        families.setdefault(h, []).append(w)
    for h, ws in families.items():
        if h in stats or any(w in stats for w in ws):
            perms.update(_solve_family(spec, stats, h, ws))
            for w in ws:
                if w in stats:
                    info_stats[w] = [_nested_site_stats(s, perms[h], perms[w]) for s in stats[w]]
    for name, per_site in stats.items():
        if name in info_stats:
            continue
        if name in perms:  # a head permutation, solved with its family
            info_stats[name] = [_site_stats(s, perms[name]) for s in per_site]
        elif name in spec.stacks:  # one assignment per layer, on that layer's statistics
            layers = range(spec.stacks[name])
            rows = [_solve([jax.tree.map(lambda v: v[i], s) for s in per_site]) for i in layers]  # noqa: B023
            perms[name] = np.stack(rows)
            info_stats[name] = [
                jax.tree.map(
                    lambda *xs: np.stack(xs),
                    *[_site_stats(jax.tree.map(lambda v: v[i], s), rows[i]) for i in layers],  # noqa: B023
                )
                for s in per_site
            ]
        else:
            perms[name] = _solve(per_site)
            info_stats[name] = [_site_stats(s, perms[name]) for s in per_site]
    return {k: jnp.asarray(v) for k, v in perms.items()}, info_stats


def _solve_family(spec: PermutationSpec, stats: dict, unit: str, nested: list[str]) -> dict:
    """The head permutation `unit` and its nested permutations maximizing the summed
    correlation: for each (head i of A, head g of B) the best within-head assignment
    of every nested permutation, then the assignment of heads on the head-pair scores
    (plus the correlation of the unit's own features); sigma[i, pi(i)] per head."""
    heads = spec.stacks[nested[0]]
    total = sum(_correlation(s) for s in stats[unit]) if unit in stats else np.zeros((heads, heads))
    sigma = {}
    for w in nested:
        if w not in stats:
            continue
        n = spec.sizes[w]
        corr = sum(_correlation(s) for s in stats[w]).reshape(heads, n, heads, n)
        sigma[w] = np.empty((heads, heads, n), np.intp)
        for i, g in itertools.product(range(heads), range(heads)):
            cols = solve_assignment(corr[i, :, g])
            sigma[w][i, g] = cols
            total[i, g] += corr[i, np.arange(n), g, cols].sum()
    pi = solve_assignment(total)
    return {unit: pi, **{w: sig[np.arange(heads), pi] for w, sig in sigma.items()}}


def _nested_site_stats(s, head_perm, perm) -> dict:
    """`_site_stats` of a nested site, as (heads, n) arrays: aligned B's unit (i, k) is
    B's unit perm[i, k] of head head_perm[i]."""
    perm = np.asarray(perm)
    heads, n = perm.shape
    flat = (np.asarray(head_perm)[:, None] * n + perm).ravel()
    out = _site_stats(s, flat)
    return {k: v.reshape(heads, n) if k != "count" else v for k, v in out.items()}


def _identity(spec: PermutationSpec, sizes) -> dict:
    return identity(dataclasses.replace(spec, sizes={**spec.sizes, **sizes}))


def _solve(per_site) -> np.ndarray:
    return solve_assignment(sum(_correlation(s) for s in per_site))


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


def _make_step(analysis, sites, spec, tree, x):
    """The jitted accumulator for one traced program: (stats, tree_a, tree_b, x) -> stats.

    Sites get their number of leading scan axes (from the shapes the probes come back
    with); a stacked permutation keeps only sites inside one scan, whose leading axis
    is the layer; a nested one only sites outside any scan that carry its head axis.
    """
    wanted = {key for entries in sites.values() for key, *_ in entries}

    def probe(tree, x):
        leaves = [leaf for _, leaf in tree_paths(tree)] + jax.tree.leaves(x)
        return eval_with_probes(analysis.jaxpr, leaves, wanted)

    order = list(wanted)  # probe keys hold jaxpr vars: not sortable as pytree keys
    shapes = dict(
        zip(
            order,
            jax.eval_shape(lambda t, x: [probe(t, x)[k] for k in order], tree, x),
            strict=True,
        )
    )
    sites = {
        name: [(*e, len(shapes[e[0]].shape) - len(e[0][1].aval.shape)) for e in entries]
        for name, entries in sites.items()
    }

    def keep(name, e) -> bool:
        mode = _mode(spec, name)
        if mode == "nested":
            heads = e[3][0] if e[3] and e[-1] == 0 else None
            return heads is not None and e[0][1].aval.shape[heads] == spec.stacks[name]
        return mode == "plain" or e[-1] == 1

    sites = {name: [e for e in entries if keep(name, e)] for name, entries in sites.items()}
    sites = {name: entries for name, entries in sites.items() if entries}

    @functools.partial(jax.jit, donate_argnums=0)  # statistics updated in place
    def step(stats, tree_a, tree_b, x):
        fa, fb = probe(tree_a, x), probe(tree_b, x)
        new = {}
        for name, entries in sites.items():
            mode = _mode(spec, name)
            merge = jax.vmap(_merge) if mode == "stacked" else _merge
            batch = jax.vmap(_batch_stats) if mode == "stacked" else _batch_stats
            new[name] = [
                merge(
                    stats[name][i],
                    batch(_features(fa[e[0]], e, mode), _features(fb[e[0]], e, mode)),
                )
                for i, e in enumerate(entries)
            ]
        return new

    return step, sites


def _zero_stats(spec, sites) -> dict:
    """Empty running statistics (count 0), so the jitted step has one signature."""

    def zero(name, n):
        mode = _mode(spec, name)
        lead = (spec.stacks[name],) if mode == "stacked" else ()
        n = n * spec.stacks[name] if mode == "nested" else n
        return {
            "count": jnp.zeros(lead, jnp.float32),
            "mean_a": jnp.zeros((*lead, n)),
            "mean_b": jnp.zeros((*lead, n)),
            "m2_a": jnp.zeros((*lead, n)),
            "m2_b": jnp.zeros((*lead, n)),
            "cross": jnp.zeros((*lead, n, n)),
        }

    return {name: [zero(name, e[4]) for e in entries] for name, entries in sites.items()}


def _sites(spec: PermutationSpec, analysis) -> dict[str, list[tuple]]:
    """spec name -> [(probe key, axis, inner, other axes, size)], matching permutations
    by their axes."""
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
        if (name in spec.stacks) != (derived in analysis.spec.stacks):
            raise UserError(
                f"activation matching: permutation {name!r} is "
                f"{'' if name in spec.stacks else 'not '}stacked in the spec but "
                f"{'' if derived in analysis.spec.stacks else 'not '}in the traced program"
            )
        n = analysis.spec.sizes[derived]
        sites[name] = [(*entry, n) for entry in analysis.probes.get(derived, [])]
        if not sites[name]:
            del sites[name]
    return sites
