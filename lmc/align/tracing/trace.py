"""Derive a `PermutationSpec` from the traced program (no hand-written specs).

The function is traced to a jaxpr. Every axis of every value gets a node in a
union-find; primitive rules (`lmc.align.tracing.rules`) tie axes that must be permuted
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

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lmc.align.spec import Path, PermutationSpec
from lmc.align.tracing.coverage import summary
from lmc.align.tracing.graph import Analysis, AxisGraph, Nodes  # noqa: F401  (re-exported)
from lmc.align.tracing.rules import RULES, unknown
from lmc.errors import UserError
from lmc.models.calling import check_plain_fn


# ---- entry points ---------------------------------------------------------------------
def _path_key(k) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def tree_paths(tree) -> list[tuple[Path, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(tuple(_path_key(k) for k in kp), leaf) for kp, leaf in flat]


def is_static(x) -> bool:
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
    static = {i: a for i, a in enumerate(args) if is_static(a)}
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
        leaf_nodes = [g.array(g.fresh(np.shape(leaf))) for _, leaf in paths]
    arg_nodes = [g.array(g.fresh(np.shape(a))) for a in jax.tree_util.tree_leaves(dynamic)]
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
            + " (add a rule to lmc.align.tracing.rules.RULES to permute through them)",
            stacklevel=3,
        )
    if not spec.axes:
        warnings.warn(
            "no parameter axis of this model can be permuted (every hidden axis reaches the "
            "input or output or is pinned); alignment will use identity permutations"
            + (f". Notes: {'; '.join(spec.notes)}" if spec.notes else ""),
            stacklevel=3,
        )


def analyze_function(apply_fn: Callable, params, *example_args, nested: bool = False) -> Analysis:
    """Spec and probes of `apply_fn(params, *example_args)` (see `spec_from_function`)."""
    graph = AxisGraph(RULES, unknown)
    nodes, (closed, probes, values) = trace_into(graph, apply_fn, params, example_args)
    leaves = [(p, n) for (p, _), n in zip(tree_paths(params), nodes, strict=True)]
    return graph.analyze(leaves, probes, values, closed, nested=nested)


def spec_from_function(
    apply_fn: Callable, params, *example_args, nested: bool = False
) -> PermutationSpec:
    """Derive the permutation spec of `apply_fn(params, *example_args)` from its jaxpr.

    Every axis of `example_args` and of the outputs is pinned. Non-array arguments
    (bools, strings, None) are passed through as static values (e.g. `train=True`).
    `params` may hold arrays or `jax.ShapeDtypeStruct`s; nothing is computed.

    `nested=True` derives the richer class with nested units: a permutation whose
    every value also carries another permuted axis becomes one permutation per index
    of it (attention: heads permuted as units, and each head with its own query/key
    and value/output permutations). `align.nested_units(spec)` lists them.
    """
    check_plain_fn(apply_fn, 1 + len(example_args), "align.spec_from_function")
    analysis = analyze_function(apply_fn, params, *example_args, nested=nested)
    logging.getLogger("lmc.align").info("spec_from_function: %s", summary(analysis))
    _warn_if_empty(analysis.spec)
    return analysis.spec


def model_shapes(model, example_input) -> tuple[dict, Any]:
    """{'params': ..., 'model_state': ...} as ShapeDtypeStructs (no arrays computed)."""
    x = jax.ShapeDtypeStruct(np.shape(example_input), getattr(example_input, "dtype", np.float32))
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    return {"params": params, "model_state": state}, x


def model_fn(model, train: bool) -> Callable:
    """The Model as a function of the combined tree (train mode with a fixed dropout
    key: the symmetry does not depend on which units a mask drops)."""
    if not train:
        return lambda tree, x: model.apply(tree["params"], tree["model_state"], x, False)
    return lambda tree, x: model.apply(
        tree["params"], tree["model_state"], x, True, rng=jax.random.key(0)
    )


def _trace_model(model, example_input):
    """The axis graph of an `lmc.models` Model over the combined tree, both modes traced:
    (graph, leaves, eval program)."""
    from lmc.models import as_model

    model = as_model(model)
    tree, x = model_shapes(model, example_input)

    def carry(out):  # train mode returns (logits, new model_state)
        return {("model_state", *p): leaf for p, leaf in tree_paths(out[1])}

    graph = AxisGraph(RULES, unknown)
    nodes, eval_program = trace_into(graph, model_fn(model, False), tree, [x], carry=carry)
    trace_into(graph, model_fn(model, True), tree, [x], nodes, carry=carry)
    leaves = [(p, n) for (p, _), n in zip(tree_paths(tree), nodes, strict=True)]
    return graph, leaves, eval_program


def analyze_model(model, example_input, nested: bool = False) -> Analysis:
    """Spec and (eval-mode) probes of an `lmc.models` Model over the combined tree.

    Eval mode (running statistics) and train mode (batch statistics and running-stat
    updates) are both traced and their constraints combined.
    """
    graph, leaves, (closed, probes, values) = _trace_model(model, example_input)
    return graph.analyze(leaves, probes, values, closed, nested=nested)


def specs_from_model(model, example_input) -> tuple[PermutationSpec, PermutationSpec]:
    """(plain spec, nested spec) of a Model from one trace: what the transformer
    recipes need, at the cost of one `spec_from_model`."""
    graph, leaves, (closed, probes, values) = _trace_model(model, example_input)
    specs = tuple(
        graph.analyze(leaves, probes, values, closed, nested=n).spec for n in (False, True)
    )
    return specs


def spec_from_model(model, example_input, nested: bool = False) -> PermutationSpec:
    """The spec of an `lmc.models` Model or a `flax.linen.Module` over
    {'params': ..., 'model_state': ...} (model_state: the module's batch_stats).

    Both train mode (batch statistics, running-stat updates) and eval mode (running
    statistics) are traced, and their constraints combined. `nested`: see
    `spec_from_function`.
    """
    analysis = analyze_model(model, example_input, nested=nested)
    logging.getLogger("lmc.align").info("spec_from_model: %s", summary(analysis))
    _warn_if_empty(analysis.spec)
    return analysis.spec
