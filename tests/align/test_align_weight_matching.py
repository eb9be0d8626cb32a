"""Weight matching: planted permutations are recovered, the result is a fixed point of
Algorithm 1, the fast paths agree with the plain one, and bad input is reported."""

import importlib

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from test_align_trace import model_spec_shapes, random_variables

from lmc import align
from lmc.errors import UserError

wm = importlib.import_module("lmc.align.discrete.weight_matching")


def _planted(name, seed, noise=0.01, **kw):
    model, spec, shapes = model_spec_shapes(name, **kw)
    tree = random_variables(model, seed, shapes=shapes)
    planted = align.random_permutations(spec, jax.random.key(seed + 100), tree)
    rng = np.random.default_rng(seed)
    b = align.apply_permutation(spec, planted, tree)
    b["params"] = jax.tree.map(
        lambda v: v + noise * rng.normal(size=v.shape).astype(np.float32), b["params"]
    )
    return spec, tree, b, align.inverse(planted)


def _recovered(perms, expected) -> bool:
    return all(np.array_equal(np.asarray(perms[k]), np.asarray(expected[k])) for k in expected)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("mlp", dict(width=32, depth=3)),
        ("cnn", dict(width=8, norm="none")),  # blocked (flattened) axis
        ("vgg11", dict(width=1 / 8, norm="batchnorm")),
        ("resnet20", dict(width=2, norm="batchnorm")),
        ("resnet20", dict(width=1, norm="layernorm")),
    ],
)
def test_planted_permutations_are_recovered(name, kw):
    for seed in range(2):
        spec, a, b, expected = _planted(name, seed, **kw)
        perms, info = align.weight_matching(
            spec, a["params"], b["params"], key=jax.random.key(seed)
        )
        assert _recovered(perms, expected), f"{name} seed {seed}: {info}"
    # Combined trees work too (the statistics are not matched, only permuted).
    perms2, _ = align.weight_matching(spec, a, b, key=jax.random.key(seed))
    assert _recovered(perms2, expected)


def test_fixed_permutations_stay_and_the_others_are_matched_given_them():
    """`fixed`: a permutation held at its init; every other one is the exact best
    response to it (checked against scipy on its own cost), and with the planted
    value held the rest of the planted permutations are recovered."""
    spec, a, b, expected = _planted("mlp", 0, width=32, depth=3)
    names = sorted(expected)
    held = names[0]
    perms, _ = align.weight_matching(
        spec, a["params"], b["params"], fixed=(held,), init={held: expected[held]}
    )
    assert _recovered(perms, expected)
    perms, _ = align.weight_matching(spec, a["params"], b["params"], fixed=(held,))
    assert np.array_equal(np.asarray(perms[held]), np.arange(len(perms[held])))
    wspec = spec.subtree("params")
    problem = wm.Problem(wspec, dict(wspec.sizes), a["params"], b["params"])
    current = [np.asarray(perms[n]) for n in problem.names]
    for p, name in enumerate(problem.names):
        if name == held:
            continue
        cost = problem.cost(p, current)
        rows = np.arange(cost.shape[0])
        _, best = linear_sum_assignment(cost, maximize=True)
        assert cost[rows, best].sum() <= cost[rows, current[p]].sum() + 1e-4 * np.abs(cost).max()
    with pytest.raises(UserError, match="fixed names no permutation"):
        align.weight_matching(spec, a["params"], b["params"], fixed=("nope",))


def _objective(spec, a, b, perms):
    bp = align.apply_permutation(spec, perms, b)
    return sum(
        float(np.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(bp), strict=True)
    )


def test_result_is_a_fixed_point_and_objective_is_reported():
    """No single permutation can be improved (Algorithm 1's stopping rule)."""
    model, spec, shapes = model_spec_shapes("mlp", width=24, depth=3)
    spec = spec.subtree("params")
    a, b = (random_variables(model, s, shapes=shapes)["params"] for s in (1, 2))
    perms, info = align.weight_matching(spec, a, b, key=jax.random.key(0))
    assert info["sweeps"] == len(info["objective"]) >= 2
    assert np.all(np.diff(info["objective"]) >= -1e-4)
    assert info["objective"][-1] == pytest.approx(_objective(spec, a, b, perms), rel=1e-5)
    problem = wm.Problem(spec, dict(spec.sizes), a, b)
    current = [np.asarray(perms[n]) for n in problem.names]
    for p in range(len(problem.names)):
        cost = problem.cost(p, current)
        rows = np.arange(cost.shape[0])
        _, best = linear_sum_assignment(cost, maximize=True)
        assert cost[rows, best].sum() <= cost[rows, current[p]].sum() + 1e-4 * np.abs(cost).max()


