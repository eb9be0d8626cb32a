"""The straight-through estimator (Ainsworth et al. 2022, Algorithm 2): started from
weight matching it keeps a planted solution, and on a pair trained for real it must
lower the midpoint loss that weight matching leaves (the test fails if its update
step did nothing)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import train_pair
from test_align_methods import INPUTS, _same
from test_align_trace import model_spec_shapes, random_variables

from lmc import align, data, models


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mlp_pair(digits):
    model = models.build("mlp", 10, width=64, depth=2)
    a, b = train_pair(model, digits, steps=300, lr=3e-3)
    return model, a["params"], b["params"]


def test_ste_runs_from_weight_matching_and_keeps_a_planted_solution():
    model, spec, shapes = model_spec_shapes("mlp", width=12, depth=2)
    a = random_variables(model, 0, shapes=shapes)["params"]
    planted = align.random_permutations(spec, jax.random.key(3), {"params": a, "model_state": {}})
    b = align.apply_permutation(spec.subtree("params"), planted, a)
    labels = np.random.default_rng(1).integers(0, 10, size=96)

    def loss_fn(params, batch):
        x, y = batch
        logits, _ = model.apply(params, {}, x, False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    batches = [(INPUTS[i : i + 32], labels[i : i + 32]) for i in range(0, 96, 32)]
    perms, info = align.ste(spec, a, b, loss_fn, batches, optimizer=optax.adam(1e-4))
    assert info["steps"] == 3 and all(np.isfinite(info["losses"]))
    assert _same(perms, align.inverse(planted))


def test_ste_lowers_the_midpoint_loss_that_weight_matching_leaves(mlp_pair, digits):
    model, pa, pb = mlp_pair
    spec = align.spec_from_model(model, digits.train_x[:1]).subtree("params")
    x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)

    @jax.jit
    def loss(params, x=x, y=y):
        logits, _ = model.apply(params, {}, x, False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def midpoint_loss(perms):
        pb_aligned = align.apply_permutation(spec, perms, pb)
        return float(loss(jax.tree.map(lambda u, v: 0.5 * (u + v), pa, pb_aligned)))

    ends = 0.5 * (float(loss(pa)) + float(loss(pb)))
    wm_perms, _ = align.weight_matching(spec, pa, pb, key=jax.random.key(0))
    wm_excess = midpoint_loss(wm_perms) - ends
    # Premise: weight matching is not already optimal here (independent inits, a
    # width-64 MLP): it leaves a midpoint excess well above float noise.
    assert wm_excess > 0.02, wm_excess

    steps = 100
    order = [data.batch_indices(7, t, 256, digits.num_train) for t in range(steps)]
    batches = [(x[i], y[i]) for i in order]
    perms, info = align.ste(
        spec, pa, pb, lambda p, batch: loss(p, *batch), batches, key=jax.random.key(0),
        optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, steps)),
    )  # fmt: skip
    assert info["steps"] == steps
    ste_excess = midpoint_loss(perms) - ends
    # STE starts from these very permutations; with its update step a no-op the
    # proxy stays at A and every projection returns weight matching's answer, so the
    # excess would not move at all. Ainsworth et al. report STE closing most of the
    # gap weight matching leaves on MLPs; removing at least a fifth of it is a loose
    # floor for 100 steps on digits.
    assert ste_excess < 0.8 * wm_excess, (ste_excess, wm_excess)
