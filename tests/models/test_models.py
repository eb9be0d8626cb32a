import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmc import models
from lmc.errors import UserError
from lmc.evaluate.metrics import cross_entropy

CASES = [
    ("mlp", dict(width=32, depth=2)),
    ("cnn", dict(width=8, norm="none")),
    ("cnn", dict(width=8, norm="batchnorm")),
    ("vgg11", dict(width=0.125, norm="none")),
    ("vgg16", dict(width=0.0625, norm="batchnorm")),
    ("vgg11", dict(width=0.125, norm="layernorm")),
    ("resnet20", dict(width=1, norm="batchnorm")),
    ("resnet20", dict(width=1, norm="layernorm")),
]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_forward_shapes_and_sgd_lowers_loss(name, kwargs):
    model = models.build(name, 10, **kwargs)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    params, state = model.init(jax.random.key(0), x)
    assert isinstance(params, dict) and isinstance(state, dict)
    assert bool(state) == (kwargs.get("norm") == "batchnorm")
    logits, new_state = model.apply(params, state, x, False)
    assert logits.shape == (16, 10)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)

    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, state, opt_state):
        def loss_fn(p):
            out, s = model.apply(p, state, x, True)
            return cross_entropy(out, y).mean(), s

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    losses = []
    for _ in range(8):
        params, state, opt_state, loss = step(params, state, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_batchnorm_state_updates_in_train_mode_only():
    model = models.build("cnn", 10, width=4, norm="batchnorm")
    x = jnp.ones((4, 8, 8, 1)) * 3.0
    params, state = model.init(jax.random.key(0), x)
    _, same = model.apply(params, state, x, False)
    _, moved = model.apply(params, state, x, True)
    np.testing.assert_array_equal(same["norm0"]["mean"], state["norm0"]["mean"])
    assert not np.allclose(moved["norm0"]["mean"], state["norm0"]["mean"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="transformer9"), "unknown model"),
        (dict(name="mlp", width=-3), "width"),
        (dict(name="cnn", norm="groupnorm"), "unknown norm"),
        (dict(name="resnet20", width=1.5), "integer"),
    ],
)
def test_bad_model_config(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(UserError, match=match):
        model = models.build(name, 10, **kwargs)
        model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
