"""Weight matching (Git Re-Basin, Ainsworth et al. 2022, Algorithm 1).

Maximize  J(P) = sum_leaves <W_a, P(W_b)>  over the permutations of a spec by
coordinate descent: all permutations but one are fixed, and that one is the solution
of a linear assignment problem (`scipy.optimize.linear_sum_assignment`) on

    C_p = sum over the axes e of p:  A_e @ B_e^T

where A_e is W_a with p's units first, flattened to (n, M_e), and B_e the same for
W_b with every *other* permutation acting on that leaf applied. Sweeps visit the
permutations in a fresh random order (drawn from `key`) and stop after a sweep
without improvement.

How it is made fast (alignment runs for every pair of a sweep):
- A_e and the unpermuted B_e are flattened once and stacked per permutation as
  (M, n) matrices, so C_p is one product `A_p^T @ B_p[cols]`: the other permutations
  only reorder B_p's rows, and that map `cols` is computed on the host in O(M).
- A permutation whose row map did not change since its last solve is skipped: its
  assignment would come out the same.
- When few rows changed, the cached C_p gets a low-rank correction
  A_p[changed]^T @ (B_p[new] - B_p[old]) instead of a full product.
- J is tracked from the assignment gains (exact while no permutation acts on two
  axes of one leaf), not recomputed every sweep.
- Products run in jitted JAX on accelerators. On a CPU backend they run in NumPy:
  its BLAS is faster than XLA's dot there (measured 80 ms vs 128 ms for a
  (512 x 20480) @ (20480 x 512) product on 2 cores) and nothing needs compiling.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from lmc.align.checks import check_finite, check_same_structure, flat
from lmc.align.spec import PermutationSpec, check_sizes, get_leaf, resolve
from lmc.errors import UserError

# Above this fraction of changed rows a full product is about as cheap.
LOW_RANK_FRACTION = 0.25
# Where products run: "auto" (JAX on accelerators, NumPy on CPU), "jax" or "numpy".
BACKEND = "auto"
# On the JAX path, products below this many multiply-adds still use NumPy: an XLA
# compilation (~0.1 s per shape) costs more than thousands of them.
JIT_MIN_MACS = 2**26
# Pad M to a multiple of this on the JAX path, so permutations share compilations.
PAD_ROWS = 1024
# NumPy products this small run single-threaded: BLAS thread hand-offs cost more than
# the product (measured 200x slower with 2 threads on a busy 2-core machine).
SMALL_MACS = 2**24


def unit_matrix(x: np.ndarray, axis: int, inner: int, n: int) -> np.ndarray:
    """x with the permuted factor of `axis` first, flattened to (n, -1) (host copy)."""
    shape = x.shape
    axis %= len(shape)
    x = np.asarray(x).reshape(
        (*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :])
    )
    return np.moveaxis(x, axis + 1, 0).reshape((n, -1))


def _permute_np(x: np.ndarray, perm: np.ndarray, axis: int, inner: int) -> np.ndarray:
    shape = x.shape
    n = len(perm)
    x = x.reshape((*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :]))
    return np.take(x, perm, axis=axis + 1).reshape(shape)


def row_map(shape, axis: int, inner: int, n: int, others, perms) -> np.ndarray:
    """Which row of the unpermuted B_e^T ends up at each row of the permuted one.

    Those rows index the leaf with p's factor removed: shape[:axis], outer, inner,
    shape[axis+1:]. Other permutations permute that index grid; a permutation on a
    different factor of p's own axis lands in the outer or the inner part.
    """
    shape = tuple(shape)
    axis %= len(shape)
    outer = shape[axis] // (n * inner)
    grid = (*shape[:axis], outer, inner, *shape[axis + 1 :])
    index = np.arange(int(np.prod(grid))).reshape(grid)
    for q, ax, inn in others:
        perm = perms[q]
        m = len(perm)
        ax %= len(shape)
        if ax != axis:
            index = _permute_np(index, perm, ax if ax < axis else ax + 1, inn)
        elif inn >= n * inner:  # a slower factor of the same axis: inside `outer`
            index = _permute_np(index, perm, axis, inn // (n * inner))
        elif inn * m <= inner:  # a faster factor: inside `inner`
            index = _permute_np(index, perm, axis + 1, inn)
        else:
            raise UserError(f"overlapping blocked permutations on axis {axis} of one leaf")
    return index.reshape(-1)


@jax.jit
def _cost_jit(a_t, b_t, rows):
    return a_t.T @ jnp.take(b_t, rows, axis=0)


def solve_assignment(cost) -> np.ndarray:
    """The permutation maximizing sum_i cost[i, perm[i]].

    Subtracting row and column maxima leaves the optimal assignments unchanged and
    gives scipy's shortest-augmenting-path solver shorter paths (measured: 27% less
    time on the cost matrices of a 3x2048 MLP pair).
    """
    cost = np.asarray(cost, np.float64)
    cost = cost - cost.max(axis=1, keepdims=True)
    cost -= cost.max(axis=0, keepdims=True)
    _, cols = linear_sum_assignment(cost, maximize=True)
    return cols


_CONTROLLER = None


def _single_threaded_blas():
    """Context: host BLAS on one thread (no-op without threadpoolctl)."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()  # scanning the loaded libraries is slow: once
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _use_jax() -> bool:
    if BACKEND == "auto":
        return jax.default_backend() != "cpu"
    return BACKEND == "jax"


