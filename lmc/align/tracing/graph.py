"""The axis graph: a union-find over the axes of a traced program's values.

Every axis of every value gets a node; primitive rules (`lmc.align.tracing.rules`) tie axes
that must be permuted together and *pin* axes whose order matters. `AxisGraph.run`
walks a jaxpr applying the rules; `AxisGraph.analyze` turns the settled classes into
a `PermutationSpec` (see `lmc.align.tracing.trace` for the entry points).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from jax.extend import core as jcore

from lmc.align.spec import AxisRef, Path, PermutationSpec

Nodes = tuple[int, ...]


class AxisGraph:
    """Union-find over array axes, with pins and composite (merged) axes."""

    def __init__(self, rules: Mapping[str, Callable], fallback: Callable):
        # The primitive rules are passed in (see `lmc.align.tracing.rules`): they call back into
        # the graph, so importing them here would make the two modules import each other.
        self.rules, self.fallback = rules, fallback
        self.parent: list[int] = []
        self.size: list[int] = []
        self.pins: dict[int, str] = {}  # node -> first reason it was pinned
        self.composites: list[tuple[int, Nodes]] = []  # node == product of factor nodes
        self.notes: list[str] = []
        # Activations of the program being traced, keyed by (context, var):
        self.probes: list[tuple[Any, Nodes, int]] = []  # inputs of contractions, and the axis
        self.values: list[tuple[Any, Nodes]] = []  # every input-dependent value, in order
        self.context: tuple = ()
        self.record = True
        self.used: set[int] = set()  # nodes of tree leaves some traced program reads
        # Stacked (per-layer) permutations: the scanned axis of every scan, the chain
        # of scanned axes enclosing the equation being walked, and every array with
        # the chain it was made in. A class may take one permutation per index of a
        # scanned axis if every array carrying it is indexed by that axis.
        self.stacks: list[int] = []
        self.scope: tuple[int, ...] = ()
        self.arrays: list[tuple[Nodes, tuple[int, ...]]] = []

    # ---- union-find ---------------------------------------------------------------
    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def fresh(self, shape: Sequence[int]) -> Nodes:
        return tuple(self.new(d) for d in shape)

    def find(self, n: int) -> int:
        root = n
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[n] != root:  # path compression
            self.parent[n], n = root, self.parent[n]
        return root

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] != self.size[rb]:
            # A rule tied axes of different sizes: a bug in a rule, never a permutation.
            self.pin(a, "size mismatch in a rule")
            self.pin(b, "size mismatch in a rule")
            return False
        self.parent[rb] = ra
        return True

    def union_all(self, xs: Nodes, ys: Nodes) -> None:
        for a, b in zip(xs, ys, strict=True):
            self.union(a, b)

    def pin(self, n: int, reason: str) -> None:
        self.pins.setdefault(n, reason)

    def pin_all(self, nodes: Nodes, reason: str) -> None:
        for n in nodes:
            self.pin(n, reason)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def composite(self, whole: int, factors: Nodes) -> None:
        factors = tuple(f for f in factors if self.size[f] > 1)
        if len(factors) == 1:
            self.union(whole, factors[0])
        elif factors:
            self.composites.append((whole, factors))

    # ---- programs -----------------------------------------------------------------
    def run(
        self,
        jaxpr,
        consts: Sequence[Nodes],
        args: Sequence[Nodes],
        deps: Sequence[bool],
        context: tuple = (),
        record: bool = True,
    ) -> tuple[list[Nodes], list[bool]]:
        """Walk `jaxpr` (open) with the given nodes for its constvars and invars.

        `context` is the chain of call-like equation indices leading here; together with
        a var it names one value of the program (jaxprs of repeated calls may be shared
        objects). Activations are only recorded outside loops and branches (`record`).
        """
        env: dict[Any, Nodes] = {}
        dep: dict[Any, bool] = {}
        for v, nodes in zip(jaxpr.constvars, consts, strict=True):
            env[v], dep[v] = nodes, False
        for v, nodes, d in zip(jaxpr.invars, args, deps, strict=True):
            env[v], dep[v] = nodes, d

        def read(v) -> tuple[Nodes, bool]:
            if isinstance(v, jcore.Literal):
                nodes = self.fresh(np.shape(v.val))
                self.pin_all(nodes, "constant array")
                return nodes, False
            return env[v], dep[v]

        saved = (self.context, self.record)
        for i, eqn in enumerate(jaxpr.eqns):
            read_in = [read(v) for v in eqn.invars]
            ins, in_deps = [r[0] for r in read_in], [r[1] for r in read_in]
            self.context, self.record = (*context, i), record
            rule = self.rules.get(eqn.primitive.name, self.fallback)
            outs = rule(self, eqn, ins, in_deps)
            d = any(in_deps)
            for v, nodes in zip(eqn.outvars, outs, strict=True):
                assert len(nodes) == len(v.aval.shape), (eqn.primitive.name, nodes, v.aval)
                env[v], dep[v] = nodes, d
                self.arrays.append((nodes, self.scope))
                if d and record:
                    self.values.append(((context, v), nodes))
        self.context, self.record = saved
        outs = [read(v) for v in jaxpr.outvars]
        return [o[0] for o in outs], [o[1] for o in outs]

    def array(self, nodes: Nodes) -> Nodes:
        """Register a value made outside any rule (a tree leaf, a model input)."""
        self.arrays.append((nodes, self.scope))
        return nodes

    def probe(self, var, nodes: Nodes, axis: int) -> None:
        """Record that `var`'s `axis` is consumed by a contraction (an activation)."""
        if self.record and not isinstance(var, jcore.Literal):
            self.probes.append(((self.context[:-1], var), nodes, axis))

    def run_closed(
        self, closed, args: Sequence[Nodes], deps: Sequence[bool], context=(), record=True
    ):
        """Walk a ClosedJaxpr or Jaxpr; captured constants have a fixed order: pinned."""
        jaxpr = getattr(closed, "jaxpr", closed)
        consts = []
        for v in jaxpr.constvars:
            nodes = self.fresh(v.aval.shape)
            self.pin_all(nodes, "captured constant")
            consts.append(nodes)
        return self.run(jaxpr, consts, args, deps, context, record)

    # ---- results ------------------------------------------------------------------
    def _settle(self) -> tuple[dict[int, Nodes], set[int]]:
        """Merge composite structures per class; return class -> factor classes, pinned."""
        while True:
            by_class: dict[int, list[Nodes]] = {}
            for whole, factors in self.composites:
                by_class.setdefault(self.find(whole), []).append(factors)
            changed = False
            comp: dict[int, Nodes] = {}
            for root, structures in by_class.items():
                first = structures[0]
                sizes = [self.size[f] for f in first]
                for other in structures[1:]:
                    if [self.size[f] for f in other] == sizes:
                        for a, b in zip(first, other, strict=True):
                            changed |= self.union(a, b)
                    else:
                        self.pin(root, "reshaped inconsistently")
                comp[root] = first
            if not changed:
                break
        comp = {self.find(r): tuple(self.find(f) for f in fs) for r, fs in comp.items()}
        pinned = {self.find(n) for n in self.pins}
        # A pinned composite pins its factors: its whole order matters.
        stack = [r for r in comp if r in pinned]
        while stack:
            for f in comp.get(stack.pop(), ()):
                if f not in pinned:
                    pinned.add(f)
                    stack.append(f)
        return comp, pinned

    def _expand(self, root: int, comp: dict[int, Nodes]) -> list[tuple[int, int]]:
        """The atomic classes making up a class, slowest first, with their inner strides."""
        atoms: list[int] = []

        def walk(r: int) -> None:
            if r in comp:
                for f in comp[r]:
                    walk(f)
            else:
                atoms.append(r)

        walk(root)
        sizes = [self.size[a] for a in atoms]
        return [(a, math.prod(sizes[i + 1 :])) for i, a in enumerate(atoms)]

    def _reasons(self, comp: dict[int, Nodes], pinned: set[int]) -> dict[int, str]:
        """Pinned class -> why (the first reason given for any of its nodes)."""
        why: dict[int, str] = {}
        for n, reason in self.pins.items():
            why.setdefault(self.find(n), reason)
        for whole, factors in comp.items():  # factors pinned through their composite
            if whole in pinned:
                for f in factors:
                    why.setdefault(
                        f, f"part of a reshaped axis whose order matters ({why.get(whole)})"
                    )
        return why

    def _stacked(self, atoms: set[int], comp: dict[int, Nodes]) -> dict[int, int]:
        """atom -> the scanned axis it may take one permutation per index of.

        That is the case when every array carrying the atom is made inside the scan's
        body (evaluated once per index) or has the scanned axis itself (a stacked
        parameter, the stacked outputs). A carry, a parameter shared by every layer, or
        a sum over the layers carry it without the index: one permutation for all.
        """
        stack_roots = sorted({self.find(s) for s in self.stacks if self.size[s] > 1})
        if not stack_roots or not atoms:
            return {}
        touching: dict[int, list[int]] = {}
        for i, (nodes, _) in enumerate(self.arrays):
            for n in nodes:
                for atom, _ in self._expand(self.find(n), comp):
                    if atom in atoms:
                        touching.setdefault(atom, []).append(i)

        def indexed(i: int, s: int) -> bool:
            nodes, scope = self.arrays[i]
            return any(self.find(x) == s for x in (*scope, *nodes))

        out = {}
        for atom in atoms:
            arrays = set(touching.get(atom, ()))
            for s in stack_roots:
                if arrays and all(indexed(i, s) for i in arrays):
                    out[atom] = s
                    break
        return out

    def _nested(self, atoms: set[int], comp: dict[int, Nodes]) -> dict[int, int]:
        """atom w -> the atom h it may take one permutation per index of (nested units).

        That is the case when every array carrying w also has an axis of class h (and
        never carries w inside a reshaped axis): attention's within-head dimension is
        only ever seen next to the head axis (kernels (d, H, hd), activations
        (B, T, H, hd)), and contractions over it batch over the heads, so each head
        may order its own dimensions (Theus et al. 2025's per-head symmetry). Atoms
        that would each be nested in the other, chains, and ambiguous units are left
        plain. Conservative on the leaf condition only: `align.check` verifies it.
        """
        carriers: dict[int, set[int] | None] = dict.fromkeys(atoms)
        for nodes, _ in self.arrays:
            roots = [self.find(n) for n in nodes]
            direct = set(roots)
            for r in roots:
                if r in comp:
                    for atom, _ in self._expand(r, comp):
                        if atom in carriers:
                            carriers[atom] = set()  # through a reshape: no per-unit order
                elif r in carriers:
                    here = direct - {r}
                    carriers[r] = here if carriers[r] is None else carriers[r] & here
        found = {}
        for w, units in carriers.items():
            units = [h for h in units or () if h in atoms and h != w]
            if len(units) == 1:
                found[w] = units[0]
        return {
            w: h
            for w, h in found.items()
            if h not in found and found.get(h) != w and self.size[h] > 1
        }

    def analyze(
        self,
        leaves: Sequence[tuple[Path, Nodes]],
        probes=(),
        values=(),
        jaxpr=None,
        nested: bool = False,
    ) -> Analysis:
        """Permutations (free atomic classes that reach a parameter) and their probes.

        `nested`: a class whose every array also carries another permuted axis (the
        within-head dimension of attention) becomes one permutation per index of that
        axis (per head): a stacked permutation whose stacking axis the unit
        permutation also permutes (see `lmc.align.spec`, nested units)."""
        for path, nodes in leaves:
            if nodes and not set(nodes) & self.used:
                self.pin_all(nodes, "unused leaf")
                self.note(f"{'/'.join(map(str, path))} is never used: not permuted")
        comp, pinned = self._settle()

        def free(root: int) -> bool:
            return root not in pinned and root not in comp and self.size[root] > 1

        found_atoms = {
            atom
            for _, nodes in leaves
            for node in nodes
            for atom, _ in self._expand(self.find(node), comp)
            if free(atom)
        }
        stacked = self._stacked(found_atoms, comp)
        units: dict[int, int] = {}
        if nested:
            plain = found_atoms - set(stacked) - {self.find(s) for s in self.stacks}
            units = self._nested(plain, comp)
            stacked.update(units)
        refs: dict[int, list[AxisRef]] = {}
        for path, nodes in leaves:
            for axis, node in enumerate(nodes):
                for atom, inner in self._expand(self.find(node), comp):
                    if free(atom):
                        stack = None
                        if atom in stacked:
                            stack = next(
                                j for j, m in enumerate(nodes) if self.find(m) == stacked[atom]
                            )
                        refs.setdefault(atom, []).append(AxisRef(path, axis, inner, stack))
        names = _names(refs, leaves)
        found: dict[str, list[tuple[Any, int, int, tuple[int, ...]]]] = {}

        def site(var, nodes: Nodes, axis: int, inner: int, atom: int):
            # Other axes carrying permutations are summed over when the features are
            # gathered: B's order along them is unknown, a sum does not depend on it.
            other = tuple(
                k
                for k, n in enumerate(nodes)
                if k != axis
                and any(a in names and a != atom for a, _ in self._expand(self.find(n), comp))
            )
            if atom in units:  # a nested permutation: its unit axis first (kept, not summed)
                unit = [k for k in other if self.find(nodes[k]) == units[atom]]
                if unit:
                    other = (unit[0], *(k for k in other if k != unit[0]))
            return (var, axis, inner, other)

        for var, nodes, axis in probes:
            for atom, inner in self._expand(self.find(nodes[axis]), comp):
                entry = site(var, nodes, axis, inner, atom)
                if atom in names and entry not in found.get(names[atom], []):
                    found.setdefault(names[atom], []).append(entry)
        for var, nodes in reversed(values):  # fallback: the last value carrying the class
            for axis, node in enumerate(nodes):
                for atom, inner in self._expand(self.find(node), comp):
                    if atom in names and names[atom] not in found:
                        found[names[atom]] = [site(var, nodes, axis, inner, atom)]
        spec = PermutationSpec(
            {names[r]: self.size[r] for r in names},
            {names[r]: tuple(refs[r]) for r in names},
            tuple(self.notes),
            {names[r]: self.size[stacked[r]] for r in names if r in stacked},
        )
        reasons = self._reasons(comp, pinned)
        unpermuted = []
        for path, nodes in leaves:
            for axis, node in enumerate(nodes):
                if self.size[node] < 2:
                    continue
                atoms = self._expand(self.find(node), comp)
                if any(a in names for a, _ in atoms):
                    continue
                why = next(
                    (reasons[a] for a, _ in atoms if a in reasons), "size 1 or not a hidden axis"
                )
                unpermuted.append((path, axis, self.size[node], why))
        return Analysis(
            spec, found, jaxpr, unpermuted, {names[w]: names[h] for w, h in units.items()}
        )


