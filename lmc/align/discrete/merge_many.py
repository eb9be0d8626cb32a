"""MergeMany (Git Re-Basin, Algorithm 3): align N models to their running mean.

Coordinate descent over the models: in a random order, each model is matched (weight
matching) to the mean of the other, already permuted, models. Stops when a pass over
all models changes no permutation. The merged model is the mean of the aligned
models (for BatchNorm models, reset the statistics of the result before use).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmc.align.discrete.weight_matching import weight_matching
from lmc.align.inputs import check_same_structure
from lmc.align.spec import PermutationSpec, apply_permutation, identity
from lmc.errors import UserError


def _mean(trees):
    return jax.tree.map(lambda *xs: sum(jnp.asarray(x, jnp.float32) for x in xs) / len(xs), *trees)


def merge_many(
    spec: PermutationSpec,
    models: Sequence,
    *,
    key=None,
    max_iter: int = 100,
    wm_max_iter: int = 100,
):
    """Merge N models (params, or combined trees for a combined spec).

    Returns `(merged, perms, info)`: `perms[i]` aligns model i to the others
    (`apply_permutation(spec, perms[i], models[i])`), `merged` is the mean of the
    aligned models, `info` has `passes` and `objective` (the summed weight-matching
    objectives after each pass).
    """
    t0 = time.perf_counter()
    if len(models) < 2:
        raise UserError(f"merge_many needs at least 2 models, got {len(models)}")
    check_same_structure(list(models), [f"models[{i}]" for i in range(len(models))])
    key = jax.random.key(0) if key is None else key
    n = len(models)
    perms = [identity(spec, models[0]) for _ in range(n)]
    aligned = [apply_permutation(spec, p, m) for p, m in zip(perms, models, strict=True)]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    objectives, passes = [], 0
    for it in range(max_iter):
        passes += 1
        changed, total = False, 0.0
        for i in rng.permutation(n):
            target = _mean([aligned[j] for j in range(n) if j != i])
            new, info = weight_matching(
                spec,
                target,
                models[i],
                max_iter=wm_max_iter,
                key=jax.random.fold_in(key, it * n + int(i)),
                init=perms[i],
            )
            total += info["objective"][-1] if info["objective"] else 0.0
            if any(not np.array_equal(new[k], perms[i][k]) for k in new):
                changed = True
                perms[i] = new
                aligned[i] = apply_permutation(spec, new, models[i])
        objectives.append(total)
        if not changed:
            break
    merged = _mean(aligned)
    return (
        merged,
        perms,
        {"passes": passes, "objective": objectives, "wall_s": time.perf_counter() - t0},
    )
