"""Training: the train state, one loop (one network or a vmapped population), siblings.

    from lmc import training
    state = training.train(model=model, dataset=data, config=config, run_dir=d, seeds=seeds)
    endpoints = training.siblings(config, workdir, model, data, indices=(0, 1))

Files: `state.py` (state, seeds, training length), `optim.py` (optax from config),
`step.py` (the jitted update), `population.py` (the vmapped update), `loop.py` (the
loop and its hooks), `metrics_log.py` (metrics.jsonl), `siblings.py` (parents,
children, spawning).
"""

from lmc.training.loop import DivergenceError, Member, train, train_population
from lmc.training.siblings import (
    Child,
    check_num_children,
    child_seeds,
    is_spawned,
    load_parent,
    parent_identity,
    parent_seeds,
    siblings,
    train_children,
    train_parent,
)
from lmc.training.siblings import validate as validate_spawn
from lmc.training.state import Seeds, endpoint, init_state, make_optimizer_for, total_steps
from lmc.training.step import make_train_step

__all__ = [
    "Child",
    "DivergenceError",
    "Member",
    "Seeds",
    "check_num_children",
    "child_seeds",
    "endpoint",
    "init_state",
    "is_spawned",
    "load_parent",
    "make_optimizer_for",
    "make_train_step",
    "parent_identity",
    "parent_seeds",
    "siblings",
    "total_steps",
    "train",
    "train_children",
    "train_parent",
    "train_population",
    "validate_spawn",
]
