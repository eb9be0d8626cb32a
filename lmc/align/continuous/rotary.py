"""Scale-and-rotation maps of rotary query/key blocks: what is left of GL(d_h) for Q/K.

Rotary positions rotate fixed pairs of query/key dimensions by position-dependent
angles, so a general invertible M no longer commutes with them; only maps that act
on each pair as s R(theta), a scale times a rotation, do (2x2 rotations commute, and
the scale cancels between q -> q M and k -> k M^-T = k R(theta) / s). That leaves
two numbers per pair and head ("Functional equivalence in attention", ICML 2026).

The tracer drops the within-head query/key permutation of a rotary model, so no
permutation names these axes. `candidates` adds one for every head unit: the leaves
on a head permutation's axes whose within-head axis no permutation covers (the
query and key projections of a rotary model). `rotary_classes` keeps a candidate if
a random block element, with the pairs (i, i + n/2) or (2i, 2i + 1) and some split
of its modules into the two sides, leaves the traced outputs unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from lmc.align.continuous.invertible import MAX_GROUPS, _groups, apply_pairs, reference_outputs
from lmc.align.spec import AxisRef, PermutationSpec, get_leaf, nested_units

PAIRINGS = ("half", "adjacent")


@dataclasses.dataclass(frozen=True)
class BlockClass:
    """Candidate `name` of the extended spec as a class of per-pair maps s R(theta):
    leaves in `contra` are mapped by M^-T = R(theta) / s; `pairing` says which
    dimensions form the pairs."""

    name: str
    contra: frozenset
    pairing: str


def pair_index(n: int, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    """The first and second dimension of each of the n/2 pairs."""
    if pairing == "half":
        return np.arange(n // 2), np.arange(n // 2) + n // 2
    return np.arange(0, n, 2), np.arange(1, n, 2)


def block_map(log_scale, angle, pairing: str):
    """(..., n, n) matrices acting on pair k as exp(log_scale[k]) [[c, s], [-s, c]]
    (the form `rotary` rotates a pair by); `log_scale`, `angle`: (..., n/2)."""
    n = 2 * log_scale.shape[-1]
    i, j = pair_index(n, pairing)
    scale = jnp.exp(log_scale)
    c, s = scale * jnp.cos(angle), scale * jnp.sin(angle)
    m = jnp.zeros(log_scale.shape[:-1] + (n, n), c.dtype)
    m = m.at[..., i, i].set(c).at[..., j, j].set(c)
    return m.at[..., i, j].set(s).at[..., j, i].set(-s)


def block_pairs(generators: dict, classes) -> dict[str, tuple]:
    """{name: (M, M^-T)} from generators (..., n/2, 2) = (log scale, angle) per pair."""
    pairing = {c.name: c.pairing for c in classes if isinstance(c, BlockClass)}
    out = {}
    for name, g in generators.items():
        log_s, angle = g[..., 0], g[..., 1]
        out[name] = (block_map(log_s, angle, pairing[name]),
                     block_map(-log_s, angle, pairing[name]))  # fmt: skip
    return out


def candidates(spec: PermutationSpec, params) -> PermutationSpec:
    """`spec` plus, per head unit, a stacked candidate over the within-head axes of its
    leaves that no permutation covers (even-sized, at least two modules)."""
    covered = {(r.path, r.axis) for refs in spec.axes.values() for r in refs}
    units = set(nested_units(spec).values())
    axes = {n: list(refs) for n, refs in spec.axes.items()}
    sizes, stacks = dict(spec.sizes), dict(spec.stacks)
    for unit in sorted(units):
        found: dict[int, list[AxisRef]] = {}
        for ref in spec.axes[unit]:
            shape = np.shape(get_leaf(params, ref.path))
            for axis in range(len(shape)):
                if axis != ref.axis and (ref.path, axis) not in covered and shape[axis] % 2 == 0:
                    found.setdefault(shape[axis], []).append(AxisRef(ref.path, axis, 1, ref.axis))
        for n, refs in found.items():
            if len({r.path[:-1] for r in refs}) < 2:
                continue
            name = f"{unit}/rotary{n}"
            axes[name], sizes[name] = refs, n
            stacks[name] = spec.sizes[unit]
    return PermutationSpec.from_axes(axes, sizes=sizes, stacks=stacks)


def rotary_classes(
    fn: Callable, spec: PermutationSpec, params, *args, seed: int = 0, rtol=1e-4
) -> tuple[PermutationSpec, tuple[BlockClass, ...]]:
    """(the spec extended by `candidates`, the candidates that are symmetries under
    random per-pair scale-rotations with some pairing and split of sides)."""
    extended = candidates(spec, params)
    if extended.names == spec.names:  # no uncovered within-head axes: nothing to test
        return spec, ()
    rng = np.random.default_rng(seed)
    call, want, scale = reference_outputs(fn, params, *args)
    found = []
    for name in extended.names:
        if name in spec.axes:
            continue
        groups = _groups(extended, name)
        if len(groups) > MAX_GROUPS:
            continue
        shape = extended.shape(name)[:-1] + (extended.sizes[name] // 2, 2)
        g = rng.normal(size=shape)
        g[..., 0] *= 0.5  # scales e^(+-1) at most twice out of three
        tries = itertools.product(
            PAIRINGS, itertools.product((False, True), repeat=len(groups) - 1)
        )
        for pairing, sides in tries:
            contra = frozenset().union(*(s for s, c in zip(groups[1:], sides, strict=True) if c))
            c = BlockClass(name, contra, pairing)
            pairs = block_pairs({name: jnp.asarray(g, jnp.float32)}, (c,))
            got = np.asarray(call(apply_pairs(extended, (c,), pairs, params), *args), np.float64)
            if float(np.abs(got - want).max()) / scale <= rtol:
                found.append(c)
                break
    return extended, tuple(found)
