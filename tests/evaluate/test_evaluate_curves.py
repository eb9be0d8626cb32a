"""Interpolation curves: endpoints, validation, one trace per shape."""

import chex
import jax
import numpy as np
import optax
import pytest

from lmc import data, evaluate, models
from lmc.errors import UserError
from lmc.evaluate import curves


@pytest.fixture(scope="module")
def setup():
    ds = data.load("synthetic", num_train=300, num_test=170)
    model = models.build("mlp", ds.num_classes, width=32, depth=2)
    ends = []
    for seed in (0, 1):
        # numpy draws: model.init compiles a jax.random kernel per shape (slow here).
        rng = np.random.default_rng(seed)
        shapes = jax.eval_shape(model.init, jax.random.key(0), ds.train_x[:1])[0]
        params = jax.tree.map(
            lambda s, rng=rng: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes
        )
        ends.append({"params": params, "model_state": {}})
    return ds, model, ends


def plain_metrics(model, endpoint, x, y):
    """Reference: one un-batched forward pass, metrics in numpy."""
    logits, _ = jax.jit(model.apply, static_argnums=3)(
        endpoint["params"], endpoint["model_state"], x, False
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    wrong = int(np.sum(np.asarray(np.argmax(logits, -1)) != y))
    return float(np.mean(loss)), wrong / len(y)


def test_curve_ends_are_the_endpoints(setup):
    ds, model, (a, b) = setup
    # batch 64 leaves ragged last batches (300 = 4*64 + 44, 170 = 2*64 + 42).
    curve = evaluate.interpolation_curve(model.apply, a, b, ds, alphas=5, batch_size=64)
    assert curve["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(curve) == {"alphas", *evaluate.METRICS}
    for index, endpoint in ((0, a), (-1, b)):
        own = evaluate.evaluate(model.apply, endpoint, ds, batch_size=64)
        for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
            # Same evaluator: bitwise equal.
            assert curve[f"{split}_loss"][index] == own[f"{split}_loss"]
            assert curve[f"{split}_error"][index] == own[f"{split}_error"]
            # Independent plain evaluation: errors exact, losses to float32 summation order.
            loss, error = plain_metrics(model, endpoint, x, y)
            assert curve[f"{split}_error"][index] == error
            np.testing.assert_allclose(curve[f"{split}_loss"][index], loss, rtol=1e-5)


def test_midpoint_matches_plain_evaluation_of_interpolated_params(setup):
    ds, model, (a, b) = setup
    curve = evaluate.interpolation_curve(
        model.apply, a, b, ds, alphas=[0.0, 0.3, 0.5, 0.9, 1.0], batch_size=64, train_subset=250
    )
    mid = {"params": jax.tree.map(lambda p, q: 0.7 * p + 0.3 * q, a["params"], b["params"]),
           "model_state": {}}  # fmt: skip
    loss, error = plain_metrics(model, mid, ds.train_x[:250], ds.train_y[:250])
    np.testing.assert_allclose(curve["train_loss"][1], loss, rtol=1e-5)
    assert abs(curve["train_error"][1] - error) <= 1 / 250  # an argmax tie may flip


def test_alpha_chunks_agree_with_scan(setup):
    ds, model, (a, b) = setup
    scan = evaluate.interpolation_curve(model.apply, a, b, ds, alphas=5, batch_size=64)
    # 5 = 3 + 2: a vmapped chunk and a remainder.
    chunked = evaluate.interpolation_curve(
        model.apply, a, b, ds, alphas=5, batch_size=64, alpha_chunk=3
    )
    for key in evaluate.METRICS:
        np.testing.assert_allclose(chunked[key], scan[key], rtol=1e-5, atol=1e-6)


def test_one_trace_per_shape(setup):
    ds, model, (a, b) = setup

    @chex.assert_max_traces(n=1)
    def apply(params, state, x, train):
        return model.apply(params, state, x, train)

    before = curves._eval_batch._cache_size()
    # Different endpoints, subsets and ragged tails; same batch shape and alpha count.
    evaluate.interpolation_curve(apply, a, b, ds, alphas=5, batch_size=64)
    evaluate.interpolation_curve(apply, b, a, ds, alphas=5, batch_size=64, train_subset=101)
    shifted = {"params": jax.tree.map(lambda p: p + 1.0, a["params"]), "model_state": {}}
    evaluate.interpolation_curve(apply, shifted, b, ds, alphas=np.linspace(0, 1, 5).tolist(),
                                 batch_size=64)  # fmt: skip
    assert curves._eval_batch._cache_size() == before + 1


@pytest.mark.parametrize(
    "alphas, match",
    [
        (2, "at least 3"),
        ([0.0, 1.0], "at least 3"),
        ([0.0, 0.5, 1.5], r"in \[0, 1\]"),
        ([-0.1, 0.5, 1.0], r"in \[0, 1\]"),
        ([0.0, 0.5, 0.9], "from 0.0 to 1.0"),
        ([0.0, 0.6, 0.4, 1.0], "increase strictly"),
        ([0.0, float("nan"), 1.0], r"in \[0, 1\]"),
    ],
)
def test_bad_alphas_are_user_errors(setup, alphas, match):
    ds, model, (a, b) = setup
    with pytest.raises(UserError, match=match):
        evaluate.interpolation_curve(model.apply, a, b, ds, alphas=alphas)


def test_non_finite_params_name_the_path(setup):
    ds, model, (a, b) = setup
    params = jax.tree.map(np.array, b["params"])
    params["dense1"]["kernel"][3, 4] = np.nan
    with pytest.raises(UserError, match=r"endpoint b: params\['dense1'\]\['kernel'\].*NaN"):
        evaluate.interpolation_curve(model.apply, a, {"params": params}, ds)


def test_mismatched_endpoints_name_path_and_shapes(setup):
    ds, model, (a, _) = setup
    params = jax.tree.map(np.array, a["params"])
    params["dense0"]["bias"] = np.zeros(48, np.float32)
    with pytest.raises(UserError, match=r"params\['dense0'\]\['bias'\] has shape \(32,\).*\(48,\)"):
        evaluate.interpolation_curve(model.apply, a, {"params": params}, ds)


def test_endpoints_in_every_accepted_form_give_the_same_curve(setup):
    # {"params", "model_state"}, flax variables {"params", "batch_stats"}, raw params
    # (no running statistics), and the flax module itself as the model.
    ds, model, (a, b) = setup
    want = evaluate.interpolation_curve(model.apply, a, b, ds, alphas=3)
    variables = {"params": b["params"], "batch_stats": b["model_state"]}
    assert evaluate.interpolation_curve(model.module, a, variables, ds, alphas=3) == want
    if not a["model_state"]:
        assert evaluate.interpolation_curve(model, a["params"], b, ds, alphas=3) == want
    with pytest.raises(UserError, match="give {'params', 'model_state'}"):
        evaluate.interpolation_curve(model.apply, {**a, "extra": 1}, b, ds)
    with pytest.raises(UserError, match="must be a dict"):
        evaluate.interpolation_curve(model.apply, [a], b, ds)


def bigram_apply(params, state, x, train):
    """A toy language model: (batch, time) tokens -> (batch, time, vocab) logits."""
    return params["table"][x], state


def test_sequence_labels_count_every_position():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(50, 6)).astype(np.int32)
    y = rng.integers(0, 7, size=(50, 6)).astype(np.int32)
    a = {"params": {"table": rng.normal(size=(7, 7)).astype(np.float32)}}
    b = {"params": {"table": rng.normal(size=(7, 7)).astype(np.float32)}}
    split = {"test": (x, y)}
    curve = evaluate.interpolation_curve(bigram_apply, a, b, split, alphas=3, batch_size=16)
    logits = a["params"]["table"][x]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    assert curve["test_error"][0] == int(np.sum(np.argmax(logits, -1) != y)) / y.size
    np.testing.assert_allclose(curve["test_loss"][0], float(np.mean(loss)), rtol=1e-5)


def test_apply_fn_must_be_hashable(setup):
    ds, model, (a, b) = setup

    class Unhashable:
        __hash__ = None

        def __call__(self, *args):
            return model.apply(*args)

    with pytest.raises(UserError, match="hashable"):
        evaluate.interpolation_curve(Unhashable(), a, b, ds)
