"""Sibling networks: children spawned from a parent's step-k checkpoint, or independent.

Layout in the workdir (every experiment):

    parent/checkpoints/<k>/     the parent's state at each spawn step (kept forever)
    <group>/child_<i>/          child i of a group (pair: the workdir itself; instability:
                                k<k>/; width: width<m>/), continued from the parent at k
    <group>/population/         the stacked state while a group trains as a population

Children differ from each other only in the seeds `config.spawn.child_seeds` gives them
(data order and augmentation; and init in independent mode), and in their data when an
experiment says so (code_vs_prose). `train_children` is the one place that trains a
group of children: one after another, or as one vmapped population when
`config.spawn.population` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from lmc import io
from lmc.checkpoint import Checkpointer, committed_steps
from lmc.data import Dataset
from lmc.errors import UserError, choose
from lmc.models import Model
from lmc.training.loop import Member, train, train_population
from lmc.training.state import (
    Seeds,
    endpoint,
    init_state,
    make_optimizer_for,
    total_steps,
)

log = logging.getLogger(__name__)

MODES = ("independent", "spawn")


@dataclasses.dataclass(frozen=True)
class Child:
    """Child `index` (its seeds are `config.spawn.child_seeds[index]`), trained in `run_dir`
    from the parent's step `spawn_step` (None: a fresh init). `dataset` overrides the
    experiment's data for this child; `seeds` overrides the seeds."""

    index: int
    run_dir: Path
    spawn_step: int | None = None
    dataset: Dataset | None = None
    seeds: Seeds | None = None


def child_seeds(config, index: int) -> Seeds:
    seeds = tuple(config.spawn.child_seeds)
    if index >= len(seeds):
        raise UserError(
            f"config.spawn.child_seeds has {len(seeds)} entries but child {index} was asked for; "
            "give one seed per child"
        )
    s = int(seeds[index])
    if config.spawn.mode == "independent":
        return Seeds(init=s, data=s, aug=s)
    return Seeds(init=int(config.seed), data=s, aug=s)


def parent_seeds(config) -> Seeds:
    s = int(config.seed)
    return Seeds(init=s, data=s, aug=s)


def check_num_children(config, count: int, key: str) -> None:
    """`count` children need `count` seeds; `key` is the config key that asked for them."""
    have = len(tuple(config.spawn.child_seeds))
    if have < count:
        raise UserError(
            f"{key} needs {count} child seeds, but config.spawn.child_seeds has {have}; "
            f'give at least {count}, e.g. --config.spawn.child_seeds="{tuple(range(1, count + 1))}"'
        )


def validate(config, dataset: Dataset, spawn_steps, key: str = "config.spawn.step") -> None:
    """Spawn mode known, and every spawn step inside the training run; `key` names the
    config key the steps come from (what the user must change)."""
    choose("spawn mode", config.spawn.mode, MODES)
    num_steps = total_steps(config, dataset)
    if config.spawn.mode == "spawn":
        for k in spawn_steps:
            if not 0 <= int(k) < num_steps:
                raise UserError(
                    f"spawn step {k} ({key}) must be in [0, total steps={num_steps}); lower "
                    f"{key} or train longer (config.num_steps / config.num_epochs)"
                )


def is_spawned(config) -> bool:
    return config.spawn.mode == "spawn"


def train_parent(config, workdir: Path, model: Model, dataset: Dataset, spawn_steps) -> None:
    """Train the shared parent up to the last spawn step, keeping every spawn step."""
    spawn_steps = sorted({int(k) for k in spawn_steps})
    train(
        model=model,
        dataset=dataset,
        config=config,
        run_dir=io.path(workdir) / "parent",
        seeds=parent_seeds(config),
        stop_step=spawn_steps[-1],
        keep_steps=spawn_steps,
        name="parent",
    )


