"""Barrier heights of an interpolation curve (pure Python over the curve dict)."""

from __future__ import annotations

import math

from lmc.errors import UserError

METRICS = ("train_loss", "train_error", "test_loss", "test_error")


def barriers(curve: dict, metrics=None) -> dict:
    """Barriers of every metric of `curve` (as returned by `interpolation_curve`).

    - barrier:         max_a [f(a) - ((1-a) f(0) + a f(1))]   (Entezari et al. 2022)
    - barrier_vs_mean: max_a f(a) - (f(0) + f(1)) / 2         (Frankle et al. 2020)
    - argmax_alpha:    the alpha attaining `barrier` (the first one on ties)

    Both ends are on the curve, so `barrier` >= 0; `barrier_vs_mean` can be
    negative only if the whole curve lies below the endpoints' mean.
    `metrics` defaults to the four of results.json that the curve has.
    """
    alphas = [float(a) for a in curve["alphas"]]
    if len(alphas) < 3 or alphas[0] != 0.0 or alphas[-1] != 1.0:
        raise UserError(f"a curve's alphas must run from 0.0 to 1.0 (>= 3 points), got {alphas}")
    if metrics is None:
        metrics = [m for m in METRICS if m in curve]
    out = {"barrier": {}, "barrier_vs_mean": {}, "argmax_alpha": {}}
    for metric in metrics:
        values = [float(v) for v in curve[metric]]
        if len(values) != len(alphas):
            raise UserError(f"curve {metric!r} has {len(values)} values for {len(alphas)} alphas")
        if not all(math.isfinite(v) for v in values):
            # An interpolated network that overflowed: the barrier is unbounded, and
            # NaN arithmetic would make max() depend on the order of the values.
            first_bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
            out["barrier"][metric] = out["barrier_vs_mean"][metric] = math.inf
            out["argmax_alpha"][metric] = alphas[first_bad]
            continue
        f0, f1 = values[0], values[-1]
        gaps = [v - ((1 - a) * f0 + a * f1) for a, v in zip(alphas, values, strict=True)]
        best = max(range(len(gaps)), key=gaps.__getitem__)
        out["barrier"][metric] = gaps[best]
        out["barrier_vs_mean"][metric] = max(values) - (f0 + f1) / 2
        out["argmax_alpha"][metric] = alphas[best]
    return out
