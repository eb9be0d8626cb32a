"""PermutationSpec basics: applying, composing and inverting permutations; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc import align
from lmc.errors import UserError


def _spec():
    # A 2-layer MLP over a flattened 2x2x3 map: hidden perm "h" (4 units) and a
    # channel perm "c" (3 channels) acting on a blocked axis (channel fastest).
    return align.PermutationSpec.from_axes(
        {
            "c": [("conv/bias", 0), ("dense/kernel", 0, 1)],
            "h": [("dense/kernel", 1), ("dense/bias", 0), ("head/kernel", 0)],
        },
        sizes={"c": 3, "h": 4},
    )


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"bias": rng.normal(size=(3,))},
        "dense": {"kernel": rng.normal(size=(12, 4)), "bias": rng.normal(size=(4,))},
        "head": {"kernel": rng.normal(size=(4, 2))},
    }


def test_apply_permutation_takes_units_and_blocks():
    spec, tree = _spec(), _tree()
    perms = {"c": jnp.array([2, 0, 1]), "h": jnp.array([3, 1, 0, 2])}
    out = align.apply_permutation(spec, perms, tree)
    np.testing.assert_array_equal(out["conv"]["bias"], tree["conv"]["bias"][perms["c"]])
    np.testing.assert_array_equal(out["head"]["kernel"], tree["head"]["kernel"][perms["h"]])
    # Blocked axis: rows are (position, channel) pairs with the channel fastest.
    k = np.asarray(tree["dense"]["kernel"]).reshape(4, 3, 4)[:, perms["c"], :][:, :, perms["h"]]
    np.testing.assert_array_equal(out["dense"]["kernel"], k.reshape(12, 4))


def test_compose_inverse_identity():
    spec, tree = _spec(), _tree()
    p = align.random_permutations(spec, jax.random.key(1))
    q = align.random_permutations(spec, jax.random.key(2))
    pq = align.compose(p, q)
    twice = align.apply_permutation(spec, p, align.apply_permutation(spec, q, tree))
    once = align.apply_permutation(spec, pq, tree)
    jax.tree.map(np.testing.assert_array_equal, once, twice)
    back = align.apply_permutation(spec, align.inverse(p), align.apply_permutation(spec, p, tree))
    jax.tree.map(np.testing.assert_array_equal, back, tree)
    same = align.apply_permutation(spec, align.identity(spec), tree)
    jax.tree.map(np.testing.assert_array_equal, same, tree)


def test_repr_and_table_are_readable():
    spec = _spec()
    assert "2 permutations" in repr(spec) and "h[4]" in repr(spec)
    table = spec.table()
    assert "dense/kernel[1]" in table and "head/kernel[0]" in table
    renamed = align.PermutationSpec.from_axes(
        {"x": spec.axes["c"], "y": spec.axes["h"]}, sizes={"x": 3, "y": 4}
    )
    assert renamed.equivalent(spec) and renamed != spec and renamed.diff(spec) == ""


def test_errors_name_the_permutation_and_path():
    spec, tree = _spec(), _tree()
    bad = align.PermutationSpec.from_axes(
        {"h": [("dense/kernel", 1), ("head/kernel", 0)]}, sizes={"h": 5}
    )
    with pytest.raises(UserError, match="'h'"):
        align.apply_permutation(bad, {"h": jnp.arange(5)}, tree)
    missing = align.PermutationSpec.from_axes({"h": [("nope/kernel", 1)]})
    with pytest.raises(UserError, match="nope/kernel"):
        align.apply_permutation(missing, {"h": jnp.arange(4)}, tree)
    with pytest.raises(UserError, match="'c'"):
        align.apply_permutation(spec, {"h": jnp.arange(4)}, tree)


def test_combined_spec_requires_model_state():
    spec = align.PermutationSpec.from_axes(
        {"h": [("params/bn/scale", 0), ("model_state/bn/mean", 0)]}
    )
    tree = {
        "params": {"bn": {"scale": jnp.arange(3.0)}},
        "model_state": {"bn": {"mean": jnp.arange(3.0)}},
    }
    perms = {"h": jnp.array([1, 2, 0])}
    out = align.apply_permutation(spec, perms, tree)
    np.testing.assert_array_equal(out["model_state"]["bn"]["mean"], [1.0, 2.0, 0.0])
    with pytest.raises(UserError, match="model_state"):
        align.apply_permutation(spec, perms, tree["params"])
    only = align.apply_permutation(spec.subtree("params"), perms, tree["params"])
    np.testing.assert_array_equal(only["bn"]["scale"], [1.0, 2.0, 0.0])
