"""Primitive rules for the spec tracer: how each jaxpr primitive ties or pins axes.

A rule is `rule(graph, eqn, ins, deps) -> outs`: `ins` are the axis nodes of the
equation's inputs (one tuple per input, one node per axis), `outs` the nodes for its
outputs. A rule either reuses input nodes for outputs (the axis passes through),
creates fresh nodes and `union`s them, or `pin`s axes whose order matters.

Extending the tracer (e.g. for attention) means adding an entry to `RULES`.
Unknown primitives pin every axis they touch and leave a note on the spec: a wrong
"free" axis would silently break function invariance, a pinned one only costs
alignment quality.
"""

from __future__ import annotations

from collections.abc import Callable

from lmc.align.tracing.calls import CALL_PRIMITIVES, called_closed
from lmc.align.tracing.graph import AxisGraph, Nodes

Rule = Callable[[AxisGraph, object, list[Nodes], list[bool]], list[Nodes]]
RULES: dict[str, Rule] = {}


def _shape(v) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _fresh_outs(g: AxisGraph, eqn) -> list[Nodes]:
    return [g.fresh(_shape(v)) for v in eqn.outvars]


def unknown(g: AxisGraph, eqn, ins, deps) -> list[Nodes]:
    """Pin everything: an op we cannot reason about must not be permuted through."""
    reason = f"unknown primitive {eqn.primitive.name!r}"
    touched = [n for nodes in ins for n in nodes if g.size[n] > 1]
    if touched:
        g.note(f"{reason}: its operands' axes are pinned")
    for nodes in ins:
        g.pin_all(nodes, reason)
    outs = _fresh_outs(g, eqn)
    for nodes in outs:
        g.pin_all(nodes, reason)
    return outs


