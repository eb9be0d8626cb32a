"""Weight matching speed: `lmc.align.discrete.weight_matching` vs a plain eager NumPy reference.

The reference is a line-by-line NumPy port of Git Re-Basin's `weight_matching`
(recompute every cost matrix from scratch each step, no skipping; the objective
change of a step is read off the cost matrix, without dense permutation matrices), run on the same
spec and the same visiting order, so both must return the same permutations.

    python benchmarks/align_weight_matching.py            # MLP 3x2048 and ResNet-20 x8
    python benchmarks/align_weight_matching.py --quick    # small widths, seconds

Models are independently initialized (not trained). Times are medians of interleaved
repeats, as wall time and as CPU time of the process (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from benchmarks.common import interleaved_order
from lmc import align, models


def reference_weight_matching(spec, params_a, params_b, key, max_iter=100):
    """Git Re-Basin's Algorithm 1 in eager NumPy (unblocked specs over `params`)."""
    spec = spec.subtree("params") if spec.is_combined() else spec
    leaf = lambda tree, path: np.asarray(align.spec.get_leaf(tree, path))  # noqa: E731
    by_leaf = spec.by_leaf()
    sizes = {n: leaf(params_a, refs[0].path).shape[refs[0].axis] for n, refs in spec.axes.items()}
    perm = {n: np.arange(s) for n, s in sizes.items()}
    names = list(spec.axes)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())

    def permuted(path, except_ref):
        w = leaf(params_b, path)
        for name, r in by_leaf[path]:
            if r != except_ref:
                w = np.take(w, perm[name], axis=r.axis)
        return w

    sweeps = 0
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for p_ix in rng.permutation(len(names)):
            p = names[p_ix]
            n = sizes[p]
            cost = np.zeros((n, n))
            for r in spec.axes[p]:
                w_a = np.moveaxis(leaf(params_a, r.path), r.axis, 0).reshape((n, -1))
                w_b = np.moveaxis(permuted(r.path, r), r.axis, 0).reshape((n, -1))
                cost += w_a @ w_b.T
            _, ci = linear_sum_assignment(cost, maximize=True)
            # <cost, P> for a permutation matrix P is the sum of the entries P selects:
            # no dense n x n matrices needed.
            rows = np.arange(n)
            old = cost[rows, perm[p]].sum()
            new = cost[rows, ci].sum()
            progress = progress or new > old + 1e-12
            perm[p] = np.array(ci)
        if not progress:
            break
    return perm, sweeps


def case(name, num_classes, shape, seeds=(1, 2), **kw):
    """Spec and two independently initialized models (Flax init, compiled once)."""
    model = models.build(name, num_classes, **kw)
    x = jnp.zeros((1, *shape))
    spec = align.spec_from_model(model, x)
    init = jax.jit(model.init)
    pa, pb = (jax.tree.map(np.asarray, init(jax.random.key(s), x)[0]) for s in seeds)
    return spec, pa, pb


def measure(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small widths")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "mlp_3x2048": ("mlp", (28, 28, 1), dict(width=256 if args.quick else 2048, depth=3)),
        "resnet20_x8": ("resnet20", (32, 32, 3), dict(width=1 if args.quick else 8)),
    }
    for label, (name, shape, kw) in cases.items():
        spec, pa, pb = case(name, 10, shape, **kw)
        key = jax.random.key(0)
        align.weight_matching(spec, pa, pb, key=key)  # warm-up: imports, first-call costs
        rows = []
        for r in range(args.repeats):  # interleaved: a busy machine slows both alike
            out = {}
            for i in interleaved_order(2, r):
                if i == 0:
                    out[0] = measure(align.weight_matching, spec, pa, pb, key=key)
                else:
                    out[1] = measure(reference_weight_matching, spec, pa, pb, key)
            ((perms, info), wall, cpu), ((ref, ref_sweeps), ref_wall, ref_cpu) = out[0], out[1]
            rows.append((wall, cpu, ref_wall, ref_cpu))
        wall, cpu, ref_wall, ref_cpu = np.median(np.array(rows), axis=0)
        same = all(np.array_equal(np.asarray(perms[n]), ref[n]) for n in ref)
        print(
            label,
            json.dumps(
                {
                    "ours_wall_s": round(wall, 2),
                    "reference_wall_s": round(ref_wall, 2),
                    "speedup_wall": round(ref_wall / wall, 2),
                    "ours_cpu_s": round(cpu, 2),
                    "reference_cpu_s": round(ref_cpu, 2),
                    "speedup_cpu": round(ref_cpu / cpu, 2),
                    "sweeps": info["sweeps"],
                    "reference_sweeps": ref_sweeps,
                    "same_perms": bool(same),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
