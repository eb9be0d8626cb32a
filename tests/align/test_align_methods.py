"""Activation matching and MergeMany (the straight-through estimator: test_ste.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_align_trace import model_spec_shapes, random_variables

from lmc import align
from lmc.errors import UserError

RNG = np.random.default_rng(0)
INPUTS = RNG.normal(size=(96, 8, 8, 3)).astype(np.float32)


def _tanh_net(params, x):
    """Conv -> tanh -> NHWC flatten -> dense -> tanh -> head: every unit alive."""
    h = jax.lax.conv_general_dilated(
        x, params["conv"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + params["cb"]).reshape(x.shape[0], -1)
    h = jnp.tanh(h @ params["dense"] + params["db"])
    return h @ params["head"]


def _tanh_params(seed):
    rng = np.random.default_rng(seed)
    shapes = {"conv": (3, 3, 3, 6), "cb": (6,), "dense": (4 * 4 * 6, 7), "db": (7,), "head": (7, 3)}
    return {
        k: (rng.normal(size=s) / np.sqrt(s[0] if len(s) == 2 else 27)).astype(np.float32)
        for k, s in shapes.items()
    }


def _same(perms, expected, mask=None):
    for k in expected:
        got, want = np.asarray(perms[k]), np.asarray(expected[k])
        m = slice(None) if mask is None else mask[k]
        if not np.array_equal(got[m], want[m]):
            return False
    return True


def test_activation_matching_recovers_planted_permutations():
    a = _tanh_params(0)
    spec = align.spec_from_function(_tanh_net, a, INPUTS[:4])
    # The conv channels reach the dense layer through the flatten: a blocked axis.
    assert align.AxisRef(("dense",), 0, 1) in spec.axes["cb"] and spec.sizes["cb"] == 6
    planted = align.random_permutations(spec, jax.random.key(1), a)
    b = align.apply_permutation(spec, planted, a)
    # Uneven batches: the last one has another shape (traced again).
    perms, info = align.activation_matching(
        spec, _tanh_net, a, b, [INPUTS[:40], INPUTS[40:80], INPUTS[80:]]
    )
    assert _same(perms, align.inverse(planted))
    assert info["batches"] == 3
    site = info["stats"]["db"][0]
    np.testing.assert_allclose(site["mean_b"], site["mean_a"], rtol=1e-5, atol=1e-6)
    assert site["count"] == 96


def test_activation_matching_on_a_batchnorm_model():
    model, spec, shapes = model_spec_shapes("cnn", width=4, norm="batchnorm")
    a = random_variables(model, 3, shapes=shapes)
    planted = align.random_permutations(spec, jax.random.key(2), a)
    b = align.apply_permutation(spec, planted, a)
    batches = [(INPUTS[i : i + 48], None) for i in (0, 48)]
    perms, info = align.activation_matching(spec, model, a, b, batches)
    # ReLU units that never fire carry no signal: compare the live ones only.
    live = {k: info["stats"][k][0]["std_a"] > 0 for k in perms}
    assert all(v.sum() >= 2 for v in live.values())
    assert _same(perms, align.inverse(planted), live)
    with pytest.raises(UserError, match="model_state"):
        align.activation_matching(spec, model, a["params"], b["params"], batches)


def test_merge_many_aligns_permuted_copies():
    model, spec, shapes = model_spec_shapes("mlp", width=10, depth=2)
    spec = spec.subtree("params")
    base = random_variables(model, 4, shapes=shapes)["params"]
    rng = np.random.default_rng(5)
    copies = []
    for i in range(3):
        p = align.random_permutations(spec, jax.random.key(10 + i), base)
        noisy = jax.tree.map(lambda v: v + 0.01 * rng.normal(size=v.shape).astype(np.float32), base)
        copies.append(align.apply_permutation(spec, p, noisy))
    merged, perms, info = align.merge_many(spec, copies, key=jax.random.key(0))
    assert len(perms) == 3 and info["passes"] >= 1
    # All copies end up in one gauge, so their mean is (a permutation of) the base
    # model up to the averaged noise; a mismatched average would be far off.
    to_base, _ = align.weight_matching(spec, base, merged)
    back = align.apply_permutation(spec, to_base, merged)
    worst = max(
        float(np.abs(np.asarray(x) - y).max())
        for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(base), strict=True)
    )
    assert worst < 0.05
    with pytest.raises(UserError, match="at least 2"):
        align.merge_many(spec, copies[:1])


def test_activation_matching_on_the_transformer_lm():
    """Token ids stay integers when traced; (N, T) features and heads work: a planted
    element of the traced spec is recovered, and two independent inits align."""
    from lmc import models

    model = models.build("transformer", 64, width=16, depth=2, heads=2, context=8)
    tokens = RNG.integers(0, 64, size=(4, 16, 8)).astype(np.int32)
    spec = align.spec_from_model(model, tokens[0])
    assert len(spec.axes) == 9  # residual; per block mlp, heads, qk, vo
    shapes, _ = align.trace.model_shapes(model, tokens[0])
    a, other = (
        jax.tree.map(lambda s, r=r: (r.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
        for r in (np.random.default_rng(1), np.random.default_rng(2))
    )
    planted = align.random_permutations(spec, jax.random.key(4), a)
    b = align.apply_permutation(spec, planted, a)
    perms, info = align.activation_matching(spec, model, a, b, list(tokens[:2]))
    assert _same(perms, align.inverse(planted)) and info["batches"] == 2
    perms, info = align.activation_matching(spec, model, a, other, [(t, t) for t in tokens])
    aligned = align.apply_permutation(spec, perms, other)
    apply = jax.jit(lambda t: model.apply(t["params"], {}, tokens[0], False)[0])
    np.testing.assert_allclose(apply(aligned), apply(other), atol=1e-4)  # same function
    assert info["batches"] == 4
