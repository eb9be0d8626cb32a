"""Input pipeline headroom: batches/s the loader delivers vs batches/s the step consumes.

Delivered = `Dataset.train_batch(seed, step, batch)` (host gather from the step-indexed
permutation) plus the transfer to device. Consumed = lmc's jitted train step on
device-resident batches. Headroom = delivered / consumed (bar: >= 10x). This is not a
speed-up of lmc over a baseline: the rows carry `headroom`, not `ratio`, and run.py
lists them in their own table.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from benchmarks.common import headroom_row, median_times
from lmc import models
from lmc.data.synthetic import load_synthetic
from lmc.training import init_state, make_train_step


def run(quick: bool) -> list[dict]:
    rows = []
    n = 10_000 if quick else 50_000
    for name, shape, width, batch in [
        ("mlp", (28, 28, 1), 512, 128),
        ("resnet20", (32, 32, 3), 1, 128),
    ]:
        ds = load_synthetic(num_train=n, num_test=10, shape=shape)
        steps = 10 if quick else 50
        if name == "resnet20":
            steps = 2 if quick else 5

        def deliver(steps=steps, ds=ds, batch=batch):
            out = None
            for step in range(steps):
                out = jax.device_put(ds.train_batch(0, step, batch))
            jax.block_until_ready(out)

        model = models.build(name, 10, width=width, norm="batchnorm" if name != "mlp" else None)
        opt = optax.sgd(0.05, momentum=0.9)
        train_step = make_train_step(model, opt, augment=False)
        x, y = jax.device_put(ds.train_batch(0, 0, batch))
        state = {"s": init_state(model, opt, 0, np.asarray(x[:1]))}
        key = jax.random.key_data(jax.random.key(0))

        def consume(steps=steps, state=state, x=x, y=y, key=key, train_step=train_step):
            m = None
            for _ in range(steps):
                state["s"], m = train_step(state["s"], x, y, key)
            jax.block_until_ready(m)

        t_deliver, t_consume = median_times([deliver, consume], 3)
        rows.append(
            headroom_row(
                f"input_pipeline/{name}",
                t_deliver / steps,
                t_consume / steps,
                f"loader {steps / t_deliver:.0f} batches/s vs step {steps / t_consume:.0f} "
                f"batches/s (batch {batch}); headroom = loader rate / step rate, bar >= 10",
            )
        )
    return rows
