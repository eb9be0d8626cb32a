"""Specs derived from the traced program: equal to the hand-written oracles, and
permuting by them never changes what the model computes."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc import align, models
from tests.oracles import oracle_spec

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)

CASES = [
    ("mlp", dict(width=8, depth=3)),
    *[("cnn", dict(width=4, norm=n)) for n in ("none", "batchnorm", "layernorm")],
    *[("vgg11", dict(width=1 / 16, norm=n)) for n in ("none", "batchnorm", "layernorm")],
    ("vgg16", dict(width=1 / 16, norm="batchnorm")),
    *[("resnet20", dict(width=1, norm=n)) for n in ("batchnorm", "layernorm")],
]
IDS = [f"{name}-{kw.get('norm', 'none')}" for name, kw in CASES]


@functools.cache
def _cached(name, kw_items):
    model = models.build(name, 10, **dict(kw_items))
    shapes, _ = align.trace.model_shapes(model, X)
    return model, align.spec_from_model(model, X), shapes


def model_spec_shapes(name, **kw):
    """(model, derived spec, shapes of the combined tree), cached across tests: tracing
    a Flax model takes about a second."""
    return _cached(name, tuple(sorted(kw.items())))


def random_variables(model, seed, x=X, shapes=None):
    """Random params and state from the model's shapes, with NumPy.

    (No `model.init`: compiling Flax initializers takes seconds per model on a busy
    CPU.) BatchNorm statistics are away from 0/1 and scales away from 1, so a wrong
    permutation of any of them would show.
    """
    if shapes is None:
        shapes, _ = align.trace.model_shapes(model, x)
    rng = np.random.default_rng(seed)

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)

    tree = jax.tree.map(draw, shapes)
    tree["model_state"] = jax.tree.map(lambda v: np.abs(v) + 0.5, tree["model_state"])
    return tree


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_derived_spec_equals_oracle(i):
    model, spec, shapes = model_spec_shapes(*CASES[i][:1], **CASES[i][1])
    oracle = oracle_spec(CASES[i][0], shapes)
    assert spec.equivalent(oracle), spec.diff(oracle)
    assert not spec.notes


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_permuting_preserves_function(i):
    model, spec, shapes = model_spec_shapes(*CASES[i][:1], **CASES[i][1])
    tree = random_variables(model, i, shapes=shapes)
    perms = align.random_permutations(spec, jax.random.key(100 + i), tree)
    assert any((np.asarray(p) != np.arange(len(p))).any() for p in perms.values())
    permuted = align.apply_permutation(spec, perms, tree)
    for train in (False, True):
        out, state = model.apply(tree["params"], tree["model_state"], X, train)
        out_p, state_p = model.apply(permuted["params"], permuted["model_state"], X, train)
        # Summation order changes with the channel order; train-mode BatchNorm over 4
        # samples at 1x1 resolution amplifies that rounding, a wrong permutation is O(1).
        np.testing.assert_allclose(out_p, out, rtol=2e-3, atol=2e-3)
        # The updated running statistics are the permuted ones.
        expected = align.apply_permutation(
            spec, perms, {"params": tree["params"], "model_state": state}
        )
        jax.tree.map(
            functools.partial(np.testing.assert_allclose, rtol=1e-3, atol=1e-4),
            state_p,
            expected["model_state"],
        )


# ---- plain JAX functions, written outside lmc.models ---------------------------------
def _mlp(params, x):
    h = x.reshape(x.shape[0], -1)
    for name in ("l0", "l1"):
        h = jax.nn.relu(h @ params[name]["w"] + params[name]["b"])
    return h @ params["out"]["w"]


def _resnet(params, x):
    """Conv stem, two residual blocks sharing the stream, LayerNorm, mean-pool head."""
    conv = lambda h, w: jax.lax.conv_general_dilated(  # noqa: E731
        h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(conv(x, params["stem"]))
    for b in ("b0", "b1"):
        y = jax.nn.relu(conv(h, params[b]["c0"]) + params[b]["bias"])
        y = conv(y, params[b]["c1"])
        mean = y.mean(-1, keepdims=True)
        y = (y - mean) / jnp.sqrt(y.var(-1, keepdims=True) + 1e-5) * params[b]["g"]
        h = jax.nn.relu(h + y)
    return jnp.mean(h, axis=(1, 2)) @ params["head"]


def _shapes(tree):
    return jax.tree.map(
        lambda s: jnp.zeros(s, jnp.float32), tree, is_leaf=lambda s: isinstance(s, tuple)
    )


def test_bare_jax_mlp():
    params = _shapes(
        {
            "l0": {"w": (192, 6), "b": (6,)},
            "l1": {"w": (6, 5), "b": (5,)},
            "out": {"w": (5, 3)},
            "unused": (4, 4),
        }
    )
    spec = align.spec_from_function(_mlp, params, X)
    assert any("unused is never used" in n for n in spec.notes)
    oracle = align.PermutationSpec.from_axes(
        {
            "a": [("l0/w", 1), ("l0/b", 0), ("l1/w", 0)],
            "b": [("l1/w", 1), ("l1/b", 0), ("out/w", 0)],
        },
        sizes={"a": 6, "b": 5},
    )
    assert spec.equivalent(oracle), spec.diff(oracle)
    assert spec.names == ("l0", "l1")


def test_bare_jax_resnet_shares_the_residual_stream():
    params = _shapes(
        {
            "stem": (3, 3, 3, 4),
            "head": (4, 2),
            **{
                b: {"c0": (3, 3, 4, 5), "bias": (5,), "c1": (3, 3, 5, 4), "g": (4,)}
                for b in ("b0", "b1")
            },
        }
    )
    spec = align.spec_from_function(_resnet, params, X)
    oracle = align.PermutationSpec.from_axes(
        {
            "stream": [("stem", 3), ("head", 0)]
            + [r for b in ("b0", "b1") for r in [(f"{b}/c0", 2), (f"{b}/c1", 3), (f"{b}/g", 0)]],
            "b0": [("b0/c0", 3), ("b0/bias", 0), ("b0/c1", 2)],
            "b1": [("b1/c0", 3), ("b1/bias", 0), ("b1/c1", 2)],
        }
    )
    assert spec.equivalent(oracle), spec.diff(oracle)
    # And it is right: random params, random perms, same function.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    perms = align.random_permutations(spec, jax.random.key(1), params)
    np.testing.assert_allclose(
        _resnet(align.apply_permutation(spec, perms, params), X),
        _resnet(params, X),
        rtol=1e-4,
        atol=1e-4,
    )


def test_unknown_primitive_pins_and_is_reported():
    def fn(params, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w0"])
        h = jax.lax.cumsum(h, axis=1)  # order along the features matters
        return jnp.tanh(h) @ params["w1"]

    params = _shapes({"w0": (192, 6), "w1": (6, 2)})
    with pytest.warns(UserWarning, match="no parameter axis"):
        spec = align.spec_from_function(fn, params, X)
    assert spec.axes == {}

    sorted_fn = lambda p, x: jnp.sort(x.reshape(x.shape[0], -1) @ p["w0"], axis=1) @ p["w1"]  # noqa: E731
    with pytest.warns(UserWarning):
        assert align.spec_from_function(sorted_fn, params, X).axes == {}

    from lmc.align.tracing import rules

    saved = rules.RULES.pop("tanh")
    try:
        with pytest.warns(UserWarning, match="unknown primitive 'tanh'"):
            spec = align.spec_from_function(lambda p, x: _mlp_tanh(p, x), params, X)
        assert "unknown primitive 'tanh'" in spec.table()
    finally:
        rules.RULES["tanh"] = saved


def _mlp_tanh(p, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w0"]) @ p["w1"]


def test_control_flow_and_static_args():
    """scan over stacked layers ties the layers' units; a static bool flag is allowed."""

    def fn(params, x, train):
        h = x.reshape(x.shape[0], -1) @ params["inp"]

        def layer(h, w):
            return jax.nn.relu(h @ w), None

        h, _ = jax.lax.scan(layer, h, params["stack"])
        h = jax.lax.cond(train, lambda h: h * 2.0, lambda h: h, h)
        return h @ params["out"]

    params = _shapes({"inp": (192, 4), "stack": (3, 4, 4), "out": (4, 2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = align.spec_from_function(fn, params, X, True)
    oracle = align.PermutationSpec.from_axes(
        {"h": [("inp", 1), ("stack", 1), ("stack", 2), ("out", 0)]}
    )
    assert spec.equivalent(oracle), spec.diff(oracle)


def test_rules_on_the_batch_axis_leave_hidden_units_free():
    """Reordering, slicing, padding... the batch axis must not pin the features, and
    permuting by the derived spec must still preserve the function."""

    def fn(params, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w0"])  # (4, 6)
        h = jnp.concatenate([h, h[::-1]], axis=0)[:4]  # rev, concatenate, slice
        h = jnp.pad(h, ((1, 1), (0, 0)))[1:-1]  # pad and slice the batch
        h = jax.lax.dynamic_slice(h, (0, 0), (4, 6))  # whole features
        h = jnp.sort(h, axis=0) + jax.lax.top_k(h.T, 2)[0].T.sum(0)  # sort/top_k over batch
        h = jnp.expand_dims(h, 1).squeeze(1).T.T  # expand, squeeze, transposes
        h = jnp.where(h > 0.5, h, 0.0) * jnp.max(h, axis=0)  # select_n, reductions
        return h @ params["w1"]

    params = _shapes({"w0": (192, 6), "w1": (6, 2)})
    spec = align.spec_from_function(fn, params, X)
    oracle = align.PermutationSpec.from_axes({"h": [("w0", 1), ("w1", 0)]})
    assert spec.equivalent(oracle), spec.diff(oracle)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), params)
    perms = align.random_permutations(spec, jax.random.key(0), params)
    np.testing.assert_allclose(
        fn(align.apply_permutation(spec, perms, params), X), fn(params, X), rtol=1e-5, atol=1e-5
    )
