"""Barrier formulas on hand-made curves."""

import json
import math

import pytest

from lmc import evaluate
from lmc.errors import UserError


def make_curve(alphas, values):
    return {"alphas": alphas, **{m: list(values) for m in evaluate.METRICS}}


def test_linear_curve_has_no_barrier():
    out = evaluate.barriers(make_curve([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 1.25, 1.5, 1.75, 2.0]))
    for metric in evaluate.METRICS:
        assert out["barrier"][metric] == pytest.approx(0.0, abs=1e-12)
        assert out["barrier_vs_mean"][metric] == pytest.approx(0.5)  # max f = f(1) = 2, mean 1.5


def test_symmetric_bump():
    out = evaluate.barriers(make_curve([0.0, 0.5, 1.0], [1.0, 3.0, 2.0]))
    assert out["barrier"]["test_loss"] == pytest.approx(3.0 - 1.5)
    assert out["barrier_vs_mean"]["test_loss"] == pytest.approx(3.0 - 1.5)
    assert out["argmax_alpha"]["test_loss"] == 0.5


def test_entezari_and_frankle_differ_on_skewed_curves():
    # f = 0, 1, 0.5, 2 at a = 0, .25, .5, 1; the chord is 2a.
    # Entezari: max(0, 1 - 0.5, 0.5 - 1, 0) = 0.5 at a = 0.25.
    # Frankle: max f - (0 + 2)/2 = 2 - 1 = 1.
    out = evaluate.barriers(make_curve([0.0, 0.25, 0.5, 1.0], [0.0, 1.0, 0.5, 2.0]))
    assert out["barrier"]["train_error"] == pytest.approx(0.5)
    assert out["argmax_alpha"]["train_error"] == 0.25
    assert out["barrier_vs_mean"]["train_error"] == pytest.approx(1.0)


def test_curve_below_the_chord():
    out = evaluate.barriers(make_curve([0.0, 0.5, 1.0], [1.0, 0.2, 1.0]))
    assert out["barrier"]["test_error"] == 0.0  # the endpoints themselves
    assert out["argmax_alpha"]["test_error"] == 0.0  # first on ties
    assert out["barrier_vs_mean"]["test_error"] == 0.0


def test_metrics_are_independent():
    curve = make_curve([0.0, 0.5, 1.0], [0.0, 0.0, 0.0])
    curve["test_error"] = [0.1, 0.6, 0.1]
    out = evaluate.barriers(curve)
    assert out["barrier"]["test_error"] == pytest.approx(0.5)
    assert out["barrier"]["train_loss"] == 0.0


def test_non_finite_curve_gives_infinite_barrier():
    out = evaluate.barriers(make_curve([0.0, 0.5, 1.0], [0.1, math.inf, 0.2]))
    assert out["barrier"]["test_loss"] == math.inf
    assert out["argmax_alpha"]["test_loss"] == 0.5


@pytest.mark.parametrize(
    "alphas, values",
    [([0.0, 1.0], [1.0, 1.0]), ([0.1, 0.5, 1.0], [1.0, 1.0, 1.0]), ([0.0, 0.5, 1.0], [1.0, 2.0])],
)
def test_malformed_curves(alphas, values):
    with pytest.raises(UserError):
        evaluate.barriers(make_curve(alphas, values))


def test_method_entry_matches_results_json_shape():
    curve = make_curve([0.0, 0.5, 1.0], [0.2, 0.9, 0.4])
    entry = evaluate.method_entry(curve)
    assert set(entry) == {"alphas", "curves", "barrier", "barrier_vs_mean", "argmax_alpha"}
    assert set(entry["curves"]) == set(evaluate.METRICS)
    for key in ("barrier", "barrier_vs_mean", "argmax_alpha"):
        assert set(entry[key]) == set(evaluate.METRICS)
    json.dumps(entry, allow_nan=False)  # plain JSON-able values
