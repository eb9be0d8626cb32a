"""Permutation specs: which array axes share a hidden-unit permutation.

A `PermutationSpec` maps each permutation name to its size and to the `AxisRef`s it
acts on. An `AxisRef(path, axis, inner)` names the leaf at `path` (a tuple of dict
keys) and one of its axes. Most axes are permuted whole (`inner=1` and the axis has
exactly `size` entries). A *blocked* axis holds several factors, e.g. the input axis
of a dense layer after flattening an NHWC feature map has H*W*C entries with the
channel as its fastest-varying factor. Such an axis is viewed as `(outer, size,
inner)` and the permutation acts on the middle factor: the flatten case is
`inner=1, outer=H*W`; a channel-major (NCHW) flatten would be `inner=H*W`.

A *stacked* permutation (`spec.stacks[name] = L`) is one permutation per index of a
stacking axis: the layers of an `nn.scan`/`jax.lax.scan` model keep their parameters
stacked along a leading axis, and each layer has its own hidden units. Its value in
`perms` has shape (L, size), and each of its `AxisRef`s names the leaf's stacking
axis (`AxisRef.stack`): slice l of the leaf along it is permuted by `perm[l]`.

*Nested units*: a stacked permutation whose stacking axis is itself permuted by
another permutation of the spec (`nested_units(spec)`: name -> unit name). Attention
is the case (`spec_from_function(..., nested=True)`): the heads are permuted as units,
and each head has its own query/key and value/output permutations, of shape
(heads, head_dim). Row l of a nested permutation acts on the head that *lands* at
position l: the unit permutation is applied first (`permute_leaf` orders them so).

Convention (the one Git Re-Basin uses): `perm[i]` is the index in the *original*
tree of the unit that ends up at position `i`, i.e. permuting is `take(x, perm)`.

Trees. The spec's paths refer into whatever tree it was built for. For `lmc.models`
(`spec_from_model`) that is the combined tree
`{"params": params, "model_state": model_state}`, so BatchNorm running statistics are
permuted with their channels. `apply_permutation` requires that combined tree when
the spec touches the model state; given only `params` it works for specs that do
not (and `spec.subtree("params")` makes the restriction explicit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmc.align.axes import permute_axis
from lmc.errors import UserError

Path = tuple[str, ...]
COMBINED_KEYS = ("params", "model_state")


@dataclasses.dataclass(frozen=True, order=True)
class AxisRef:
    """Axis `axis` of the leaf at `path`, viewed as (outer, size, inner) when blocked.

    `stack`: for a stacked permutation, the leaf's stacking axis (None otherwise).
    """

    path: Path
    axis: int
    inner: int = 1
    stack: int | None = None

    def __str__(self) -> str:
        block = "" if self.inner == 1 else f" (block inner={self.inner})"
        per = "" if self.stack is None else f" (per index of axis {self.stack})"
        return f"{'/'.join(map(str, self.path))}[{self.axis}]{block}{per}"

    def sort_key(self) -> tuple:
        return (
            tuple(map(str, self.path)),
            self.axis,
            self.inner,
            -1 if self.stack is None else self.stack,
        )


def _as_ref(ref: Any) -> AxisRef:
    if isinstance(ref, AxisRef):
        return ref
    path, axis, *rest = ref
    if isinstance(path, str):
        path = tuple(path.split("/"))
    inner = int(rest[0]) if rest else 1
    stack = None if len(rest) < 2 or rest[1] is None else int(rest[1])
    return AxisRef(tuple(path), int(axis), inner, stack)


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """Permutation name -> size, and name -> the axes it permutes.

    `notes` records why axes were pinned (unknown primitives etc.); it does not take
    part in equality. `stacks` maps the stacked permutations to their number of
    indices (see the module docstring). Build one by hand with `PermutationSpec.from_axes`.
    """

    sizes: Mapping[str, int]
    axes: Mapping[str, tuple[AxisRef, ...]]
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    stacks: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_axes(
        cls,
        axes: Mapping[str, Iterable[Any]],
        sizes: Mapping[str, int] | None = None,
        notes: Iterable[str] = (),
        stacks: Mapping[str, int] | None = None,
    ) -> PermutationSpec:
        """`axes`: name -> [(path, axis[, inner[, stack]]), ...] with path a tuple or 'a/b/c'.

        Without `sizes` every permutation must have an unblocked axis; sizes are then
        checked against the tree when the spec is used. A stacked permutation lists
        its number of indices in `stacks` and the stacking axis in each of its refs.
        """
        refs = {name: tuple(_as_ref(r) for r in rs) for name, rs in axes.items()}
        return cls(dict(sizes or {}), refs, tuple(notes), dict(stacks or {}))

    def __post_init__(self):
        for name, refs in self.axes.items():
            seen = set()
            stacked = name in self.stacks
            for r in refs:
                if (r.path, r.axis, r.inner) in seen:
                    raise UserError(f"permutation {name!r} lists axis {r} twice")
                seen.add((r.path, r.axis, r.inner))
                if (r.stack is not None) != stacked:
                    raise UserError(
                        f"permutation {name!r}: {r} "
                        + (
                            "needs a stacking axis (the permutation is stacked)"
                            if stacked
                            else "has a stacking axis but the permutation is not in `stacks`"
                        )
                    )
                if r.stack is not None and r.stack == r.axis:
                    raise UserError(f"permutation {name!r}: {r} permutes its own stacking axis")

    # ---- views -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.axes)

    def by_leaf(self) -> dict[Path, list[tuple[str, AxisRef]]]:
        """path -> [(perm name, AxisRef), ...]: the permutations acting on each leaf."""
        out: dict[Path, list[tuple[str, AxisRef]]] = {}
        for name, refs in self.axes.items():
            for r in refs:
                out.setdefault(r.path, []).append((name, r))
        return out

    def subtree(self, key: str) -> PermutationSpec:
        """The spec restricted to `tree[key]`, paths relative to it (e.g. 'params')."""
        axes = {}
        for name, refs in self.axes.items():
            kept = tuple(
                AxisRef(r.path[1:], r.axis, r.inner, r.stack) for r in refs if r.path[0] == key
            )
            if kept:
                axes[name] = kept
        sizes = {n: s for n, s in self.sizes.items() if n in axes}
        stacks = {n: s for n, s in self.stacks.items() if n in axes}
        return PermutationSpec(sizes, axes, self.notes, stacks)

    def is_combined(self) -> bool:
        """True if the paths refer into {'params': ..., 'model_state': ...}."""
        roots = {r.path[0] for refs in self.axes.values() for r in refs if r.path}
        return bool(roots) and "params" in roots and roots <= set(COMBINED_KEYS)

    def canonical(self) -> dict[frozenset, int | None]:
        """Name-free form: the set of axes of each permutation -> its size (or None)."""
        return {frozenset(refs): self.sizes.get(n) for n, refs in self.axes.items()}

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of `perms[name]`: (size,), or (stacks, size) for a stacked one."""
        size = self.sizes[name]
        return (self.stacks[name], size) if name in self.stacks else (size,)

    def equivalent(self, other: PermutationSpec) -> bool:
        """Equal up to names (sizes are compared where both specs state them)."""
        mine, theirs = self.canonical(), other.canonical()
        return mine.keys() == theirs.keys() and all(
            mine[k] is None or theirs[k] is None or mine[k] == theirs[k] for k in mine
        )

    def diff(self, other: PermutationSpec) -> str:
        """Human-readable difference (for test failures), '' if equivalent."""
        mine, theirs = self.canonical(), other.canonical()
        lines = []
        for label, a, b in (("left ", mine, theirs), ("right", theirs, mine)):
            for refs in sorted(a.keys() - b.keys(), key=_sorted_refs):
                lines.append(
                    f"only in {label} (size {a[refs]}): {', '.join(map(str, _sorted_refs(refs)))}"
                )
        for refs in mine.keys() & theirs.keys():
            if None not in (mine[refs], theirs[refs]) and mine[refs] != theirs[refs]:
                lines.append(
                    f"sizes differ ({mine[refs]} vs {theirs[refs]}): {_sorted_refs(refs)[0]}"
                )
        return "\n".join(lines)

    def table(self) -> str:
        """One row per permutation: name, size, the axes it acts on."""
        width = max([len(n) for n in self.axes] + [len("permutation")])
        rows = (
            [f"{'permutation':<{width}}  {'size':>6}  axes"]
            if self.axes
            else ["(no permutable axes)"]
        )
        for name, refs in self.axes.items():
            size = self.sizes.get(name, "?")
            if name in self.stacks:
                size = f"{self.stacks[name]}x{size}"
            rows.append(f"{name:<{width}}  {size:>6}  {', '.join(map(str, refs))}")
        if self.notes:
            rows.append("notes:")
            rows.extend(f"  {n}" for n in self.notes)
        return "\n".join(rows)

    def __repr__(self) -> str:
        perms = ", ".join(
            f"{n}[{self.stacks[n]}x{self.sizes.get(n, '?')}]"
            if n in self.stacks
            else f"{n}[{self.sizes.get(n, '?')}]"
            for n in self.axes
        )
        count = sum(len(r) for r in self.axes.values())
        return f"PermutationSpec({len(self.axes)} permutations over {count} axes: {perms})"


