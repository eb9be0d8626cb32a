"""The orthogonal residual-stream symmetry of pre-norm transformers (Theus et al. 2025).

In a pre-LayerNorm transformer the residual stream x only ever meets (i) additions
of other writes, (ii) normalizations that center it and divide by its RMS, whose
elementwise gains and biases feed (iii) linear readers. Folding each norm's gain s
and bias b into its readers (W <- diag(s) W, c <- c + b W; s <- 1, b <- 0) leaves
the function unchanged. After folding, any orthogonal R of the residual stream that
fixes the all-ones direction (R 1 = 1, so it commutes with the centering) is a
symmetry: every weight on the residual axis, read or written, becomes W <- R^T W
along that axis, and LayerNorm(x R) = LayerNorm(x) R. The folded model with
centered writes is also exactly an RMSNorm model (`to_rmsnorm`, evaluated by the
transformer with `norm='rmsnorm'`), the form Theus et al. write it in; keeping
R 1 = 1 lets the rotated model stay a LayerNorm model, so the experiment engine
evaluates it unchanged.

Roles come from the traced program (`roles`): an elementwise product with a 1-D
parameter on the residual axis (the gain), optionally plus another (the bias), whose
every use is a contraction of that axis with a parameter (a reader), optionally
followed by the addition of a parameter (the reader's bias). Which permutation is
the residual stream is where those gains live. Whether the rest of the program is
rotation-equivariant (norms, not elementwise nonlinearities, on the stream) the
trace does not prove: `check_rotation` does, numerically, and the methods run it.

`procrustes_residual` finds the R maximizing sum <W_a, R(W_b)> over the residual
axes (one SVD of the same cost matrix weight matching builds for the residual
permutation, restricted to the complement of the ones direction).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.extend import core as jcore

from lmc.align.axes import map_axis, unit_rows
from lmc.align.spec import Path, PermutationSpec, get_leaf, permute_leaf, set_leaves
from lmc.align.threads import blas_threads, single_threaded
from lmc.align.tracing.calls import called
from lmc.align.tracing.trace import tree_paths
from lmc.errors import UserError

VIEWS = ("reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims")


@dataclasses.dataclass(frozen=True)
class Reader:
    kernel: Path
    axis: int  # the kernel's axis contracted with the normalized stream
    bias: Path | None  # parameter added to the contraction's output, if any


@dataclasses.dataclass(frozen=True)
class Norm:
    scale: Path
    bias: Path | None  # folded into the readers' biases
    readers: tuple[Reader, ...]
    # A bias some reader has no bias to fold into (GPT-2's final LayerNorm before the
    # bias-free unembedding): it stays on the stream, divided by the gain when the
    # gain folds, and rotates with the stream.
    kept_bias: Path | None = None


@dataclasses.dataclass(frozen=True)
class Roles:
    """What the orthogonal symmetry needs: the residual permutation, its norms."""

    residual: str  # the permutation of the residual stream in the spec
    norms: tuple[Norm, ...]
    axes: tuple[tuple[Path, int], ...]  # every (leaf, axis) on the residual stream

    def norm_leaves(self) -> set[Path]:
        return {p for n in self.norms for p in (n.scale, n.bias) if p is not None}

    def reader_axes(self) -> set[tuple[Path, int]]:
        return {(r.kernel, r.axis) for n in self.norms for r in n.readers}


def _flat_eqns(closed) -> tuple[list, list]:
    """The program's equations with calls inlined: [(name, in ids, out ids, params)]
    with ids for vars (None for literals), and the ids of the top-level invars."""
    counter = iter(range(1 << 62))
    eqns: list = []

    def walk(jaxpr, ins):
        env = dict(zip(jaxpr.invars, ins, strict=True))
        for v in jaxpr.constvars:
            env[v] = next(counter)

        def rd(v):
            return None if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            call = called(eqn)
            args = [rd(v) for v in eqn.invars]
            if call is not None:
                inner = call[0]
                outs = walk(inner, args[len(args) - len(inner.invars) :])
            else:
                outs = [next(counter) for _ in eqn.outvars]
                eqns.append((eqn.primitive.name, args, outs, eqn.params, eqn.invars))
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [rd(v) for v in jaxpr.outvars]

    top = [next(counter) for _ in closed.jaxpr.invars]
    walk(closed.jaxpr, top)
    return eqns, top


def roles(fn: Callable, spec: PermutationSpec, params, *args) -> Roles:
    """The norms (gain, bias, readers) on the residual stream of `fn(params, *args)`."""
    closed = jax.make_jaxpr(fn)(params, *args)
    eqns, top = _flat_eqns(closed)
    paths = [p for p, _ in tree_paths(params)]
    leaf_of = {top[i]: paths[i] for i in range(len(paths))}
    ndim = {p: np.ndim(leaf) for p, leaf in tree_paths(params)}
    perm_of = {(r.path, r.axis): n for n, refs in spec.axes.items() for r in refs}
    view: dict[int, Path] = dict(leaf_of)  # id -> the parameter it is a view of
    label: dict[int, list] = {}  # id -> [scale, bias, norm key]
    reader_out: dict[int, list] = {}  # contraction output id -> [kernel, axis, key, bias]
    uses: dict[int, list] = {}
    found: dict[int, dict] = {}  # norm key -> {"scale", "bias", "readers", "ok"}

    def vector(i):  # a 1-D parameter on a permuted axis (a gain or bias candidate)
        p = view.get(i)
        return p if p is not None and ndim[p] == 1 and (p, 0) in perm_of else None

    for k, (name, ins, outs, params_, invars) in enumerate(eqns):
        for i in ins:
            if i is not None:
                uses.setdefault(i, []).append(k)
        if name in VIEWS and ins[0] in view:
            view[outs[0]] = view[ins[0]]
        if name in VIEWS and ins[0] in label:
            label[outs[0]] = label[ins[0]]
        if name == "mul" and len(ins) == 2:
            a, b = ins
            for x, y in ((a, b), (b, a)):
                if vector(y) is not None and x not in view:
                    key = len(found)
                    found[key] = {"scale": vector(y), "bias": None, "readers": [], "ok": True}
                    label[outs[0]] = [vector(y), None, key]
                elif x in label and label[x][1] is None and y not in view and y not in label:
                    label[outs[0]] = label[x]
        if name == "add" and len(ins) == 2:
            a, b = ins
            for x, y in ((a, b), (b, a)):
                if x in label and label[x][1] is None and vector(y) is not None:
                    key = label[x][2]
                    found[key]["bias"] = vector(y)
                    label[outs[0]] = [label[x][0], vector(y), key]
                if x in reader_out and y in view and reader_out[x][3] is None:
                    reader_out[x][3] = view[y]
        if name == "dot_general":
            a, b = ins
            (ca, cb), _ = params_["dimension_numbers"]
            for x, y, cx, cy, var in ((a, b, ca, cb, invars[0]), (b, a, cb, ca, invars[1])):
                if x in label and y in leaf_of and len(cx) == 1:
                    if cx[0] % len(var.aval.shape) == len(var.aval.shape) - 1:
                        entry = [leaf_of[y], int(cy[0]), label[x][2], None]
                        reader_out[outs[0]] = entry
                        found[label[x][2]]["readers"].append(entry)
    # A norm folds only if its output is used by readers alone.
    for i, (_, _, key) in label.items():
        for k in uses.get(i, []):
            name, ins, outs, _, _ = eqns[k]
            consumer_ok = name in VIEWS or (
                name in ("mul", "add") and any(o in label for o in outs)
            )
            consumer_ok |= name == "dot_general" and outs[0] in reader_out
            if not consumer_ok:
                found[key]["ok"] = False
    norms = []
    residual = set()
    for f in found.values():
        if not f["ok"] or not f["readers"]:
            continue
        residual.add(perm_of[(f["scale"], 0)])
        readers = tuple(Reader(k, a, b) for k, a, _, b in f["readers"])
        if f["bias"] is not None and any(r.bias is None for r in readers):
            norms.append(Norm(f["scale"], None, readers, kept_bias=f["bias"]))
        else:
            norms.append(Norm(f["scale"], f["bias"], readers))
    if len(residual) != 1 or not norms:
        raise UserError(
            "no residual stream with foldable normalizations found in the traced program "
            f"(candidates on permutations {sorted(residual) or 'none'}): the orthogonal "
            "symmetry needs a pre-norm model whose norm gains feed linear layers only"
        )
    for f in found.values():  # a gain on the stream that cannot fold breaks the symmetry
        if (not f["ok"] or not f["readers"]) and perm_of.get((f["scale"], 0)) in residual:
            raise UserError(
                f"the norm gain {'/'.join(f['scale'])} on the residual stream feeds something "
                "other than linear layers' own kernels (a tied embedding read again as the "
                "unembedding, through a transpose?), so it cannot be folded and the "
                "orthogonal residual symmetry does not apply; untie the unembedding to use "
                "weight_matching_orthogonal or learned_matching"
            )
    _check_untied(norms, uses, {p: i for i, p in leaf_of.items()})
    name = residual.pop()
    axes = tuple((r.path, r.axis) for r in spec.axes[name])
    return Roles(name, tuple(norms), axes)


def _check_untied(norms, uses: dict, leaf_id: dict) -> None:
    """Folding a gain rewrites its readers' kernels: a kernel the program also uses
    elsewhere (a tied embedding read again as the unembedding) would change there."""
    readers = [r.kernel for n in norms for r in n.readers]
    for path in set(readers):
        if len(uses.get(leaf_id[path], [])) > readers.count(path):
            raise UserError(
                f"{'/'.join(path)} reads a normalized residual stream and is used elsewhere "
                "too (tied embeddings?): folding the norm's gain into it would change the "
                "other use, so the orthogonal residual symmetry does not apply; untie it "
                "(a separate unembedding) to use weight_matching_orthogonal or learned_matching"
            )


def fold(roles: Roles, params):
    """`params` with every norm's gain and bias folded into its readers (same function)."""
    updates = {}
    for n in roles.norms:
        s = np.asarray(get_leaf(params, n.scale), np.float64)
        b = None if n.bias is None else np.asarray(get_leaf(params, n.bias), np.float64)
        if n.kept_bias is not None:  # (x s + k) W = (x + k / s) diag(s) W
            kept = np.asarray(get_leaf(params, n.kept_bias), np.float64)
            updates[n.kept_bias] = (kept / _gain(s, n.scale)).astype(np.float32)
        for r in n.readers:
            w = np.asarray(get_leaf(params, r.kernel), np.float64)
            shape = [1] * w.ndim
            shape[r.axis] = -1
            if b is not None:
                c = np.asarray(get_leaf(params, r.bias), np.float64)
                updates[r.bias] = (c + np.tensordot(b, w, axes=([0], [r.axis]))).astype(np.float32)
            updates[r.kernel] = (w * s.reshape(shape)).astype(np.float32)
        updates[n.scale] = np.ones_like(s, np.float32)
        if b is not None:
            updates[n.bias] = np.zeros_like(b, np.float32)
    return set_leaves(params, updates)


