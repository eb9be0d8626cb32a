"""Timing helpers shared by the benchmarks: warmup, interleaved repeats, median."""

from __future__ import annotations

import statistics
import time


def interleaved_order(n: int, repeat: int) -> list[int]:
    """The order of the n contenders in repeat `repeat`: forward on even repeats,
    backward on odd ones (a, b, b, a, a, b, ...), so no contender always runs right
    after the same other one (caches, turbo and background load hit each alike)."""
    order = list(range(n))
    return order if repeat % 2 == 0 else order[::-1]


def interleaved_runs(fns, repeats: int) -> list[list[tuple[object, float]]]:
    """Run each fn `repeats` times, interleaved; per fn the list of (result, seconds)."""
    runs = [[] for _ in fns]
    for r in range(repeats):
        for i in interleaved_order(len(fns), r):
            start = time.perf_counter()
            out = fns[i]()
            runs[i].append((out, time.perf_counter() - start))
    return runs


def median_times(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each fn, after `warmup` calls each. Repeats are interleaved
    (see `interleaved_order`) so that background load on a shared machine hits every
    contender alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    return [statistics.median(t for _, t in runs) for runs in interleaved_runs(fns, repeats)]


def row(name: str, ours_s: float, baseline_s: float, detail: str) -> dict:
    """One speed comparison; ratio > 1 means lmc is faster than the baseline."""
    return {
        "name": name,
        "ours_s": round(ours_s, 6),
        "baseline_s": round(baseline_s, 6),
        "ratio": round(baseline_s / ours_s, 3),
        "detail": detail,
    }


def headroom_row(name: str, supply_s: float, demand_s: float, detail: str) -> dict:
    """One headroom measurement: how many times faster a producer (e.g. the input
    pipeline) supplies work than its consumer (the train step) uses it. Not a
    speed-up of lmc over a baseline, so it has no `ratio`: run.py lists it apart."""
    return {
        "name": name,
        "ours_s": round(supply_s, 6),
        "baseline_s": round(demand_s, 6),
        "ratio": None,
        "headroom": round(demand_s / supply_s, 2),
        "detail": detail,
    }