def _sorted_refs(refs) -> list[AxisRef]:
    return sorted(refs, key=AxisRef.sort_key)


# ---- trees ------------------------------------------------------------------------
def get_leaf(tree: Any, path: Path) -> Any:
    """The leaf at `path` (dict keys; list/tuple indices also work). KeyError if absent."""
    node = tree
    for key in path:
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif (
            isinstance(node, (list, tuple))
            and isinstance(key, int)
            and -len(node) <= key < len(node)
        ):
            node = node[key]
        else:
            raise KeyError(path)
    return node


def set_leaves(tree: Any, updates: Mapping[Path, Any]) -> Any:
    """A copy of `tree` with the leaves at `updates`' paths replaced (inputs untouched)."""
    if not updates:
        return tree
    if () in updates:
        return updates[()]
    heads: dict[Any, dict[Path, Any]] = {}
    for path, value in updates.items():
        heads.setdefault(path[0], {})[path[1:]] = value
    if isinstance(tree, (list, tuple)):
        out = list(tree)
        for key, sub in heads.items():
            out[key] = set_leaves(tree[key], sub)
        return type(tree)(out) if isinstance(tree, list) else tuple(out)
    out = dict(tree)
    for key, sub in heads.items():
        out[key] = set_leaves(tree[key], sub)
    return out


