"""Decoder-only transformer language model over bytes (GPT-2 style, pre-LayerNorm).

    tokens (B, T) int32 -> logits (B, T, vocab) float32, logits[:, t] predicts token t+1

Layout of the parameters (the names the traced permutation spec uses, and the
hand-written test oracle in `tests/oracles` refers to):

    embed/embedding            (vocab, d)       token embedding
    pos_embed                  (context, d)     learned positions (positions="learned")
    block{i}/ln1/{scale,bias}  (d,)
    block{i}/attn/{query,key,value}/kernel  (d, heads, head_dim), bias (heads, head_dim)
    block{i}/attn/out/kernel   (heads, head_dim, d), bias (d,)
    block{i}/ln2/{scale,bias}  (d,)
    block{i}/mlp/fc1/kernel    (d, mlp), bias (mlp,);  fc2/kernel (mlp, d), bias (d,)
    ln_f/{scale,bias}          (d,)
    head/kernel                (d, vocab), bias (vocab,)   (untied unembedding)

Heads are a separate axis of every attention kernel (never a reshape of a feature
axis), so the head permutation and the within-head permutations are plain axis
permutations of these leaves.

Why pre-LN and learned positions by default: with pre-LN every write to the residual
stream goes through a LayerNorm that normalizes over the residual axis, which
commutes with permuting that axis, so one permutation of the residual stream is an
exact symmetry. Rotary embeddings (positions="rotary") rotate fixed pairs of
query/key dimensions by position-dependent angles, which removes the freedom to
permute query/key dimensions within a head (values/outputs and whole heads stay free).

`norm="rmsnorm"` evaluates the RMSNorm form (a gain, no bias, no centering) that
`lmc.align.continuous.orthogonal.to_rmsnorm` rewrites a LayerNorm model's params into (gains and
biases folded into the readers, residual writes centered): the same function, the
form in which the residual stream has an orthogonal symmetry (Theus et al. 2025).

No dropout: `Model.apply` has no RNG argument and alignment wants train mode to be the
same function as eval mode, so `train` changes nothing here.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

POSITIONS = ("learned", "rotary")
NORMS = ("layernorm", "rmsnorm")


def make_norm(norm: str, name: str) -> nn.Module:
    if norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-5, name=name)
    return nn.LayerNorm(epsilon=1e-5, name=name)


INIT_STD = 0.02


def rotary(x: jnp.ndarray, base: float = 10000.0) -> jnp.ndarray:
    """Rotate pairs (i, i + head_dim/2) of x (B, T, H, head_dim) by position angles."""
    t, hd = x.shape[1], x.shape[-1]
    half = hd // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]  # (T, half)
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class CausalSelfAttention(nn.Module):
    heads: int
    positions: str = "learned"
    head_dim: int | None = None  # None: width / heads

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        hd = self.head_dim or d // self.heads
        dense = lambda name: nn.DenseGeneral((self.heads, hd), axis=-1, name=name)
        q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # (B, T, H, hd)
        if self.positions == "rotary":
            q, k = rotary(q), rotary(k)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        t = x.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        weights = nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(d, axis=(-2, -1), name="out")(out)


class MLPBlock(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = nn.gelu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(d, name="fc2")(h)


class Block(nn.Module):
    heads: int
    mlp_hidden: int
    positions: str
    norm: str = "layernorm"
    head_dim: int | None = None

    @nn.compact
    def __call__(self, x):
        x = x + CausalSelfAttention(self.heads, self.positions, self.head_dim, name="attn")(
            make_norm(self.norm, "ln1")(x)
        )
        return x + MLPBlock(self.mlp_hidden, name="mlp")(make_norm(self.norm, "ln2")(x))


class Transformer(nn.Module):
    vocab: int = 256
    width: int = 128
    depth: int = 2
    heads: int = 4
    context: int = 64
    mlp_ratio: int = 4
    positions: str = "learned"
    norm: str = "layernorm"
    # None: width / heads. Wider heads are the circuit-form midpoint of two models
    # (`lmc.align.continuous.circuit`), not a model one trains.
    head_dim: int | None = None

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        del train  # no dropout: train and eval mode are the same function
        t = tokens.shape[-1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context}")
        embed = nn.Embed(
            self.vocab, self.width, embedding_init=nn.initializers.normal(INIT_STD), name="embed"
        )
        x = embed(tokens)
        if self.positions == "learned":
            pos = self.param(
                "pos_embed", nn.initializers.normal(INIT_STD), (self.context, self.width)
            )
            x = x + pos[:t]
        for i in range(self.depth):
            x = Block(
                self.heads, self.mlp_ratio * self.width, self.positions, self.norm,
                self.head_dim, name=f"block{i}",
            )(x)  # fmt: skip
        x = make_norm(self.norm, "ln_f")(x)
        return nn.Dense(self.vocab, name="head")(x).astype(jnp.float32)


DEFAULTS = {"width": 128, "depth": 2, "heads": 4, "context": 64, "mlp_ratio": 4,
            "positions": "learned"}  # fmt: skip


def build_transformer(
    vocab: int,
    width=None,
    depth=None,
    norm=None,
    heads=None,
    context=None,
    mlp_ratio=None,
    positions=None,
) -> Transformer:
    """The module from config values (None: the default), with config-named errors."""
    from lmc.errors import UserError, choose

    given = {"width": width, "depth": depth, "heads": heads, "context": context,
             "mlp_ratio": mlp_ratio}  # fmt: skip
    # None means "not given" (the API default); 0 or a negative size is an error.
    values = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
    for key, value in values.items():
        if int(value) != value or value <= 0:
            raise UserError(f"config.model.{key} must be a positive integer, got {value!r}")
    w, h = int(values["width"]), int(values["heads"])
    if w % h:
        raise UserError(f"config.model.width={w} must be divisible by config.model.heads={h}")
    positions = DEFAULTS["positions"] if positions is None else positions
    choose("positions", positions, POSITIONS)
    if positions == "rotary" and (w // h) % 2:
        raise UserError(f"rotary positions need an even head dim (width/heads), got {w // h}")
    norm = "layernorm" if norm is None else norm
    if norm not in NORMS:
        raise UserError(
            f"config.model.norm={norm!r}: the transformer takes 'layernorm' (pre-LN) or "
            "'rmsnorm' (the form lmc.align.continuous.orthogonal.to_rmsnorm rewrites LN params into)"
        )
    return Transformer(
        vocab,
        w,
        int(values["depth"]),
        h,
        int(values["context"]),
        int(values["mlp_ratio"]),
        positions,
        norm,
    )
