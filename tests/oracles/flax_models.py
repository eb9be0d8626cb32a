"""Small flax.linen models written the way public model code is (test fixtures).

A big_vision-style ViT ([cls] token broadcast with `jnp.tile`, learned position
embeddings, flax attention) and a pre-LN transformer LM in two layouts: blocks
stacked by `nn.scan` + `nn.remat` (as MaxText, levanter and big_vision do for large
models) and its unscanned twin, with `unroll` mapping the scanned parameters onto
the twin's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Encoder(nn.Module):
    """Pre-LN block: attention and an MLP, each added to the residual stream."""

    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x, _=None):
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(h, h)
        h = nn.Dense(self.mlp, name="fc1")(nn.LayerNorm(name="ln2")(x))
        return x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(h)), None


class ViT(nn.Module):
    width: int = 16
    depth: int = 2
    heads: int = 2
    patch: int = 4
    classes: int = 10

    @nn.compact
    def __call__(self, images):
        x = nn.Conv(self.width, (self.patch, self.patch), self.patch, name="embed")(images)
        x = x.reshape(x.shape[0], -1, self.width)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
        x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.width))
        x = x + pos
        for i in range(self.depth):
            x, _ = Encoder(self.heads, 4 * self.width, name=f"block{i}")(x)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.classes, name="head")(x[:, 0])


class ScannedLM(nn.Module):
    vocab: int = 32
    width: int = 16
    depth: int = 3
    heads: int = 2

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.width, name="embed")(tokens)
        blocks = nn.scan(
            nn.remat(Encoder),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )
        x, _ = blocks(self.heads, 4 * self.width, name="blocks")(x, None)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_f")(x))


class UnrolledLM(ScannedLM):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.width, name="embed")(tokens)
        for i in range(self.depth):
            x, _ = Encoder(self.heads, 4 * self.width, name=f"block{i}")(x)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_f")(x))


def unroll(variables: dict, depth: int) -> dict:
    """The scanned model's variables as the unscanned twin's (layer i = slice i)."""
    params = dict(variables["params"])
    stacked = params.pop("blocks")
    for i in range(depth):
        params[f"block{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return {"params": params}


def random_variables(module, seed: int, *example):
    """Random weights from the module's shapes, drawn with NumPy (no init compile)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *example)
    rng = np.random.default_rng(seed)

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (rng.normal(size=s.shape) / np.sqrt(max(fan_in, 4))).astype(np.float32)

    return jax.tree.map(draw, shapes)
