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

The family is one block of weight matching's coordinate descent
(`lmc.align.discrete.weight_matching`): a leaf carrying the unit and a nested permutation is
read as a (rows, heads * n) matrix, head major, so the costs of all head pairs are one
product A^T B[rows], cached and updated like any plain permutation's. Heads x heads
small assignments (4 heads of 32 dims: 16 assignments of 32 x 32 per w_j) cost little
next to that product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmc.align.spec import PermutationSpec, nested_units
from lmc.errors import UserError

# The assignment solver, (n, n) cost -> perm maximizing sum_i cost[i, perm[i]]; the
# caller (`weight_matching`) passes its own, so both use the same one.
Solve = Callable[[np.ndarray], np.ndarray]


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


def solve_family(unit, base, pair_costs, perms, heads: int, solve: Solve):
    """The best unit and nested permutations of one family given the others.

    `base`: (H, H) costs of the leaves the unit acts on without a nested permutation
    (or None); `pair_costs[w][i, g]`: the (n, n) cost of A's head i against B's head g
    for nested permutation w. Returns (update, new value, current value)."""
    total = np.zeros((heads, heads)) if base is None else base.astype(np.float64)
    sigma = {}
    for w, c in pair_costs.items():
        n = c.shape[-1]
        sigma[w] = np.empty((heads, heads, n), np.intp)
        rows = np.arange(n)
        for i in range(heads):
            for g in range(heads):
                cols = solve(c[i, g])
                sigma[w][i, g] = cols
                total[i, g] += c[i, g][rows, cols].sum(dtype=np.float64)
    pi = solve(total)
    new = {unit: pi, **{w: sigma[w][np.arange(heads), pi] for w in pair_costs}}
    return new, _value(base, pair_costs, new, unit), _value(base, pair_costs, perms, unit)


def _value(base, pair_costs, perms, unit) -> float:
    """The family's part of J under `perms`, from its cost matrices."""
    u = np.asarray(perms[unit])
    heads = np.arange(len(u))
    value = 0.0 if base is None else base[heads, u].sum(dtype=np.float64)
    for w, c in pair_costs.items():
        p = np.asarray(perms[w])
        value += sum(c[i, u[i]][np.arange(p.shape[1]), p[i]].sum(dtype=np.float64) for i in heads)
    return float(value)
