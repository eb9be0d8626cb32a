"""`parent`: only the parent, trained to the last of `config.instability.spawn_steps`
with every one of them kept: the first stage of an `lmc sweep` whose points spawn
children from one shared parent (`lmc run --parent=DIR` then uses it).

    lmc run --config=configs/instability_lm.py --workdir=runs/sweep/shared_parent \\
        --config.experiment=parent
"""

from __future__ import annotations

from pathlib import Path

from lmc import training
from lmc.errors import UserError
from lmc.experiments.common import setup, tables
from lmc.experiments.instability import spawn_steps


def validate(config) -> None:
    if config.spawn.mode != "spawn":
        raise UserError("a shared parent is for spawned children: set config.spawn.mode='spawn'")
    dataset = setup.load_data(config)
    setup.load_model(config, dataset)
    training.validate_spawn(config, dataset, spawn_steps(config), "config.instability.spawn_steps")


def run(config, workdir: Path, parent: Path | None = None) -> dict:
    if parent is not None:
        raise UserError("the parent experiment trains the parent; it takes no --parent")
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    steps = spawn_steps(config)
    training.train_parent(config, workdir, model, dataset, steps)
    return {"spawn_steps": steps}


def plot(results: dict, workdir: Path) -> list[Path]:
    del results, workdir
    return []


def table(runs: list[tuple[str, dict]]) -> str:
    rows = [[run, ", ".join(map(str, results["spawn_steps"]))] for run, results in runs]
    return tables.markdown(["run", "parent checkpoints kept (spawn steps)"], rows)
