"""General invertible maps of attention's per-head dimensions: the GL(d_h) symmetries.

Within a head, the scores only see q k^T and the output only sees v W_o, so
q -> q M, k -> k M^-T and v -> v N, W_o -> N^-1 W_o leave the function unchanged for
*any* invertible M and N ("Functional equivalence in attention", ICML 2026), not only
orthogonal ones. Unlike a permutation or an orthogonal map, such an element acts
differently on the two sides of the contraction: the leaves on the *contravariant*
side get the inverse transpose. A `MapClass` is a permutation of the spec whose axes
admit such maps, plus which of its leaves are contravariant.

Which sides they are is not assumed: `invertible_classes` groups each candidate
permutation's leaves by their module (a kernel and its bias move together), tries
every split of those groups into two sides with a random ill-conditioned invertible
element (covariant leaves x -> x M, contravariant leaves x -> x M^-T along the axis),
and keeps the split that leaves the traced function's outputs unchanged. For an
orthogonal M the two sides coincide, so these classes include `orthogonal_classes`.

Maps act along an axis as in `lmc.align.axes.map_axis`: x[..., j, ...] =
sum_i x[..., i, ...] m[i, j]. For the output kernel W_o (rows on the axis),
W_o -> N^-1 W_o is that map with m = N^-T: the output projection is the
contravariant side of the value class.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lmc.align.axes import map_axis
from lmc.align.spec import Path, PermutationSpec, get_leaf, set_leaves

# Module groups of one candidate tried in all splits at most (2^(g-1) evaluations).
MAX_GROUPS = 6


@dataclasses.dataclass(frozen=True)
class MapClass:
    """Permutation `name` of a spec as a class of invertible maps: leaves whose path is
    in `contra` are mapped by M^-T, the others by M."""

    name: str
    contra: frozenset[Path]


def random_invertible(shape: tuple[int, ...], rng: np.random.Generator, spread=1.0):
    """Random invertible (..., n, n) matrices U diag(e^u) V with U, V orthogonal and
    u ~ U(-spread, spread): condition numbers up to e^(2 spread), far from orthogonal."""
    u, _ = np.linalg.qr(rng.normal(size=shape))
    v, _ = np.linalg.qr(rng.normal(size=shape))
    s = np.exp(rng.uniform(-spread, spread, size=shape[:-1]))
    return (u * s[..., None, :]) @ v


def apply_pairs(spec: PermutationSpec, classes, pairs: Mapping[str, tuple], params):
    """`params` with class c's axes mapped by `pairs[c.name] = (M, M^-T)`: M on
    covariant leaves, M^-T on contravariant ones ((n, n), or (L, n, n) when stacked)."""
    updates: dict[Path, jnp.ndarray] = {}
    for c in classes:
        if c.name not in pairs:
            continue
        m, m_inv_t = pairs[c.name]
        for ref in spec.axes[c.name]:
            x = updates.get(ref.path, get_leaf(params, ref.path))
            use = m_inv_t if ref.path in c.contra else m
            updates[ref.path] = map_axis(jnp.asarray(x), use, ref.axis, ref.stack)
    return set_leaves(params, updates)


def apply_invertible(spec: PermutationSpec, classes, maps: Mapping[str, np.ndarray], params):
    """`params` under the invertible matrices `maps[name]` of each class."""
    pairs = {}
    for name, m in maps.items():
        m = jnp.asarray(m, jnp.float32)
        pairs[name] = (m, jnp.swapaxes(jnp.linalg.inv(m), -1, -2))
    return apply_pairs(spec, classes, pairs, params)


def _groups(spec: PermutationSpec, name: str) -> list[frozenset[Path]]:
    """The candidate's leaves grouped by module (parent path), in a fixed order."""
    by_parent: dict[Path, set[Path]] = {}
    for ref in spec.axes[name]:
        by_parent.setdefault(ref.path[:-1], set()).add(ref.path)
    return [frozenset(by_parent[k]) for k in sorted(by_parent, key=lambda p: tuple(map(str, p)))]


def reference_outputs(fn: Callable, params, *args):
    """(jitted fn, its float64 outputs on `params`, their scale) for a numeric symmetry
    test: one compilation serves every candidate element tried against them."""
    call = jax.jit(fn)
    want = np.asarray(call(params, *args), np.float64)
    return call, want, max(1.0, float(np.abs(want).max()))


def invertible_classes(
    fn: Callable, spec: PermutationSpec, params, *args, exclude=(), seed: int = 0, rtol=1e-4
) -> tuple[MapClass, ...]:
    """Permutations of `spec` (paths relative to `params`) that are symmetries under any
    invertible map with some split of their leaves into covariant and contravariant
    sides, checked numerically on `fn(params, *args)`.

    Candidates: as `orthogonal_classes` (whole axes, not in `exclude`), with at most
    `MAX_GROUPS` modules. A split qualifies if a random element (condition numbers up
    to e^2) changes the outputs by at most `rtol` relative to their scale; the first
    qualifying split (contravariant side not containing the first module) is kept."""
    rng = np.random.default_rng(seed)
    call, want, scale = reference_outputs(fn, params, *args)
    found = []
    for name in spec.names:
        if name in exclude or any(r.inner != 1 for r in spec.axes[name]):
            continue
        groups = _groups(spec, name)
        if spec.sizes[name] < 2 or len(groups) > MAX_GROUPS:
            continue
        shape = spec.shape(name) + (spec.sizes[name],)
        m = random_invertible(shape, rng)
        for sides in itertools.product((False, True), repeat=len(groups) - 1):
            contra = frozenset().union(*(g for g, c in zip(groups[1:], sides, strict=True) if c))
            c = MapClass(name, contra)
            got = np.asarray(call(apply_invertible(spec, (c,), {name: m}, params), *args))
            if float(np.abs(got.astype(np.float64) - want).max()) / scale <= rtol:
                found.append(c)
                break
    return tuple(found)


def expm(x):
    """exp of (n, n) or stacked (L, n, n) matrices: invertible, exp(x)^-1 = exp(-x)."""
    return jax.vmap(jax.scipy.linalg.expm)(x) if x.ndim == 3 else jax.scipy.linalg.expm(x)


def from_generators(generators: Mapping[str, jnp.ndarray]) -> dict[str, tuple]:
    """{name: (exp(X), exp(-X^T))}: each map and its inverse transpose, no inversion."""
    return {n: (expm(x), expm(-jnp.swapaxes(x, -1, -2))) for n, x in generators.items()}


def condition_numbers(generators: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest condition number of exp(X) per class (how far from orthogonal)."""
    out = {}
    for n, x in generators.items():
        s = np.linalg.svd(np.asarray(expm(jnp.asarray(x))), compute_uv=False)
        out[n] = float((s[..., 0] / s[..., -1]).max())
    return out