def _gain(s: np.ndarray, path: Path) -> np.ndarray:
    if np.abs(s).min() < 1e-6:
        raise UserError(f"cannot fold or unfold {'/'.join(path)}: a gain is ~0")
    return s


def unfold(roles: Roles, folded, like):
    """Folded params rewritten with the gains and biases of `like` (same function).

    The inverse of `fold` with another model's norms: B aligned in folded form goes
    back to A's gauge, so that interpolating it with A equals interpolating the two
    folded models (both are linear in the reader weights)."""
    return set_leaves(folded, dict(_unfold_leaves(roles, folded, like)))


def _unfold_leaves(roles: Roles, folded, like):
    """(path, new leaf) of `unfold`, one leaf at a time."""
    for n in roles.norms:
        s = _gain(np.asarray(get_leaf(like, n.scale), np.float64), n.scale)
        b = None if n.bias is None else np.asarray(get_leaf(like, n.bias), np.float64)
        if n.kept_bias is not None:
            kept = np.asarray(get_leaf(folded, n.kept_bias), np.float64)
            yield n.kept_bias, (kept * s).astype(np.float32)
        for r in n.readers:
            w = np.asarray(get_leaf(folded, r.kernel), np.float64)
            shape = [1] * w.ndim
            shape[r.axis] = -1
            w = w / s.reshape(shape)
            if b is not None:
                c = np.asarray(get_leaf(folded, r.bias), np.float64)
                yield r.bias, (c - np.tensordot(b, w, axes=([0], [r.axis]))).astype(np.float32)
            yield r.kernel, w.astype(np.float32)
        yield n.scale, s.astype(np.float32)
        if b is not None:
            yield n.bias, b.astype(np.float32)


