"""`instability`: Frankle et al. (2020)'s instability analysis, for any model and data.

One parent is trained to the largest spawn step k of `config.instability.spawn_steps`
(every k kept); at each k, `config.instability.num_pairs` pairs of children continue
from its checkpoint with different data order/augmentation, train to the end and are
interpolated pairwise. The barrier's mean and std over pairs is reported versus k. A
network is "stable" from step k on when the mean test-error barrier stays at or below
`config.instability.stable_threshold`; that first k, the onset k*, is reported per method
(results.json `onset`, see lmc.experiments.common.onset).

Layout: parent/, k<k>/child_<i>/ (children 2j and 2j+1 form pair j, seeds from
config.spawn.child_seeds). Outputs: results.json `points`, barrier_vs_k.png.

    lmc run --config=configs/instability_lm.py --workdir=runs/instab  # or any configs/instability_*.py
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmc import training
from lmc.errors import UserError
from lmc.experiments.common import onset, setup, sweep
from lmc.experiments.common.methods import validate_methods
from lmc.runtime import io

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
    onset.validate_threshold(config.instability.stable_threshold)


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
        points.append(sweep.point(SWEEP_KEY, k, sweep.compare_pairs(config, model, dataset, ends)))
        log.info(
            "spawn step %d: test-loss barrier %s", k,
            {m: v.get("barrier_mean", {}).get("test_loss") for m, v in points[-1]["methods"].items()},
        )  # fmt: skip
    total = training.total_steps(config, dataset)
    threshold = float(config.instability.stable_threshold)
    body = {"sweep_key": SWEEP_KEY, "points": points, "total_steps": total,
            "onset": onset.onset(points, SWEEP_KEY, threshold, total)}  # fmt: skip
    if dataset.kind == "text":
        body["data"] = dataset.summary()
    return body


def aggregate(runs: list[tuple[str, dict]]) -> dict:
    """One result from the runs of a sweep: pairs at equal values pooled, k* over them."""
    merged = sweep.merge_points(runs, SWEEP_KEY)
    first = runs[0][1]
    total = first.get("total_steps")  # absent in results written before k* was reported
    merged["total_steps"] = total
    merged["onset"] = onset.onset(merged["points"], SWEEP_KEY, _threshold(first["config"]), total)
    return merged


def _threshold(config: dict) -> float:
    # Results written before the key existed used Frankle et al.'s 2 points.
    return float(config["instability"].get("stable_threshold", onset.DEFAULT_THRESHOLD))


def plot(results: dict, workdir: Path) -> list[Path]:
    notes = {m: onset.describe(e) for m, e in (results.get("onset") or {}).items()}
    path = io.path(workdir) / "barrier_vs_k.png"
    return sweep.plot(results, path, SWEEP_KEY, notes=notes)


def table(runs: list[tuple[str, dict]]) -> str:
    text = sweep.table(runs)
    lines = [f"- {run}, {method}: {onset.describe(entry)}"
             for run, results in runs for method, entry in (results.get("onset") or {}).items()]  # fmt: skip
    if not lines:  # results written before k* was reported
        return text
    return (
        text
        + "\n\nOnset k* (mean test-error barrier stays at or below the threshold):\n"
        + "\n".join(lines)
    )
