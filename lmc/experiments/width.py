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

from lmc import models, training
from lmc.errors import UserError
from lmc.experiments.common import setup, sweep
from lmc.experiments.common.methods import validate_methods
from lmc.runtime import io

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
        pairs = sweep.compare_pairs(c, model, dataset, ends)
        points.append(sweep.point(SWEEP_KEY, m, pairs, model_width=c.model.width))
    return {"sweep_key": SWEEP_KEY, "points": points}


def aggregate(runs: list[tuple[str, dict]]) -> dict:
    """One result from the runs of a sweep: pairs at equal values pooled."""
    return sweep.merge_points(runs, SWEEP_KEY)


def plot(results: dict, workdir: Path) -> list[Path]:
    return sweep.plot(results, io.path(workdir) / "barrier_vs_width.png", SWEEP_KEY)


def table(runs: list[tuple[str, dict]]) -> str:
    return sweep.table(runs)