def to_rmsnorm(roles: Roles, params):
    """The folded params with centered writes, for the same model with RMSNorm
    (`build_transformer(..., norm='rmsnorm')`): gains set to 1, norm biases dropped.

    Every residual-stream weight that is not a reader or a norm parameter is a write;
    centering the writes keeps the stream's mean at zero, where LayerNorm and RMSNorm
    agree."""
    kept = [n.kept_bias for n in roles.norms if n.kept_bias is not None]
    if kept:
        raise UserError(
            f"no RMSNorm form: the norm bias {'/'.join(kept[0])} has readers without a bias "
            "to fold it into"
        )
    folded = fold(roles, params)
    skip = roles.reader_axes() | {(p, 0) for p in roles.norm_leaves()}
    updates = {}
    for path, axis in roles.axes:
        if (path, axis) in skip:
            continue
        x = np.asarray(get_leaf(folded, path), np.float64)
        updates[path] = (x - x.mean(axis=axis, keepdims=True)).astype(np.float32)
    out = set_leaves(folded, updates)
    for n in roles.norms:
        if n.bias is not None:
            parent = get_leaf(out, n.bias[:-1])
            parent = {k: v for k, v in parent.items() if k != n.bias[-1]}
            out = set_leaves(out, {n.bias[:-1]: parent})
    return out


