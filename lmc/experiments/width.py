"""`width`: barrier versus width multiplier, naive and aligned.

Entezari et al. (2021) and Ainsworth et al. (2022) find the naive barrier stays high
while the aligned barrier shrinks as networks get wider. For each multiplier in
`config.width.multipliers` the base `config.model.width` is scaled and a pair is
trained as in `pair` (in `width<m>/`), `config.width.num_pairs` pairs per width.
"""

from __future__ import annotations

import copy
from pathlib import Path

from lmc import spawn
from lmc.errors import UserError
from lmc.experiments import common, pair
from lmc.experiments.instability import pairs_barriers
from lmc.experiments.sweep_stats import summarize


def multipliers(config) -> list[float]:
    values = [float(m) for m in config.width.multipliers]
    if not values or any(m <= 0 for m in values):
        raise UserError(f"config.width.multipliers must be positive numbers, got {values}")
    return values


def scaled(config, multiplier: float):
    c = copy.deepcopy(config)
    with c.unlocked():
        width = c.model.width * multiplier
        c.model.width = int(round(width)) if c.model.name in ("mlp", "cnn", "resnet20") else width
    return c


def validate(config) -> None:
    dataset = common.load_data(config)
    for m in multipliers(config):
        c = scaled(config, m)
        if c.model.width <= 0:
            raise UserError(f"width multiplier {m} gives model width {c.model.width}")
        common.validate_methods(c, common.model_has_batchnorm(c, dataset))
    spawn.validate(config, dataset, [config.spawn.step])
    n = int(config.width.num_pairs)
    if n < 1 or len(config.spawn.child_seeds) < 2 * n:
        raise UserError(
            f"config.width.num_pairs={n} needs {2 * n} child seeds in config.spawn.child_seeds"
        )


def run(config, workdir: Path) -> dict:
    dataset = common.load_data(config)
    points = []
    for m in multipliers(config):
        c = scaled(config, m)
        model = common.load_model(c, dataset)
        wdir = workdir / f"width{m:g}"
        k = int(c.spawn.step)
        if c.spawn.mode == "spawn":
            spawn.train_parent(c, wdir, model, dataset, [k])
        pairs = []
        for j in range(int(c.width.num_pairs)):
            ends = [
                spawn.endpoint(
                    spawn.train_child(
                        c, wdir, model, dataset, i, k if c.spawn.mode == "spawn" else None
                    )
                )
                for i in (2 * j, 2 * j + 1)
            ]
            pairs.append(pair.compare_pair(c, model, dataset, *ends))
        points.append(
            {
                "width": m,
                "model_width": c.model.width,
                "methods": summarize(pairs),
                "pairs": pairs_barriers(pairs),
            }
        )
    return {"sweep_key": "width", "points": points}
