"""`instability`: Frankle et al. (2020)'s instability analysis.

For each spawn step k in `config.instability.spawn_steps`, children continued from
the parent's step-k checkpoint with different data order/augmentation are trained to
the end and interpolated pairwise; the barrier's mean and std over pairs is reported
versus k. A network is "stable" from step k on when the barrier is ~0.

Layout: parent/ (trained once, to the largest k, every k kept), k<k>/child_<i>/.
Children 2j and 2j+1 form pair j (seeds from config.spawn.child_seeds).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmc import spawn
from lmc.errors import UserError
from lmc.experiments import common, pair
from lmc.experiments.sweep_stats import summarize

log = logging.getLogger(__name__)


def spawn_steps(config) -> list[int]:
    steps = [int(k) for k in config.instability.spawn_steps]
    if not steps:
        raise UserError("config.instability.spawn_steps is empty")
    if len(set(steps)) != len(steps):
        raise UserError(f"config.instability.spawn_steps has duplicates: {steps}")
    return sorted(steps)


def num_pairs(config) -> int:
    n = int(config.instability.num_pairs)
    if n < 1:
        raise UserError(f"config.instability.num_pairs must be >= 1, got {n}")
    if len(config.spawn.child_seeds) < 2 * n:
        raise UserError(
            f"config.instability.num_pairs={n} needs {2 * n} child seeds, but "
            f"config.spawn.child_seeds has {len(config.spawn.child_seeds)}"
        )
    return n


def validate(config) -> None:
    if config.spawn.mode != "spawn":
        raise UserError("the instability experiment spawns children: set config.spawn.mode='spawn'")
    dataset = common.load_data(config)
    common.validate_methods(config, common.model_has_batchnorm(config, dataset))
    spawn.validate(config, dataset, spawn_steps(config))
    num_pairs(config)


def run(config, workdir: Path) -> dict:
    dataset = common.load_data(config)
    model = common.load_model(config, dataset)
    steps = spawn_steps(config)
    spawn.train_parent(config, workdir, model, dataset, steps)
    points = []
    for k in steps:
        pairs = []
        for j in range(num_pairs(config)):
            ends = []
            for i in (2 * j, 2 * j + 1):
                state = spawn.train_child(
                    config, workdir, model, dataset, i, k, run_dir=workdir / f"k{k}" / f"child_{i}"
                )
                ends.append(spawn.endpoint(state))
            pairs.append(pair.compare_pair(config, model, dataset, *ends))
        points.append(
            {"spawn_step": k, "methods": summarize(pairs), "pairs": pairs_barriers(pairs)}
        )
        log.info(
            "spawn step %d: %s",
            k,
            {
                m: v.get("barrier_mean", {}).get("test_error")
                for m, v in points[-1]["methods"].items()
            },
        )
    return {"sweep_key": "spawn_step", "points": points}


def pairs_barriers(pairs: list[dict]) -> list[dict]:
    """Per-pair barriers (curves dropped to keep results.json small)."""
    return [
        {
            m: {k: e[k] for k in ("barrier", "barrier_vs_mean") if k in e}
            | ({"error": e["error"]} if "error" in e else {})
            for m, e in p.items()
        }
        for p in pairs
    ]
