"""The transformer LM: shapes, causality, permutation symmetries (oracle spec), LM evaluation.

Every test uses the same small shapes, one jitted apply per model and NumPy-drawn
parameters: eager Flax init/apply compiles each primitive separately, which would
dominate the run time on a busy CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc import align, evaluate, models
from lmc.errors import UserError
from lmc.evaluate import metrics
from lmc.runtime import sharding
from tests.oracles import transformer_spec


@functools.cache
def build(positions="learned"):
    return models.build(
        "transformer",
        256,
        width=32,
        depth=2,
        heads=4,
        context=16,
        norm="layernorm",
        positions=positions,
    )


@functools.cache
def jitted_apply(model):
    return jax.jit(model.apply, static_argnums=3)


def perturbed_init(model, seed=0):
    """Random parameters of the model's shapes, drawn with NumPy (no init to compile).
    Every leaf is random, so LayerNorm/bias parameters are not all 0/1 and a wrong
    permutation of any of them would show."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype), shapes[0])
    return params, {}


def apply(model, params, state, x, train=False):
    return jitted_apply(model)(params, state, x, train)


def tokens(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape), jnp.int32)


def test_shapes_and_causality():
    model = build()
    x = tokens((4, 16))
    params, state = perturbed_init(model)
    assert state == {} and isinstance(params, dict)
    logits, _ = apply(model, params, state, x, False)
    assert logits.shape == (4, 16, 256) and logits.dtype == jnp.float32
    # Changing token 10 leaves the predictions at positions < 10 unchanged.
    x2 = x.at[:, 10].set((x[:, 10] + 1) % 256)
    logits2, _ = apply(model, params, state, x2, False)
    np.testing.assert_allclose(logits[:, :10], logits2[:, :10], atol=1e-5)
    assert not np.allclose(logits[:, 10:], logits2[:, 10:])
    # Shorter sequences use the first positions.
    short, _ = apply(model, params, state, x[:, :5], False)
    np.testing.assert_allclose(short, logits[:, :5], atol=1e-5)


def test_config_errors():
    with pytest.raises(UserError, match="divisible"):
        models.build("transformer", 256, width=30, heads=4)
    with pytest.raises(UserError, match="layernorm"):
        models.build("transformer", 256, norm="batchnorm")
    with pytest.raises(UserError, match="positions"):
        models.build("transformer", 256, positions="sinusoidal")


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_function_invariance_under_oracle_spec(positions):
    model = build(positions)
    x = tokens((4, 16))
    params, state = perturbed_init(model)
    tree = {"params": params, "model_state": state}
    spec = transformer_spec(tree)
    expected = {"P_residual", "P_block0_mlp", "P_block0_heads", "P_block0_vo", "P_block1_mlp"}
    assert expected <= set(spec.names)
    assert ("P_block0_qk" in spec.names) == (positions == "learned")
    assert spec.sizes["P_residual"] == 32 and spec.sizes["P_block0_heads"] == 4
    assert spec.sizes["P_block0_vo"] == 8 and spec.sizes["P_block0_mlp"] == 128
    perms = align.random_permutations(spec, jax.random.key(1), tree)
    assert all(not np.array_equal(p, np.arange(len(p))) for p in perms.values())
    permuted = align.apply_permutation(spec, perms, tree)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params, permuted["params"])
    assert sum(jax.tree.leaves(changed)) > 20  # almost every leaf moved
    for train in (False, True):
        want, _ = apply(model, params, state, x, train)
        got, _ = apply(model, permuted["params"], permuted["model_state"], x, train)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_rotary_breaks_the_within_head_qk_symmetry():
    """Why the oracle drops P_qk with rotary positions: permuting query/key dimensions
    is exact with learned positions and changes the function with RoPE."""
    x = tokens((4, 16))
    for positions, exact in (("learned", True), ("rotary", False)):
        model = build(positions)
        params, state = perturbed_init(model)
        perm = np.random.default_rng(0).permutation(8)
        p2 = jax.tree.map(lambda a: a, params)
        for name in ("query", "key"):
            leaf = p2["block0"]["attn"][name]
            leaf["kernel"] = leaf["kernel"][:, :, perm]
            leaf["bias"] = leaf["bias"][:, perm]
        a, _ = apply(model, params, state, x, False)
        b, _ = apply(model, p2, state, x, False)
        assert np.allclose(a, b, atol=2e-5) == exact