def _names(refs: dict[int, list[AxisRef]], leaves) -> dict[int, str]:
    """Readable, deterministic names: the module whose output axis carries the class.

    Preference goes to the first (in tree order, params before model state) unblocked
    entry on a leaf's last axis, i.e. a kernel's output or a bias/scale.
    """
    order = {
        path: i
        for i, (path, _) in enumerate(sorted(leaves, key=lambda pn: pn[0][:1] != ("params",)))
    }
    names: dict[int, str] = {}
    used: set[str] = set()
    ndim = {path: len(nodes) for path, nodes in leaves}

    def rank(r: AxisRef):
        last = r.inner == 1 and r.axis == ndim[r.path] - 1
        return (not last, order[r.path], r.axis)

    for root in sorted(refs, key=lambda root: min(rank(r) for r in refs[root])):
        best = min(refs[root], key=rank)
        path = best.path[1:] if best.path[:1] == ("params",) and len(best.path) > 1 else best.path
        # The module's path; if another permutation has it already, the leaf's path.
        module, leaf = "/".join(map(str, path[:-1])), "/".join(map(str, path))
        base = module if module and module not in used else leaf
        name, k = base, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        names[root] = name
    return names


@dataclasses.dataclass
class Analysis:
    """A derived spec, plus where each permutation's activations live in the program."""

    spec: PermutationSpec
    # name -> [((context, var), axis, inner, other permuted axes to sum over)]
    probes: dict[str, list[tuple[Any, int, int, tuple[int, ...]]]]
    jaxpr: Any = None  # the ClosedJaxpr the probes refer to
    # Parameter axes no permutation acts on: (path, axis, size, why).
    unpermuted: list[tuple[Path, int, int, str]] = dataclasses.field(default_factory=list)
    # Nested permutations (traced with nested=True): name -> its unit permutation's
    # name. Their probe entries list the unit axis first among the other axes.
    units: dict[str, str] = dataclasses.field(default_factory=dict)
