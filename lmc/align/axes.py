"""The axis kernels: permute, map or flatten one unit axis of a leaf.

Every alignment method acts on leaves through these few functions, on NumPy arrays
(host, no compilation per shape) or JAX arrays (jnp, where the params live):

- `permute_axis`: x[..., i, ...] = x[..., perm[i], ...] on an axis, a factor of a
  blocked axis (viewed as (outer, n, inner)), or one perm per index of a stacking axis.
- `map_axis`: x[..., j, ...] = sum_i x[..., i, ...] m[i, j] (rotations, learned maps).
- `unit_rows`: the leaf as a (rows, units) matrix with one or more unit factors last,
  the layout weight matching's cost products read (a view when the layout allows).
- `row_map`: which row of that matrix the *other* permutations of the leaf move to
  each row, computed on the row grid alone (O(rows)), never on the leaf.

A *factor* is `(axis, n, inner)`: the n-sized middle factor of `axis` viewed as
(outer, n, inner). A unit made of two factors (a head and a dimension within it) is
the head factor times the within factor, head major.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError

Factor = tuple[int, int, int]  # (axis, n, inner), axis non-negative


def _xp(x):
    """NumPy leaves stay on the host; JAX leaves use jnp."""
    return np if isinstance(x, np.ndarray) else jnp


def blocked(shape: Sequence[int], axis: int, n: int, inner: int) -> tuple[int, ...]:
    """`shape` with `axis` split into (outer, n, inner)."""
    return (*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :])


def permute_axis(x, perm, axis: int, inner: int = 1, stack: int | None = None):
    """x with the n-factor of `axis` permuted by `perm` (n = perm.shape[-1]).

    `stack`: perm is (L, n), row l acting on index l of axis `stack`."""
    xp = _xp(x)
    shape = x.shape
    axis = axis % x.ndim
    n = perm.shape[-1]
    split = blocked(shape, axis, n, inner)
    if stack is None:
        if inner == 1 and shape[axis] == n:
            return xp.take(x, perm, axis=axis)
        return xp.take(x.reshape(split), perm, axis=axis + 1).reshape(shape)
    # Move the stacking axis first and the permuted factor second, gather row l of
    # the factor with perm[l], and move them back.
    stack = stack % x.ndim
    where = (stack if stack < axis else stack + 2, axis + 1)
    y = xp.moveaxis(x.reshape(split), where, (0, 1))
    y = y[xp.arange(perm.shape[0])[:, None], xp.asarray(perm)]
    return xp.moveaxis(y, (0, 1), where).reshape(shape)


def map_axis(x, m, axis: int, stack: int | None = None):
    """x with `axis` mapped by m: x[..., j, ...] = sum_i x[..., i, ...] m[i, j].

    m is (n, n), or (L, n, n) with one map per index of axis `stack`."""
    xp = _xp(x)
    axis = axis % x.ndim
    if m.ndim == 2:
        return xp.moveaxis(xp.tensordot(x, m, axes=([axis], [0])), -1, axis)
    stack = stack % x.ndim
    y = xp.moveaxis(x, (stack, axis), (0, 1))
    y = xp.einsum("lij,li...->lj...", m, y)
    return xp.moveaxis(y, (0, 1), (stack, axis))


def _split_factors(shape, factors: Sequence[Factor]):
    """The shape with every factor's axis split into (outer, n, inner), and the
    positions of the n's there (in `factors` order)."""
    on_axis = {}
    for k, (axis, _, _) in enumerate(factors):
        if axis in on_axis:
            raise UserError(f"two unit factors on axis {axis} of one leaf are not supported")
        on_axis[axis] = k
    split, where = [], [0] * len(factors)
    for axis, dim in enumerate(shape):
        if axis in on_axis:
            _, n, inner = factors[on_axis[axis]]
            where[on_axis[axis]] = len(split) + 1
            split += [dim // (n * inner), n, inner]
        else:
            split.append(dim)
    return split, where


def unit_rows(x: np.ndarray, factors: Sequence[Factor]) -> np.ndarray:
    """x with its unit factors last (head major), flattened to (rows, prod n).

    Rows run over the other indices in C order: the grid `row_map` permutes. A
    factor on the last axis, or on the first of a 2-D leaf, gives a view."""
    split, where = _split_factors(x.shape, factors)
    units = int(np.prod([n for _, n, _ in factors]))
    y = np.moveaxis(x.reshape(split), where, range(-len(where), 0))
    return y.reshape((-1, units))


def row_map(
    shape: Sequence[int],
    factors: Sequence[Factor],
    others: Sequence[tuple[str, int, int, int | None]],
    perms: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Which row of `unit_rows(x)` ends up at each row once the `others` are applied.

    `others`: (name, axis, inner, stack) of the leaf's other permutations; plain
    ones act first, stacked (nested) ones after them, as `spec.permute_leaf` does."""
    split, where = _split_factors(shape, factors)
    removed = set(where)
    position = {}  # leaf axis -> its index in the split shape
    k = 0
    for axis in range(len(shape)):
        position[axis] = k
        k += 3 if any(f[0] == axis for f in factors) else 1
    grid_of = {}  # split index -> grid index (the n's removed)
    for i in range(len(split)):
        if i not in removed:
            grid_of[i] = len(grid_of)
    grid = [split[i] for i in sorted(grid_of)]
    index = np.arange(int(np.prod(grid))).reshape(grid)
    for name, axis, inner, stack in sorted(others, key=lambda o: o[3] is not None):
        perm = perms[name]
        at, inn = _locate(shape, factors, position, grid_of, axis, inner, perm.shape[-1])
        st = None
        if stack is not None:
            if any(f[0] == stack for f in factors):
                raise UserError(f"a stacked permutation ({name!r}) over a unit axis of its leaf")
            st = grid_of[position[stack]]
        index = permute_axis(index, perm, at, inn, st)
    return index.reshape(-1)


def _locate(shape, factors, position, grid_of, axis, inner, m):
    """Where another permutation (axis, inner, size m) acts in the row grid:
    (grid axis, inner block there)."""
    factor = next((f for f in factors if f[0] == axis), None)
    if factor is None:
        return grid_of[position[axis]], inner
    _, n, f_inner = factor
    if inner >= n * f_inner:  # a slower factor of the same axis: inside `outer`
        return grid_of[position[axis]], inner // (n * f_inner)
    if inner * m <= f_inner:  # a faster factor: inside `inner`
        return grid_of[position[axis] + 2], inner
    raise UserError(f"overlapping blocked permutations on axis {axis} of one leaf")
