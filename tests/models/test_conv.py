"""The tap weight gradient equals XLA's, forward mode works, and models pick it only
where it applies."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lmc import models

conv = importlib.import_module("lmc.models.conv")
NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "x_shape, kernel, strides, padding",
    [
        ((4, 9, 9, 3), 3, (1, 1), "SAME"),
        ((6, 8, 8, 4), 3, (2, 2), "SAME"),  # ResNet's downsampling conv
        ((3, 8, 8, 4), 1, (2, 2), "SAME"),  # its 1x1 shortcut
        ((5, 7, 6, 2), 2, (1, 2), ((1, 0), (2, 1))),  # uneven explicit pads
        ((2, 6, 6, 2), 3, (1, 1), "VALID"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_gradients_match_xla(monkeypatch, x_shape, kernel, strides, padding, chunked):
    monkeypatch.setattr(conv, "WEIGHT_GRAD", "taps")
    if chunked:  # two images per chunk: exercises the scan over batch chunks
        monkeypatch.setattr(conv, "CHUNK_BYTES", 2 * int(np.prod(x_shape[1:])) * 4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, x_shape[-1], 5)), jnp.float32)
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def loss(fn):
        return lambda x, w: (fn(x, w, strides, padding, dimension_numbers=dims) ** 2).sum()

    expected = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    got = jax.jit(jax.grad(loss(conv.conv_general_dilated), (0, 1)))(x, w)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * float(jnp.abs(e).max()))
    # The gradient really went through the tap path (matmuls, not a filter conv).
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(conv.conv_general_dilated), 1))(x, w))
    assert "dot_general" in jaxpr


def test_unsupported_convolutions_fall_back_to_xla(monkeypatch):
    monkeypatch.setattr(conv, "WEIGHT_GRAD", "taps")
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))  # feature groups of 2
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    grouped = jax.make_jaxpr(
        lambda w: conv.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2
        )
    )(w)
    dilated = jax.make_jaxpr(
        lambda w: conv.conv_general_dilated(
            x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dims
        )
    )(w)
    plain = jax.make_jaxpr(
        lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    )(jnp.ones((3, 3, 4, 4)))
    assert "custom_jvp_call" in str(plain)
    for jaxpr in (grouped, dilated):
        assert "custom_jvp_call" not in str(jaxpr)


def test_resnet_training_gradient_is_unchanged(monkeypatch):
    """Whole-model gradients with the tap path equal XLA's own."""
    model = models.build("resnet20", 10, width=1)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32, 32, 3)), jnp.float32)
    params, state = model.init(jax.random.key(0), x[:1])

    def grads():
        def loss(p):
            return (model.apply(p, state, x, True)[0] ** 2).mean()

        return jax.jit(jax.grad(loss))(params)

    monkeypatch.setattr(conv, "WEIGHT_GRAD", "xla")
    expected = grads()
    monkeypatch.setattr(conv, "WEIGHT_GRAD", "taps")
    got = grads()
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * float(jnp.abs(e).max()) + 1e-7)


def test_auto_uses_taps_only_for_large_inputs_on_cpu(monkeypatch):
    monkeypatch.setattr(conv, "WEIGHT_GRAD", "auto")
    w = jnp.ones((3, 3, 16, 16))

    def traced(batch):
        x = jnp.ones((batch, 32, 32, 16))  # 64 KiB per image
        dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
        return str(
            jax.make_jaxpr(
                lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
            )(w)
        )

    assert "custom_jvp_call" not in traced(8)  # 512 KiB: XLA's gradient
    assert ("custom_jvp_call" in traced(32)) == (jax.default_backend() == "cpu")  # 2 MiB


def test_forward_mode_and_hessian_vector_products_work(monkeypatch):
    """A custom JVP keeps jax.jvp (e.g. sharpness via Hessian-vector products) working."""
    monkeypatch.setattr(conv, "WEIGHT_GRAD", "taps")
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def loss(fn):
        return lambda w: (jnp.tanh(fn(x, w, (1, 1), "SAME", dimension_numbers=dims)) ** 2).sum()

    ours, xla = loss(conv.conv_general_dilated), loss(lax.conv_general_dilated)
    np.testing.assert_allclose(jax.jvp(ours, (w,), (v,))[1], jax.jvp(xla, (w,), (v,))[1], rtol=1e-5)
    hvp = lambda f: jax.jvp(jax.grad(f), (w,), (v,))[1]  # noqa: E731
    np.testing.assert_allclose(
        hvp(ours), hvp(xla), rtol=1e-4, atol=1e-4 * float(jnp.abs(hvp(xla)).max())
    )


def test_a_population_of_conv_models_trains_with_the_tap_path_on(monkeypatch):
    """spawn.population vmaps the train step; the tap gradient's linear_call has no
    batching rule, so the population step must trace XLA's. Each member's update
    equals the same step run alone (tap path: gradients agree to rounding)."""
    import optax

    from lmc.training.population import population_step, stack, unstack
    from lmc.training.step import step_function

    monkeypatch.setattr(conv, "WEIGHT_GRAD", "taps")
    model = models.build("cnn", 3, width=4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 8, 8, 3)), jnp.float32)  # 2 members
    y = jnp.asarray(rng.integers(0, 3, size=(2, 6)), jnp.int32)
    optimizer = optax.sgd(0.1)
    states = []
    for seed in range(2):
        params, model_state = model.init(jax.random.key(seed), x[0, :1])
        states.append({"params": params, "model_state": model_state,
                       "opt_state": optimizer.init(params), "step": jnp.int32(0),
                       "first_bad_step": jnp.int32(-1)})  # fmt: skip
    step = step_function(model, optimizer, augment=False)
    keys = jnp.stack([jax.random.key_data(jax.random.key(i)) for i in range(2)])
    alone = [jax.jit(step)(s, x[i], y[i], keys[i])[0] for i, s in enumerate(states)]
    assert "dot_general" in str(jax.make_jaxpr(jax.grad(lambda p: model.apply(
        p, states[0]["model_state"], x[0], True)[0].sum()))(states[0]["params"]))  # fmt: skip
    together = unstack(population_step(step)(stack(states), x, y, keys)[0], 2)
    for a, b in zip(alone, together, strict=True):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)
