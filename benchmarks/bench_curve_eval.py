"""curve_eval: a 25-alpha interpolation curve vs 25 plain forward passes (bar: <= 1.3x)."""

from __future__ import annotations

from benchmarks.curve_eval import run as run_curve


def run(quick: bool) -> list[dict]:
    n = 2_000 if quick else 10_000
    r = run_curve(n=n, num_alphas=25, repeats=3 if quick else 5)
    return [
        {
            "name": "curve_eval/mlp3x512",
            "ours_s": round(r["curve_s"], 6),
            "baseline_s": round(r["plain_s"], 6),
            "ratio": round(r["plain_s"] / r["curve_s"], 3),
            "detail": f"25-alpha curve over {n} 28x28 images costs {r['ratio']:.2f}x 25 plain "
            "jitted forward passes (bar: <= 1.3x, i.e. ratio >= 0.77)",
        }
    ]