@functools.lru_cache(maxsize=8)
def _complement_cached(d: int) -> np.ndarray:
    with single_threaded():
        q, _ = np.linalg.qr(np.concatenate([np.ones((d, 1)), np.eye(d)[:, : d - 1]], axis=1))
    q = q[:, 1:]
    q.flags.writeable = False
    return q


def _complement(d: int) -> np.ndarray:
    """An orthonormal basis (d, d-1) of the vectors orthogonal to the ones vector
    (a QR of a d x d matrix: computed once per d, the rounds reuse it)."""
    return _complement_cached(d)


def random_rotation(d: int, rng: np.random.Generator, rank: int | None = None):
    """A random orthogonal (d, d) matrix with R 1 = 1; with `rank`, one that rotates a
    random `rank`-dimensional subspace (orthogonal to the ones vector) and fixes the
    rest, as the factors (U, W) of R = I + U W: applying it reads every residual weight
    once instead of a dense d x d product, and every coordinate still moves."""
    q = _complement(d)
    with single_threaded():
        if rank is None:
            m, _ = np.linalg.qr(rng.normal(size=(d - 1, d - 1)))
            return q @ m @ q.T + np.ones((d, d)) / d
        k = min(int(rank), d - 1)
        u = q @ np.linalg.qr(rng.normal(size=(d - 1, k)))[0]
        m, _ = np.linalg.qr(rng.normal(size=(k, k)))
        return u, (m - np.eye(k)) @ u.T


