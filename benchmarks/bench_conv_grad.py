"""conv_grad: the weight gradient of ResNet-20's convolutions, lmc's tap path vs XLA's.

For each stage's 3x3 stride-1 conv (32x32x16, 16x16x32, 8x8x64 at width 1) this times
d(loss)/d(kernel) through `lmc.models.conv.conv_general_dilated` with the tap path
(one matmul per kernel tap over cache-sized batch chunks) and with XLA's own
backward-filter convolution, same inputs, same jit. On a GPU/TPU the tap path is off
by default ("auto"); this benchmark forces it so the comparison still runs.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import median_times, row

conv = importlib.import_module("lmc.models.conv")


def run(quick: bool) -> list[dict]:
    batch, repeats = (32, 3) if quick else (128, 7)
    rng = np.random.default_rng(0)
    rows = []
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        x = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, c, c)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
        old = conv.WEIGHT_GRAD
        try:
            conv.WEIGHT_GRAD = "taps"
            taps = jax.jit(lambda x, w, g: _grad(x, w, g))
            jax.block_until_ready(taps(x, w, g))  # traced under "taps"
            conv.WEIGHT_GRAD = "xla"
            xla = jax.jit(lambda x, w, g: _grad(x, w, g))
            jax.block_until_ready(xla(x, w, g))
        finally:
            conv.WEIGHT_GRAD = old
        err = float(jnp.abs(taps(x, w, g) - xla(x, w, g)).max() / jnp.abs(xla(x, w, g)).max())
        t_taps, t_xla = median_times([_timed(taps, x, w, g), _timed(xla, x, w, g)], repeats)
        rows.append(
            row(
                f"conv_grad/{hw}x{hw}x{c}",
                t_taps,
                t_xla,
                f"3x3 conv weight gradient, batch {batch}: tap matmuls over cache-sized "
                f"batch chunks vs XLA's backward-filter conv; max rel. difference {err:.1e}",
            )
        )
    return rows


def _timed(fn, *args):
    return lambda: jax.block_until_ready(fn(*args))


def _grad(x, w, g):
    dims = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    f = lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)  # noqa: E731
    return jax.vjp(f, w)[1](g)[0]
