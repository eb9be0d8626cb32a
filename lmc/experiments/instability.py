"""`instability`: Frankle et al. (2020)'s instability analysis, for any model and data.

One parent is trained to the largest spawn step k of `config.instability.spawn_steps`
(every k kept); at each k, `config.instability.num_pairs` pairs of children continue
from its checkpoint with different data order/augmentation, train to the end and are
interpolated pairwise. The barrier's mean and std over pairs is reported versus k. A
network is "stable" from step k on when the barrier is ~0.

Layout: parent/, k<k>/child_<i>/ (children 2j and 2j+1 form pair j, seeds from
config.spawn.child_seeds). Outputs: results.json `points`, barrier_vs_k.png.

    lmc run --config=configs/instability_mlp_fashion_mnist.py --workdir=runs/instab
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmc import io, plots, training
from lmc.errors import UserError
from lmc.experiments import compare, setup, tables
from lmc.experiments.methods import validate_methods

log = logging.getLogger(__name__)
SWEEP_KEY = "spawn_step"


def spawn_steps(config) -> list[int]:
    steps = [int(k) for k in config.instability.spawn_steps]
    if not steps:
        raise UserError("config.instability.spawn_steps is empty; give the spawn steps k")
    if len(set(steps)) != len(steps):
        raise UserError(f"config.instability.spawn_steps has duplicates: {steps}")
    return sorted(steps)


def num_pairs(config) -> int:
    return setup.num_pairs(config, "instability")


def validate(config) -> None:
    if config.spawn.mode != "spawn":
        raise UserError("the instability experiment spawns children: set config.spawn.mode='spawn'")
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    validate_methods(config, setup.has_batchnorm(model, dataset))
    training.validate_spawn(config, dataset, spawn_steps(config), "config.instability.spawn_steps")
    num_pairs(config)


def parent_steps(config) -> list[int]:
    """The parent checkpoints this run spawns from (a sweep may train them once)."""
    return spawn_steps(config)


def run(config, workdir: Path, parent: Path | None = None) -> dict:
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    steps = spawn_steps(config)
    training.train_parent(config, workdir, model, dataset, steps, shared=parent)
    points = []
    for k in steps:
        children = [training.Child(i, workdir / f"k{k}" / f"child_{i}", k)
                    for i in range(2 * num_pairs(config))]  # fmt: skip
        ends = training.train_children(config, workdir, model, dataset, children, shared=parent)
        pairs = [compare.compare_pair(config, model, dataset, *ends[2 * j : 2 * j + 2])
                 for j in range(len(ends) // 2)]  # fmt: skip
        points.append(
            {
                SWEEP_KEY: k,
                "methods": compare.summarize(pairs),
                "pairs": compare.pair_barriers(pairs),
            }  # fmt: skip
        )
        log.info(
            "spawn step %d: test-loss barrier %s", k,
            {m: v.get("barrier_mean", {}).get("test_loss") for m, v in points[-1]["methods"].items()},
        )  # fmt: skip
    body = {"sweep_key": SWEEP_KEY, "points": points}
    if dataset.kind == "text":
        body["data"] = dataset.summary()
    return body


def aggregate(runs: list[tuple[str, dict]]) -> dict:
    """One result from the runs of a sweep: pairs at equal values pooled."""
    return compare.merge_points(runs, SWEEP_KEY)


def plot(results: dict, workdir: Path) -> list[Path]:
    return [plots.plot_sweep(results, io.path(workdir) / "barrier_vs_k.png", SWEEP_KEY)]


def table(runs: list[tuple[str, dict]]) -> str:
    rows = [row for run, results in runs for row in tables.point_rows(run, results)]
    return tables.markdown(tables.HEADER, rows)
