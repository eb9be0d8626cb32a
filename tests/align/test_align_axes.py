"""The axis kernels against plain NumPy indexing (`lmc.align.axes`).

`row_map` is what lets weight matching read every cost from the unpermuted leaves:
unit_rows(x with the other permutations applied) == unit_rows(x)[row_map]. The
permuted leaf here is built with `np.take` per axis (and a loop over the stacking
index for nested permutations), not with the kernels under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmc.align import axes

RNG = np.random.default_rng(0)


def _take_blocked(x, perm, axis, inner):
    """np.take on the n-factor of `axis` viewed as (outer, n, inner)."""
    shape = x.shape
    n = len(perm)
    y = x.reshape(*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :])
    return np.take(y, perm, axis=axis + 1).reshape(shape)


def _apply(x, others, perms):
    """The others applied by hand: plain ones first, then nested (one perm per index
    of the stacking axis)."""
    for name, axis, inner, stack in sorted(others, key=lambda o: o[3] is not None):
        perm = perms[name]
        if stack is None:
            x = _take_blocked(x, perm, axis, inner)
            continue
        out = x.copy()
        for index in range(x.shape[stack]):
            sl = [slice(None)] * x.ndim
            sl[stack] = index
            sub = x[tuple(sl)]
            out[tuple(sl)] = _take_blocked(sub, perm[index], axis - (axis > stack), inner)
        x = out
    return x


CASES = [
    # (shape, unit factors, others as (name, axis, inner, stack), perm shapes)
    ((6, 4), [(1, 4, 1)], [("p", 0, 1, None)], {"p": (6,)}),
    ((6, 4), [(0, 6, 1)], [("p", 1, 1, None)], {"p": (4,)}),
    ((5, 12), [(1, 3, 4)], [("p", 0, 1, None), ("q", 1, 1, None)], {"p": (5,), "q": (4,)}),
    ((5, 12), [(1, 4, 1)], [("p", 1, 4, None)], {"p": (3,)}),  # slower factor of the axis
    # attention-like (d, H, dh): residual rows with head and nested within-head perms
    ((4, 3, 5), [(0, 4, 1)], [("h", 1, 1, None), ("w", 2, 1, 1)], {"h": (3,), "w": (3, 5)}),
    # a family unit (head x within) with the residual as the other
    ((4, 3, 5), [(1, 3, 1), (2, 5, 1)], [("r", 0, 1, None)], {"r": (4,)}),
    ((3, 5, 4), [(0, 3, 1), (1, 5, 1)], [("r", 2, 1, None)], {"r": (4,)}),
]


@pytest.mark.parametrize("shape, factors, others, perm_shapes", CASES)
def test_row_map_matches_permuting_the_leaf(shape, factors, others, perm_shapes):
    x = RNG.normal(size=shape)
    perms = {
        n: RNG.permuted(np.broadcast_to(np.arange(s[-1]), s), axis=-1).copy()
        for n, s in perm_shapes.items()
    }
    moved = _apply(x, others, perms)
    rows = axes.row_map(shape, factors, others, perms)
    np.testing.assert_array_equal(axes.unit_rows(moved, factors), axes.unit_rows(x, factors)[rows])


def test_unit_rows_puts_the_units_last_head_major():
    x = RNG.normal(size=(4, 3, 5))
    got = axes.unit_rows(x, [(1, 3, 1), (2, 5, 1)])
    assert got.shape == (4, 15)
    np.testing.assert_array_equal(got[2, 1 * 5 + 4], x[2, 1, 4])  # head 1, within 4
    got = axes.unit_rows(x, [(0, 4, 1)])
    np.testing.assert_array_equal(got[2 * 5 + 3, 1], x[1, 2, 3])


def test_permute_and_map_axis_agree_with_indexing():
    x = RNG.normal(size=(3, 8, 2))
    perm = RNG.permutation(4)
    got = axes.permute_axis(x, perm, 1, inner=2)
    want = x.reshape(3, 4, 2, 2)[:, perm].reshape(3, 8, 2)
    np.testing.assert_array_equal(got, want)
    stacked = np.stack([RNG.permutation(2) for _ in range(3)])
    got = axes.permute_axis(x, stacked, 2, stack=0)
    want = np.stack([x[i][:, stacked[i]] for i in range(3)])
    np.testing.assert_array_equal(got, want)
    m = RNG.normal(size=(8, 8))
    np.testing.assert_allclose(axes.map_axis(x, m, 1), np.einsum("aib,ij->ajb", x, m))
    ms = RNG.normal(size=(3, 2, 2))
    np.testing.assert_allclose(axes.map_axis(x, ms, 2, stack=0), np.einsum("aib,abj->aij", x, ms))


def test_inverse_and_compose_of_nested_permutations_given_the_spec():
    """A head permutation with per-head within-head permutations: inverse(P) undoes P
    and compose(Q, P) is P then Q on the leaf itself (np.take by hand)."""
    from lmc import align

    spec = align.PermutationSpec.from_axes(
        {"h": [("w", 0)], "d": [("w", 1, 1, 0)]}, sizes={"h": 3, "d": 4}, stacks={"d": 3}
    )
    x = {"w": RNG.normal(size=(3, 4))}

    def by_hand(perms, w):  # row l = head h[l] of w, its dims taken by d[l]
        return np.stack([w[perms["h"][m]][perms["d"][m]] for m in range(3)])

    def draw():
        return {"h": RNG.permutation(3), "d": np.stack([RNG.permutation(4) for _ in range(3)])}

    p, q = draw(), draw()
    moved = align.apply_permutation(spec, p, x)["w"]
    np.testing.assert_array_equal(moved, by_hand(p, x["w"]))
    back = align.apply_permutation(spec, align.inverse(p, spec), {"w": moved})["w"]
    np.testing.assert_array_equal(back, x["w"])
    both = align.apply_permutation(spec, align.compose(q, p, spec), x)["w"]
    np.testing.assert_array_equal(both, by_hand(q, by_hand(p, x["w"])))
