"""Train K sibling networks as one vmapped population: one jitted step for all children.

The children of a spawn (or K independent inits) differ only in their seeds, so their
train steps have identical shapes: stacking their states on a leading axis and
`jax.vmap`-ing lmc's own train step trains all of them with one kernel launch per op.
On small models this fills the machine far better than K sequential runs (see
benchmarks/bench_population.py). Each child sees exactly its own batches
(`dataset.train_batch(child_data_seed, step)`) and augmentation keys, so its
trajectory matches its sequential training up to float reduction order.

Single-process, single-device per population (use sequential training with a mesh
for models that need data parallelism).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lmc.checkpoint import Checkpointer
from lmc.data import Dataset
from lmc.errors import UserError
from lmc.models import Model
from lmc.progress import Progress
from lmc.train import (
    DivergenceError,
    MetricsWriter,
    Seeds,
    _augments,
    _fill,
    init_state,
    make_optimizer_for,
    make_train_step,
    total_steps,
)


def stack(trees: Sequence):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, k: int) -> list:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def make_population_step(model: Model, optimizer, augment: bool):
    """vmap of lmc's train step over (state, x, y, aug key) stacked on axis 0."""
    step = make_train_step(model, optimizer, augment)
    return jax.jit(jax.vmap(step), donate_argnums=(0,))


def train_population(
    *,
    model: Model,
    dataset: Dataset,
    config,
    run_dir: str | Path,
    seeds: Sequence[Seeds],
    start_state: dict | None = None,
    name: str = "population",
) -> list[dict]:
    """Train len(seeds) children to the end together; returns their final states.

    `start_state` (a parent's state) seeds every child; otherwise child i is
    initialized from seeds[i].init. The stacked state is checkpointed in
    `run_dir/checkpoints` every `config.checkpoint.every_steps` and resumed from.
    """
    if not seeds:
        raise UserError("a population needs at least one child")
    run_dir = Path(run_dir)
    num_steps = total_steps(config, dataset)
    optimizer = make_optimizer_for(config, num_steps)
    states = []
    for s in seeds:
        state = init_state(model, optimizer, s.init, dataset.train_x[:1])
        states.append(_fill(state, start_state) if start_state is not None else state)
    template = stack(states)
    k = len(seeds)
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        every_steps=config.checkpoint.every_steps or num_steps,
        max_to_keep=config.checkpoint.get("max_to_keep", 2),
    )
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    try:
        step0, restored = checkpointer.restore_latest(template)
        state = restored if restored is not None else template
        step = int(np.asarray(state["step"])[0])
        writer.truncate_after(step)
        train_step = make_population_step(model, optimizer, _augments(dataset, config))
        keys = jnp.stack([jax.random.key_data(jax.random.key(s.aug)) for s in seeds])
        bs = int(config.batch_size)
        log_every = int(config.get("log_every_steps", 50))
        progress = Progress(name, step, num_steps, enabled=config.get("progress", True))
        t0 = time.perf_counter()
        while step < num_steps:
            batches = [dataset.train_batch(s.data, step, bs) for s in seeds]
            xs = np.stack([b[0] for b in batches])
            ys = np.stack([b[1] for b in batches])
            state, metrics = train_step(state, xs, ys, keys)
            step += 1
            will_save = checkpointer.manager.should_save(step) and step < num_steps
            if step % log_every == 0 or will_save or step == num_steps:
                bad = np.asarray(state["first_bad_step"])
                if (bad >= 0).any():
                    i = int(np.argmax(bad >= 0))
                    raise DivergenceError(
                        f"{name}: child {i} diverged (NaN/Inf) at step "
                        f"{int(bad[i])}; the last good checkpoint is kept"
                    )
                writer.write(
                    {
                        "step": step,
                        "wall_s": round(time.perf_counter() - t0, 3),
                        **{f"train_{m}": np.asarray(v).tolist() for m, v in metrics.items()},
                    }
                )
                if will_save:
                    checkpointer.save(step, state)
            progress.update(step)
        progress.close()
        checkpointer.save(num_steps, state, force=True)
        return unstack(state, k)
    finally:
        checkpointer.close()


__all__ = ["train_population", "make_population_step", "stack", "unstack"]
