"""`lm_instability`: Frankle et al. (2020)'s instability analysis for language models.

Like `instability` (same config keys, same results.json `points`), with the LM
evaluator of `lm_common`: for each spawn step k of `config.instability.spawn_steps`,
pairs of children continue the parent from step k with different data orders; the
barrier of per-token loss/error between them is reported versus k.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmc import spawn
from lmc.errors import UserError
from lmc.experiments import instability, lm_common
from lmc.experiments.sweep_stats import summarize

log = logging.getLogger(__name__)


def validate(config) -> None:
    if config.spawn.mode != "spawn":
        raise UserError("lm_instability spawns children: set config.spawn.mode='spawn'")
    dataset = lm_common.load_data(config)
    lm_common.load_model(config, dataset)
    lm_common.validate_methods(config)
    spawn.validate(config, dataset, instability.spawn_steps(config))
    instability.num_pairs(config)


def run(config, workdir: Path) -> dict:
    dataset = lm_common.load_data(config)
    model = lm_common.load_model(config, dataset)
    splits = lm_common.train_test_splits(config, dataset)
    steps = instability.spawn_steps(config)
    spawn.train_parent(config, workdir, model, dataset, steps)
    points = []
    for k in steps:
        pairs = []
        for j in range(instability.num_pairs(config)):
            ends = []
            for i in (2 * j, 2 * j + 1):
                state = spawn.train_child(
                    config, workdir, model, dataset, i, k, run_dir=workdir / f"k{k}" / f"child_{i}"
                )
                ends.append(spawn.endpoint(state))
            pairs.append(lm_common.compare_pair(config, model, splits, *ends))
        points.append(
            {
                "spawn_step": k,
                "methods": summarize(pairs),
                "pairs": instability.pairs_barriers(pairs),
            }
        )
        log.info(
            "spawn step %d: test-loss barrier %s",
            k,
            {
                m: v.get("barrier_mean", {}).get("test_loss")
                for m, v in points[-1]["methods"].items()
            },
        )
    return {"sweep_key": "spawn_step", "data": dataset.summary(), "points": points}
