"""Flax NNX models through every lmc API: the adapter against the module's own calls,
alignment recovering planted permutations, training, curves, nnx_update, and every
alignment method on an NNX MLP and an NNX attention LM through the experiment engine."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import plugin_models
import pytest
from flax import nnx
from helpers import small_config, tiny_lm_config

from lmc import align, evaluate, models, training
from lmc.data import load
from lmc.errors import UserError
from lmc.experiments import run_experiment

X = np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32)


def mlp(seed=0):
    return plugin_models.NNXMLP(12, 8, 3, nnx.Rngs(seed))


def test_adapter_matches_the_modules_own_calls():
    module = mlp()
    model = models.as_model(module)
    params, state = model.init(jax.random.key(5), X)  # an instance: its own weights
    np.testing.assert_array_equal(params["hidden"]["kernel"], module.hidden.kernel[...])
    module.eval()
    want = module(jnp.asarray(X))
    got, same_state = model.apply(params, state, X, False)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert same_state is state
    module.train()  # train mode: batch statistics, running stats updated in place
    want = module(jnp.asarray(X))
    got, new_state = model.apply(params, state, X, True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(new_state["norm"]["mean"], module.norm.mean[...], rtol=1e-6)
    # The (graphdef, state) form and a factory: a factory's init follows the key.
    split = models.as_model(nnx.split(mlp()))
    np.testing.assert_array_equal(split.init(None, X)[0]["out"]["bias"], params["out"]["bias"])
    # One adapter per instance (jitted code compiles once); init sees later updates.
    assert models.as_model(module) is model
    models.nnx_update(module, {"params": jax.tree.map(lambda a: a + 1, params), "model_state": {}})
    np.testing.assert_array_equal(model.init(None, X)[0]["out"]["bias"], params["out"]["bias"] + 1)
    seeded = models.nnx_model(lambda rngs: plugin_models.NNXMLP(12, 8, 3, rngs))
    np.testing.assert_array_equal(seeded.init(jax.random.key(7), X)[0]["hidden"]["kernel"],
                                  mlp(7).hidden.kernel[...])  # fmt: skip


def test_weight_matching_recovers_a_planted_permutation_and_nnx_update_writes_it_back():
    module = mlp()
    spec = align.spec_from_model(module, X)
    (refs,) = spec.axes.values()
    assert {r.path for r in refs} >= {
        ("params", "hidden", "kernel"), ("model_state", "norm", "mean")}  # fmt: skip
    params, state = models.as_model(module).init(None, X)
    state = {"norm": {"mean": np.arange(8.0), "var": np.arange(1.0, 9.0)}}  # distinct stats
    planted = np.random.default_rng(1).permutation(8)
    # B: A's hidden units reordered by hand (numpy, not lmc).
    pb = jax.tree.map(np.asarray, params)
    pb["hidden"]["kernel"] = pb["hidden"]["kernel"][:, planted]
    for leaf in ("bias", "scale"):
        group = "hidden" if leaf == "bias" else "norm"
        pb[group][leaf] = pb[group][leaf][planted]
    pb["norm"]["bias"] = np.asarray(params["norm"]["bias"])[planted]
    pb["out"]["kernel"] = pb["out"]["kernel"][planted]
    sb = {"norm": {k: v[planted] for k, v in state["norm"].items()}}
    perms, _ = align.weight_matching(spec, {"params": params, "model_state": state},
                                     {"params": pb, "model_state": sb})  # fmt: skip
    aligned = align.apply_permutation(spec, perms, {"params": pb, "model_state": sb})
    target = models.nnx_update(mlp(3), aligned)
    np.testing.assert_array_equal(target.hidden.kernel[...], params["hidden"]["kernel"])
    np.testing.assert_array_equal(target.norm.mean[...], state["norm"]["mean"])
    with pytest.raises(UserError, match="does not fit NNXMLP"):
        models.nnx_update(mlp(), {"wrong": {"kernel": np.zeros(3)}})


def test_train_then_curve_matches_the_loss_computed_by_the_module(tmp_path):
    data = load("synthetic")
    config = small_config(num_steps=8)
    width = ml_collections.ConfigDict({"width": 8})
    factory = models.nnx_model(
        lambda rngs: plugin_models.nnx_mlp(data.num_classes, data.input_shape, width, rngs)
    )
    ends = []
    for seed in (0, 1):
        seeds = training.Seeds(init=seed, data=seed, aug=seed)
        state = training.train(model=factory, dataset=data, config=config,
                               run_dir=tmp_path / str(seed), seeds=seeds)  # fmt: skip
        ends.append(training.endpoint(state))
    assert not np.allclose(
        ends[0]["params"]["hidden"]["kernel"], ends[1]["params"]["hidden"]["kernel"]
    )  # seeded inits differ
    x, y = data.test_x[:64], data.test_y[:64]
    curve = evaluate.interpolation_curve(factory, ends[0], ends[1], {"test": (x, y)},
                                         alphas=3, norm="none")  # fmt: skip
    module = models.nnx_update(factory.factory(nnx.Rngs(9)), ends[1])
    module.eval()
    by_hand = optax.softmax_cross_entropy_with_integer_labels(module(jnp.asarray(x)), y).mean()
    np.testing.assert_allclose(curve["test_loss"][-1], by_hand, rtol=1e-5)


def test_every_method_on_an_nnx_mlp_and_an_nnx_attention_lm(tmp_path):
    c = small_config(num_steps=10)
    c.model.name, c.model.width = "plugin_models:nnx_mlp", 8
    c.eval.num_alphas, c.eval.train_subset = 3, 64
    c.align.ste_steps, c.align.activation_batches = 2, 2
    c.eval.methods = ("naive", "weight_matching", "activation_matching", "ste",
                      "weight_matching+reset")  # fmt: skip
    mlp_results = run_experiment(c, tmp_path / "mlp")

    c = tiny_lm_config(tmp_path, "pair")
    c.model.name = "plugin_models:nnx_lm"
    c.align.learned_steps, c.align.ste_steps, c.align.activation_batches = 2, 2, 2
    c.eval.methods = ("naive", "weight_matching", "activation_matching", "ste",
                      "weight_matching_heads", "weight_matching_orthogonal",
                      "learned_matching", "activation_matching_heads")  # fmt: skip
    lm_results = run_experiment(c, tmp_path / "lm")
    for results, workdir in ((mlp_results, "mlp"), (lm_results, "lm")):
        on_disk = json.loads((tmp_path / workdir / "results.json").read_text())
        assert on_disk["complete"] and set(on_disk["methods"]) == set(results["methods"])
        for name, entry in results["methods"].items():
            curve = np.asarray(entry["curves"]["test_loss"])
            assert np.isfinite(curve).all(), name
            # Alignment only reorders B: its endpoint's loss is B's (up to float sums).
            np.testing.assert_allclose(curve[-1], results["endpoints"]["b"]["test_loss"],
                                       rtol=1e-4, err_msg=name)  # fmt: skip


def test_check_takes_the_nnx_module_and_catches_a_wrong_spec():
    module = mlp()
    params, _ = models.as_model(module).init(None, X)
    tree = {"params": params, "model_state": {"norm": {"mean": np.arange(8.0),
                                                        "var": np.arange(1.0, 9.0)}}}  # fmt: skip
    spec = align.spec_from_model(module, X)
    assert align.check(module, spec, tree, X).invariant
    # By hand: the hidden units reordered in the first layer only: not a symmetry.
    wrong = align.PermutationSpec.from_axes(
        {"h": [(("params", "hidden", "kernel"), 1), (("params", "hidden", "bias"), 0)]}
    )
    assert not align.check(module, wrong, tree, X).invariant


class _DropoutNet(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(12, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.hidden(x))))


class _LinenDropoutNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(32)(x))
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(h))


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_dropout_masks_follow_seed_and_step(kind):
    """The train step's dropout mask is a function of (aug seed, step): a new mask each
    step, the same one for the same (seed, step). Read through the loss of a step at
    learning rate 0, so params, batch and model state are identical across calls."""
    from lmc.training.step import step_function

    module = _DropoutNet(nnx.Rngs(0)) if kind == "nnx" else _LinenDropoutNet()
    model = models.as_model(module)  # an NNX instance is held weakly: keep `module`
    params, model_state = model.init(jax.random.key(0), X)
    optimizer = optax.sgd(0.0)
    step = jax.jit(step_function(model, optimizer, augment=False))
    y = jnp.zeros(len(X), jnp.int32)

    def loss(t, seed):
        state = {"params": params, "model_state": model_state, "opt_state": optimizer.init(params),
                 "step": jnp.int32(t), "first_bad_step": jnp.int32(-1)}  # fmt: skip
        return float(step(state, X, y, jax.random.key_data(jax.random.key(seed)))[1]["loss"])

    losses = [loss(t, 0) for t in range(4)]
    assert len(set(losses)) == 4, losses  # a fixed mask gives one value
    assert loss(2, 0) == losses[2]  # reproducible
    assert loss(2, 1) != losses[2]  # the seed matters too
    logits, _ = model.apply(params, model_state, X, False)  # eval mode: no dropout, no key
    again, _ = model.apply(params, model_state, X, False)
    np.testing.assert_array_equal(logits, again)
    # The tracer follows train mode with a fixed key (it failed before). A drawn mask
    # has an order, so the units it multiplies stay pinned, and the report says why.
    analysis = align.trace.analyze_model(model, X)
    assert any("random_bits" in why for *_, why in analysis.unpermuted), analysis.unpermuted
