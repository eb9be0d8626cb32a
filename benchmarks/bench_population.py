"""population: K=8 sibling MLPs as one vmapped population vs 8 sequential trainings.

Both train the same 8 children (same seeds, same batches) for the same steps with
lmc's own step; the population stacks them and runs one jitted vmapped step
(`lmc.training.population`). Bar: >= 1.5x on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import median_times, row
from lmc import models
from lmc.data.synthetic import load_synthetic
from lmc.training import init_state, make_train_step
from lmc.training.population import population_step, stack
from lmc.training.step import step_function

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

    pop_step = population_step(step_function(model, opt, augment=False))
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
    # Diagnosis: the same two steps on device-resident batches (no input pipeline),
    # and how busy one child's step keeps the device.
    x, y = (jnp.asarray(a) for a in ds.train_batch(0, 0, batch))
    xs, ys = jnp.stack([x] * K), jnp.stack([y] * K)

    def one_child():
        s = seq_states["s"][0]
        for _ in range(steps):
            s, out = single(s, x, y, keys[0])
        seq_states["s"][0] = s
        jax.block_until_ready(out)

    def vmapped():
        for _ in range(steps):
            pop_state["s"], out = pop_step(pop_state["s"], xs, ys, stacked_keys)
        jax.block_until_ready(out)

    t_one, t_vmapped = median_times([one_child, vmapped], 3)
    big = jnp.ones((1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    (t_matmul,) = median_times([lambda: jax.block_until_ready(matmul(big))], 5)
    sizes = [28 * 28, width, width, width, 10]
    flops = 6 * batch * sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    return [
        row(
            f"population/mlp3x{width}_k{K}",
            t_pop,
            t_seq,
            f"{K} children x {steps} steps, batch {batch}: one vmapped step vs {K} "
            f"sequential runs ({jax.default_backend()}); bar ratio >= 1.5",
        ),
        row(
            f"population/mlp3x{width}_k{K}_step_only",
            t_vmapped,
            K * t_one,
            f"the same steps on device-resident batches: vmapped K={K} vs {K} x one "
            f"child; one child's step alone runs at {flops * steps / t_one / 1e9:.0f} "
            f"GFLOP/s (matmul FLOPs) where a 1024^3 matmul reaches "
            f"{2 * 1024**3 / t_matmul / 1e9:.0f}",
        ),
    ]
