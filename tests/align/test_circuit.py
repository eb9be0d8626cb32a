"""Circuit-form merging (issue 25): the wide-head midpoint computes the interpolated
query-key and value-output circuits, checked against a forward pass written here in
numpy, independently of lmc's attention code."""

import jax
import numpy as np
import pytest

from lmc import evaluate
from lmc.align.continuous import circuit
from lmc.errors import UserError
from lmc.models import build

WIDTH, HEADS, DEPTH, CONTEXT, VOCAB = 16, 4, 2, 8, 11


def model(positions="learned"):
    return build("transformer", VOCAB, width=WIDTH, depth=DEPTH, heads=HEADS, context=CONTEXT,
                 positions=positions)  # fmt: skip


def endpoint(m, seed):
    """A random init with every leaf perturbed, so biases and gains take part too."""
    tokens = np.zeros((1, CONTEXT), np.int32)
    params, _ = m.init(jax.random.key(seed), tokens)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape), params)


def layernorm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def gelu(x):  # flax's default: the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def lerp(a, b, alpha):
    return jax.tree.map(lambda u, v: (1 - alpha) * u + alpha * v, a, b)


def heads(x, p):  # (T, d) -> (H, T, hd)
    return np.einsum("td,dhe->hte", x, p["kernel"]) + p["bias"][:, None, :]


def circuit_attention(x, pa, pb, alpha):
    """Per head: logits (1-a) q_A k_A^T / sqrt(hd) + a q_B k_B^T / sqrt(hd), causal
    softmax, that one pattern applied to (1-a) v_A W_O_A + a v_B W_O_B."""
    t, hd = x.shape[0], pa["query"]["kernel"].shape[-1]
    logits = sum(
        w * np.einsum("hqe,hke->hqk", heads(x, p["query"]), heads(x, p["key"])) / np.sqrt(hd)
        for w, p in ((1 - alpha, pa), (alpha, pb))
    )
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    pattern = np.exp(logits - logits.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    written = sum(
        w * np.einsum("hte,hed->htd", heads(x, p["value"]), p["out"]["kernel"])
        for w, p in ((1 - alpha, pa), (alpha, pb))
    )
    bias = (1 - alpha) * pa["out"]["bias"] + alpha * pb["out"]["bias"]
    return np.einsum("hqk,hkd->qd", pattern, written) + bias


def reference_logits(pa, pb, tokens, alpha):
    """The circuit-form network at alpha for one sequence: attention as above,
    everything else at the straight line's weights."""
    pa, pb = jax.tree.map(np.float64, pa), jax.tree.map(np.float64, pb)
    mid = lerp(pa, pb, alpha)
    x = mid["embed"]["embedding"][tokens] + mid["pos_embed"][: len(tokens)]
    for i in range(DEPTH):
        block, attn_a, attn_b = mid[f"block{i}"], pa[f"block{i}"]["attn"], pb[f"block{i}"]["attn"]
        x = x + circuit_attention(layernorm(x, block["ln1"]), attn_a, attn_b, alpha)
        h = layernorm(x, block["ln2"]) @ block["mlp"]["fc1"]["kernel"] + block["mlp"]["fc1"]["bias"]
        x = x + gelu(h) @ block["mlp"]["fc2"]["kernel"] + block["mlp"]["fc2"]["bias"]
    return layernorm(x, mid["ln_f"]) @ mid["head"]["kernel"] + mid["head"]["bias"]


def circuit_logits(m, pa, pb, tokens, alpha):
    apply_fn, path = circuit.circuit_path(m)
    return np.asarray(apply_fn(path(pa, pb, alpha), {}, tokens, False)[0])


def test_circuit_midpoint_is_the_interpolated_circuits():
    m = model()
    pa, pb = endpoint(m, 0), endpoint(m, 1)
    tokens = np.random.default_rng(2).integers(0, VOCAB, (3, CONTEXT)).astype(np.int32)
    got = circuit_logits(m, pa, pb, tokens, 0.3)
    want = np.stack([reference_logits(pa, pb, row, 0.3) for row in tokens])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # not the straight line: the merge is a different network
    straight = np.asarray(m.apply(lerp(pa, pb, 0.3), {}, tokens, False)[0])
    assert np.abs(straight - want).max() > 1e-2


def test_circuit_path_ends_are_the_endpoints():
    m = model()
    pa, pb = endpoint(m, 0), endpoint(m, 1)
    tokens = np.random.default_rng(3).integers(0, VOCAB, (2, CONTEXT)).astype(np.int32)
    for alpha, p in ((0.0, pa), (1.0, pb)):
        want = np.asarray(m.apply(p, {}, tokens, False)[0])
        np.testing.assert_allclose(circuit_logits(m, pa, pb, tokens, alpha), want, atol=1e-5)


def test_circuit_merge_is_blind_to_maps_inside_heads():
    """The circuits are invariant to q -> q M, k -> k M^-T per head, so is the merge."""
    m = model()
    pa, pb = endpoint(m, 0), endpoint(m, 1)
    rng = np.random.default_rng(4)
    hd = WIDTH // HEADS
    mats = rng.standard_normal((HEADS, hd, hd)) + 3 * np.eye(hd)
    mapped = jax.tree.map(np.asarray, pb)
    for i in range(DEPTH):
        attn = mapped[f"block{i}"]["attn"]
        for name, mat in (("query", mats), ("key", np.linalg.inv(mats).transpose(0, 2, 1))):
            attn[name] = {"kernel": np.einsum("dhi,hij->dhj", attn[name]["kernel"], mat),
                          "bias": np.einsum("hi,hij->hj", attn[name]["bias"], mat)}  # fmt: skip
    tokens = rng.integers(0, VOCAB, (2, CONTEXT)).astype(np.int32)
    np.testing.assert_allclose(
        circuit_logits(m, pa, mapped, tokens, 0.5), circuit_logits(m, pa, pb, tokens, 0.5),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_param_counts_and_refusals():
    m = model()
    counts = circuit.param_counts(endpoint(m, 0))
    attn = 3 * (WIDTH * WIDTH + WIDTH) + WIDTH * WIDTH  # q, k, v and out kernels + biases
    assert counts["midpoint_params"] - counts["endpoint_params"] == DEPTH * attn
    with pytest.raises(UserError, match="rotary"):
        circuit.circuit_model(model("rotary"))
    with pytest.raises(UserError, match="transformer"):
        circuit.circuit_model(build("mlp", 10, width=8, depth=1))
    # REPAIR's statistics follow the straight line, not a path of another shape
    apply_fn, path = circuit.circuit_path(m)
    tokens = np.zeros((2, CONTEXT), np.int32)
    data = {"train": (tokens, tokens), "test": (tokens, tokens)}
    with pytest.raises(UserError, match="a path needs 'none'"):
        evaluate.interpolation_curve(apply_fn, endpoint(m, 0), endpoint(m, 1), data,
                                     norm="repair", path=path)  # fmt: skip
