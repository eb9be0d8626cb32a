"""The instability onset k*: from which spawn step on the children are linearly connected.

Frankle et al. (2020) call a network *stable* at step k when children spawned from its
step-k checkpoint have a test-error barrier below 2 points, and report the onset
as the step from which it is stable, also as a fraction of training. `onset` reads that
off a sweep's `points` (mean over pairs at each k, per alignment method):

    k* = the first k such that every point with step >= k has mean barrier <= threshold

so a barrier that dips below the threshold and rises again does not count as stable:
k* is where it *stays* below. A method that failed at some k makes that k unstable
(nothing measured there can be claimed stable). No such k: k* is None.
"""

from __future__ import annotations

from lmc.errors import UserError

METRIC = "test_error"  # Frankle et al.'s criterion; errors are fractions in results.json
DEFAULT_THRESHOLD = 0.02  # their "stable": a barrier below 2 points of error


def validate_threshold(threshold) -> float:
    """The stability threshold as a fraction of error (0.02 = 2 points)."""
    value = float(threshold)
    if not 0.0 <= value < 1.0:
        raise UserError(
            f"config.instability.stable_threshold must be a fraction of error in [0, 1) "
            f"(0.02 = 2 points, Frankle et al.'s choice), got {threshold!r}"
        )
    return value


def _stable(point: dict, method: str, threshold: float) -> bool:
    mean = (point.get("methods", {}).get(method, {}).get("barrier_mean") or {}).get(METRIC)
    return mean is not None and mean <= threshold


def onset(points: list[dict], key: str, threshold: float, total_steps: int | None) -> dict:
    """{method: {"spawn_step": k* or None, "fraction_of_training": k*/total_steps,
    "metric", "threshold"}} over `points` (each `{key: k, "methods": {...}}`)."""
    ordered = sorted(points, key=lambda p: p[key])
    methods: list[str] = []
    for p in ordered:
        methods += [m for m in p.get("methods", {}) if m not in methods]
    out = {}
    for method in methods:
        k_star = None
        # Walk back from the last k: k* is the earliest k of the trailing stable run.
        for p in reversed(ordered):
            if not _stable(p, method, threshold):
                break
            k_star = p[key]
        fraction = None
        if k_star is not None and total_steps:
            fraction = k_star / total_steps
        out[method] = {
            "spawn_step": k_star,
            "fraction_of_training": fraction,
            "metric": METRIC,
            "threshold": threshold,
        }
    return out


def describe(entry: dict) -> str:
    """'k* = 200 (25.0% of training)', or that it was never stable, for tables and plots."""
    if entry.get("spawn_step") is None:
        return f"k* none (never stays <= {100 * entry['threshold']:g} points)"
    text = f"k* = {entry['spawn_step']:g}"
    if entry.get("fraction_of_training") is not None:
        text += f" ({100 * entry['fraction_of_training']:.1f}% of training)"
    return text
