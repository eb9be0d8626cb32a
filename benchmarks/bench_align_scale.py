"""align_scale in the suite: time and peak memory of each alignment method at size.

Runs `benchmarks/align_scale.py` cases (each in a fresh subprocess). Every method is
reported beside plain weight matching on the same shape, in the same run: "ours" is
the method's time, "baseline" plain weight matching's, so `ratio` < 1 says how many
times plain weight matching's time the method takes (the issue's bars: the heads
method at most 1.5x plain's time, orthogonal at most 3x). Every method runs with one
visiting order (`align_scale.py --restarts=1`), plain weight matching's default, so
the ratios compare solvers, not search budgets (the recipes' default is 4 restarts). The detail has the peak memory over one model's float32 bytes
and the objective. Quick: the 3.3M-parameter transformer and a 3x1024
MLP; full: GPT-2 small's shape and a 3x4096 MLP.
"""

from __future__ import annotations

import os

from benchmarks import align_scale

QUICK = {
    "lm_d256_l4": ("weight_matching", "weight_matching_heads"),
    "mlp_3x1024": ("weight_matching",),
}
FULL = {
    "gpt2_small": (
        "weight_matching",
        "weight_matching_heads",
        "weight_matching_orthogonal",
        "activation_matching",
    ),
    "mlp_3x4096": ("weight_matching",),
}


def run(quick: bool) -> list[dict]:
    os.environ[align_scale.RESTARTS_ENV] = "1"  # read by the workers (subprocesses)
    try:
        return _run(quick)
    finally:
        os.environ.pop(align_scale.RESTARTS_ENV, None)


def _run(quick: bool) -> list[dict]:
    rows = []
    for shape, methods in (QUICK if quick else FULL).items():
        plain = None
        for method in methods:
            r = align_scale.run_case(shape, method, align_scale.ROOT, timeout=3600.0)
            name = f"align_scale {shape} {method}"
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error']}")
            if method == "weight_matching":
                plain = r["wall_s"]
            rows.append(
                {
                    "name": name,
                    "ours_s": r["wall_s"],
                    "baseline_s": plain,
                    "ratio": None if plain is None else plain / r["wall_s"],
                    "detail": (
                        f"{r['params_m']}M params; baseline: plain weight matching; peak "
                        f"{r['peak_over_model']}x one model's bytes; J {r['objective']:.6g} "
                        f"(naive {r['naive_objective']:.6g})"
                    ),
                }
            )
    return rows
