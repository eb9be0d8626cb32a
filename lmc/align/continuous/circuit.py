"""Circuit-form merging: attention heads interpolated as their circuits, not their weights.

Per head, attention is two bilinear forms (Elhage et al. 2021): the query-key circuit
W_Q W_K^T, whose form gives the logits, and the value-output circuit W_V W_O, which
writes to the residual stream. Both are invariant under any invertible map inside
the head, so interpolating them needs no alignment within heads (which head of B
meets which head of A is still the base alignment's choice); Theus et al. (2025)
merge GPT-2 models that way. The interpolated circuits have up to twice the rank of
either and are exactly one head of twice the head dim:

    q = sqrt(2) [sqrt(1-a) q_A, sqrt(a) q_B]      k = [sqrt(1-a) k_A, sqrt(a) k_B]
    v = [v_A, v_B]                               W_O = [(1-a) W_O_A ; a W_O_B]

q.k = 2 ((1-a) q_A.k_A + a q_B.k_B), and the wide head divides by sqrt(2 hd) where
each endpoint divided by sqrt(hd): the sqrt(2) on q makes the logits exactly the
interpolated ones. Biases are part of q = x W + b and take the same factors. The
pattern of those logits weighs the interpolated value-output circuit:
(1-a) v_A W_O_A + a v_B W_O_B. Everything else (embeddings, norms, MLPs, W_O's bias)
is interpolated linearly, so the residual stream and the MLP units still need the
usual alignment first. At a = 0 and 1 the wide model computes A and B.

The midpoint is not the endpoints' shape (`param_counts`): its barrier answers a
different question from a same-shape merge's and is reported apart from them.
Rotary positions are refused: rotating the concatenated head would pair dimensions
of A with dimensions of B at frequencies neither used.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError

ATTENTION = ("query", "key", "value", "out")
# The wide head's softmax divides by sqrt(2 hd), each endpoint's by sqrt(hd).
SCALE = math.sqrt(2.0)


def is_attention(node) -> bool:
    """An lmc transformer attention block: query/key/value (d, heads, hd) and out
    (heads, hd, d) kernels, the head dim last in q/k/v and second in out."""
    return isinstance(node, dict) and set(ATTENTION) <= set(node)


def circuit_params(params_a, params_b, alpha):
    """The circuit-form network at `alpha` (traceable): attention blocks in wide product
    form, every other leaf `(1-alpha) a + alpha b`. B must be aligned to A already."""
    if is_attention(params_a):
        return _circuit_attention(params_a, params_b, alpha)
    if isinstance(params_a, dict):
        return {k: circuit_params(v, params_b[k], alpha) for k, v in params_a.items()}
    return (1 - alpha) * params_a + alpha * params_b


def _circuit_attention(a: dict, b: dict, alpha) -> dict:
    alpha = jnp.asarray(alpha, jnp.float32)
    root_a, root_b = jnp.sqrt(1 - alpha), jnp.sqrt(alpha)

    def concat(name, leaf, factor_a, factor_b, axis=-1):
        return jnp.concatenate([factor_a * a[name][leaf], factor_b * b[name][leaf]], axis)

    def qkv(name, factor_a, factor_b):  # kernel (d, heads, hd), bias (heads, hd)
        return {leaf: concat(name, leaf, factor_a, factor_b) for leaf in ("kernel", "bias")}

    rest = {k: circuit_params(v, b[k], alpha) for k, v in a.items() if k not in ATTENTION}
    return {
        **rest,
        "query": qkv("query", SCALE * root_a, SCALE * root_b),
        "key": qkv("key", root_a, root_b),
        "value": qkv("value", 1.0, 1.0),
        "out": {
            "kernel": concat("out", "kernel", 1 - alpha, alpha, axis=-2),  # (heads, hd, d)
            # added after the heads are summed: outside the circuit, a plain weight
            "bias": (1 - alpha) * a["out"]["bias"] + alpha * b["out"]["bias"],
        },
    }


def circuit_model(model):
    """The lmc transformer `model` with heads of twice its head dim: the architecture
    `circuit_params` fills. Other models and rotary positions are a UserError."""
    from lmc.models import Model
    from lmc.models.transformer import Transformer

    module = getattr(model, "module", None)
    if not isinstance(model, Model) or not isinstance(module, Transformer):
        raise UserError(
            "the circuit merge builds its wide-head midpoint from lmc's transformer "
            f"(config.model.name='transformer'), got {type(module or model).__name__}"
        )
    if module.positions == "rotary":
        raise UserError(
            "the circuit merge needs config.model.positions='learned': with rotary "
            "positions the wide head's rotation would pair query/key dimensions of A "
            "with dimensions of B at frequencies neither model used"
        )
    head_dim = module.head_dim or module.width // module.heads
    return Model(f"{model.name}_circuit", module.clone(head_dim=2 * head_dim), model.takes_train)


def circuit_path(model):
    """(apply_fn, interpolate) of the circuit path for `lmc.evaluate.interpolation_curve`."""
    return circuit_model(model).apply, circuit_params


def param_counts(params) -> dict:
    """Parameters of an endpoint and of the circuit-form midpoint (results.json)."""
    wide = jax.eval_shape(circuit_params, params, params, 0.5)
    count = lambda tree: int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
    return {"endpoint_params": count(params), "midpoint_params": count(wide)}
