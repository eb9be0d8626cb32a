"""`width`: barrier versus width multiplier, naive and aligned, for any model family.

Entezari et al. (2021) and Ainsworth et al. (2022) find the naive barrier stays high
while the aligned barrier shrinks as networks get wider. For each multiplier in
`config.width.multipliers` the base `config.model.width` is scaled and
`config.width.num_pairs` pairs are trained as in `pair`, in `width<m>/`. Outputs:
results.json `points`, barrier_vs_width.png.
"""

from __future__ import annotations

import copy
from pathlib import Path

from lmc import io, models, plots, training
from lmc.errors import UserError
from lmc.experiments import compare, setup, tables
from lmc.experiments.methods import validate_methods

SWEEP_KEY = "width"


def multipliers(config) -> list[float]:
    values = [float(m) for m in config.width.multipliers]
    if not values or any(m <= 0 for m in values):
        raise UserError(f"config.width.multipliers must be positive numbers, got {values}")
    return values


def scaled(config, multiplier: float):
    c = copy.deepcopy(config)
    with c.unlocked():
        width = c.model.width * multiplier
        units = models.width_counts_units(c.model.name, c.model.width)
        c.model.width = int(round(width)) if units else width
    return c


def num_pairs(config) -> int:
    return setup.num_pairs(config, "width")


def validate(config) -> None:
    dataset = setup.load_data(config)
    for m in multipliers(config):
        c = scaled(config, m)
        if c.model.width <= 0:
            raise UserError(
                f"config.width.multipliers: {m} gives config.model.width={c.model.width}"
            )
        try:
            model = setup.load_model(c, dataset)
        except UserError as e:
            raise UserError(f"config.width.multipliers: at multiplier {m}: {e}") from None
        validate_methods(c, setup.has_batchnorm(model, dataset))
    training.validate_spawn(config, dataset, [config.spawn.step])
    num_pairs(config)


def run(config, workdir: Path, parent: Path | None = None) -> dict:
    del parent  # not offered (no parent_steps): each width / the mixture trains its own
    dataset = setup.load_data(config)
    points = []
    for m in multipliers(config):
        c = scaled(config, m)
        model = setup.load_model(c, dataset)
        wdir = io.path(workdir) / f"width{m:g}"
        ends = training.siblings(c, wdir, model, dataset, range(2 * num_pairs(c)))
        pairs = [compare.compare_pair(c, model, dataset, *ends[2 * j : 2 * j + 2])
                 for j in range(len(ends) // 2)]  # fmt: skip
        points.append(
            {
                SWEEP_KEY: m,
                "model_width": c.model.width,
                "methods": compare.summarize(pairs),
                "pairs": compare.pair_barriers(pairs),
            }
        )
    return {"sweep_key": SWEEP_KEY, "points": points}


def aggregate(runs: list[tuple[str, dict]]) -> dict:
    """One result from the runs of a sweep: pairs at equal values pooled."""
    return compare.merge_points(runs, SWEEP_KEY)


def plot(results: dict, workdir: Path) -> list[Path]:
    return [plots.plot_sweep(results, io.path(workdir) / "barrier_vs_width.png", SWEEP_KEY)]


def table(runs: list[tuple[str, dict]]) -> str:
    rows = [row for run, results in runs for row in tables.point_rows(run, results)]
    return tables.markdown(tables.HEADER, rows)