def rotate(roles: Roles, r, params):
    """Every residual axis x[..., j, ...] -> sum_j x[..., j, ...] R[j, i] (norm params,
    all ones/zeros after folding, are left alone). float32, like the params. `r`: a
    (d, d) matrix, or the factors (U, W) of R = I + U W (`random_rotation`'s `rank`)."""
    tree = _owned(params)
    for path, leaf in _rotated_leaves(roles, r, tree):
        _put(tree, path, leaf)
    return _restored(tree, params)


def _rotated_leaves(roles: Roles, r: np.ndarray, tree):
    """(path, rotated leaf), one at a time; a leaf with two residual axes is read
    again after its first is rotated, so `_put` each before the next is drawn."""
    skip = roles.norm_leaves()
    factors = isinstance(r, tuple)
    r = tuple(np.asarray(f, np.float32) for f in r) if factors else np.asarray(r, np.float32)
    for path, axis in roles.axes:
        if path in skip:
            continue
        x = np.asarray(get_leaf(tree, path), np.float32)
        if factors:
            u, w = r
            with blas_threads(x.size * len(w)):
                yield path, x + map_axis(map_axis(x, u, axis), w, axis)
        else:
            with blas_threads(x.size * len(r)):
                yield path, map_axis(x, r, axis)


def _owned(tree):
    """A copy of the tree's containers (the leaves shared): leaves can then be
    replaced one at a time, each old one freed as soon as nothing else holds it."""
    if isinstance(tree, Mapping):
        return {k: _owned(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_owned(v) for v in tree]
    return tree


def _restored(tree, like):
    """`tree` with the container types of `like` again (`_owned` makes tuples lists)."""
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(tree))


def _put(tree, path, leaf) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = leaf


def residual_cost(roles: Roles, folded_a, folded_b) -> np.ndarray:
    """C[i, j] = sum over the residual axes of <A_i, B_j> (float32 products, summed in
    float64): the cost weight matching builds for the residual permutation."""
    skip = roles.norm_leaves()
    cost = None
    for path, axis in roles.axes:
        if path in skip:
            continue
        a = np.asarray(get_leaf(folded_a, path), np.float32)
        b = np.asarray(get_leaf(folded_b, path), np.float32)
        d = a.shape[axis]
        with blas_threads(a.size * d):
            c = unit_rows(a, ((axis % a.ndim, d, 1),)).T @ unit_rows(b, ((axis % b.ndim, d, 1),))
        cost = c.astype(np.float64) if cost is None else cost + c
    return cost


def best_rotation(cost: np.ndarray) -> np.ndarray:
    """The R (R 1 = 1) maximizing tr(C R) = sum over residual axes of <W_a, R(W_b)>."""
    d = len(cost)
    q = _complement(d)
    with single_threaded():  # d x d: small (see lmc.align.threads)
        u, _, vt = np.linalg.svd(q.T @ cost @ q)
        # maximize tr(C R) with R = Q M Q^T + 11^T/d: M = V U^T of SVD(Q^T C Q)
        m = vt.T @ u.T
        return q @ m @ q.T + np.ones((d, d)) / d


def procrustes_residual(roles: Roles, folded_a, folded_b) -> np.ndarray:
    """The R (R 1 = 1) maximizing sum over residual axes of <W_a, R(W_b)>."""
    return best_rotation(residual_cost(roles, folded_a, folded_b))


def objective(roles: Roles, folded_a, folded_b) -> float:
    """sum over the residual-stream leaves of <W_a, W_b> (float64)."""
    skip = roles.norm_leaves()
    return float(
        sum(
            np.vdot(
                np.asarray(get_leaf(folded_a, p), np.float64),
                np.asarray(get_leaf(folded_b, p), np.float64),
            )
            for p in {p for p, _ in roles.axes} - skip
        )
    )


