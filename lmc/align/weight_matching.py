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
- A_e and the unpermuted B_e are flattened once and stacked as (M, n) matrices, one
  stack per *group*: the leaves of p whose rows the same other permutations reorder.
  C_p is the sum of one product `A_g^T @ B_g[rows]` per group; the other permutations
  only reorder B_g's rows, and that map `rows` is computed on the host in O(M).
- Only the groups whose row map changed since p's last solve are recomputed; leaves
  no other permutation touches (an input layer, norm scales) are multiplied once.
  A permutation none of whose row maps changed is skipped: same assignment.
- When at most half of a group's rows changed, its cached product gets a low-rank
  correction A_g[changed]^T @ (B_g[new] - B_g[old]) instead of a full product.
- Assignments use LAPJV (the `lap` package) on reduced costs; scipy without it.
- J is tracked from the assignment gains (exact while no permutation acts on two
  axes of one leaf), not recomputed every sweep.
- Products run in jitted JAX on accelerators. On a CPU backend they run in NumPy:
  its BLAS is faster than XLA's dot there (measured 80 ms vs 128 ms for a
  (512 x 20480) @ (20480 x 512) product on 2 cores) and nothing needs compiling.

Speed against the eager reference: `python benchmarks/run.py --only weight_matching`
(numbers in the README's Performance section).
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

try:  # LAPJV (Jonker & Volgenant 1987): 2.5x faster than scipy on these dense costs
    import lap as _lap
except ImportError:  # optional speed-up; scipy gives the same optimum
    _lap = None

from lmc.align import nested
from lmc.align.checks import check_finite, check_same_structure, flat
from lmc.align.spec import PermutationSpec, check_sizes, get_leaf, resolve
from lmc.align.stacked import restack, unstack_perms, unstack_spec, unstack_tree
from lmc.errors import UserError

# Up to this fraction of changed rows a low-rank update is cheaper than a full product
# (measured on 2 cores: 0.57x of a full (2048 x 2048) @ (2048 x 2048) at half the rows
# changed, 0.8x at three quarters; 0.66x for (512 x 9216) @ (9216 x 512) at half).
LOW_RANK_FRACTION = 0.5
# Recompute a group in full after this many low-rank updates in a row, so float32
# rounding cannot pile up.
MAX_LOW_RANK_UPDATES = 16
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


def unit_rows(x: np.ndarray, axis: int, inner: int, n: int) -> np.ndarray:
    """x with the permuted factor of `axis` last, flattened to (-1, n).

    Rows run over the other indices in C order (the grid `row_map` permutes). For a
    permutation on the last axis (a kernel's output units) this is a view, no copy.
    """
    shape = x.shape
    axis %= len(shape)
    x = np.asarray(x).reshape(
        (*shape[:axis], shape[axis] // (n * inner), n, inner, *shape[axis + 1 :])
    )
    return np.moveaxis(x, axis + 1, -1).reshape((-1, n))


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


# "lapjv" (the `lap` package, when installed) or "scipy".
SOLVER = "lapjv"


def solve_assignment(cost) -> np.ndarray:
    """The permutation maximizing sum_i cost[i, perm[i]].

    Solved as the minimization of `max_k cost[i, k] - cost[i, j]` with column minima
    subtracted: row and column constants leave the optimal assignments unchanged, and
    a zero in every row and column gives the solvers' initial phases most rows for
    free. Measured on the 2048x2048 costs of a 3x2048 MLP pair (50 solves, 2 cores):
    scipy 9.0 s; LAPJV (Jonker & Volgenant 1987, the `lap` package) 2.6 s. The
    reduction runs in float32 (0.5 s for the 50; 2.0 s in float64, memory-bound).
    Solvers may break ties differently; the objective is the same.
    """
    cost = np.asarray(cost)
    if cost.dtype != np.float64:
        cost = cost.astype(np.float32, copy=False)
    work = cost.max(axis=1, keepdims=True) - cost
    work -= work.min(axis=0, keepdims=True)
    if SOLVER == "lapjv" and _lap is not None and work.shape[0] == work.shape[1]:
        _, cols, _ = _lap.lapjv(work, extend_cost=False)
        return np.asarray(cols, np.intp)
    _, cols = linear_sum_assignment(work)
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


class Group:
    """The leaves of one permutation p whose B rows the same other permutations reorder.

    C_p is the sum of one product per group, so when a neighbour of p changes only
    the groups it touches are recomputed (a ResNet's residual permutation touches
    ~15 leaves, and one block's permutation reorders 2 of them).
    """

    def __init__(self, problem: Problem, p: int, entries: list[tuple]):
        self.entries = entries  # (leaf, axis, inner, others)
        self.depends = frozenset(q for e in entries for q, _, _ in e[3])
        self.a_t = problem.stack(p, entries, problem.leaves_a)
        self.b_t = problem.stack(p, entries, problem.leaves_b)
        self.device = _to_device(self.a_t, self.b_t) if _use_jax() else None


def _to_device(a: np.ndarray, b: np.ndarray):
    """Padded device copies of A, B for large products, else None (NumPy)."""
    m, n = a.shape
    if n * n * m < JIT_MIN_MACS:
        return None
    padded = -(-m // PAD_ROWS) * PAD_ROWS  # zero rows, never selected by a real row
    widen = lambda x: jnp.asarray(np.pad(x, ((0, padded - m), (0, 0))))  # noqa: E731
    return widen(a), widen(b), padded


class Problem:
    """One weight-matching run: per permutation, its groups of A/B rows and row maps."""

    def __init__(self, spec: PermutationSpec, sizes: Mapping[str, int], tree_a, tree_b):
        self.names = list(spec.axes)
        self.sizes = [sizes[n] for n in self.names]
        index = {n: i for i, n in enumerate(self.names)}
        by_leaf = spec.by_leaf()
        self.paths = list(by_leaf)
        self.leaf_refs = {
            p: [(index[n], r.axis, r.inner) for n, r in by_leaf[p]] for p in self.paths
        }
        self.leaves_a = [np.asarray(get_leaf(tree_a, p), np.float32) for p in self.paths]
        self.leaves_b = [np.asarray(get_leaf(tree_b, p), np.float32) for p in self.paths]
        self.shapes = [x.shape for x in self.leaves_b]
        self.tree_a, self.tree_b = tree_a, tree_b
        entries: list[list[tuple]] = [[] for _ in self.names]  # (leaf, axis, inner, others)
        for li, path in enumerate(self.paths):
            refs = self.leaf_refs[path]
            for k, (p, axis, inner) in enumerate(refs):
                others = tuple(r for j, r in enumerate(refs) if j != k)
                entries[p].append((li, axis, inner, others))
        # J is linear in p (a step changes it by exactly new - old) unless p acts on
        # two axes of one leaf.
        self.linear = all(p not in {o[0] for e in es for o in e[3]} for p, es in enumerate(entries))
        self.groups = []
        for p, es in enumerate(entries):
            by_depends: dict[frozenset, list] = {}
            for e in es:
                by_depends.setdefault(frozenset(q for q, _, _ in e[3]), []).append(e)
            self.groups.append([Group(self, p, g) for g in by_depends.values()])
        largest = max((g.a_t.size * g.a_t.shape[1] for gs in self.groups for g in gs), default=0)
        self.small = largest < SMALL_MACS
        # Host copies of the leaves are only needed while stacking.
        del self.leaves_a, self.leaves_b

    def stack(self, p: int, entries, leaves) -> np.ndarray:
        """The entries' unit matrices of p stacked as (M, n): B's other permutations
        then reorder rows, and gathering rows is contiguous (columns: 2-3x slower)."""
        n = self.sizes[p]
        mats = [unit_rows(leaves[li], axis, inner, n) for li, axis, inner, _ in entries]
        return np.ascontiguousarray(mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0))

    def rows(self, p: int, group: Group, perms) -> np.ndarray:
        """The row map of the group's B rows under the current permutations."""
        maps, offset = [], 0
        for li, axis, inner, others in group.entries:
            cm = row_map(self.shapes[li], axis, inner, self.sizes[p], others, perms)
            maps.append(cm + offset)
            offset += cm.size
        return np.concatenate(maps).astype(np.intp)

    def full_cost(self, group: Group, rows: np.ndarray) -> np.ndarray:
        if group.device is None:
            return group.a_t.T @ group.b_t[rows]
        a, b, padded = group.device
        rows = np.concatenate([rows, np.arange(rows.size, padded)]).astype(np.int32)
        return np.asarray(_cost_jit(a, b, rows))

    def cost(self, p: int, perms) -> np.ndarray:
        """C_p under `perms`, computed from scratch."""
        return sum(self.full_cost(g, self.rows(p, g, perms)) for g in self.groups[p])

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
    """Per permutation and group: the partial product (host, float32) and its row map."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.rows = [[None] * len(gs) for gs in problem.groups]
        self.parts = [[None] * len(gs) for gs in problem.groups]
        self.updates = [[0] * len(gs) for gs in problem.groups]  # low-rank ones in a row

    def get(self, p: int, perms) -> np.ndarray | None:
        """C_p, or None if it is the one the current perms[p] was solved for."""
        pr = self.problem
        fresh = False
        for g, group in enumerate(pr.groups[p]):
            old = self.rows[p][g]
            if old is not None and not group.depends:
                continue  # no other permutation reorders these rows: computed once
            rows = pr.rows(p, group, perms)
            if old is not None and np.array_equal(old, rows):
                continue
            fresh = True
            changed = None if old is None else np.flatnonzero(old != rows)
            if (
                changed is not None
                and len(changed) <= LOW_RANK_FRACTION * rows.size
                and self.updates[p][g] < MAX_LOW_RANK_UPDATES
            ):
                # A_g^T (B_g[rows]) changes only in the changed rows' outer products.
                b = group.b_t
                part = self.parts[p][g] + group.a_t[changed].T @ (
                    b[rows[changed]] - b[old[changed]]
                )
                self.updates[p][g] += 1
            else:
                part = pr.full_cost(group, rows)
                self.updates[p][g] = 0
            self.rows[p][g], self.parts[p][g] = rows, part
        if not fresh:
            return None  # same cost as at its last solve: same assignment
        total = self.parts[p][0].copy()
        for part in self.parts[p][1:]:
            total += part
        return total


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
                continue
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
    restarts: int = 1,
):
    """Permutations of B's hidden units that best match A's weights.

    Returns `(perms, info)`: `apply_permutation(spec, perms, params_b)` is B aligned
    to A; `info` has `objective` (J after each sweep, a list), `sweeps` and `wall_s`.
    For a spec over the combined tree, pass params or combined trees (the running
    statistics are permuted by `apply_permutation`, but are not weights to match).
    `init` (name -> perm) warm-starts; `key` fixes the visiting order (default key 0).
    `restarts`: runs of the descent with other visiting orders (restart i uses
    `fold_in(key, i)`, restart 0 `key` itself); the one with the largest final J is
    returned, and `info["restart_objectives"]` lists each run's final J. The objective
    has many local optima on attention layers, where the visiting order decides.

    A spec with nested units (`spec_from_function(..., nested=True)`: heads permuted
    as units, per-head within-head permutations) is solved by block coordinate
    descent, each head family exactly (`lmc.align.nested`).
    """
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    if int(restarts) < 1:
        raise UserError(f"weight_matching: restarts must be >= 1, got {restarts}")
    wspec, tree_a, tree_b, sizes = prepare(spec, params_a, params_b)
    if not wspec.axes:
        warnings.warn(
            "the permutation spec is empty: nothing to align, returning identity", stacklevel=2
        )
        return {}, {"objective": [], "sweeps": 0, "wall_s": time.perf_counter() - t0}
    keys = [key] + [jax.random.fold_in(key, i) for i in range(1, int(restarts))]
    if nested.families(wspec):
        return _nested(spec, wspec, sizes, params_a, tree_a, tree_b, keys, max_iter, init, t0)
    stacked = wspec
    if wspec.stacks:  # one permutation per layer: match the layers' slices
        wspec = unstack_spec(stacked, tree_a)
        tree_a, tree_b = unstack_tree(stacked, tree_a), unstack_tree(stacked, tree_b)
        sizes, init = check_sizes(wspec, tree_a), unstack_perms(stacked, init)
    problem = Problem(wspec, sizes, tree_a, tree_b)
    runs = []
    for k in keys:
        perms = [initial(init, n, s) for n, s in zip(problem.names, problem.sizes, strict=True)]
        with _single_threaded_blas() if problem.small else contextlib.nullcontext():
            runs.append(coordinate_descent(problem, perms, k, max_iter))
    perms, _, _ = max(runs, key=lambda run: run[1][-1] if run[1] else -np.inf)
    out = {n: jnp.asarray(p) for n, p in zip(problem.names, perms, strict=True)}
    out = {n: jnp.asarray(p) for n, p in restack(stacked, out).items()}
    return _result(spec, params_a, out, runs, t0)


def _nested(spec, wspec, sizes, params_a, tree_a, tree_b, keys, max_iter, init, t0):
    """weight_matching for a spec with nested units (see `lmc.align.nested`)."""
    runs = []
    for k in keys:
        perms = {}
        for name in wspec.axes:
            shape = wspec.shape(name)
            if init is not None and name in init:
                p = np.asarray(init[name]).astype(np.int64)
                rows = p.reshape(-1, shape[-1])
                if p.shape != shape or not all(
                    np.array_equal(np.sort(r), np.arange(shape[-1])) for r in rows
                ):
                    raise UserError(
                        f"init[{name!r}] must be permutations of shape {shape}, got {p.shape}"
                    )
                perms[name] = p
            else:
                perms[name] = np.broadcast_to(np.arange(shape[-1]), shape).copy()
        rng = np.random.default_rng(np.asarray(jax.random.key_data(k)).ravel())
        runs.append(
            nested.coordinate_descent(
                wspec, sizes, tree_a, tree_b, perms, rng, max_iter, solve_assignment
            )
        )
    perms, _, _ = max(runs, key=lambda run: run[1][-1] if run[1] else -np.inf)
    out = {n: jnp.asarray(p) for n, p in perms.items()}
    return _result(spec, params_a, out, runs, t0)


def _result(spec, params_a, out: dict, runs: list, t0: float) -> tuple[dict, dict]:
    """The best run's permutations, identity for those that only touch running
    statistics, and the info dict (objective per sweep, restarts)."""
    _, objectives, sweeps = max(runs, key=lambda run: run[1][-1] if run[1] else -np.inf)
    for name in spec.axes:  # permutations that only touch running statistics
        if name not in out:
            size = check_sizes(*resolve(spec, params_a))[name]
            shape = (spec.stacks[name], size) if name in spec.stacks else (size,)
            out[name] = jnp.broadcast_to(jnp.arange(size), shape)
    info = {"objective": objectives, "sweeps": sweeps, "wall_s": time.perf_counter() - t0}
    if len(runs) > 1:
        info["restart_objectives"] = [float(run[1][-1]) for run in runs if run[1]]
    return out, info


def initial(init, name: str, size: int) -> np.ndarray:
    """init[name] checked to be a permutation, or the identity."""
    if init is None or name not in init:
        return np.arange(size)
    p = np.asarray(init[name]).astype(np.int64)
    if p.shape != (size,) or not np.array_equal(np.sort(p), np.arange(size)):
        raise UserError(f"init[{name!r}] is not a permutation of {size} elements")
    return p
