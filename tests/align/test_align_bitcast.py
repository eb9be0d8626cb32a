"""The tracer's rule for bitcast_convert_type (random floats, flax's NNX bridge)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmc import align


class Inner(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(4, 8, rngs=rngs)
        self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


def test_a_bridged_nnx_model_traces_without_warnings_to_its_hidden_units():
    x = np.ones((3, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old behaviour warned "unknown primitive"
        spec = align.spec_from_model(nnx.bridge.ToLinen(Inner), x)
    assert not spec.notes
    # By hand: the 8 hidden units are a's kernel columns and bias, b's kernel rows.
    ((name, refs),) = spec.axes.items()
    assert spec.sizes[name] == 8
    assert {(r.path[-2:], r.axis) for r in refs} == {
        (("a", "kernel"), 1), (("a", "bias"), 0), (("b", "kernel"), 0)}  # fmt: skip


def test_bit_width_changes_keep_the_leading_axes_and_pin_the_sub_words():
    def fn(p, x):
        h = x @ p["w1"]
        halves = jax.lax.bitcast_convert_type(h, jnp.uint16)  # (n, 8, 2)
        return jax.lax.bitcast_convert_type(halves, jnp.float32) @ p["w2"]

    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(4, 8)).astype(np.float32),
         "w2": rng.normal(size=(8, 3)).astype(np.float32)}  # fmt: skip
    x = rng.normal(size=(5, 4)).astype(np.float32)
    spec = align.spec_from_function(fn, p, x)
    assert list(spec.sizes.values()) == [8]
    report = align.check(fn, spec, p, x)  # a random permutation leaves fn unchanged
    assert report.invariant and report.moved == 1
