"""weight_matching: lmc vs a plain eager NumPy reference of Git Re-Basin's Algorithm 1.

Same spec, same two models, same key (so the same visiting order); the reference
(benchmarks/align_weight_matching.py) rebuilds every cost matrix each step (but reads
each step's objective change off the cost matrix, without dense permutation
matrices). Reports the wall-clock median of interleaved repeats and whether both reach the same
permutations. Bar: same or better objective, >= 5x faster. Full sizes: MLP 3x2048 on
28x28 inputs and ResNet-20 x8; --quick uses 3x256 and ResNet-20 x1.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.align_weight_matching import case, reference_weight_matching
from benchmarks.common import interleaved_runs
from lmc import align


def objective(spec, params_a, params_b, perms) -> float:
    """J(P) = sum over leaves of <W_a, P(W_b)>, in float64, over the spec's weights."""
    spec = spec.subtree("params") if spec.is_combined() else spec
    aligned = align.apply_permutation(spec, {n: np.asarray(p) for n, p in perms.items()}, params_b)
    pairs = zip(jax.tree.leaves(params_a), jax.tree.leaves(aligned), strict=True)
    return float(sum(np.vdot(np.float64(a), np.float64(b)) for a, b in pairs))


def run(quick: bool) -> list[dict]:
    cases = {
        "mlp_3x2048" if not quick else "mlp_3x256": (
            "mlp",
            (28, 28, 1),
            dict(width=256 if quick else 2048, depth=3),
        ),
        "resnet20_x8" if not quick else "resnet20_x1": (
            "resnet20",
            (32, 32, 3),
            dict(width=1 if quick else 8),
        ),
    }
    rows = []
    for label, (name, shape, kw) in cases.items():
        spec, pa, pb = case(name, 10, shape, **kw)
        key = jax.random.key(0)
        align.weight_matching(spec, pa, pb, key=key)  # warm-up: compile the cost kernels
        ours_runs, ref_runs = interleaved_runs(
            [
                lambda spec=spec, pa=pa, pb=pb, key=key: align.weight_matching(
                    spec, pa, pb, key=key
                ),
                lambda spec=spec, pa=pa, pb=pb, key=key: reference_weight_matching(
                    spec, pa, pb, key
                ),
            ],
            2 if quick else 3,
        )
        (perms, info), (ref, ref_sweeps) = ours_runs[-1][0], ref_runs[-1][0]
        wall = float(np.median([t for _, t in ours_runs]))
        ref_wall = float(np.median([t for _, t in ref_runs]))
        same = all(np.array_equal(np.asarray(perms[n]), ref[n]) for n in ref)
        ours_j, ref_j = objective(spec, pa, pb, perms), objective(spec, pa, pb, ref)
        rows.append(
            {
                "name": f"weight_matching/{label}",
                "ours_s": round(float(wall), 4),
                "baseline_s": round(float(ref_wall), 4),
                "ratio": round(float(ref_wall / wall), 2),
                "detail": f"objective J {ours_j:.6g} vs reference {ref_j:.6g} "
                f"({'same or better' if ours_j >= ref_j - 1e-6 * abs(ref_j) else 'WORSE'}); "
                f"same permutations: {same}; sweeps {info['sweeps']} vs {ref_sweeps}; "
                "bar ratio >= 5",
            }
        )
    return rows