def test_fast_paths_agree_with_the_plain_algorithm(monkeypatch):
    """Low-rank updates, skipping and the jitted product change speed, not results."""
    model, spec, shapes = model_spec_shapes("resnet20", width=1, norm="layernorm")
    a, b = (random_variables(model, s, shapes=shapes)["params"] for s in (3, 4))
    fast, info = align.weight_matching(spec, a, b, key=jax.random.key(1))
    monkeypatch.setattr(wm, "LOW_RANK_FRACTION", -1.0)  # always recompute in full
    monkeypatch.setattr(wm, "JIT_MIN_MACS", 0)  # every product jitted
    monkeypatch.setattr(wm, "BACKEND", "jax")
    plain, info2 = align.weight_matching(spec, a, b, key=jax.random.key(1))
    assert _recovered(fast, plain)
    assert info["objective"][-1] == pytest.approx(info2["objective"][-1], rel=1e-5)


@pytest.mark.parametrize("solver", ["lapjv", "scipy"])
def test_assignment_solvers_reach_the_optimum(monkeypatch, solver):
    """Both solvers maximize; ties (integer costs) may break either way, same total."""
    if solver == "lapjv":
        pytest.importorskip("lap")
    monkeypatch.setattr(wm, "SOLVER", solver)
    rng = np.random.default_rng(0)
    for cost in (
        rng.normal(size=(64, 64)).astype(np.float32),
        rng.integers(0, 3, size=(50, 50)).astype(np.float32),  # many ties
        np.ones((5, 5)),
    ):
        cols = wm.solve_assignment(cost)
        assert np.array_equal(np.sort(cols), np.arange(len(cost)))
        _, best = linear_sum_assignment(cost, maximize=True)
        rows = np.arange(len(cost))
        assert cost[rows, cols].sum() == pytest.approx(cost[rows, best].sum(), rel=1e-6)


def test_low_rank_updates_are_refreshed(monkeypatch):
    """Every product low-rank, refreshed in full every 2 updates: same result."""
    model, spec, shapes = model_spec_shapes("mlp", width=32, depth=3)
    spec = spec.subtree("params")
    a, b = (random_variables(model, s, shapes=shapes)["params"] for s in (5, 6))
    plain, info = align.weight_matching(spec, a, b, key=jax.random.key(2))
    monkeypatch.setattr(wm, "LOW_RANK_FRACTION", 1.0)
    full_products = []
    full_cost = wm.Problem.full_cost
    monkeypatch.setattr(
        wm.Problem,
        "full_cost",
        lambda self, g, rows: full_products.append(g) or full_cost(self, g, rows),
    )

    def run(max_updates):
        monkeypatch.setattr(wm, "MAX_LOW_RANK_UPDATES", max_updates)
        full_products.clear()
        out = align.weight_matching(spec, a, b, key=jax.random.key(2))
        return out, len(full_products)

    (fast, info2), refreshed = run(2)
    (_, _), never_refreshed = run(10**6)
    assert _recovered(fast, plain)
    assert info["objective"][-1] == pytest.approx(info2["objective"][-1], rel=1e-5)
    # Without the cap only the first product of each group is full; with it, more are.
    assert refreshed > never_refreshed


def test_deterministic_and_warm_start():
    spec, a, b, expected = _planted("mlp", 5, noise=0.0, width=16, depth=2)
    p1, i1 = align.weight_matching(spec, a, b, key=jax.random.key(7))
    p2, i2 = align.weight_matching(spec, a, b, key=jax.random.key(7))
    assert _recovered(p1, p2) and i1 == {**i2, "wall_s": i1["wall_s"]}
    p3, i3 = align.weight_matching(spec, a, b, init=expected)
    assert _recovered(p3, expected) and i3["sweeps"] == 1


def test_permutation_on_two_axes_of_one_leaf():
    """A recurrent-style weight h -> h: the same permutation on both axes."""
    rng = np.random.default_rng(0)
    a = {"w": rng.normal(size=(12, 12)), "u": rng.normal(size=(3, 12))}
    spec = align.PermutationSpec.from_axes({"h": [("w", 0), ("w", 1), ("u", 1)]})
    planted = {"h": rng.permutation(12)}
    b = align.apply_permutation(spec, planted, a)
    perms, info = align.weight_matching(spec, a, b)
    assert _recovered(perms, align.inverse(planted))
    assert info["objective"][-1] == pytest.approx(_objective(spec, a, b, perms))


