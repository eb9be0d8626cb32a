"""Aggregate per-pair method entries into mean/std per metric (sweep points)."""

from __future__ import annotations

import numpy as np

from lmc.evaluate import METRICS


def summarize(pair_entries: list[dict]) -> dict:
    """pair_entries: [{method: entry}] -> {method: {barrier_mean, barrier_std, ...}}."""
    methods = {}
    for method in pair_entries[0]:
        ok = [p[method] for p in pair_entries if "error" not in p.get(method, {"error": 1})]
        if not ok:
            methods[method] = {"error": pair_entries[0][method].get("error", "failed")}
            continue
        summary = {"num_pairs": len(ok)}
        for kind in ("barrier", "barrier_vs_mean"):
            values = {m: np.array([e[kind][m] for e in ok]) for m in METRICS}
            summary[f"{kind}_mean"] = {m: float(v.mean()) for m, v in values.items()}
            summary[f"{kind}_std"] = {m: float(v.std()) for m, v in values.items()}
        methods[method] = summary
    return methods