class Problem:
    """One weight-matching run: per permutation, A_p, B_p and how to get its row map."""

    def __init__(self, spec: PermutationSpec, sizes: Mapping[str, int], tree_a, tree_b):
        self.names = list(spec.axes)
        self.sizes = [sizes[n] for n in self.names]
        index = {n: i for i, n in enumerate(self.names)}
        by_leaf = spec.by_leaf()
        self.paths = list(by_leaf)
        self.leaf_refs = {
            p: [(index[n], r.axis, r.inner) for n, r in by_leaf[p]] for p in self.paths
        }
        a = [np.asarray(get_leaf(tree_a, p), np.float32) for p in self.paths]
        b = [np.asarray(get_leaf(tree_b, p), np.float32) for p in self.paths]
        self.shapes = [x.shape for x in b]
        self.tree_a, self.tree_b = tree_a, tree_b
        self.entries: list[list[tuple]] = [[] for _ in self.names]  # (leaf, axis, inner, others)
        for li, path in enumerate(self.paths):
            refs = self.leaf_refs[path]
            for k, (p, axis, inner) in enumerate(refs):
                others = tuple(r for j, r in enumerate(refs) if j != k)
                self.entries[p].append((li, axis, inner, others))
        # J is linear in p (a step changes it by exactly new - old) unless p acts on
        # two axes of one leaf.
        self.linear = all(
            p not in {o[0] for e in es for o in e[3]} for p, es in enumerate(self.entries)
        )
        # A_p and B_p stacked as (M, n): B's other permutations then reorder rows,
        # and gathering rows is contiguous (gathering columns is 2-3x slower).
        self.a_t = [self._stack(p, a) for p in range(len(self.names))]
        self.b_t = [self._stack(p, b) for p in range(len(self.names))]
        use_jax = _use_jax()
        self.device = [self._to_device(p) if use_jax else None for p in range(len(self.names))]
        self.small = max((a.size * a.shape[1] for a in self.a_t), default=0) < SMALL_MACS

    def _stack(self, p: int, leaves) -> np.ndarray:
        n = self.sizes[p]
        mats = [unit_matrix(leaves[li], axis, inner, n).T for li, axis, inner, _ in self.entries[p]]
        return np.ascontiguousarray(np.concatenate(mats, axis=0))

    def _to_device(self, p: int):
        """Padded device copies of A_p, B_p for large products, else None (NumPy)."""
        a, b = self.a_t[p], self.b_t[p]
        m, n = a.shape
        if n * n * m < JIT_MIN_MACS:
            return None
        padded = -(-m // PAD_ROWS) * PAD_ROWS  # zero rows, never selected by a real row
        widen = lambda x: jnp.asarray(np.pad(x, ((0, padded - m), (0, 0))))  # noqa: E731
        return widen(a), widen(b), padded

    def rows(self, p: int, perms) -> np.ndarray:
        """The row map of B_p under the current permutations."""
        maps, offset = [], 0
        for li, axis, inner, others in self.entries[p]:
            cm = row_map(self.shapes[li], axis, inner, self.sizes[p], others, perms)
            maps.append(cm + offset)
            offset += cm.size
        return np.concatenate(maps).astype(np.intp)

    def full_cost(self, p: int, rows: np.ndarray) -> np.ndarray:
        dev = self.device[p]
        if dev is None:
            return self.a_t[p].T @ self.b_t[p][rows]
        a, b, padded = dev
        rows = np.concatenate([rows, np.arange(rows.size, padded)]).astype(np.int32)
        return np.asarray(_cost_jit(a, b, rows))

    def low_rank_update(self, p: int, cost, changed, new_rows, old_rows) -> np.ndarray:
        b = self.b_t[p]
        return cost + self.a_t[p][changed].T @ (b[new_rows] - b[old_rows])

    def objective(self, perms) -> float:
        """J(P) = sum over all leaves of <W_a, P(W_b)>."""
        total = 0.0
        for (path, a), (_, b) in zip(flat(self.tree_a), flat(self.tree_b), strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            for p, axis, inner in self.leaf_refs.get(path, []):
                b = _permute_np(b, perms[p], axis % b.ndim, inner)
            total += float(np.dot(a.ravel(), b.ravel()))
        return total


class CostCache:
    """C_p per permutation (host, float32), with the row map it was computed for."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.rows: list[np.ndarray | None] = [None] * len(problem.names)
        self.cost: list[np.ndarray | None] = [None] * len(problem.names)

    def get(self, p: int, perms) -> np.ndarray | None:
        """C_p, or None if it is the one the current perms[p] was solved for."""
        pr = self.problem
        rows = pr.rows(p, perms)
        old = self.rows[p]
        if old is not None and np.array_equal(old, rows):
            return None
        changed = None if old is None else np.flatnonzero(old != rows)
        if changed is not None and len(changed) <= LOW_RANK_FRACTION * rows.size:
            cost = pr.low_rank_update(p, self.cost[p], changed, rows[changed], old[changed])
        else:
            cost = pr.full_cost(p, rows)
        self.rows[p], self.cost[p] = rows, cost
        return cost


def coordinate_descent(problem: Problem, perms: list[np.ndarray], key, max_iter: int):
    """Algorithm 1 of Git Re-Basin with cached costs; returns (perms, objectives, sweeps)."""
    cache = CostCache(problem)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    objective = problem.objective(perms)
    objectives, sweeps = [], 0
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for p in rng.permutation(len(perms)):
            cost = cache.get(p, perms)
            if cost is None:
                continue  # same cost as at its last solve: same assignment
            cols = solve_assignment(cost)
            rows = np.arange(len(cols))
            old = cost[rows, perms[p]].sum(dtype=np.float64)
            new = cost[rows, cols].sum(dtype=np.float64)
            # float32 costs: ignore "improvements" at the level of rounding noise.
            if new > old + 1e-6 * float(np.abs(cost).max()):
                perms[p] = cols
                progress = True
                objective += new - old
        objectives.append(objective if problem.linear else problem.objective(perms))
        if not progress:
            break
    return perms, objectives, sweeps


def prepare(spec: PermutationSpec, params_a, params_b, names=("params_a", "params_b")):
    """Checks shared by the methods; returns (weights spec, tree_a, tree_b, sizes)."""
    check_same_structure([params_a, params_b], list(names))
    wspec, tree_a = resolve(spec, params_a, for_weights=True)
    _, tree_b = resolve(spec, params_b, for_weights=True)
    check_finite(tree_a, names[0])
    check_finite(tree_b, names[1])
    return wspec, tree_a, tree_b, check_sizes(wspec, tree_a)


def weight_matching(
    spec: PermutationSpec,
    params_a,
    params_b,
    *,
    key=None,
    max_iter: int = 100,
    init: Mapping[str, object] | None = None,
):
    """Permutations of B's hidden units that best match A's weights.

    Returns `(perms, info)`: `apply_permutation(spec, perms, params_b)` is B aligned
    to A; `info` has `objective` (J after each sweep, a list), `sweeps` and `wall_s`.
    For a spec over the combined tree, pass params or combined trees (the running
    statistics are permuted by `apply_permutation`, but are not weights to match).
    `init` (name -> perm) warm-starts; `key` fixes the visiting order (default key 0).
    """
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    wspec, tree_a, tree_b, sizes = prepare(spec, params_a, params_b)
    if not wspec.axes:
        warnings.warn(
            "the permutation spec is empty: nothing to align, returning identity", stacklevel=2
        )
        return {}, {"objective": [], "sweeps": 0, "wall_s": time.perf_counter() - t0}
    problem = Problem(wspec, sizes, tree_a, tree_b)
    perms = [initial(init, n, s) for n, s in zip(problem.names, problem.sizes, strict=True)]
    with _single_threaded_blas() if problem.small else contextlib.nullcontext():
        perms, objectives, sweeps = coordinate_descent(problem, perms, key, max_iter)
    out = {n: jnp.asarray(p) for n, p in zip(problem.names, perms, strict=True)}
    for name in spec.axes:  # permutations that only touch running statistics
        if name not in out:
            out[name] = jnp.arange(check_sizes(*resolve(spec, params_a))[name])
    return out, {"objective": objectives, "sweeps": sweeps, "wall_s": time.perf_counter() - t0}


def initial(init, name: str, size: int) -> np.ndarray:
    """init[name] checked to be a permutation, or the identity."""
    if init is None or name not in init:
        return np.arange(size)
    p = np.asarray(init[name]).astype(np.int64)
    if p.shape != (size,) or not np.array_equal(np.sort(p), np.arange(size)):
        raise UserError(f"init[{name!r}] is not a permutation of {size} elements")
    return p