def register(*names: str):
    def deco(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return deco


# ---- elementwise ------------------------------------------------------------------
ELEMENTWISE = """
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp complex conj
convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p logistic lt max
min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n sign sin
sinh sqrt square stop_gradient sub tan tanh xor shift_left shift_right_logical
shift_right_arithmetic population_count clz optimization_barrier sharding_constraint
mesh_cast reshard pvary device_put
""".split()


@register(*ELEMENTWISE)
def elementwise(g, eqn, ins, deps):
    """Aligned axes of the operands are the same axis.

    Rank-0 operands and size-1 axes broadcast (lax allows both); a broadcast value is
    constant along the axis, so it ties nothing.
    """
    if len(eqn.outvars) > 1:  # optimization_barrier, device_put: one output per operand
        if len(ins) == len(eqn.outvars):
            return list(ins)
        return unknown(g, eqn, ins, deps)
    out_shape = _shape(eqn.outvars[0])
    outs = g.fresh(out_shape)
    for nodes in ins:
        if len(nodes) == len(out_shape):
            for a, b in zip(nodes, outs, strict=True):
                if g.size[a] == g.size[b]:
                    g.union(a, b)
        elif nodes:
            return unknown(g, eqn, ins, deps)
    return [outs]


@register("broadcast_in_dim")
def broadcast_in_dim(g, eqn, ins, deps):
    # New axes (and size-1 axes stretched) are constant along themselves: any order is fine.
    out_shape = eqn.params["shape"]
    outs = g.fresh(out_shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if g.size[ins[0][i]] == out_shape[d]:
            g.union(ins[0][i], outs[d])
    return [outs]


@register("squeeze")
def squeeze(g, eqn, ins, deps):
    dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    return [tuple(n for i, n in enumerate(ins[0]) if i not in dims)]


@register("transpose")
def transpose(g, eqn, ins, deps):
    return [tuple(ins[0][p] for p in eqn.params["permutation"])]


@register("reshape")
def reshape(g, eqn, ins, deps):
    """Match groups of input and output axes with equal products.

    1 -> 1: the same axis. k -> 1 (flatten): the output axis is a composite of the
    inputs, fastest factor last. 1 -> k (split): the input axis is the composite.
    k -> m: order of the factors is entangled; pin.
    """
    (nodes,) = ins[:1]
    out_shape = _shape(eqn.outvars[0])
    outs = g.fresh(out_shape)
    if eqn.params.get("dimensions") is not None:
        return unknown(g, eqn, ins, deps)
    src = [n for n in nodes if g.size[n] > 1]
    dst = [n for n in outs if g.size[n] > 1]
    i = j = 0
    while i < len(src) and j < len(dst):
        gi, gj = [src[i]], [dst[j]]
        pi, pj = g.size[src[i]], g.size[dst[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(src[i])
                pi *= g.size[src[i]]
                i += 1
            else:
                gj.append(dst[j])
                pj *= g.size[dst[j]]
                j += 1
        if len(gi) == 1 and len(gj) == 1:
            g.union(gi[0], gj[0])
        elif len(gj) == 1:
            g.composite(gj[0], tuple(gi))
        elif len(gi) == 1:
            g.composite(gi[0], tuple(gj))
        else:
            g.note("a reshape regroups axes (k -> m factors): those axes are pinned")
            g.pin_all((*gi, *gj), "entangled reshape")
    return [outs]


# ---- contractions -------------------------------------------------------------------
@register("dot_general")
def dot_general(g, eqn, ins, deps):
    lhs, rhs = ins[:2]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for a, b in zip(lc, rc, strict=True):
        g.union(lhs[a], rhs[b])
        for nodes, axis, dep, var in (
            (lhs, a, deps[0], eqn.invars[0]),
            (rhs, b, deps[1], eqn.invars[1]),
        ):
            if dep:
                g.probe(var, nodes, axis)
    for a, b in zip(lb, rb, strict=True):
        g.union(lhs[a], rhs[b])
    free_l = [n for i, n in enumerate(lhs) if i not in lc and i not in lb]
    free_r = [n for i, n in enumerate(rhs) if i not in rc and i not in rb]
    return [tuple([lhs[i] for i in lb] + free_l + free_r)]


@register("conv_general_dilated")
def conv(g, eqn, ins, deps):
    """Features contract like a dense layer; spatial axes mix positions: pinned."""
    lhs, rhs = ins[:2]
    out = g.fresh(_shape(eqn.outvars[0]))
    lspec, rspec, ospec = eqn.params["dimension_numbers"]
    groups = eqn.params["feature_group_count"]
    if eqn.params["batch_group_count"] != 1:
        return unknown(g, eqn, ins, deps)
    for nodes, spec in ((lhs, lspec), (rhs, rspec), (out, ospec)):
        g.pin_all(tuple(nodes[d] for d in spec[2:]), "convolution window")
    g.union(lhs[lspec[0]], out[ospec[0]])
    g.union(rhs[rspec[0]], out[ospec[1]])
    if groups == 1:
        g.union(lhs[lspec[1]], rhs[rspec[1]])
        if deps[0]:
            g.probe(eqn.invars[0], lhs, lspec[1])
    else:
        # Grouped (depthwise when each group has one input channel): channel c of group
        # k is c + k * per_group, so input and output channels are (group, channel)
        # composites. Whole groups permute together on both sides, and one
        # within-group order of input channels (shared by the groups) ties to the
        # kernel's input axis; the kernel's output axis is the output channels.
        group = g.new(groups)
        cin, cout = g.new(g.size[rhs[rspec[1]]]), g.new(g.size[out[ospec[1]]] // groups)
        g.composite(lhs[lspec[1]], (group, cin))
        g.composite(out[ospec[1]], (group, cout))
        g.union(rhs[rspec[1]], cin)
    return [out]


# ---- reductions and windows -----------------------------------------------------------
@register(
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor"
)
def reduce(g, eqn, ins, deps):
    # Order-free reductions: the reduced axis may be permuted (its class stays free).
    axes = set(eqn.params["axes"])
    return [tuple(n for i, n in enumerate(ins[0]) if i not in axes)]


@register("argmax", "argmin")
def arg_reduce(g, eqn, ins, deps):
    axes = set(eqn.params["axes"])
    g.pin_all(tuple(ins[0][a] for a in axes), f"{eqn.primitive.name} returns positions")
    return [tuple(n for i, n in enumerate(ins[0]) if i not in axes)]


@register("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")
def cumulative(g, eqn, ins, deps):
    g.pin(ins[0][eqn.params["axis"]], f"{eqn.primitive.name} depends on order")
    return [ins[0]]


@register("reduce_window_sum", "reduce_window_max", "reduce_window_min")
def reduce_window(g, eqn, ins, deps):
    """Pooling: axes with a trivial window (batch, channels) pass through."""
    p = eqn.params
    out_shape = _shape(eqn.outvars[0])
    outs = []
    for i, n in enumerate(ins[0]):
        trivial = (
            p["window_dimensions"][i] == 1
            and p["window_strides"][i] == 1
            and tuple(p["padding"][i]) == (0, 0)
            and p["base_dilation"][i] == 1
        )
        if trivial:
            outs.append(n)
        else:
            g.pin(n, "pooling window")
            m = g.new(out_shape[i])
            g.pin(m, "pooling window")
            outs.append(m)
    return [tuple(outs)]


# ---- slicing and indexing ---------------------------------------------------------------
def _pass_or_pin(g, nodes: Nodes, out_shape, keep: list[bool], reason: str) -> Nodes:
    outs = []
    for n, k, size in zip(nodes, keep, out_shape, strict=True):
        if k:
            outs.append(n)
        else:
            g.pin(n, reason)
            m = g.new(size)
            g.pin(m, reason)
            outs.append(m)
    return tuple(outs)


@register("slice")
def slice_(g, eqn, ins, deps):
    p = eqn.params
    strides = p["strides"] or (1,) * len(ins[0])
    keep = [
        s == 0 and lim == g.size[n] and st == 1
        for n, s, lim, st in zip(
            ins[0], p["start_indices"], p["limit_indices"], strides, strict=True
        )
    ]
    return [_pass_or_pin(g, ins[0], _shape(eqn.outvars[0]), keep, "sliced")]


@register("dynamic_slice")
def dynamic_slice(g, eqn, ins, deps):
    keep = [s == g.size[n] for n, s in zip(ins[0], eqn.params["slice_sizes"], strict=True)]
    return [_pass_or_pin(g, ins[0], _shape(eqn.outvars[0]), keep, "sliced")]


@register("dynamic_update_slice")
def dynamic_update_slice(g, eqn, ins, deps):
    operand, update = ins[:2]
    for a, b in zip(operand, update, strict=True):
        if g.size[a] == g.size[b]:
            g.union(a, b)
        else:
            g.pin_all((a, b), "updated slice")
    return [operand]


@register("pad")
def pad(g, eqn, ins, deps):
    keep = [tuple(c) == (0, 0, 0) for c in eqn.params["padding_config"]]
    return [_pass_or_pin(g, ins[0], _shape(eqn.outvars[0]), keep, "padded")]


@register("rev")
def rev(g, eqn, ins, deps):
    for d in eqn.params["dimensions"]:
        g.pin(ins[0][d], "reversed")
    return [ins[0]]


@register("concatenate")
def concatenate(g, eqn, ins, deps):
    d = eqn.params["dimension"]
    outs = g.fresh(_shape(eqn.outvars[0]))
    g.pin(outs[d], "concatenated")
    for nodes in ins:
        g.pin(nodes[d], "concatenated")
        for i, (a, b) in enumerate(zip(nodes, outs, strict=True)):
            if i != d:
                g.union(a, b)
    return [outs]


@register("split")
def split(g, eqn, ins, deps):
    axis = eqn.params["axis"]
    g.pin(ins[0][axis], "split")
    outs = []
    for v in eqn.outvars:
        m = g.new(_shape(v)[axis])
        g.pin(m, "split")
        outs.append(tuple(m if i == axis else n for i, n in enumerate(ins[0])))
    return outs


@register("sort")
def sort(g, eqn, ins, deps):
    d = eqn.params["dimension"]
    for nodes in ins[1:]:
        g.union_all(ins[0], nodes)
    g.pin(ins[0][d], "sorted")
    return [ins[0]] * len(eqn.outvars)


@register("top_k")
def top_k(g, eqn, ins, deps):
    nodes = ins[0]
    axis = eqn.params.get("axis", -1) % len(nodes)
    g.pin(nodes[axis], "top_k")
    m = g.new(_shape(eqn.outvars[0])[axis])
    g.pin(m, "top_k")
    out = tuple(m if i == axis else n for i, n in enumerate(nodes))
    return [out] * len(eqn.outvars)


@register("gather")
def gather(g, eqn, ins, deps):
    """Operand axes sliced whole and never indexed (e.g. an embedding's features) pass."""
    operand, indices = ins[:2]
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    out = g.fresh(_shape(eqn.outvars[0]))
    indexed = set(dn.collapsed_slice_dims) | set(dn.start_index_map) | set(dn.operand_batching_dims)
    kept = [
        i
        for i in range(len(operand))
        if i not in dn.collapsed_slice_dims and i not in dn.operand_batching_dims
    ]
    for i, od in zip(kept, dn.offset_dims, strict=True):
        if i not in indexed and sizes[i] == g.size[operand[i]]:
            g.union(operand[i], out[od])
        else:
            g.pin_all((operand[i], out[od]), "gathered")
    for i in indexed:
        g.pin(operand[i], "gathered")
    g.pin_all(indices, "gather indices")
    g.pin_all(tuple(n for i, n in enumerate(out) if i not in dn.offset_dims), "gathered")
    return [out]


@register("tile")
def tile(g, eqn, ins, deps):
    """out[r * n + j] = in[j] along each axis: a (repeat, axis) composite, repeats slowest.

    Values are equal along the repeats, so their order is free; a size-1 axis tiled
    (a [cls] token broadcast over the batch) is a fresh axis.
    """
    outs = g.fresh(_shape(eqn.outvars[0]))
    for n, m, reps in zip(ins[0], outs, eqn.params["reps"], strict=True):
        if reps == 1:
            g.union(n, m)
        else:
            g.composite(m, (g.new(reps), n))
    return [outs]


@register("scatter", "scatter-add", "scatter_add", "scatter_mul", "scatter_min", "scatter_max")
def scatter(g, eqn, ins, deps):
    """Like `gather`: operand axes updated whole and never indexed (the features of
    `x.at[:, 0].set(v)`) pass through and tie to the updates' window axes."""
    operand, indices, updates = ins[:3]
    dn = eqn.params["dimension_numbers"]
    indexed = (
        set(dn.inserted_window_dims)
        | set(dn.scatter_dims_to_operand_dims)
        | set(dn.operand_batching_dims)
    )
    window = [
        i
        for i in range(len(operand))
        if i not in dn.inserted_window_dims and i not in dn.operand_batching_dims
    ]
    for i, ud in zip(window, dn.update_window_dims, strict=True):
        if i not in indexed and g.size[updates[ud]] == g.size[operand[i]]:
            g.union(operand[i], updates[ud])
        else:
            g.pin_all((operand[i], updates[ud]), "scattered")
    for i in indexed:
        g.pin(operand[i], "scattered")
    g.pin_all(indices, "scatter indices")
    g.pin_all(
        tuple(n for k, n in enumerate(updates) if k not in dn.update_window_dims), "scattered"
    )
    return [operand]


@register(
    "iota",
    "random_bits",
    "random_seed",
    "random_wrap",
    "random_unwrap",
    "random_fold_in",
    "random_split",
    "threefry2x32",
    "rng_bit_generator",
    "rng_uniform",
)
def positions(g, eqn, ins, deps):
    """Values laid out by position (iota) or drawn at random (dropout masks): every
    axis is ordered, and no parameter feeds them."""
    for nodes in ins:
        g.pin_all(nodes, f"{eqn.primitive.name} (positions or random numbers)")
    outs = _fresh_outs(g, eqn)
    for nodes in outs:
        g.pin_all(nodes, f"{eqn.primitive.name} (positions or random numbers)")
    return outs


# ---- calls and control flow ---------------------------------------------------------------
@register(*CALL_PRIMITIVES)
def call(g, eqn, ins, deps):
    """Walk the called program with the caller's nodes (the primal one for custom rules)."""
    inner = called_closed(eqn)
    if inner is None:
        return unknown(g, eqn, ins, deps)
    outs, _ = g.run_closed(inner, ins, deps, g.context, g.record)
    return outs


@register("cond")
def cond(g, eqn, ins, deps):
    outs = None
    for branch in eqn.params["branches"]:
        o, _ = g.run_closed(branch, ins[1:], deps[1:], g.context, record=False)
        if outs is None:
            outs = o
        else:
            for a, b in zip(outs, o, strict=True):
                g.union_all(a, b)
    return outs


@register("while")
def while_(g, eqn, ins, deps):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:nc], ins[nc : nc + nb], ins[nc + nb :]
    d = any(deps)
    outs, _ = g.run_closed(
        p["body_jaxpr"], [*bconsts, *carry], [d] * (nb + len(carry)), g.context, record=False
    )
    for a, b in zip(carry, outs, strict=True):  # loop-carried: same axes every iteration
        g.union_all(a, b)
    g.run_closed(p["cond_jaxpr"], [*cconsts, *carry], [d] * (nc + len(carry)), g.context, False)
    return list(carry)


@register("scan")
def scan(g, eqn, ins, deps):
    """The scanned axis is ordered (pinned) and shared by every xs and ys.

    Carries keep their axes across steps. The body is walked once, inside the scan's
    scope: classes only its per-step values carry may get one permutation per step
    (stacked layers, see `AxisGraph._stacked`). Its activations are recorded: the
    activation matcher evaluates the scan with them stacked as extra outputs.
    """
    p = eqn.params
    nconst, ncarry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nconst], ins[nconst : nconst + ncarry], ins[nconst + ncarry :]
    stack = g.new(p["length"])
    g.pin(stack, "scanned axis")
    g.stacks.append(stack)
    for nodes in xs:
        g.union(nodes[0], stack)
    inner_in = [*consts, *carry, *(nodes[1:] for nodes in xs)]
    saved = g.scope
    g.scope = (*saved, stack)
    try:
        outs, _ = g.run_closed(
            p["jaxpr"],
            [tuple(n) for n in inner_in],
            [any(deps)] * len(inner_in),
            g.context,
            record=g.record,
        )
    finally:
        g.scope = saved
    carry_out, ys = outs[:ncarry], outs[ncarry:]
    for a, b in zip(carry, carry_out, strict=True):
        g.union_all(a, b)
    result = list(carry)
    for nodes, v in zip(ys, eqn.outvars[ncarry:], strict=True):
        m = g.new(_shape(v)[0])
        g.union(m, stack)
        result.append((m, *nodes))
    return result


# ---- bit reinterpretation (issue 23) -----------------------------------------------------
# jax.random's uniform floats go through bitcast_convert_type, so every model that samples
# inside its forward pass meets it (flax's nnx.bridge.ToLinen re-runs the NNX
# initializers in every apply); without this rule it was pinned with a spurious warning.
@register("bitcast_convert_type")
def bitcast_convert_type(g, eqn, ins, deps):
    """Each element's bits reinterpreted: elementwise over the shared leading axes. A
    change of bit width adds or drops a trailing axis of sub-words: its order matters."""
    (src,) = ins
    out_shape = _shape(eqn.outvars[0])
    if len(src) == len(out_shape):
        return elementwise(g, eqn, ins, deps)
    outs = g.fresh(out_shape)
    common = min(len(src), len(out_shape))
    for a, b in zip(src[:common], outs[:common], strict=True):
        g.union(a, b)
    g.pin_all(src[common:], "bitcast_convert_type sub-words")
    g.pin_all(outs[common:], "bitcast_convert_type sub-words")
    return [outs]
