"""Weight matching (Git Re-Basin, Ainsworth et al. 2022, Algorithm 1), for every spec.

Maximize  J(P) = sum_leaves <W_a, P(W_b)>  over the permutations of a spec by
coordinate descent over *blocks*: all permutations but one block's are fixed, and the
block is solved exactly. A block is a plain permutation p (one linear assignment,
`scipy.optimize.linear_sum_assignment` or LAPJV, on

    C_p = sum over the axes e of p:  A_e^T B_e[rows_e]

where A_e is W_a as a (rows, n) matrix with p's units last and B_e[rows_e] the same
for W_b with every *other* permutation acting on that leaf applied), or a family of
nested units (heads and the permutations within them, `lmc.align.discrete.nested`), whose
leaves are read as (rows, heads * n) matrices so all head pairs come from one product.
Stacked (per-layer) permutations are matched as the unscanned twin's plain ones
(`lmc.align.discrete.stacked`). Sweeps visit the blocks in a fresh random order (drawn from
`key`) and stop after a sweep without improvement.

How it is made fast and small (alignment runs for every pair of a sweep, on models
up to GPT-2 size):
- Every product is read straight from the leaves (`lmc.align.axes.unit_rows`, a view
  for most layouts): no stacked copies of A or B are made on the host. The other
  permutations only reorder B_e's rows, and that map `rows_e` is computed on the row
  grid alone (`axes.row_map`), never by permuting a leaf.
- A block's products are grouped by the permutations that reorder their rows; only
  the groups whose row maps changed since the block's last solve are recomputed. A
  block none of whose row maps changed is skipped: same costs, same assignment.
- When at most half of a group's rows changed, its cached product gets a low-rank
  correction A[changed]^T (B[new] - B[old]) instead of a full product. Large costs
  are kept as one sum per block (not one product per group), and a block with one
  expensive product keeps it only while its rows change little (`CACHE_MAX_ENTRIES`,
  `EXPENSIVE_ROWS`): memory stays near the models' own.
- Assignments use LAPJV (the `lap` package) on reduced costs; scipy without it.
  Solutions of large costs are remembered by the cost's bytes (`Memo`): restarts
  meet identical costs, and an identical cost has the identical answer.
- J is tracked from the assignment gains (exact while no permutation acts on two
  axes of one leaf), not recomputed every sweep.
- Products run in jitted JAX on accelerators. On a CPU backend they run in NumPy:
  its BLAS is faster than XLA's dot there and nothing needs compiling.

Speed against the eager reference: `python benchmarks/run.py --only weight_matching`;
at GPT-2 size: `python benchmarks/align_scale.py` (numbers in benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import get_blas_funcs
from scipy.optimize import linear_sum_assignment

try:  # LAPJV (Jonker & Volgenant 1987): faster than scipy on these dense costs
    import lap as _lap
except ImportError:  # optional speed-up; scipy gives the same optimum
    _lap = None

from lmc.align.axes import row_map, unit_rows
from lmc.align.discrete import nested
from lmc.align.discrete.stacked import (
    layer_name,
    restack,
    unstack_perms,
    unstack_spec,
    unstack_tree,
)
from lmc.align.inputs import check_finite, check_same_structure, flat
from lmc.align.spec import PermutationSpec, check_sizes, get_leaf, permute_leaf, resolve
from lmc.align.threads import blas_threads
from lmc.errors import UserError

# Up to this fraction of changed rows a low-rank update is cheaper than a full product
# (benchmarks/README.md, "Performance", has the measurement).
LOW_RANK_FRACTION = 0.5
# Recompute a group in full after this many low-rank updates in a row, so float32
# rounding cannot pile up.
MAX_LOW_RANK_UPDATES = 16
# Where products run: "auto" (JAX on accelerators, NumPy on CPU), "jax" or "numpy".
BACKEND = "auto"
# On the JAX path, products below this many multiply-adds still use NumPy: one XLA
# compilation per shape costs more than thousands of them.
JIT_MIN_MACS = 2**26
# Pad M to a multiple of this on the JAX path, so permutations share compilations.
PAD_ROWS = 1024


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
    free. LAPJV (Jonker & Volgenant 1987, the `lap` package) solves them several times
    faster than scipy (benchmarks/README.md, "Performance"). The reduction runs in float32: it is
    memory-bound, and float64 would double its traffic.
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


# Costs at least this large are remembered with their solutions (`Memo`).
MEMO_MIN_SIZE = 512


class Memo:
    """`solve_assignment` with its answers kept by the cost's bytes.

    Restarts of the descent meet identical costs (a layer's MLP units before any of
    their neighbours moved), and an exact solve of a large dense cost is the slowest
    step there (random-init costs are the hardest for LAPJV). Hashing the bytes costs
    a memory pass; an identical cost gets the identical answer, so results do not
    change. Within one descent a block is solved only after its costs changed, so
    repeats are rare and a single run skips the hashing (`active=False`)."""

    def __init__(self, active: bool = True):
        self.answers: dict[bytes, np.ndarray] = {}
        self.active = active

    def __call__(self, cost) -> np.ndarray:
        if not self.active or len(cost) < MEMO_MIN_SIZE:
            return solve_assignment(cost)
        cost = np.ascontiguousarray(cost)
        key = hashlib.blake2b(cost.view(np.uint8), digest_size=16).digest()
        key += str((cost.dtype, cost.shape)).encode()
        if key not in self.answers:
            self.answers[key] = solve_assignment(cost)
        return self.answers[key].copy()


def _use_jax() -> bool:
    if BACKEND == "auto":
        return jax.default_backend() != "cpu"
    return BACKEND == "jax"


class Entry(NamedTuple):
    """One leaf as a (rows, units) matrix of one block.

    `factors`: the unit factors (a plain permutation's axis; a head and the nested
    permutation within it, head major); `others`: the leaf's other permutations as
    (name, axis, inner, stack), which reorder its rows; `role`: the nested permutation
    whose cost it feeds (None: the block's unit permutation alone)."""

    leaf: int
    factors: tuple
    others: tuple
    role: str | None


class Group:
    """Entries of one block and role whose rows the same other permutations reorder.

    A block's cost is a sum of one product per group, so when a neighbour changes,
    only the groups it touches are recomputed (a ResNet's residual permutation
    touches ~15 leaves, and one block's permutation reorders 2 of them)."""

    def __init__(self, problem: Problem, role, entries: list[Entry]):
        self.role, self.entries = role, entries
        self.depends = frozenset(o[0] for e in entries for o in e.others)
        self.units = int(np.prod([n for _, n, _ in entries[0].factors]))
        rows = [problem.leaves_a[e.leaf].size // self.units for e in entries]
        self.offsets = np.cumsum([0, *rows])
        self.device = _to_device(problem, self) if _use_jax() else None


def _gather_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] for a (rows, units) view. A column-major view (a leaf's first axis as
    the units) is gathered along its contiguous axis, not by fancy indexing across
    the strides (benchmarks/README.md, "Alignment at the sizes people merge", has the
    measurement)."""
    if not x.flags.c_contiguous and x.T.flags.c_contiguous:
        return np.take(x.T, rows, axis=1).T
    return np.take(x, rows, axis=0)


def _accumulate(part: np.ndarray, a: np.ndarray, diff: np.ndarray) -> bool:
    """part += a^T diff by one GEMM writing into part (as part^T += diff^T a, which is
    column-major); False where BLAS would have to copy part instead."""
    if not (part.flags.c_contiguous and part.flags.writeable and part.dtype == a.dtype):
        return False
    gemm = get_blas_funcs("gemm", (part,))
    out = gemm(1.0, diff, a, beta=1.0, c=part.T, trans_a=1, overwrite_c=1)
    return np.shares_memory(out, part)


def _to_device(problem: Problem, group: Group):
    """Padded device copies of the group's stacked A, B rows for large products, else
    None (NumPy, straight from the leaves)."""
    m, n = int(group.offsets[-1]), group.units
    if n * n * m < JIT_MIN_MACS:
        return None
    padded = -(-m // PAD_ROWS) * PAD_ROWS  # zero rows, never selected by a real row

    def stack(rows_of):
        x = np.concatenate([rows_of(e) for e in group.entries], axis=0)
        return jnp.asarray(np.pad(x, ((0, padded - m), (0, 0))))

    return stack(problem.rows_a), stack(problem.rows_b), padded


class Block:
    """What one step of the descent solves: a plain permutation, or a family (a unit
    permutation and the permutations nested in its units, solved jointly)."""

    def __init__(self, unit: str, nested_perms: tuple[str, ...]):
        self.unit, self.nested = unit, nested_perms
        self.groups: list[Group] = []

    @property
    def members(self) -> tuple[str, ...]:
        return (self.unit, *self.nested)


class Problem:
    """One weight-matching run: the blocks, their groups of leaf rows, and the leaves.

    Holds A's and B's leaves as host float32 arrays (no copy when they already are)
    and reads every cost product from them: no stacked copies on the NumPy path."""

    def __init__(
        self,
        spec: PermutationSpec,
        sizes: Mapping[str, int],
        tree_a,
        tree_b,
        restarts: int = 1,
        fixed=(),
    ):
        fams = nested.validate(spec) if spec.stacks else {}
        inside = {w for ws in fams.values() for w in ws}
        self.names = list(spec.axes)
        self.sizes = dict(sizes)
        self.shapes = {n: spec.shape(n) if n in spec.stacks else (sizes[n],) for n in self.names}
        by_leaf = spec.by_leaf()
        self.paths = list(by_leaf)
        self.leaf_refs = by_leaf
        self.leaves_a = [np.asarray(get_leaf(tree_a, p), np.float32) for p in self.paths]
        self.leaves_b = [np.asarray(get_leaf(tree_b, p), np.float32) for p in self.paths]
        self.tree_a, self.tree_b = tree_a, tree_b
        free = [n for n in self.names if n not in fixed]
        self.blocks = [Block(n, ()) for n in free if n not in fams and n not in inside]
        self.blocks += [Block(h, tuple(ws)) for h, ws in fams.items() if h not in fixed]
        self.nested = bool(fams)
        self.solve = Memo(active=restarts > 1)  # shared by the restarts
        self.linear = True  # J moves by exactly new - old per step (see `_entries`)
        for block in self.blocks:
            by_key: dict[tuple, list[Entry]] = {}
            for e in self._entries(block):
                key = (e.role, frozenset(o[0] for o in e.others))
                by_key.setdefault(key, []).append(e)
            block.groups = [Group(self, role, es) for (role, _), es in by_key.items()]

    def _entries(self, block: Block):
        for li, path in enumerate(self.paths):
            refs = self.leaf_refs[path]
            mine = [(n, r) for n, r in refs if n == block.unit]
            for name, r in mine:
                ndim = self.leaves_a[li].ndim
                factors = [(r.axis % ndim, self.sizes[name], r.inner)]
                w = next(((n, q) for n, q in refs if n in block.nested), None)
                if w is not None:
                    factors.append((w[1].axis % ndim, self.sizes[w[0]], w[1].inner))
                skip = {(name, r), w}
                others = tuple(
                    (n, q.axis % ndim, q.inner, None if q.stack is None else q.stack % ndim)
                    for n, q in refs
                    if (n, q) not in skip
                )
                # A member acting on another axis of this leaf too: J is not linear
                # in it, so the descent recomputes J instead of adding the gains.
                if any(o[0] in block.members for o in others):
                    self.linear = False
                yield Entry(li, tuple(factors), others, None if w is None else w[0])

    def rows_a(self, e: Entry) -> np.ndarray:
        return unit_rows(self.leaves_a[e.leaf], e.factors)

    def rows_b(self, e: Entry) -> np.ndarray:
        return unit_rows(self.leaves_b[e.leaf], e.factors)

    def rows(self, group: Group, perms) -> list[np.ndarray]:
        """Each entry's row map under the current permutations."""
        return [
            row_map(self.leaves_b[e.leaf].shape, e.factors, e.others, perms) for e in group.entries
        ]

    def full_cost(self, group: Group, rows: list[np.ndarray]) -> np.ndarray:
        if group.device is None:
            total = None
            for e, r in zip(group.entries, rows, strict=True):
                a, b = self.rows_a(e), self.rows_b(e)
                with blas_threads(a.size * a.shape[1]):
                    part = a.T @ (_gather_rows(b, r) if e.others else b)
                total = part if total is None else total + part
            return total
        a, b, padded = group.device
        r = np.concatenate([x + o for x, o in zip(rows, group.offsets, strict=False)])
        r = np.concatenate([r, np.arange(r.size, padded)]).astype(np.int32)
        return np.asarray(_cost_jit(a, b, r))

    def low_rank(self, group: Group, part, old: list, new: list) -> np.ndarray:
        """part + A[changed]^T (B[new] - B[old]) over the changed rows of each entry."""
        return self.add_low_rank(group, part.copy(), old, new)

    def add_low_rank(self, group: Group, part, old: list, new: list, fused=False) -> np.ndarray:
        """`low_rank` into `part` itself. `fused`: BLAS accumulates into `part` (no
        units x units temporary; rounds differently from a product then a sum)."""
        for e, o, r in zip(group.entries, old, new, strict=True):
            changed = np.flatnonzero(o != r)
            if changed.size:
                b = self.rows_b(e)
                a = _gather_rows(self.rows_a(e), changed)
                diff = _gather_rows(b, r[changed]) - _gather_rows(b, o[changed])
                with blas_threads(a.size * a.shape[1]):
                    if not (fused and _accumulate(part, a, diff)):
                        part += a.T @ diff
        return part

    def costs(self, block: Block, perms) -> dict:
        """The block's costs under `perms` from scratch: role -> matrix."""
        out: dict = {}
        for g in block.groups:
            c = self.full_cost(g, self.rows(g, perms))
            out[g.role] = c if g.role not in out else out[g.role] + c
        return out

    def cost(self, p: int, perms) -> np.ndarray:
        """C_p of plain permutation number p under `perms` (a list in `names` order)."""
        perms = dict(zip(self.names, perms, strict=True))
        block = next(b for b in self.blocks if b.unit == self.names[p])
        return self.costs(block, perms)[None]

    def objective(self, perms, dtype=np.float32) -> float:
        """J(P) = sum over all leaves of <W_a, P(W_b)>."""
        total = 0.0
        for (path, a), (_, b) in zip(flat(self.tree_a), flat(self.tree_b), strict=True):
            a, b = np.asarray(a, dtype), np.asarray(b, dtype)
            b = permute_leaf(b, self.leaf_refs.get(path, []), perms)
            total += float(np.dot(a.ravel(), b.ravel()))
        return total


# Costs of at most this many entries keep one partial product per group between
# visits (for low-rank updates, and so a change in one group does not recompute the
# others). Larger costs (a 4096-unit layer: 64 MB each) keep one sum per block and
# role instead (`CostCache._total`): the groups' low-rank corrections go straight into
# it, so a block holds one matrix, not one per group, and a bias's or a classifier's
# group is not redone on every visit.
CACHE_MAX_ENTRIES = 2**20
# A large sum is kept between visits when its block has two or more *expensive*
# groups (rows >= units / EXPENSIVE_ROWS), or while its rows last changed little (a
# low-rank update was possible). A block with one expensive product (a transformer
# MLP's units: fc1 and fc2 in one group; the last hidden layer of an MLP) would
# otherwise hold units^2 floats per layer (GPT-2: 36 MB per layer, together more than
# the model) through descents at random init, where every row moves each visit and
# the sum is recomputed anyway.
EXPENSIVE_ROWS = 8


def _pooled(group: Group) -> bool:
    return group.units**2 > CACHE_MAX_ENTRIES


class CostCache:
    """Per block and group: the row maps of the last solve, and the partial products
    (per group for small costs, summed per role for large ones)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        blocks = problem.blocks
        self.rows = [[None] * len(b.groups) for b in blocks]
        self.parts = [[None] * len(b.groups) for b in blocks]
        self.updates = [[0] * len(b.groups) for b in blocks]  # low-rank in a row
        # Large roles: role -> summed cost (absent: not kept), low-rank updates in a
        # row, and whether the role's rows last changed little.
        self.totals: list[dict] = [{} for _ in blocks]
        self.total_updates: list[dict] = [{} for _ in blocks]
        self.settled: list[dict] = [{} for _ in blocks]

    def get(self, k: int, perms) -> dict | None:
        """The costs of block k (role -> matrix), or None if they are the ones its
        current permutations were solved for. A large role's cost is the cache's own
        sum: read it, do not write to it."""
        pr, block = self.problem, self.problem.blocks[k]
        moved = {}  # group -> its row maps at the last solve (None: never computed)
        for g, group in enumerate(block.groups):
            old = self.rows[k][g]
            if old is not None and not group.depends:
                continue  # no other permutation reorders these rows: computed once
            rows = pr.rows(group, perms)
            if old is not None and all(map(np.array_equal, old, rows)):
                continue
            moved[g] = old
            self.rows[k][g] = rows
            if not _pooled(group):
                self.parts[k][g] = self._part(k, g, old, rows)
        if not moved:
            return None  # same costs as at the last solve: same assignment
        out: dict = {}
        for g, group in enumerate(block.groups):
            if _pooled(group):
                out.setdefault(group.role, None)
                continue
            part = self.parts[k][g]
            if group.role in out:
                out[group.role] += part  # a sum this method owns
            else:  # the cached part itself must not be summed into
                out[group.role] = part.copy()
        for role, cost in out.items():
            if cost is None:
                out[role] = self._total(k, role, moved)
        return out

    def _part(self, k: int, g: int, old, rows) -> np.ndarray:
        pr, group = self.problem, self.problem.blocks[k].groups[g]
        part = self.parts[k][g]
        if old is not None and part is not None and self.updates[k][g] < MAX_LOW_RANK_UPDATES:
            changed = sum(int(np.count_nonzero(o != r)) for o, r in zip(old, rows, strict=True))
            if changed <= LOW_RANK_FRACTION * group.offsets[-1]:
                self.updates[k][g] += 1
                return pr.low_rank(group, part, old, rows)
        self.updates[k][g] = 0
        return pr.full_cost(group, rows)

    def _total(self, k: int, role, moved: dict) -> np.ndarray:
        """A large role's summed cost, corrected in place when few of its rows moved
        (as many changed rows as `LOW_RANK_FRACTION` of all its groups' rows: the same
        break-even as a lone group's), else recomputed from every group."""
        pr, block = self.problem, self.problem.blocks[k]
        mine = [g for g, group in enumerate(block.groups) if group.role == role]
        total = self.totals[k].pop(role, None)
        changed = [
            None
            if moved[g] is None
            else sum(map(np.count_nonzero, map(np.not_equal, moved[g], self.rows[k][g])))
            for g in mine
            if g in moved
        ]
        rows = sum(int(block.groups[g].offsets[-1]) for g in mine)
        small = None not in changed and sum(changed) <= LOW_RANK_FRACTION * rows
        if changed:
            self.settled[k][role] = small
        if total is not None and small and self.total_updates[k][role] < MAX_LOW_RANK_UPDATES:
            if changed:
                for g in mine:
                    if g in moved:
                        group = block.groups[g]
                        pr.add_low_rank(group, total, moved[g], self.rows[k][g], fused=True)
                self.total_updates[k][role] += 1
        else:
            total = None
            for g in mine:
                part = pr.full_cost(block.groups[g], self.rows[k][g])
                if total is None:
                    total = part if part.flags.writeable else part.copy()
                else:
                    total += part
            self.total_updates[k][role] = 0
        units = block.groups[mine[0]].units
        expensive = sum(block.groups[g].offsets[-1] * EXPENSIVE_ROWS >= units for g in mine)
        if expensive > 1 or self.settled[k].get(role, False):
            self.totals[k][role] = total
        return total


def solve_block(problem: Problem, block: Block, costs: dict, perms) -> tuple[dict, float, float]:
    """The best permutations of one block given the others: (update, new, old)."""
    if not block.nested:
        cost = costs[None]
        cols = problem.solve(cost)
        rows = np.arange(len(cols))
        old = cost[rows, perms[block.unit]].sum(dtype=np.float64)
        return {block.unit: cols}, cost[rows, cols].sum(dtype=np.float64), old
    heads = problem.sizes[block.unit]
    pair = {
        w: costs[w].reshape(heads, problem.sizes[w], heads, problem.sizes[w]).transpose(0, 2, 1, 3)
        for w in block.nested
    }
    return nested.solve_family(block.unit, costs.get(None), pair, perms, heads, problem.solve)


def _tolerance(costs: dict) -> float:
    """float32 costs: "improvements" at the level of rounding noise are ignored."""
    return 1e-6 * max(float(np.abs(c).max()) for c in costs.values())


def coordinate_descent(problem: Problem, perms: dict, key, max_iter: int):
    """Algorithm 1 of Git Re-Basin over blocks, with cached costs; returns (perms,
    objectives per sweep, sweeps)."""
    cache = CostCache(problem)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    # J is tracked from the gains; a nested spec starts from J in float64.
    objective = problem.objective(perms, np.float64 if problem.nested else np.float32)
    objectives, sweeps = [], 0
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for k in rng.permutation(len(problem.blocks)):
            costs = cache.get(k, perms)
            if costs is None:
                continue
            update, new, old = solve_block(problem, problem.blocks[k], costs, perms)
            if new > old + _tolerance(costs):
                perms.update(update)
                progress = True
                objective += new - old
        if not problem.linear:
            objective = problem.objective(perms)
        objectives.append(objective)
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
    fixed: Sequence[str] = (),
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
    `fixed`: permutations held at `init` (or the identity); the others are matched
    given them.

    A spec with nested units (`spec_from_function(..., nested=True)`: heads permuted
    as units, per-head within-head permutations) is solved by block coordinate
    descent, each head family exactly (`lmc.align.discrete.nested`).
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
    unknown = sorted(set(fixed) - set(wspec.axes))
    if unknown:
        raise UserError(f"weight_matching: fixed names no permutation of the spec: {unknown}")
    keys = [key] + [jax.random.fold_in(key, i) for i in range(1, int(restarts))]
    stacked = wspec
    if wspec.stacks and not nested.families(wspec):  # per layer: match the layers' slices
        wspec = unstack_spec(stacked, tree_a)
        tree_a, tree_b = unstack_tree(stacked, tree_a), unstack_tree(stacked, tree_b)
        sizes, init = check_sizes(wspec, tree_a), unstack_perms(stacked, init)
        fixed = [
            layer_name(n, i) if n in stacked.stacks else n
            for n in fixed
            for i in range(stacked.stacks.get(n, 1))
        ]
    problem = Problem(wspec, sizes, tree_a, tree_b, restarts=len(keys), fixed=tuple(fixed))
    runs = []
    for k in keys:
        perms = {n: initial(init, n, problem.shapes[n]) for n in problem.names}
        runs.append(coordinate_descent(problem, perms, k, max_iter))
    perms, _, _ = max(runs, key=lambda run: run[1][-1] if run[1] else -np.inf)
    if wspec is not stacked:
        perms = restack(stacked, perms)
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


def initial(init, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """init[name] checked to be a permutation (one per row when nested), or the identity."""
    if init is None or name not in init:
        return np.broadcast_to(np.arange(shape[-1]), shape).copy()
    p = np.asarray(init[name]).astype(np.int64)
    rows = p.reshape(-1, shape[-1]) if p.shape == tuple(shape) else None
    if rows is None or not all(np.array_equal(np.sort(r), np.arange(shape[-1])) for r in rows):
        what = (
            f"permutations of shape {shape}"
            if len(shape) > 1
            else f"a permutation of {shape[0]} elements"
        )
        raise UserError(f"init[{name!r}] must be {what}, got shape {p.shape}")
    return p