def test_bad_input_is_reported():
    model, spec, shapes = model_spec_shapes("mlp", width=8, depth=2)
    a = random_variables(model, 0, shapes=shapes)["params"]
    b = jax.tree.map(np.copy, a)
    b["dense1"]["kernel"] = np.zeros((8, 9), np.float32)
    with pytest.raises(UserError, match=r"dense1/kernel.*\(8, 8\).*\(8, 9\)"):
        align.weight_matching(spec, a, b)
    del b["dense1"]
    with pytest.raises(UserError, match="dense1/bias"):
        align.weight_matching(spec, a, b)
    nan = jax.tree.map(np.copy, a)
    nan["head"]["kernel"][0, 0] = np.nan
    with pytest.raises(UserError, match="params_b.*head/kernel"):
        align.weight_matching(spec, a, nan)
    wrong = align.PermutationSpec.from_axes(
        {"P": [("dense0/kernel", 1), ("dense0/bias", 0)]}, sizes={"P": 5}
    )
    with pytest.raises(UserError, match="'P'"):
        align.weight_matching(wrong, a, a)
    with pytest.warns(UserWarning, match="empty"):
        perms, info = align.weight_matching(align.PermutationSpec({}, {}), a, a)
    assert perms == {} and info["sweeps"] == 0


@pytest.mark.parametrize("keep_all", [True, False])
def test_large_cost_sums_match_costs_from_scratch(monkeypatch, keep_all):
    """Every cost pooled into one in-place-corrected sum per block (the path of layers
    over 1024 units), under moves of a few units (low-rank) and of all of them (full):
    each cost the cache returns equals the products from scratch, and an unchanged
    neighbourhood returns None."""
    monkeypatch.setattr(wm, "CACHE_MAX_ENTRIES", 0)
    if keep_all:  # every sum kept between visits, so the corrections pile up
        monkeypatch.setattr(wm, "EXPENSIVE_ROWS", 10**6)
    model, spec, shapes = model_spec_shapes("resnet20", width=1, norm="layernorm")
    spec = spec.subtree("params")
    a, b = (random_variables(model, s, shapes=shapes)["params"] for s in (7, 8))
    problem = wm.Problem(spec, dict(spec.sizes), a, b)
    cache = wm.CostCache(problem)
    rng = np.random.default_rng(0)
    perms = {n: np.arange(problem.sizes[n]) for n in problem.names}
    for step in range(40):
        k = int(rng.integers(len(problem.blocks)))
        got = cache.get(k, perms)
        want = problem.costs(problem.blocks[k], perms)
        if got is not None:
            for role, cost in want.items():
                np.testing.assert_allclose(got[role], cost, rtol=1e-4, atol=1e-4)
        assert cache.get(k, perms) is None  # nothing moved since: same costs
        name = problem.names[int(rng.integers(len(problem.names)))]
        p = perms[name].copy()
        if step % 7 == 3:
            perms[name] = rng.permutation(p)  # every unit moves
        else:
            i, j = rng.choice(len(p), 2, replace=False)
            p[[i, j]] = p[[j, i]]
            perms[name] = p


def test_pooled_sums_give_the_plain_algorithms_result(monkeypatch):
    """The pooled path (forced on a small model) reaches the plain algorithm's
    permutations and objective."""
    model, spec, shapes = model_spec_shapes("resnet20", width=1, norm="layernorm")
    a, b = (random_variables(model, s, shapes=shapes)["params"] for s in (3, 4))
    monkeypatch.setattr(wm, "LOW_RANK_FRACTION", -1.0)  # always recompute in full
    plain, info = align.weight_matching(spec, a, b, key=jax.random.key(1))
    monkeypatch.setattr(wm, "LOW_RANK_FRACTION", 0.5)
    monkeypatch.setattr(wm, "CACHE_MAX_ENTRIES", 0)
    pooled, info2 = align.weight_matching(spec, a, b, key=jax.random.key(1))
    assert _recovered(pooled, plain)
    assert info["objective"][-1] == pytest.approx(info2["objective"][-1], rel=1e-5)
