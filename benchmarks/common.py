"""Timing helpers shared by the benchmarks: warmup, interleaved repeats, median."""

from __future__ import annotations

import statistics
import time


def median_times(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each fn. Repeats are interleaved (a, b, a, b, ...) so that
    background load on a shared machine hits every contender alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def row(name: str, ours_s: float, baseline_s: float, detail: str) -> dict:
    """One result line; ratio > 1 means lmc is faster than the baseline."""
    return {
        "name": name,
        "ours_s": round(ours_s, 6),
        "baseline_s": round(baseline_s, 6),
        "ratio": round(baseline_s / ours_s, 3),
        "detail": detail,
    }
