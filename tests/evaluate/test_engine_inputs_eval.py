"""Which data the engine feeds to RESET, REPAIR and activation matching, computed here.

`compare.compare_pair` turns a config into kernel calls; the kernels have precise tests
of their own (tests/evaluate/test_evaluate_normalization.py hands them batches built by the
test). Here the batches are the engine's choice, and each test recomputes what the
documented choice must give with plain numpy/flax:

- the curves' training split: the first `config.eval.train_subset` rows;
- RESET statistics: `config.eval.bn_reset_batches` batches of `config.eval.batch_size`
  rows of a fixed-seed (0) permutation of the *whole training split* (not the test
  split, not the `eval.train_subset` rows, not one batch);
- merge_many: the same RESET batches for its averaged BatchNorm networks;
- REPAIR: the same batches, for the endpoints' target statistics and the interpolated
  network's measured ones;
- activation matching: `config.align.activation_batches` training batches of
  `config.batch_size` rows drawn with data seed `config.align.seed + 10_000`.

Each test also checks that the wrong inputs would move its value by far more than its
tolerance, so it can tell them apart.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import final_checkpoint, small_config

from lmc import align, data, evaluate, models
from lmc.experiments import run_experiment
from lmc.experiments.common import compare

BN_MOMENTUM = 0.9  # lmc.models.layers: BatchNorm(momentum=0.9)
EPS = 1e-5  # REPAIR's variance epsilon (lmc.evaluate.layer_hooks.EPS)
TOL = 1e-5


def _mean_loss(logits, y) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())


def _rows(x, batch, count, seed=0):
    """`count` batches of `batch` rows of a seeded permutation of x (the documented draw)."""
    order = np.random.default_rng(seed).permutation(len(x))
    return [x[order[i * batch : (i + 1) * batch]] for i in range(count)]


def _reset_loss(model, params, state_like, batches, x, y) -> float:
    """Loss on (x, y) of `params` with BatchNorm statistics recomputed on `batches`.

    A train-mode step from zero statistics leaves (1 - momentum) * batch moments;
    RESET's statistics are their mean over the batches."""
    zeros = jax.tree.map(jnp.zeros_like, state_like)
    per_batch = [model.apply(params, zeros, b, True)[1] for b in batches]
    stats = jax.tree.map(lambda *s: np.mean(s, 0) / (1 - BN_MOMENTUM), *per_batch)
    return _mean_loss(model.apply(params, stats, x, False)[0], y)


def _midpoint(a, b):
    return jax.tree.map(lambda p, q: 0.5 * p + 0.5 * q, a, b)


def _pair(model, ds, seeds=(1, 2)):
    """Two independent inits, heads scaled up: confident logits make the loss depend on
    the hidden statistics at the 1e-2 level (near-uniform ones hide it at 1e-4)."""
    pair = []
    for s in seeds:
        params, state = model.init(jax.random.key(s), ds.train_x[:1])
        params = {**params, "head": jax.tree.map(lambda w: 10.0 * w, params["head"])}
        pair.append({"params": params, "model_state": state})
    return pair


