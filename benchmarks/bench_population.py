"""population: K=8 sibling MLPs as one vmapped population vs 8 sequential trainings.

Both train the same 8 children (same seeds, same batches) for the same steps with
lmc's own step; the population stacks them and runs one jitted vmapped step
(`lmc.population`). Bar: >= 1.5x on CPU.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from benchmarks.common import median_times, row
from lmc import models
from lmc.data.synthetic import load_synthetic
from lmc.population import make_population_step, stack
from lmc.train import init_state, make_train_step

K = 8


def run(quick: bool) -> list[dict]:
    width, batch = (128, 64) if quick else (256, 128)
    steps = 20 if quick else 100
    ds = load_synthetic(num_train=4096, num_test=16, shape=(28, 28, 1))
    model = models.build("mlp", 10, width=width, depth=3)
    opt = optax.sgd(0.05, momentum=0.9)
    keys = [jax.random.key_data(jax.random.key(i)) for i in range(K)]

    single = make_train_step(model, opt, augment=False)
    seq_states = {"s": [init_state(model, opt, i, ds.train_x[:1]) for i in range(K)]}

    def sequential():
        out = None
        for i in range(K):
            s = seq_states["s"][i]
            for step in range(steps):
                x, y = ds.train_batch(i, step, batch)
                s, out = single(s, x, y, keys[i])
            seq_states["s"][i] = s
        jax.block_until_ready(out)

    pop_step = make_population_step(model, opt, augment=False)
    pop_state = {"s": stack([init_state(model, opt, i, ds.train_x[:1]) for i in range(K)])}
    stacked_keys = np.stack([np.asarray(k) for k in keys])

    def population():
        out = None
        for step in range(steps):
            batches = [ds.train_batch(i, step, batch) for i in range(K)]
            xs = np.stack([b[0] for b in batches])
            ys = np.stack([b[1] for b in batches])
            pop_state["s"], out = pop_step(pop_state["s"], xs, ys, stacked_keys)
        jax.block_until_ready(out)

    t_pop, t_seq = median_times([population, sequential], 3)
    return [
        row(
            f"population/mlp3x{width}_k{K}",
            t_pop,
            t_seq,
            f"{K} children x {steps} steps, batch {batch}: one vmapped step vs {K} "
            f"sequential runs ({jax.default_backend()}); bar ratio >= 1.5",
        )
    ]
