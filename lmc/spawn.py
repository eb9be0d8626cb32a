"""Sibling networks: children spawned from a parent's step-k checkpoint, or independent.

Layout in the workdir:

    parent/checkpoints/<k>/     the parent's state at each spawn step (kept forever)
    child_<i>/                  child i (spawn mode: continued from the parent at step k)
    k<k>/child_<i>/             the same for sweeps over several spawn steps

Children differ from each other only in the seeds `config.spawn.child_seeds` gives them
(data order and augmentation; and init in independent mode).
"""

from __future__ import annotations

from pathlib import Path

from lmc.checkpoint import Checkpointer
from lmc.data import Dataset
from lmc.errors import UserError, choose
from lmc.models import Model
from lmc.train import Seeds, init_state, make_optimizer_for, total_steps, train

MODES = ("independent", "spawn")


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


def validate(config, dataset: Dataset, spawn_steps) -> None:
    choose("spawn mode", config.spawn.mode, MODES)
    num_steps = total_steps(config, dataset)
    if config.spawn.mode == "spawn":
        for k in spawn_steps:
            if not 0 <= int(k) < num_steps:
                raise UserError(
                    f"spawn step {k} must be in [0, total steps={num_steps}); lower "
                    "config.spawn.step or train longer"
                )


def train_parent(config, workdir: Path, model: Model, dataset: Dataset, spawn_steps) -> None:
    """Train the shared parent up to the last spawn step, keeping every spawn step."""
    spawn_steps = sorted({int(k) for k in spawn_steps})
    train(
        model=model,
        dataset=dataset,
        config=config,
        run_dir=workdir / "parent",
        seeds=parent_seeds(config),
        stop_step=spawn_steps[-1],
        keep_steps=spawn_steps,
        name="parent",
    )


def load_parent(config, workdir: Path, model: Model, dataset: Dataset, step: int) -> dict:
    optimizer = make_optimizer_for(config, total_steps(config, dataset))
    template = init_state(model, optimizer, parent_seeds(config).init, dataset.train_x[:1])
    ckpt = Checkpointer(workdir / "parent" / "checkpoints", every_steps=1)
    try:
        if step not in ckpt.steps():
            raise UserError(
                f"parent checkpoint for spawn step {step} is missing in "
                f"{workdir / 'parent' / 'checkpoints'}; rerun to retrain the parent"
            )
        return ckpt.restore(step, template)
    finally:
        ckpt.close()


def train_child(
    config,
    workdir: Path,
    model: Model,
    dataset: Dataset,
    index: int,
    spawn_step: int | None,
    run_dir: Path | None = None,
) -> dict:
    """Train child `index` to the end; spawned from the parent at `spawn_step` if given."""
    run_dir = run_dir or workdir / f"child_{index}"
    start = None
    if spawn_step is not None and not _has_checkpoint(run_dir):
        start = load_parent(config, workdir, model, dataset, spawn_step)
    return train(
        model=model,
        dataset=dataset,
        config=config,
        run_dir=run_dir,
        seeds=child_seeds(config, index),
        start_state=start,
        name=run_dir.name,
    )


def _has_checkpoint(run_dir: Path) -> bool:
    ckpt_dir = run_dir / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def make_siblings(
    config, workdir: str | Path, model: Model, dataset: Dataset, num_children: int = 2
) -> list[dict]:
    """Final states of `num_children` siblings as the config describes them."""
    workdir = Path(workdir)
    k = int(config.spawn.step)
    validate(config, dataset, [k])
    spawned = config.spawn.mode == "spawn"
    if spawned:
        train_parent(config, workdir, model, dataset, [k])
    if config.spawn.get("population", False):
        _train_as_population(config, workdir, model, dataset, num_children, k if spawned else None)
    return [
        train_child(config, workdir, model, dataset, i, k if spawned else None)
        for i in range(num_children)
    ]


def _train_as_population(
    config, workdir: Path, model, dataset, num_children: int, spawn_step: int | None
) -> None:
    """Train the children that are not finished yet as one vmapped population, then
    store each child's final state as its own checkpoint, so everything downstream
    (and every rerun) sees ordinary child runs."""
    from lmc.population import train_population

    final = total_steps(config, dataset)
    todo = [
        i
        for i in range(num_children)
        if not (workdir / f"child_{i}" / "checkpoints" / str(final)).is_dir()
    ]
    if not todo:
        return
    start = (
        load_parent(config, workdir, model, dataset, spawn_step) if spawn_step is not None else None
    )
    states = train_population(
        model=model,
        dataset=dataset,
        config=config,
        run_dir=workdir / "population",
        seeds=[child_seeds(config, i) for i in todo],
        start_state=start,
    )
    for i, state in zip(todo, states, strict=True):
        ckpt = Checkpointer(workdir / f"child_{i}" / "checkpoints", every_steps=final)
        try:
            ckpt.save(final, state, force=True)
        finally:
            ckpt.close()


def endpoint(state: dict) -> dict:
    """The part of a train state that defines the network."""
    return {"params": state["params"], "model_state": state["model_state"]}


__all__ = ["make_siblings", "train_parent", "train_child", "child_seeds", "endpoint"]
