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

from lmc.data import Dataset
from lmc.errors import UserError, choose
from lmc.models import Model
from lmc.runtime import io
from lmc.runtime.checkpoint import Checkpointer, committed_steps
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


# Config keys that only concern the children (or evaluation): two configs that agree on
# everything else describe the same parent, which a sweep can then train once.
CHILD_KEYS = {
    "experiment": None, "spawn": ("step", "child_seeds", "population"), "instability": None,
    "width": None, "merge": None, "eval": None, "align": None, "checkpoint": None,
    "log_every_steps": None, "eval_every_steps": None, "progress": None, "mesh": None,
    "lm": None,
}  # fmt: skip


def parent_identity(config_dict: dict) -> dict:
    """The part of a (plain-dict) config that determines the parent's trajectory."""
    out = {}
    for key, value in config_dict.items():
        if key in CHILD_KEYS and CHILD_KEYS[key] is None:
            continue
        if key in CHILD_KEYS:
            value = {k: v for k, v in value.items() if k not in CHILD_KEYS[key]}
        out[key] = value
    return out


def parent_dir(workdir: Path, shared: Path | None = None) -> Path:
    """Where the parent lives: `shared`/parent (a sweep's shared parent), else
    `workdir`/parent."""
    return io.path(shared if shared is not None else workdir) / "parent"


def train_parent(
    config, workdir: Path, model: Model, dataset: Dataset, spawn_steps, shared: Path | None = None
) -> None:
    """Train the parent up to the last spawn step, keeping every spawn step. With
    `shared` (a parent a sweep trained once, `lmc run --parent=DIR`), check it instead:
    same parent config, every spawn step saved."""
    spawn_steps = sorted({int(k) for k in spawn_steps})
    if shared is not None:
        _check_shared_parent(config, shared, spawn_steps)
        return
    train(
        model=model,
        dataset=dataset,
        config=config,
        run_dir=parent_dir(workdir),
        seeds=parent_seeds(config),
        stop_step=spawn_steps[-1],
        keep_steps=spawn_steps,
        name="parent",
    )


def _check_shared_parent(config, shared, spawn_steps: list[int]) -> None:
    from lmc.runtime.provenance import config_to_dict

    made_by = io.path(shared) / "config.json"
    try:
        theirs = parent_identity(io.read_json(made_by))
    except (OSError, ValueError) as e:
        raise UserError(
            f"--parent={shared}: cannot read {made_by} ({e}); train the shared parent first "
            "(`lmc sweep` does, or run the first line of `lmc sweep --print`)"
        ) from None
    if theirs != parent_identity(config_to_dict(config)):
        raise UserError(
            f"--parent={shared} was trained by a different parent config (data, model, "
            "optimizer, seed or training length differ); use the parent of this config"
        )
    saved = set(committed_steps(io.path(shared) / "parent" / "checkpoints"))
    missing = [k for k in spawn_steps if k not in saved]
    if missing:
        raise UserError(
            f"--parent={shared} has no checkpoint for spawn step(s) {missing} (it keeps "
            f"{sorted(saved)}); train the shared parent with these steps first"
        )


def load_parent(
    config, workdir: Path, model: Model, dataset: Dataset, step: int, shared: Path | None = None
) -> dict:
    """The parent's full train state at spawn step `step`."""
    optimizer = make_optimizer_for(config, total_steps(config, dataset))
    template = init_state(model, optimizer, parent_seeds(config).init, dataset.train_x[:1])
    directory = parent_dir(workdir, shared) / "checkpoints"
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
    config, workdir: Path, model: Model, dataset: Dataset, children: list[Child],
    shared: Path | None = None,
) -> list[dict]:  # fmt: skip
    """Train every child to the end (resuming where one stopped); their final endpoints.

    With `config.spawn.population`, the unfinished children of each spawn step train
    together as one vmapped population first; afterwards every child is an ordinary
    finished run, so reruns and the sequential path read it back unchanged."""
    workdir = io.path(workdir)
    if config.spawn.population:
        _train_populations(config, workdir, model, dataset, children, shared)
    states = []
    for child in children:
        data = child.dataset or dataset
        start = None
        if child.spawn_step is not None and not _has_checkpoint(child.run_dir):
            start = load_parent(config, workdir, model, dataset, child.spawn_step, shared)
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


def _train_populations(config, workdir, model, dataset, children: list[Child], shared) -> None:
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
            start = load_parent(config, workdir, model, dataset, spawn_step, shared)
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
    config, workdir: Path, model: Model, dataset: Dataset, indices, shared: Path | None = None
) -> list[dict]:
    """Endpoints of children `indices` as the config describes them: spawned from the
    parent's step `config.spawn.step` (trained here if needed, or a `shared` parent) or
    independent inits."""
    workdir = io.path(workdir)
    k = int(config.spawn.step) if is_spawned(config) else None
    if k is not None:
        train_parent(config, workdir, model, dataset, [k], shared)
    children = [Child(i, workdir / f"child_{i}", k) for i in indices]
    return train_children(config, workdir, model, dataset, children, shared)


__all__ = [
    "Child",
    "MODES",
    "check_num_children",
    "child_seeds",
    "is_spawned",
    "load_parent",
    "parent_identity",
    "parent_seeds",
    "siblings",
    "train_children",
    "train_parent",
    "validate",
]
