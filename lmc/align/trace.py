"""Derive a `PermutationSpec` from the traced program (no hand-written specs).

The function is traced to a jaxpr. Every axis of every value gets a node in a
union-find; primitive rules (`lmc.align.rules`) tie axes that must be permuted
together (a contraction ties a weight's input axis to the feature axis of the
activation it consumes, elementwise ops tie aligned axes...) and *pin* axes whose
order matters (the model's inputs and outputs, spatial axes of convolutions, the
sorted axis of a sort, anything an unknown primitive touches). A reshape that merges
axes records the merged axis as a *composite* of its factors, so the dense layer after
an NHWC flatten gets a blocked entry for the channel permutation.

After the trace, every class of tied axes that is unpinned, atomic (not composite)
and larger than 1 is one permutation; its entries are the parameter axes in it, plus
the blocked parameter axes whose composite classes contain it as a factor.

`Analysis` also keeps *probes* (the activations feeding contractions, per
permutation) so `activation_matching` can evaluate the same program and correlate
the right hidden features.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from lmc.align.spec import AxisRef, Path, PermutationSpec
from lmc.errors import UserError

Nodes = tuple[int, ...]


class AxisGraph:
    """Union-find over array axes, with pins and composite (merged) axes."""

    def __init__(self):
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
        from lmc.align.rules import RULES, unknown

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
            rule = RULES.get(eqn.primitive.name, unknown)
            outs = rule(self, eqn, ins, in_deps)
            d = any(in_deps)
            for v, nodes in zip(eqn.outvars, outs, strict=True):
                assert len(nodes) == len(v.aval.shape), (eqn.primitive.name, nodes, v.aval)
                env[v], dep[v] = nodes, d
                if d and record:
                    self.values.append(((context, v), nodes))
        self.context, self.record = saved
        outs = [read(v) for v in jaxpr.outvars]
        return [o[0] for o in outs], [o[1] for o in outs]

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

    def analyze(
        self, leaves: Sequence[tuple[Path, Nodes]], probes=(), values=(), jaxpr=None
    ) -> Analysis:
        """Permutations (free atomic classes that reach a parameter) and their probes."""
        for path, nodes in leaves:
            if nodes and not set(nodes) & self.used:
                self.pin_all(nodes, "unused leaf")
                self.note(f"{'/'.join(map(str, path))} is never used: not permuted")
        comp, pinned = self._settle()

        def free(root: int) -> bool:
            return root not in pinned and root not in comp and self.size[root] > 1

        refs: dict[int, list[AxisRef]] = {}
        for path, nodes in leaves:
            for axis, node in enumerate(nodes):
                for atom, inner in self._expand(self.find(node), comp):
                    if free(atom):
                        refs.setdefault(atom, []).append(AxisRef(path, axis, inner))
        names = _names(refs, leaves)
        found: dict[str, list[tuple[Any, int, int]]] = {}
        for var, nodes, axis in probes:
            for atom, inner in self._expand(self.find(nodes[axis]), comp):
                site = (var, axis, inner)
                if atom in names and site not in found.get(names[atom], []):
                    found.setdefault(names[atom], []).append(site)
        for var, nodes in reversed(values):  # fallback: the last value carrying the class
            for axis, node in enumerate(nodes):
                for atom, inner in self._expand(self.find(node), comp):
                    if atom in names and names[atom] not in found:
                        found[names[atom]] = [(var, axis, inner)]
        spec = PermutationSpec(
            {names[r]: self.size[r] for r in names},
            {names[r]: tuple(refs[r]) for r in names},
            tuple(self.notes),
        )
        return Analysis(spec, found, jaxpr)


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
    probes: dict[str, list[tuple[Any, int, int]]]  # name -> [((context, var), axis, inner)]
    jaxpr: Any = None  # the ClosedJaxpr the probes refer to


# ---- entry points ---------------------------------------------------------------------
def _path_key(k) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def tree_paths(tree) -> list[tuple[Path, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(tuple(_path_key(k) for k in kp), leaf) for kp, leaf in flat]


def _is_static(x) -> bool:
    return isinstance(x, (bool, str)) or x is None or callable(x)


def trace_into(
    graph: AxisGraph,
    fn: Callable,
    tree,
    args: Sequence[Any],
    leaf_nodes=None,
    *,
    carry: Callable[[Any], dict[Path, Any]] | None = None,
):
    """Trace `fn(tree, *args)` and add its constraints to `graph`.

    `carry(out) -> {tree path: output leaf}` marks outputs that are new values of tree
    leaves (BatchNorm statistics in train mode): they are tied to those leaves instead
    of being pinned as model outputs. Passing the same `leaf_nodes` to several calls
    combines the constraints of several programs (train and eval mode).
    Returns (leaf_nodes, program) where program = (closed jaxpr, probes, values).
    """
    static = {i: a for i, a in enumerate(args) if _is_static(a)}
    dynamic = [a for i, a in enumerate(args) if i not in static]

    def wrapped(t, *dyn):
        it = iter(dyn)
        full = [static[i] if i in static else next(it) for i in range(len(args))]
        return fn(t, *full)

    try:
        closed, out_shape = jax.make_jaxpr(wrapped, return_shape=True)(tree, *dynamic)
    except Exception as e:  # user code may raise anything while tracing
        raise UserError(f"could not trace the function to derive a permutation spec: {e}") from e
    g = graph
    paths = tree_paths(tree)
    if leaf_nodes is None:
        leaf_nodes = [g.fresh(np.shape(leaf)) for _, leaf in paths]
    arg_nodes = [g.fresh(np.shape(a)) for a in jax.tree_util.tree_leaves(dynamic)]
    for nodes in arg_nodes:
        g.pin_all(nodes, "model input")
    g.probes, g.values = [], []
    outs, _ = g.run_closed(
        closed, [*leaf_nodes, *arg_nodes], [False] * len(leaf_nodes) + [True] * len(arg_nodes)
    )
    # Leaves the program never reads would otherwise look freely permutable.
    read = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
    read |= {id(v) for v in closed.jaxpr.outvars}
    g.used.update(
        n
        for v, nodes in zip(closed.jaxpr.invars, leaf_nodes, strict=False)
        if id(v) in read
        for n in nodes
    )
    out_leaves = jax.tree_util.tree_leaves(out_shape)
    carried = {id(v): p for p, v in (carry(out_shape) if carry else {}).items()}
    index = {p: i for i, (p, _) in enumerate(paths)}
    for leaf, nodes in zip(out_leaves, outs, strict=True):
        target = carried.get(id(leaf))
        if target is not None:
            g.union_all(nodes, leaf_nodes[index[target]])
        else:
            g.pin_all(nodes, "model output")
    return leaf_nodes, (closed, g.probes, g.values)


def _warn_if_empty(spec: PermutationSpec) -> None:
    unknown = [n for n in spec.notes if n.startswith("unknown primitive")]
    if unknown and spec.axes:
        warnings.warn(
            "some axes were pinned conservatively: "
            + "; ".join(unknown)
            + " (add a rule to lmc.align.rules.RULES to permute through them)",
            stacklevel=3,
        )
    if not spec.axes:
        warnings.warn(
            "no parameter axis of this model can be permuted (every hidden axis reaches the "
            "input or output or is pinned); alignment will use identity permutations"
            + (f". Notes: {'; '.join(spec.notes)}" if spec.notes else ""),
            stacklevel=3,
        )


def analyze_function(apply_fn: Callable, params, *example_args) -> Analysis:
    """Spec and probes of `apply_fn(params, *example_args)` (see `spec_from_function`)."""
    graph = AxisGraph()
    nodes, (closed, probes, values) = trace_into(graph, apply_fn, params, example_args)
    leaves = [(p, n) for (p, _), n in zip(tree_paths(params), nodes, strict=True)]
    return graph.analyze(leaves, probes, values, closed)


def spec_from_function(apply_fn: Callable, params, *example_args) -> PermutationSpec:
    """Derive the permutation spec of `apply_fn(params, *example_args)` from its jaxpr.

    Every axis of `example_args` and of the outputs is pinned. Non-array arguments
    (bools, strings, None) are passed through as static values (e.g. `train=True`).
    `params` may hold arrays or `jax.ShapeDtypeStruct`s; nothing is computed.
    """
    spec = analyze_function(apply_fn, params, *example_args).spec
    _warn_if_empty(spec)
    return spec


def model_shapes(model, example_input) -> tuple[dict, Any]:
    """{'params': ..., 'model_state': ...} as ShapeDtypeStructs (no arrays computed)."""
    x = jax.ShapeDtypeStruct(np.shape(example_input), getattr(example_input, "dtype", np.float32))
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    return {"params": params, "model_state": state}, x


def model_fn(model, train: bool) -> Callable:
    """The Model as a function of the combined tree."""
    return lambda tree, x: model.apply(tree["params"], tree["model_state"], x, train)


def analyze_model(model, example_input) -> Analysis:
    """Spec and (eval-mode) probes of an `lmc.models` Model over the combined tree.

    Eval mode (running statistics) and train mode (batch statistics and running-stat
    updates) are both traced and their constraints combined.
    """
    tree, x = model_shapes(model, example_input)

    def carry(out):  # train mode returns (logits, new model_state)
        return {("model_state", *p): leaf for p, leaf in tree_paths(out[1])}

    graph = AxisGraph()
    nodes, eval_program = trace_into(graph, model_fn(model, False), tree, [x], carry=carry)
    trace_into(graph, model_fn(model, True), tree, [x], nodes, carry=carry)
    leaves = [(p, n) for (p, _), n in zip(tree_paths(tree), nodes, strict=True)]
    closed, probes, values = eval_program
    return graph.analyze(leaves, probes, values, closed)


def spec_from_model(model, example_input) -> PermutationSpec:
    """The spec of an `lmc.models` Model over {'params': ..., 'model_state': ...}.

    Both train mode (batch statistics, running-stat updates) and eval mode (running
    statistics) are traced, and their constraints combined.
    """
    spec = analyze_model(model, example_input).spec
    _warn_if_empty(spec)
    return spec
