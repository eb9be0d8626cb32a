"""Stacked (per-layer) permutations as plain ones: slice the stacked leaves.

A stacked permutation acts on slice l of its leaves with its l-th row. Weight
matching and its users only need the plain case: `unstack` replaces every leaf a
stacked permutation touches by a dict {l: slice l} and the permutation by L plain
ones named `name[l]`, so a scanned model becomes its unscanned twin (same leaves,
same costs, same assignments). `restack` turns the results back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lmc.align.spec import AxisRef, PermutationSpec, get_leaf, set_leaves
from lmc.errors import UserError


def layer_name(name: str, index: int) -> str:
    return f"{name}[{index}]"


def stacking_axes(spec: PermutationSpec) -> dict[tuple, int]:
    """Leaf path -> its stacking axis, for the leaves stacked permutations act on."""
    axes: dict[tuple, int] = {}
    for name, refs in spec.axes.items():
        for r in refs:
            if r.stack is None:
                continue
            if axes.setdefault(r.path, r.stack) != r.stack:
                raise UserError(
                    f"{'/'.join(map(str, r.path))!r} is stacked along two axes ({axes[r.path]} "
                    f"and {r.stack}, permutation {name!r}); only one stacking axis per leaf "
                    "is supported"
                )
    return axes


def unstack_spec(spec: PermutationSpec, tree: Any) -> PermutationSpec:
    """The plain spec over `unstack_tree(spec, tree)`."""
    stacked = stacking_axes(spec)
    ndim = {path: np.ndim(get_leaf(tree, path)) for path in stacked}
    axes: dict[str, list[AxisRef]] = {}
    sizes: dict[str, int] = {}
    for name, refs in spec.axes.items():
        count = spec.stacks.get(name)
        for r in refs:
            if r.path not in stacked:
                axes.setdefault(name, []).append(r)
                continue
            s = stacked[r.path] % ndim[r.path]
            axis = r.axis % ndim[r.path]
            axis -= axis > s
            for index in range(spec.stacks.get(name) or _length(tree, r.path, s)):
                target = layer_name(name, index) if count else name
                axes.setdefault(target, []).append(AxisRef((*r.path, index), axis, r.inner))
        for target in [layer_name(name, i) for i in range(count)] if count else [name]:
            if name in spec.sizes:
                sizes[target] = spec.sizes[name]
    return PermutationSpec(sizes, {n: tuple(rs) for n, rs in axes.items()}, spec.notes)


def _length(tree, path, axis: int) -> int:
    return int(np.shape(get_leaf(tree, path))[axis])


def unstack_tree(spec: PermutationSpec, tree: Any) -> Any:
    """`tree` with each leaf a stacked permutation acts on split into {l: slice l}."""
    updates = {}
    for path, s in stacking_axes(spec).items():
        x = np.asarray(get_leaf(tree, path))
        updates[path] = {i: np.take(x, i, axis=s) for i in range(x.shape[s])}
    return set_leaves(tree, updates)


def unstack_perms(spec: PermutationSpec, perms: Mapping[str, Any] | None):
    """Stacked permutations ((L, n) arrays) as L plain ones."""
    if perms is None:
        return None
    out = {}
    for name, p in perms.items():
        if name in spec.stacks:
            out.update({layer_name(name, i): row for i, row in enumerate(np.asarray(p))})
        else:
            out[name] = p
    return out


def restack(spec: PermutationSpec, perms: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `unstack_perms`: rows `name[l]` back into (L, n) arrays."""
    out = {}
    for name in spec.axes:
        if name in spec.stacks:
            rows = [perms[layer_name(name, i)] for i in range(spec.stacks[name])]
            out[name] = np.stack([np.asarray(r) for r in rows])
        elif name in perms:
            out[name] = perms[name]
    return out
