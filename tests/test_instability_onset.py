"""The onset k* of the instability experiment: its definition on hand-made points lists,
and its threading into results.json, `lmc report` and the sweep aggregate."""

import pytest

from lmc.errors import UserError
from lmc.experiments import instability, onset


def _points(barriers: dict[int, float | None], method: str = "naive") -> list[dict]:
    """A sweep's points with the given mean test-error barrier per k (None: failed)."""
    points = []
    for k, b in barriers.items():
        entry = {"error": "boom"} if b is None else {"barrier_mean": {"test_error": b}}
        points.append({"spawn_step": k, "methods": {method: entry}})
    return points


# Expected k* worked out by hand from the definition: the earliest k such that this
# k and every later one have mean barrier <= 0.02.
@pytest.mark.parametrize(
    "barriers, expected",
    [
        ({0: 0.40, 100: 0.10, 200: 0.015, 400: 0.0}, 200),  # the usual onset
        ({0: 0.40, 100: 0.30, 200: 0.05}, None),  # never stable
        ({0: 0.01, 100: 0.0, 200: 0.005}, 0),  # stable from the first k
        ({0: 0.40, 100: 0.01, 200: 0.05, 400: 0.01}, 400),  # stable, unstable, stable again
        ({0: 0.40, 100: 0.01, 200: 0.05}, None),  # stable then unstable at the end
        ({0: 0.40, 100: 0.02, 200: 0.0}, 100),  # exactly at the threshold is stable
        ({0: 0.01, 100: None, 200: 0.0}, 200),  # a failed point breaks the run
        ({400: 0.0, 0: 0.5, 200: 0.01, 100: 0.3}, 200),  # points in any order
    ],
)
def test_onset_definition(barriers, expected):
    got = onset.onset(_points(barriers), "spawn_step", 0.02, total_steps=1000)["naive"]
    assert got["spawn_step"] == expected
    assert got["fraction_of_training"] == (None if expected is None else expected / 1000)
    assert got["metric"] == "test_error" and got["threshold"] == 0.02


def test_onset_is_per_method_and_fraction_needs_a_length():
    points = _points({0: 0.5, 100: 0.1, 200: 0.0})
    for p, wm in zip(points, (0.3, 0.01, 0.0), strict=True):
        p["methods"]["weight_matching"] = {"barrier_mean": {"test_error": wm}}
    got = onset.onset(points, "spawn_step", 0.02, total_steps=None)
    assert {m: e["spawn_step"] for m, e in got.items()} == {"naive": 200, "weight_matching": 100}
    assert got["naive"]["fraction_of_training"] is None
    # A looser threshold moves k* earlier.
    loose = onset.onset(points, "spawn_step", 0.2, total_steps=400)
    assert loose["naive"]["spawn_step"] == 100 and loose["naive"]["fraction_of_training"] == 0.25


@pytest.mark.parametrize("bad", [-0.01, 1.0, 2])
def test_threshold_out_of_range_names_the_key(bad):
    with pytest.raises(UserError, match="config.instability.stable_threshold"):
        onset.validate_threshold(bad)


def _run(name: str, barriers: dict[int, float], threshold: float = 0.02) -> tuple[str, dict]:
    """One sweep point's results.json: one pair per k, its barrier the mean."""
    points = []
    for k, b in barriers.items():
        # Only test_error decides k*; the other metrics are set far off to show that.
        barrier = {"test_error": b, "train_error": 0.9, "test_loss": 9.0, "train_loss": 9.0}
        pair = {"naive": {"barrier": barrier, "barrier_vs_mean": barrier}}
        points.append({"spawn_step": k, "methods": {}, "pairs": [pair]})
    config = {"instability": {"stable_threshold": threshold}}
    return name, {"experiment": "instability", "config": config, "points": points,
                  "total_steps": 800}  # fmt: skip


def test_sweep_aggregate_pools_pairs_before_taking_k_star():
    # At k=100 one pair is stable (0.0) and the other is not (0.06): the pooled mean
    # 0.03 is above 2 points, so k* is 200, not 100 (what either run alone might say).
    runs = [
        _run("a", {0: 0.5, 100: 0.0, 200: 0.01}),
        _run("b", {0: 0.4, 100: 0.06, 200: 0.01}),
    ]
    merged = instability.aggregate(runs)
    assert merged["onset"]["naive"]["spawn_step"] == 200
    assert merged["onset"]["naive"]["fraction_of_training"] == 200 / 800
    table = instability.table([("sweep", merged)])
    assert "naive: k* = 200 (25.0% of training)" in table
    never = instability.aggregate([_run("a", {0: 0.5, 100: 0.3})])
    assert "k* none" in instability.table([("sweep", never)])
