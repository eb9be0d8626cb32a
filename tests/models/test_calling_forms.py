"""One calling convention per API, told apart at the boundary: lmc.evaluate takes the
evaluator form and the plain form (and says which it got); lmc.align and
lmc.training refuse the wrong form with the expected signature named."""

import logging

import numpy as np
import pytest
from helpers import small_config

from lmc import align, evaluate, training
from lmc.errors import UserError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 5)).astype(np.float32)
Y = RNG.integers(0, 3, size=40)
A = {"w": RNG.normal(size=(5, 3)).astype(np.float32)}
B = {"w": RNG.normal(size=(5, 3)).astype(np.float32)}
EMPTY = align.PermutationSpec.from_axes({})


def plain(params, x):
    return x @ params["w"]


def evaluator_form(params, model_state, x, train):
    return x @ params["w"], model_state


def by_hand_loss(w):
    logits = X.astype(np.float64) @ w
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -logp[np.arange(len(Y)), Y].mean()


def test_evaluate_takes_the_plain_form_and_says_so():
    data = {"test": (X, Y)}
    # A handler of our own: `lmc run` (other tests) stops lmc's logs propagating to caplog.
    records, handler = [], logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lmc.models")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        curve = evaluate.interpolation_curve(plain, A, B, data, alphas=3, norm="none")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("plain form apply_fn(params, x)" in r.getMessage() for r in records)
    ends = [by_hand_loss(A["w"]), by_hand_loss((A["w"] + B["w"]) / 2), by_hand_loss(B["w"])]
    np.testing.assert_allclose(curve["test_loss"], ends, rtol=1e-5)
    same = evaluate.interpolation_curve(evaluator_form, A, B, data, alphas=3, norm="none")
    assert same == curve


def test_evaluate_refuses_a_function_of_neither_form():
    def three(params, x, train):
        return x @ params["w"]

    with pytest.raises(UserError, match=r"three\(params, x, train\) takes neither apply_fn"):
        evaluate.evaluate(three, A, {"test": (X, Y)})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: align.spec_from_function(evaluator_form, A, X), "looks like the evaluator form"),
        (lambda: align.check(evaluator_form, EMPTY, A, X), "align.check calls"),
        (lambda: align.activation_matching(EMPTY, evaluator_form, A, B, [X]),
         "align.activation_matching calls apply_fn"),
        (lambda: align.spec_from_function(lambda p: p["w"], A, X), "with 2 arguments"),
    ],
)  # fmt: skip
def test_align_refuses_the_wrong_form_naming_the_signature(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_align_and_training_refuse_a_model_or_a_function_where_the_other_is_expected(tmp_path):
    from lmc import models

    module = models.build("mlp", 3, width=4, depth=1).module
    with pytest.raises(UserError, match="use align.spec_from_model"):
        align.spec_from_function(module, A, X)
    seeds = training.Seeds(0, 0, 0)
    with pytest.raises(UserError, match="expected a model"):
        training.train(model=plain, dataset=None, config=small_config(), run_dir=tmp_path,
                       seeds=seeds)  # fmt: skip
