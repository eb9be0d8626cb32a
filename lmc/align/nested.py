"""Weight matching over nested units: heads as units, one within-head permutation each.

A spec with nested permutations (`spec.nested_units`, traced with `nested=True`) has
*families*: a unit permutation h (the heads) and the nested permutations w_1..w_k
stacked over h's axis (one query/key and one value/output permutation per head).
Coordinate descent visits blocks: every plain permutation (solved by one linear
assignment, as in Git Re-Basin's Algorithm 1) and every family, which is solved
exactly given the other permutations:

    for each pair (head i of A, head g of B) and each w_j: the best within-head
    assignment sigma_j[i, g] and its value v_j[i, g] (one n x n assignment);
    T[i, g] = sum_j v_j[i, g] + <A_i, B_g> over the leaves h acts on without a w_j;
    pi = the assignment maximizing sum_i T[i, pi(i)]; w_j[i] = sigma_j[i, pi(i)].

Heads x heads small assignments (4 heads of 32 dims: 16 assignments of 32 x 32 per
w_j) cost little next to the cost matrices. Costs are built from B with the other
permutations applied (a materialized copy; these specs belong to attention models,
whose permuted leaves fit in memory many times over), so any mix of blocked or
nested axes is handled by `apply_permutation` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from lmc.align.spec import PermutationSpec, apply_permutation, get_leaf, nested_units, permute_leaf
from lmc.errors import UserError

# The assignment solver, (n, n) cost -> perm maximizing sum_i cost[i, perm[i]]; the
# caller (`weight_matching`) passes its own, so both use the same one.
Solve = Callable[[np.ndarray], np.ndarray]


def unit_rows(x: np.ndarray, axis: int, inner: int, n: int) -> np.ndarray:
    """x with the permuted factor of `axis` last, flattened to (-1, n)."""
    shape = x.shape
    axis %= len(shape)
    x = x.reshape((*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :]))
    return np.moveaxis(x, axis + 1, -1).reshape((-1, n))


def families(spec: PermutationSpec) -> dict[str, list[str]]:
    """Unit permutation -> its nested permutations."""
    out: dict[str, list[str]] = {}
    for w, h in nested_units(spec).items():
        out.setdefault(h, []).append(w)
    return out


def validate(spec: PermutationSpec) -> dict[str, list[str]]:
    fams = families(spec)
    nested = {w for ws in fams.values() for w in ws}
    scanned = [n for n in spec.stacks if n not in nested]
    if scanned:
        raise UserError(
            f"weight matching with nested units (heads) and per-layer (scanned) permutations "
            f"{scanned[:3]} in one spec is not supported; trace the unrolled model, or use "
            "the spec without nested=True"
        )
    by_leaf = spec.by_leaf()
    for h, ws in fams.items():
        for path, refs in by_leaf.items():
            on_leaf = [n for n, _ in refs if n in ws]
            if len(on_leaf) > 1:
                raise UserError(
                    f"{'/'.join(map(str, path))!r} carries two nested permutations of "
                    f"{h!r} ({on_leaf}); weight matching solves one per leaf"
                )
    return fams


def objective(spec, perms, tree_a, tree_b) -> float:
    """J = sum over the spec's leaves of <W_a, P(W_b)> (leaves no permutation touches
    add a constant and are left out)."""
    permuted = apply_permutation(spec, perms, tree_b)
    return float(
        sum(
            np.dot(
                np.asarray(get_leaf(tree_a, p), np.float64).ravel(),
                np.asarray(get_leaf(permuted, p), np.float64).ravel(),
            )
            for p in spec.by_leaf()
        )
    )


def _block_leaves(spec, perms, tree_b, names) -> dict:
    """B's leaves that the permutations `names` act on, with every *other* permutation
    applied (those of `names` at the identity): only the leaves one block reads are
    copied, not the whole tree (a GPT-2-size model has hundreds of blocks per sweep)."""
    by_leaf = spec.by_leaf()
    paths = {r.path for n in names for r in spec.axes[n]}
    return {
        p: permute_leaf(
            np.asarray(get_leaf(tree_b, p)), [nr for nr in by_leaf[p] if nr[0] not in names], perms
        )
        for p in paths
    }


def solve_plain(
    spec, sizes, perms, tree_a, tree_b, name, solve: Solve
) -> tuple[np.ndarray, float, float]:
    """The best permutation `name` given the others: (perm, new value, old value)."""
    b = _block_leaves(spec, perms, tree_b, {name})
    n = sizes[name]
    cost = np.zeros((n, n))
    for r in spec.axes[name]:
        a_rows = unit_rows(np.asarray(get_leaf(tree_a, r.path), np.float32), r.axis, r.inner, n)
        b_rows = unit_rows(np.asarray(b[r.path], np.float32), r.axis, r.inner, n)
        cost += a_rows.T @ b_rows  # float32 product (BLAS), summed in float64
    cols = solve(cost)
    rows = np.arange(n)
    return cols, cost[rows, cols].sum(), cost[rows, np.asarray(perms[name])].sum()


def _head_major(x: np.ndarray, unit_axis: int, axis: int | None, n: int | None) -> np.ndarray:
    """x as (H, M, n) with the unit axis first and `axis` last, or (H, M) without one
    (both axes numbered in x, non-negative)."""
    if axis is None:
        return np.moveaxis(x, unit_axis, 0).reshape(x.shape[unit_axis], -1)
    x = np.moveaxis(x, (unit_axis, axis), (0, -1))
    return x.reshape(x.shape[0], -1, n)


def _pair_costs(ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """c[i, g] = ha[i]^T hb[g] for (H, M, n) stacks, as one (H n, H n) float32 GEMM
    (np.einsum without a path optimizer does not use BLAS)."""
    heads, m, n = ha.shape
    a = np.ascontiguousarray(ha.transpose(0, 2, 1)).reshape(heads * n, m)
    b = np.ascontiguousarray(hb.transpose(1, 0, 2)).reshape(m, heads * n)
    return (a @ b).reshape(heads, n, heads, n).transpose(0, 2, 1, 3)


def solve_family(spec, sizes, perms, tree_a, tree_b, unit, nested, solve: Solve):
    """The best unit and nested permutations given the others: (perms, new, old)."""
    b = _block_leaves(spec, perms, tree_b, {unit, *nested})
    heads = sizes[unit]
    base = np.zeros((heads, heads))
    costs = {w: np.zeros((heads, heads, sizes[w], sizes[w])) for w in nested}
    by_leaf = spec.by_leaf()
    for r in spec.axes[unit]:
        refs = dict(by_leaf[r.path])
        w = next((n for n in nested if n in refs), None)
        xa = np.asarray(get_leaf(tree_a, r.path), np.float32)
        xb = np.asarray(b[r.path], np.float32)
        ndim = xa.ndim
        if w is None:
            base += (
                _head_major(xa, r.axis % ndim, None, None)
                @ _head_major(xb, r.axis % ndim, None, None).T
            )
        else:
            ref = refs[w]
            if ref.inner != 1:
                raise UserError(f"nested permutation {w!r} on a blocked axis is not supported")
            ha = _head_major(xa, r.axis % ndim, ref.axis % ndim, sizes[w])
            hb = _head_major(xb, r.axis % ndim, ref.axis % ndim, sizes[w])
            costs[w] += _pair_costs(ha, hb)
    total = base.copy()
    sigma = {}
    for w, c in costs.items():
        sigma[w] = np.empty((heads, heads, sizes[w]), np.intp)
        rows = np.arange(sizes[w])
        for i in range(heads):
            for g in range(heads):
                cols = solve(c[i, g])
                sigma[w][i, g] = cols
                total[i, g] += c[i, g][rows, cols].sum()
    pi = solve(total)
    new = {unit: pi, **{w: sigma[w][np.arange(heads), pi] for w in nested}}
    # The current value, from the same cost matrices.
    cur = np.asarray(perms[unit])
    old = base[np.arange(heads), cur].sum()
    for w, c in costs.items():
        p = np.asarray(perms[w])
        old += sum(c[i, cur[i]][np.arange(sizes[w]), p[i]].sum() for i in range(heads))
    value = base[np.arange(heads), pi].sum() + sum(
        c[i, pi[i]][np.arange(sizes[w]), new[w][i]].sum()
        for w, c in costs.items()
        for i in range(heads)
    )
    return new, value, old


def coordinate_descent(spec, sizes, tree_a, tree_b, perms, rng, max_iter: int, solve: Solve):
    """Block coordinate descent; returns (perms, objectives per sweep, sweeps)."""
    fams = validate(spec)
    # Host copies: permuting NumPy leaves costs no op dispatch (STE passes JAX trees).
    tree_a, tree_b = (
        jax.tree.map(lambda x: np.asarray(x, np.float32), t) for t in (tree_a, tree_b)
    )
    nested = {w for ws in fams.values() for w in ws}
    blocks = [("plain", n) for n in spec.axes if n not in fams and n not in nested]
    blocks += [("family", h) for h in fams]
    perms = {n: np.array(p) for n, p in perms.items()}
    objectives, sweeps = [], 0
    scale = max(1.0, abs(objective(spec, perms, tree_a, tree_b)))
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for k in rng.permutation(len(blocks)):
            kind, name = blocks[k]
            if kind == "plain":
                cols, new, old = solve_plain(spec, sizes, perms, tree_a, tree_b, name, solve)
                update = {name: cols}
            else:
                update, new, old = solve_family(
                    spec, sizes, perms, tree_a, tree_b, name, fams[name], solve
                )
            if new > old + 1e-7 * scale:
                perms.update(update)
                progress = True
        objectives.append(objective(spec, perms, tree_a, tree_b))
        if not progress:
            break
    return perms, objectives, sweeps


def lift(plain: PermutationSpec, spec: PermutationSpec, perms) -> dict[str, np.ndarray]:
    """Permutations of the plain spec as a starting point in the nested one.

    Names are matched by the axes they act on (the same traced classes); a shared
    within-head permutation becomes the same permutation for every head."""
    by_ref = {(r.path, r.axis, r.inner): name for name, refs in plain.axes.items() for r in refs}
    out = {}
    for name, refs in spec.axes.items():
        found = {by_ref.get((r.path, r.axis, r.inner)) for r in refs} - {None}
        if len(found) != 1:
            raise UserError(
                f"permutation {name!r} does not correspond to one permutation of the plain "
                f"spec (found {sorted(found) or 'none'}); were both traced from one model?"
            )
        p = np.asarray(perms[found.pop()])
        out[name] = np.broadcast_to(p, spec.shape(name)).copy()
    return out