def resolve(
    spec: PermutationSpec, tree: Any, *, for_weights: bool = False
) -> tuple[PermutationSpec, Any]:
    """The spec and tree to use together, accepting `params` alone for a combined spec.

    For weights (`for_weights=True`) a combined spec always reduces to its 'params'
    part: running statistics are permuted with their channels but are not weights.
    """
    if spec.is_combined():
        has_combined = isinstance(tree, Mapping) and "params" in tree
        if for_weights:
            return spec.subtree("params"), tree["params"] if has_combined else tree
        if not has_combined:
            state_refs = spec.subtree("model_state").axes
            if state_refs:
                raise UserError(
                    "this spec also permutes the model state (BatchNorm statistics); pass the "
                    "combined tree {'params': params, 'model_state': model_state}, or use "
                    "spec.subtree('params') if you really mean to leave the statistics unpermuted"
                )
            return spec.subtree("params"), tree
    return spec, tree


def check_sizes(spec: PermutationSpec, tree: Any) -> dict[str, int]:
    """Sizes of every permutation, checked against the tree's shapes (UserError if not)."""
    sizes = dict(spec.sizes)
    for name, refs in spec.axes.items():
        for r in refs:
            try:
                shape = np.shape(get_leaf(tree, r.path))
            except KeyError:
                raise UserError(
                    f"permutation {name!r} refers to {'/'.join(map(str, r.path))!r}, which is not in the tree"
                ) from None
            if not -len(shape) <= r.axis < len(shape):
                raise UserError(
                    f"permutation {name!r}: {'/'.join(map(str, r.path))!r} has shape {shape}, no axis {r.axis}"
                )
            dim = shape[r.axis]
            if r.stack is not None and (
                not -len(shape) <= r.stack < len(shape)
                or shape[r.stack] != spec.stacks[name]
                or r.stack % len(shape) == r.axis % len(shape)
            ):
                raise UserError(
                    f"stacked permutation {name!r} ({spec.stacks[name]} indices): "
                    f"{'/'.join(map(str, r.path))!r} has shape {shape}, its stacking axis "
                    f"{r.stack} does not fit"
                )
            if name not in sizes and r.inner == 1:
                sizes[name] = dim
            size = sizes.get(name)
            if size is not None and dim % (size * r.inner) != 0:
                raise UserError(
                    f"permutation {name!r} has size {size} but {'/'.join(map(str, r.path))!r} has shape "
                    f"{shape}: axis {r.axis} (inner block {r.inner}) does not fit"
                )
        if name not in sizes:
            raise UserError(f"permutation {name!r}: size unknown (give it in `sizes`)")
    return sizes


def nested_units(spec: PermutationSpec) -> dict[str, str]:
    """Nested permutation -> its unit permutation: the stacked permutations whose
    stacking axis another permutation of the spec permutes (on every leaf)."""
    by_leaf = spec.by_leaf()
    out = {}
    for name in spec.stacks:
        units = set()
        for r in spec.axes[name]:
            units.add(
                next(
                    (
                        n
                        for n, q in by_leaf[r.path]
                        if n != name and q.stack is None and q.axis == r.stack
                    ),
                    None,
                )
            )
        if len(units) == 1 and None not in units:
            out[name] = units.pop()
        elif units - {None}:
            raise UserError(
                f"stacked permutation {name!r}: its stacking axes are permuted by "
                f"{sorted(u for u in units if u)} on some leaves and not on others"
            )
    return out