def test_per_head_within_head_permutations_are_also_symmetries():
    """The spec's shared within-head permutations are a subgroup: distinct ones per head
    (not expressible as a PermutationSpec) keep the function too."""
    model = build()
    x = tokens((4, 16))
    params, state = perturbed_init(model)
    rng = np.random.default_rng(1)
    attn = {k: dict(v) for k, v in params["block1"]["attn"].items()}
    for h in range(4):
        qk, vo = rng.permutation(8), rng.permutation(8)
        for name, perm in (("query", qk), ("key", qk), ("value", vo)):
            attn[name]["kernel"] = (
                attn[name]["kernel"].at[:, h].set(attn[name]["kernel"][:, h, perm])
            )
            attn[name]["bias"] = attn[name]["bias"].at[h].set(attn[name]["bias"][h, perm])
        attn["out"]["kernel"] = attn["out"]["kernel"].at[h].set(attn["out"]["kernel"][h, vo])
    p2 = {**params, "block1": {**params["block1"], "attn": attn}}
    a, _ = apply(model, params, state, x, False)
    b, _ = apply(model, p2, state, x, False)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_tracer_derives_the_oracle_spec():
    model = build()
    x = np.zeros((2, 16), np.int32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    traced = align.spec_from_model(model, x)
    oracle = transformer_spec({"params": params, "model_state": state})
    assert traced.equivalent(oracle), traced.diff(oracle)


def test_weight_matching_undoes_a_planted_permutation():
    model = build()
    params, state = perturbed_init(model)
    a = {"params": params, "model_state": state}
    spec = transformer_spec(a)
    planted = align.apply_permutation(
        spec, align.random_permutations(spec, jax.random.key(3), a), a
    )
    # Production aligns with the traced spec; the oracle only planted the permutation.
    traced = align.spec_from_model(model, np.zeros((2, 16), np.int32))
    perms, _ = align.weight_matching(traced, a["params"], planted["params"],
                                     key=jax.random.key(0), max_iter=20)  # fmt: skip
    aligned = align.apply_permutation(traced, perms, planted)
    for got, want in zip(jax.tree.leaves(aligned["params"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_evaluator_handles_token_labels_with_a_ragged_batch_on_a_mesh():
    model = build()
    x = tokens((4, 16))
    y = tokens((4, 16), seed=1)
    params, state = perturbed_init(model)
    logits, _ = apply(model, params, state, x, False)
    want_loss = float(metrics.cross_entropy(logits, y).mean())
    # 3 sequences in batches of 2: the second batch is padded and masked.
    mesh = sharding.mesh_from_config(None)  # all 8 fake devices: train-time evaluation
    e = {"params": params, "model_state": state}
    got = evaluate.evaluate(model.apply, e, {"s": (np.asarray(x)[:3], np.asarray(y)[:3])},
                            batch_size=2, mesh=mesh)  # fmt: skip
    assert got["s_loss"] == pytest.approx(
        float(metrics.cross_entropy(logits, y)[:3].mean()), rel=1e-5
    )
    assert got["s_error"] == pytest.approx(float(metrics.wrong(logits, y)[:3].mean()), abs=1e-6)
    # On one device it agrees, and its curve ends are the endpoints' own metrics.
    splits = {"s": (np.asarray(x), np.asarray(y))}
    single = evaluate.evaluate(model.apply, e, splits, batch_size=2)
    assert single["s_loss"] == pytest.approx(want_loss, rel=1e-5)
    other, _ = perturbed_init(model, seed=5)
    eb = {"params": other, "model_state": state}
    c = evaluate.interpolation_curve(model.apply, e, eb, splits, alphas=3, batch_size=2)
    assert c["alphas"] == [0.0, 0.5, 1.0]
    assert c["s_loss"][0] == single["s_loss"]
    assert c["s_loss"][-1] == evaluate.evaluate(model.apply, eb, splits, batch_size=2)["s_loss"]
