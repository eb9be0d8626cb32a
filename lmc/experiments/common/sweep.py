"""Sweep-shaped results, written once for every experiment that sweeps a value.

An experiment that sweeps one value (`instability`: the spawn step k; `width`: the
width multiplier) reports `sweep_key` and `points`, one per value: the per-pair barriers
and their mean and std over pairs (docs/reference/results_schema.md). These helpers build a
point, pool the points of several runs (`lmc sweep`'s aggregate), draw the barrier
against the value and tabulate it, so the experiments only say what they sweep.
"""

from __future__ import annotations

from pathlib import Path

from lmc import plots
from lmc.experiments.common import compare, tables


def compare_pairs(config, model, dataset, ends: list[dict]) -> list[dict]:
    """`compare.compare_pair` of each pair: endpoints 2j and 2j+1 form pair j."""
    return [compare.compare_pair(config, model, dataset, *ends[2 * j : 2 * j + 2])
            for j in range(len(ends) // 2)]  # fmt: skip


def point(key: str, value, pairs: list[dict], **extra) -> dict:
    """The point of swept `value` from its pairs' comparisons; `extra` entries (e.g.
    the model width a multiplier gave) sit between the value and the methods."""
    return {
        key: value,
        **extra,
        "methods": compare.summarize(pairs),
        "pairs": compare.pair_barriers(pairs),
    }


def merge_points(runs: list[tuple[str, dict]], key: str) -> dict:
    """Sweep-shaped results of several runs (e.g. the points of an `lmc sweep`, one k
    or one pair each) as one: the pairs at equal `key` values pooled, mean and std
    recomputed over all of them."""
    pooled: dict = {}
    extra: dict = {}
    for _, results in runs:
        for point in results["points"]:
            pooled.setdefault(point[key], []).extend(point["pairs"])
            extra[point[key]] = {k: v for k, v in point.items()
                                 if k not in (key, "methods", "pairs")}  # fmt: skip
    points = [{key: value, **extra[value], "methods": compare.summarize(pairs), "pairs": pairs}
              for value, pairs in sorted(pooled.items())]  # fmt: skip
    return {"sweep_key": key, "points": points}


def plot(results: dict, path: Path, key: str, notes: dict | None = None) -> list[Path]:
    """Barrier mean ± std (and each pair's barrier) against the swept value."""
    return [plots.plot_sweep(results, path, key, notes=notes)]


def table(runs: list[tuple[str, dict]]) -> str:
    """One row per (run, point, method): the barriers' mean ± std over pairs."""
    rows = [row for run, results in runs for row in tables.point_rows(run, results)]
    return tables.markdown(tables.HEADER, rows)
