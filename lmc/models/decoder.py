"""The decoder-only language model of imported checkpoints (GPT-2, GPT-NeoX, Llama).

    tokens (B, T) int32 -> logits (B, T, vocab) float32, logits[:, t] predicts token t+1

One flax.linen module whose `Arch` switches cover the three families
(`lmc.models.hub` maps each family's config.json and weights onto it):

    family    norm       positions                 residual   MLP      attention
    gpt2      LayerNorm  learned                   serial     gelu_new multi-head, biases
    gpt_neox  LayerNorm  rotary (first rotary_dim) parallel*  gelu     multi-head, biases
    llama     RMSNorm    rotary (whole head)       serial     SwiGLU   grouped-query (kv_heads)

    * `use_parallel_residual`: x + attn(ln1(x)) + mlp(ln2(x)) (every Pythia model).

Parameter layout (the names the traced permutation spec uses), as in
`lmc.models.transformer`: heads are an axis of every attention kernel, never a
reshape of a feature axis, so the head and within-head permutations are plain axis
permutations of these leaves.

    embed/embedding            (vocab, d)
    pos_embed                  (positions, d)            gpt2
    block{i}/ln1/{scale,bias}  (d,)                      (no bias: RMSNorm)
    block{i}/attn/query/kernel (d, heads, head_dim)      bias (heads, head_dim) if any
    block{i}/attn/{key,value}/kernel (d, kv_heads, head_dim)
    block{i}/attn/out/kernel   (heads, head_dim, d)      bias (d,) if any
    block{i}/ln2/...
    block{i}/mlp/fc1/kernel    (d, hidden)  [mlp/gate/kernel (d, hidden): SwiGLU]
    block{i}/mlp/fc2/kernel    (hidden, d)
    ln_f/...
    head/kernel                (d, vocab)                untied families only

Grouped-query attention: query head h reads key/value head h // (heads / kv_heads)
(keys and values repeated along the head axis). The tracer finds what stays free:
the key/value heads as units (each moving its group of query heads), one
permutation of the query heads within every group, and the value dims of each head;
rotary embeddings pin the query/key dims within a head.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu")


@dataclasses.dataclass(frozen=True)
class Arch:
    """Everything the forward pass needs from a checkpoint's config.json."""

    family: str
    vocab: int
    width: int
    depth: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_hidden: int
    activation: str  # gelu_tanh | gelu | silu (SwiGLU when gated)
    gated_mlp: bool
    norm: str  # layernorm | rmsnorm
    norm_eps: float
    learned_positions: int  # > 0: a learned position table of this many rows
    rotary_dim: int  # 0: no rotary; else the leading head dims that rotate
    rotary_base: float
    parallel_residual: bool
    attn_bias: bool
    attn_out_bias: bool
    mlp_bias: bool
    tied_embeddings: bool


def rotary(x: jnp.ndarray, dims: int, base: float) -> jnp.ndarray:
    """Rotate pairs (i, i + dims/2) of the leading `dims` of x (B, T, H, head_dim) by
    position angles (the `rotate_half` form of GPT-NeoX and Hugging Face's Llama);
    the remaining head dims pass through."""
    t = x.shape[1]
    half = dims // 2
    inv_freq = 1.0 / base ** (jnp.arange(0, dims, 2, dtype=jnp.float32) / dims)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, half)
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2, rest = x[..., :half], x[..., half:dims], x[..., dims:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _activation(name: str):
    if name == "gelu_tanh":
        return lambda h: nn.gelu(h, approximate=True)
    if name == "gelu":
        return lambda h: nn.gelu(h, approximate=False)
    return nn.silu


def _norm(arch: Arch, name: str) -> nn.Module:
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=arch.norm_eps, name=name)
    return nn.LayerNorm(epsilon=arch.norm_eps, name=name)


def _softmax(scores):
    return jax.nn.softmax(scores, axis=-1)


class Attention(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x):
        a = self.arch
        hd, kvh, group = a.head_dim, a.kv_heads, a.heads // a.kv_heads

        def dense(name, heads):
            return nn.DenseGeneral((heads, hd), axis=-1, use_bias=a.attn_bias, name=name)

        q = dense("query", a.heads)(x)  # (B, T, H, hd)
        k, v = dense("key", kvh)(x), dense("value", kvh)(x)  # (B, T, KVH, hd)
        if a.rotary_dim:
            q, k = rotary(q, a.rotary_dim, a.rotary_base), rotary(k, a.rotary_dim, a.rotary_base)
        t = x.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        if group > 1:  # each key/value head serves `group` consecutive query heads
            k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bqhd,bshd->bhqs", q, k) / math.sqrt(hd)
        weights = _softmax(jnp.where(causal, scores, jnp.finfo(scores.dtype).min))
        out = jnp.einsum("bhqs,bshd->bqhd", weights, v)
        return nn.DenseGeneral(a.width, axis=(-2, -1), use_bias=a.attn_out_bias, name="out")(out)


class MLP(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x):
        a = self.arch
        act = _activation(a.activation)
        h = nn.Dense(a.mlp_hidden, use_bias=a.mlp_bias, name="fc1")(x)
        if a.gated_mlp:  # SwiGLU: act(gate(x)) * fc1(x)
            h = act(nn.Dense(a.mlp_hidden, use_bias=a.mlp_bias, name="gate")(x)) * h
        else:
            h = act(h)
        return nn.Dense(a.width, use_bias=a.mlp_bias, name="fc2")(h)


class Block(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x):
        a = self.arch
        attn = Attention(a, name="attn")(_norm(a, "ln1")(x))
        if a.parallel_residual:
            return x + attn + MLP(a, name="mlp")(_norm(a, "ln2")(x))
        x = x + attn
        return x + MLP(a, name="mlp")(_norm(a, "ln2")(x))


class Decoder(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        del train  # no dropout: train and eval mode are the same function
        a = self.arch
        t = tokens.shape[-1]
        if a.learned_positions and t > a.learned_positions:
            raise ValueError(
                f"sequence length {t} exceeds the checkpoint's {a.learned_positions} positions"
            )
        embed = nn.Embed(a.vocab, a.width, name="embed")
        x = embed(tokens)
        if a.learned_positions:
            pos = self.param(
                "pos_embed", nn.initializers.normal(0.02), (a.learned_positions, a.width)
            )
            x = x + pos[:t]
        for i in range(a.depth):
            x = Block(a, name=f"block{i}")(x)
        x = _norm(a, "ln_f")(x)
        if a.tied_embeddings:
            return embed.attend(x).astype(jnp.float32)
        return nn.Dense(a.vocab, use_bias=False, name="head")(x).astype(jnp.float32)