# The symmetry check rotates a random subspace of this dimension: each weight's
# coordinates all move (U is dense), at a cost linear in the model's size.
CHECK_RANK = 16


def check_rotation(fn, roles: Roles, params, *args, seed: int = 0, rtol: float = 1e-3) -> float:
    """Largest output change under a random rotation of the folded residual stream,
    relative to the outputs' scale; raises UserError above `rtol`."""
    folded = fold(roles, params)
    d = np.shape(get_leaf(params, roles.norms[0].scale))[0]
    rng = np.random.default_rng(seed)
    rotated = rotate(roles, random_rotation(d, rng, rank=CHECK_RANK), folded)
    run = jax.jit(fn)  # one compilation for the three evaluations
    want = np.asarray(run(params, *args), np.float64)
    got_fold = np.asarray(run(folded, *args), np.float64)
    got = np.asarray(run(rotated, *args), np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    change = max(float(np.abs(got - want).max()), float(np.abs(got_fold - want).max())) / scale
    if change > rtol:
        raise UserError(
            f"the residual stream ({roles.residual!r}) is not rotation-symmetric in this model "
            f"(relative output change {change:.2g} under a random rotation of the folded "
            "model): something other than pre-norms and linear layers acts on it"
        )
    return change


def weight_matching_orthogonal(
    spec: PermutationSpec,
    roles: Roles,
    params_a,
    params_b,
    *,
    key=None,
    init=None,
    rounds=3,
    restarts: int = 1,
    max_iter: int = 100,
):
    """Permutations of `spec` plus a rotation of the residual stream, on folded models.

    Alternates weight matching over `spec` (any class: plain or nested; the first
    round with `restarts` visiting orders, or from `init`) with the Procrustes
    rotation of the residual stream, each step raising J on the folded weights; the
    rotation starts from the permutation weight matching found (a permutation matrix
    fixes the ones vector). Returns (B aligned in A's gauge, info: `objective`, J
    after each round; `sweeps` and `restart_objectives` of the first round)."""
    from lmc.align.discrete.weight_matching import weight_matching

    key = jax.random.key(0) if key is None else key
    fa = _owned(fold(roles, params_a))  # containers like current's (tuples as lists)
    # B is held once: its folded copy, permuted and rotated leaf by leaf in place.
    current = _owned(fold(roles, params_b))
    # J after a rotation is tr(C R) when no leaf has two residual axes (the usual case):
    # no pass over the weights to compute it.
    paths = [p for p, _ in roles.axes]
    linear = len(paths) == len(set(paths))
    info = {"objective": [], "rounds": int(rounds)}
    for i in range(int(rounds)):
        # After the first round the residual permutation stays fixed: the rotation that
        # follows is the best over all R, permutations included. The other blocks (MLP
        # units, head families) only meet each other through the stream, so given it
        # one sweep solves each of them exactly, and no residual cost is built twice.
        perms, wm = weight_matching(
            spec, fa, current, key=jax.random.fold_in(key, i), init=init if i == 0 else None,
            restarts=int(restarts) if i == 0 else 1, max_iter=max_iter,
            fixed=(roles.residual,) if i > 0 else (),
        )  # fmt: skip
        if i == 0:
            info.update(sweeps=wm["sweeps"], restart_objectives=wm.get("restart_objectives", []))
        perms = {n: np.asarray(p) for n, p in perms.items()}
        for path, refs in spec.by_leaf().items():
            _put(current, path, permute_leaf(np.asarray(get_leaf(current, path)), refs, perms))
        cost = residual_cost(roles, fa, current)
        r = best_rotation(cost)
        for path, leaf in _rotated_leaves(roles, r, current):
            _put(current, path, leaf)
        info["objective"].append(
            float(np.trace(cost @ r)) if linear else objective(roles, fa, current)
        )
    del fa
    for path, leaf in _unfold_leaves(roles, current, params_a):
        _put(current, path, leaf)  # each leaf is read once, before it is replaced
    return _restored(current, params_b), info