def _config(**overrides):
    # 512 training rows, 64-row statistics batches: 3 of 8 possible batches are used,
    # and eval.train_subset keeps 100 rows, so every wrong choice reads other rows.
    return small_config(**{"eval.batch_size": 64, "eval.bn_reset_batches": 3,
                           "eval.train_subset": 100, "eval.num_alphas": 3, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def bn_setup():
    c = _config(**{"model.name": "cnn", "model.width": 8, "model.norm": "batchnorm"})
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    return c, ds, model, *_pair(model, ds)


def test_reset_statistics_come_from_bn_reset_batches_of_the_whole_training_split(bn_setup):
    c, ds, model, a, b = bn_setup
    got = compare.compare_pair(c, model, ds, a, b, methods=("naive+reset",))["naive+reset"]
    assert got["alphas"] == [0.0, 0.5, 1.0]
    mid = _midpoint(a["params"], b["params"])

    def reset_loss(batches):
        return _reset_loss(model, mid, a["model_state"], batches, ds.test_x, ds.test_y)

    expected = reset_loss(_rows(ds.train_x, 64, 3))
    assert got["curves"]["test_loss"][1] == pytest.approx(expected, rel=TOL)
    wrong = {
        "test split": _rows(ds.test_x, 64, 3),
        "one batch": _rows(ds.train_x, 64, 1),
        "train_subset rows": _rows(ds.train_x[:100], 64, 1),
    }
    for what, batches in wrong.items():
        assert abs(reset_loss(batches) - expected) > 10 * TOL * expected, what

    # The curves' train split is the first eval.train_subset rows (alpha 0: A as it is).
    def train_loss(rows):
        return _mean_loss(model.apply(a["params"], a["model_state"], ds.train_x[rows], False)[0],
                          ds.train_y[rows])  # fmt: skip

    assert got["curves"]["train_loss"][0] == pytest.approx(train_loss(slice(100)), rel=TOL)
    assert abs(train_loss(slice(None)) - train_loss(slice(100))) > 10 * TOL * train_loss(slice(100))


def test_repair_targets_and_measurements_use_the_reset_batches():
    # One hidden layer: REPAIR corrects dense0 only, and its reference is a few lines.
    c = _config(**{"model.depth": 1, "model.width": 16})
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    a, b = _pair(model, ds)
    got = compare.compare_pair(c, model, ds, a, b, methods=("naive+repair",))["naive+repair"]
    flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)  # noqa: E731

    def hidden(p, x):
        return flat(x) @ np.asarray(p["dense0"]["kernel"]) + np.asarray(p["dense0"]["bias"])

    def moments(p, batches):
        """Mean over batches of each batch's per-unit mean and (biased) variance."""
        hs = [hidden(p, x) for x in batches]
        return np.mean([h.mean(0) for h in hs], 0), np.mean([h.var(0) for h in hs], 0)

    mid = _midpoint(a["params"], b["params"])

    def repair_loss(batches):
        (mean_a, var_a), (mean_b, var_b) = (
            moments(a["params"], batches),
            moments(b["params"], batches),
        )
        target_mean = 0.5 * (mean_a + mean_b)
        target_std = 0.5 * (np.sqrt(var_a + EPS) + np.sqrt(var_b + EPS))
        mean_m, var_m = moments(mid, batches)
        scale = target_std / np.sqrt(var_m + EPS)
        h = np.maximum(scale * hidden(mid, ds.test_x) + target_mean - mean_m * scale, 0.0)
        logits = h @ np.asarray(mid["head"]["kernel"]) + np.asarray(mid["head"]["bias"])
        return _mean_loss(logits, ds.test_y)

    expected = repair_loss(_rows(ds.train_x, 64, 3))
    assert got["curves"]["test_loss"][1] == pytest.approx(expected, rel=TOL)
    for what, batches in {"test split": _rows(ds.test_x, 64, 3),
                          "one batch": _rows(ds.train_x, 64, 1)}.items():  # fmt: skip
        assert abs(repair_loss(batches) - expected) > 10 * TOL * expected, what


def test_activation_matching_reads_activation_batches_training_batches_of_the_align_seed():
    c = _config(**{"model.depth": 2, "model.width": 16, "align.activation_batches": 2,
                   "align.seed": 3})  # fmt: skip
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    a, b = _pair(model, ds)
    got = compare.compare_pair(c, model, ds, a, b, methods=("activation_matching",))
    got = got["activation_matching"]
    assert "error" not in got, got.get("traceback")
    spec = align.spec_from_model(model, ds.train_x[:2])

    def perms_from(batches):
        return align.activation_matching(spec, model, a, b, batches)[0]

    # The documented draw: the training order of data seed align.seed + 10_000.
    expected = perms_from([ds.train_batch(3 + 10_000, s, c.batch_size)[0] for s in range(2)])
    aligned = align.apply_permutation(spec, expected, b)
    curve = evaluate.interpolation_curve(model.apply, a, aligned, ds, alphas=3, batch_size=64,
                                         train_subset=100)  # fmt: skip
    np.testing.assert_allclose(got["curves"]["test_loss"], curve["test_loss"], rtol=TOL)
    # Other rows give other permutations (so the curve above pins the rows).
    for what, batches in {
        "test rows": [ds.test_x[:32], ds.test_x[32:64]],
        "one batch": [ds.train_batch(3 + 10_000, 0, c.batch_size)[0]],
        "another seed": [ds.train_batch(3, s, c.batch_size)[0] for s in range(2)],
    }.items():
        other = perms_from(batches)
        assert any(not np.array_equal(other[k], expected[k]) for k in expected), what


def test_merge_many_resets_its_averages_on_the_reset_batches(tmp_path):
    c = _config(experiment="merge_many",
                **{"model.name": "cnn", "model.width": 8, "model.norm": "batchnorm",
                   "merge.num_models": 2, "spawn.child_seeds": (1, 2), "num_steps": 20})  # fmt: skip
    results = run_experiment(c, tmp_path)
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    ends = [final_checkpoint(tmp_path / f"child_{i}") for i in (0, 1)]
    average = _midpoint(ends[0]["params"], ends[1]["params"])

    def reset_loss(batches):
        return _reset_loss(model, average, ends[0]["model_state"], batches, ds.test_x, ds.test_y)

    expected = reset_loss(_rows(ds.train_x, 64, 3))
    assert results["naive_average"]["test_loss"] == pytest.approx(expected, rel=TOL)
    for what, batches in {"test split": _rows(ds.test_x, 64, 3),
                          "one batch": _rows(ds.train_x, 64, 1)}.items():  # fmt: skip
        assert abs(reset_loss(batches) - expected) > 10 * TOL * expected, what