def permute_leaf(x, leaf_refs: Iterable[tuple[str, AxisRef]], perms: Mapping[str, Any], skip=None):
    """Apply every permutation acting on one leaf, except the (name, ref) in `skip`.

    Plain permutations go first: a nested permutation's row l is for the unit that
    lands at position l (see the module docstring)."""
    for name, r in sorted(leaf_refs, key=lambda nr: nr[1].stack is not None):
        if (name, r) != skip and not _identity(perms[name]):
            x = permute_axis(x, perms[name], r.axis, r.inner, r.stack)
    return x


def _identity(perm) -> bool:
    """A host permutation (or stack of them) that moves nothing: skipping its gather
    saves a pass over the leaf (weight matching's J and the orthogonal rounds meet
    many, e.g. a residual permutation held fixed)."""
    if not isinstance(perm, np.ndarray):
        return False  # device arrays and tracers: applied as given
    return bool((perm == np.arange(perm.shape[-1])).all())


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Any], tree: Any) -> Any:
    """`tree` with every spec'd axis permuted: out[..., i, ...] = tree[..., perm[i], ...].

    Leaves keep their kind: NumPy arrays are permuted on the host, JAX arrays with jnp.
    """
    spec, tree = resolve(spec, tree)
    sizes = check_sizes(spec, tree)
    for name, size in sizes.items():
        if name not in perms:
            raise UserError(f"no permutation given for {name!r} (perms has {sorted(perms)})")
        want = (spec.stacks[name], size) if name in spec.stacks else (size,)
        if np.shape(perms[name]) != want:
            raise UserError(
                f"permutation {name!r} must have shape {want}, got {np.shape(perms[name])}"
            )
    perms = {n: np.asarray(perms[n]) for n in sizes}
    updates = {}
    for path, refs in spec.by_leaf().items():
        leaf = get_leaf(tree, path)
        leaf = leaf if isinstance(leaf, (np.ndarray, jax.Array)) else np.asarray(leaf)
        updates[path] = permute_leaf(leaf, refs, perms)
    return set_leaves(tree, updates)


def _stacked_shape(spec: PermutationSpec, name: str, size: int) -> tuple[int, ...]:
    return (spec.stacks[name], size) if name in spec.stacks else (size,)


def identity(spec: PermutationSpec, tree: Any = None) -> dict[str, jnp.ndarray]:
    """The identity permutations (sizes from the spec, or checked against `tree`)."""
    sizes = check_sizes(*resolve(spec, tree, for_weights=True)) if tree is not None else spec.sizes
    return {
        name: jnp.broadcast_to(jnp.arange(sizes[name]), _stacked_shape(spec, name, sizes[name]))
        for name in spec.axes
        if name in sizes
    }


def compose(
    outer: Mapping[str, Any], inner: Mapping[str, Any], spec: PermutationSpec | None = None
) -> dict[str, jnp.ndarray]:
    """`outer` after `inner`: applying the result equals applying `inner`, then `outer`.

    Stacked permutations ((L, n) arrays) compose index by index. Nested ones (a row
    per unit, acting on the unit that lands there) need `spec`: row m of the result
    is inner's row for the unit outer brings to m, then outer's row m.
    """
    units = nested_units(spec) if spec is not None else {}
    out = {}
    for k in outer:
        first = jnp.asarray(inner[k])
        if k in units:  # inner's rows follow their units under outer's unit perm
            first = first[jnp.asarray(outer[units[k]])]
        out[k] = jnp.take_along_axis(first, jnp.asarray(outer[k]), axis=-1)
    return out


def inverse(
    perms: Mapping[str, Any], spec: PermutationSpec | None = None
) -> dict[str, jnp.ndarray]:
    """The permutations that undo `perms` (stacked ones index by index; nested ones,
    given `spec`, with each row moved back to its unit's original position)."""
    units = nested_units(spec) if spec is not None else {}
    out = {}
    for k, p in perms.items():
        inv = jnp.argsort(jnp.asarray(p), axis=-1)
        if k in units:  # row g undoes the row of the unit that landed at h^-1[g]
            inv = inv[jnp.argsort(jnp.asarray(perms[units[k]]))]
        out[k] = inv
    return out


def random_permutations(spec: PermutationSpec, key, tree: Any = None) -> dict[str, np.ndarray]:
    """Uniformly random permutations for every name in the spec (for tests and planting).

    Drawn with NumPy from `key`'s bits: no compilation per permutation size.
    """
    sizes = check_sizes(*resolve(spec, tree, for_weights=True)) if tree is not None else spec.sizes
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    return {
        n: rng.permuted(
            np.broadcast_to(np.arange(sizes[n]), _stacked_shape(spec, n, sizes[n])), axis=-1
        )
        if n in spec.stacks
        else rng.permutation(sizes[n])
        for n in spec.axes
        if n in sizes
    }