def load_parent(config, workdir: Path, model: Model, dataset: Dataset, step: int) -> dict:
    """The parent's full train state at spawn step `step`."""
    optimizer = make_optimizer_for(config, total_steps(config, dataset))
    template = init_state(model, optimizer, parent_seeds(config).init, dataset.train_x[:1])
    directory = io.path(workdir) / "parent" / "checkpoints"
    ckpt = Checkpointer(directory, every_steps=1)
    try:
        if step not in ckpt.steps():
            raise UserError(
                f"parent checkpoint for spawn step {step} is missing in {directory}; rerun to "
                "retrain the parent"
            )
        return ckpt.restore(step, template)
    finally:
        ckpt.close()


def train_children(
    config, workdir: Path, model: Model, dataset: Dataset, children: list[Child]
) -> list[dict]:
    """Train every child to the end (resuming where one stopped); their final endpoints.

    With `config.spawn.population`, the unfinished children of each spawn step train
    together as one vmapped population first; afterwards every child is an ordinary
    finished run, so reruns and the sequential path read it back unchanged."""
    workdir = io.path(workdir)
    if config.spawn.population:
        _train_populations(config, workdir, model, dataset, children)
    states = []
    for child in children:
        data = child.dataset or dataset
        start = None
        if child.spawn_step is not None and not _has_checkpoint(child.run_dir):
            start = load_parent(config, workdir, model, dataset, child.spawn_step)
        state = train(
            model=model,
            dataset=data,
            config=config,
            run_dir=child.run_dir,
            seeds=child.seeds or child_seeds(config, child.index),
            start_state=start,
            name=_name(workdir, child.run_dir),
        )
        states.append(endpoint(state))
    return states


def _train_populations(config, workdir, model, dataset, children: list[Child]) -> None:
    final = total_steps(config, dataset)
    todo = [c for c in children if final not in committed_steps(c.run_dir / "checkpoints")]
    groups: dict = {}
    for child in todo:  # one population per spawn step and group directory
        groups.setdefault((child.spawn_step, child.run_dir.parent), []).append(child)
    for (spawn_step, group_dir), group in groups.items():
        if len(group) < 2:
            continue  # nothing to stack; the sequential path trains it
        start = None
        if spawn_step is not None:
            start = load_parent(config, workdir, model, dataset, spawn_step)
        members = [
            Member(
                run_dir=c.run_dir,
                seeds=c.seeds or child_seeds(config, c.index),
                dataset=c.dataset or dataset,
                name=_name(workdir, c.run_dir),
                start_state=start,
            )
            for c in group
        ]
        # The directory name records who is in it: a rerun with other unfinished
        # children must not resume another population's stacked checkpoint.
        tag = "_".join(c.run_dir.name for c in group)
        train_population(
            model=model,
            config=config,
            members=members,
            run_dir=group_dir / f"population_{tag}",
            name=_name(workdir, group_dir / "population"),
        )


def _name(workdir: Path, run_dir: Path) -> str:
    return os.path.relpath(os.fspath(run_dir), os.fspath(workdir))


def _has_checkpoint(run_dir: Path) -> bool:
    return bool(committed_steps(run_dir / "checkpoints"))


def siblings(
    config, workdir: Path, model: Model, dataset: Dataset, indices, group_dir: Path | None = None
) -> list[dict]:
    """Endpoints of children `indices` as the config describes them: spawned from the
    parent's step `config.spawn.step` (trained here if needed) or independent inits."""
    workdir = io.path(workdir)
    group_dir = workdir if group_dir is None else io.path(group_dir)
    k = int(config.spawn.step) if is_spawned(config) else None
    if k is not None:
        train_parent(config, workdir, model, dataset, [k])
    children = [Child(i, group_dir / f"child_{i}", k) for i in indices]
    return train_children(config, workdir, model, dataset, children)


__all__ = [
    "Child",
    "MODES",
    "check_num_children",
    "child_seeds",
    "is_spawned",
    "load_parent",
    "parent_seeds",
    "siblings",
    "train_children",
    "train_parent",
    "validate",
]
