"""Train step: lmc's jitted step vs a minimal hand-written jax.jit step, and vs PyTorch.

Both JAX steps train the same model (Flax module, same params) with the same optax
optimizer on the same device-resident batch; lmc's step additionally carries the
NaN guard, grad-norm metric and state dict. The PyTorch comparison trains the same
ResNet-20 architecture in eager mode (benchmarks/torch_resnet20.py) at the same
batch size; it is reported as images/s and skipped when torch is not installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import median_times, row
from lmc import models
from lmc.evaluate.metrics import cross_entropy
from lmc.training import init_state, make_train_step


def _steps(fn, n):
    def go():
        out = None
        for _ in range(n):
            out = fn()
        jax.block_until_ready(out)

    return go


def jax_steps(model_name: str, width, batch: int, shape, steps: int, repeats: int):
    """Seconds per step of lmc's step and of the minimal step, timed interleaved."""
    ours_step, plain_step = step_fns(model_name, width, batch, shape)
    t_ours, t_plain = median_times([_steps(ours_step, steps), _steps(plain_step, steps)], repeats)
    return t_ours / steps, t_plain / steps


def step_fns(model_name: str, width, batch: int, shape):
    """(lmc's step, a minimal hand-written step) as zero-argument callables."""
    model = models.build(
        model_name, 10, width=width, norm="batchnorm" if model_name != "mlp" else None
    )
    optimizer = optax.sgd(0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))

    ours = make_train_step(model, optimizer, augment=False)
    state = {"s": init_state(model, optimizer, 0, x[:1])}
    key = jax.random.key_data(jax.random.key(0))

    def ours_step():
        state["s"], m = ours(state["s"], x, y, key)
        return m["loss"]

    params, model_state = model.init(jax.random.key(0), x[:1])
    opt_state = optimizer.init(params)
    plain_state = {"p": params, "m": model_state, "o": opt_state}

    @jax.jit
    def plain(p, m, o, x, y):
        def loss_fn(p):
            logits, m2 = model.apply(p, m, x, True)
            return cross_entropy(logits, y).mean(), m2

        (loss, m2), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, o = optimizer.update(g, o, p)
        return optax.apply_updates(p, u), m2, o, loss

    def plain_step():
        s = plain_state
        s["p"], s["m"], s["o"], loss = plain(s["p"], s["m"], s["o"], x, y)
        return loss

    return ours_step, plain_step


def run(quick: bool) -> list[dict]:
    rows = []
    steps, repeats = (5, 3) if quick else (20, 5)
    for name, width, batch, shape in [
        ("mlp", 512, 128, (28, 28, 1)),
        ("resnet20", 1, 128, (32, 32, 3)),
    ]:
        if quick and name == "resnet20":
            batch = 32
        ours, plain = jax_steps(name, width, batch, shape, steps, repeats)
        rows.append(
            row(
                f"train_step/{name}",
                ours,
                plain,
                f"lmc step vs minimal jax.jit step, batch {batch}; bar ratio >= 0.9; "
                f"{batch / ours:.0f} img/s",
            )
        )
    rows.extend(torch_comparison(quick))
    return rows


def torch_comparison(quick: bool) -> list[dict]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return [
            {
                "name": "train_step/resnet20_vs_torch",
                "ours_s": None,
                "baseline_s": None,
                "ratio": None,
                "detail": "skipped: torch not installed (pip install -e '.[bench]')",
            }
        ]
    from benchmarks.torch_resnet20 import torch_step_fn

    batch = 32 if quick else 128
    steps, repeats = (3, 3) if quick else (10, 5)
    ours_step, _ = step_fns("resnet20", 1, batch, (32, 32, 3))
    # Interleaved with lmc's step, like every other pair (median_times warms both up).
    t_ours, t_theirs = median_times(
        [_steps(ours_step, steps), torch_step_fn(batch, steps)], repeats
    )
    ours, theirs = t_ours / steps, t_theirs / steps
    return [
        row(
            "train_step/resnet20_vs_torch",
            ours,
            theirs,
            f"ResNet-20 x1 batch {batch}: lmc {batch / ours:.0f} img/s, PyTorch eager "
            f"{batch / theirs:.0f} img/s ({__import__('torch').get_num_threads()} threads)",
        )
    ]
