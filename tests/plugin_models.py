"""User-defined models for the plug-in tests (`--config.model.name=plugin_models:...`):
written as a user would, against flax only, with nothing from lmc."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class NNXMLP(nnx.Module):
    def __init__(self, din: int, width: int, num_classes: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def nnx_mlp(num_classes, input_shape, config, rngs):
    """An NNX factory: names `rngs`, so lmc builds one module per init seed."""
    din = 1
    for n in input_shape:
        din *= n
    return NNXMLP(din, int(config.width), num_classes, rngs)


class LinenMLP(nn.Module):
    num_classes: int
    width: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def linen_mlp(num_classes, **kwargs):
    """A linen factory taking **kwargs: it receives num_classes, input_shape, config."""
    return LinenMLP(num_classes, int(kwargs["config"].width))


class NNXLM(nnx.Module):
    """A one-block causal transformer LM (pre-LayerNorm, learned positions)."""

    def __init__(self, vocab: int, context: int, width: int, heads: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 2 * width, rngs=rngs)
        self.down = nnx.Linear(2 * width, width, rngs=rngs)
        self.ln_f = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(tokens))
        x = x + self.down(jax.nn.gelu(self.up(self.ln2(x))))
        return self.head(self.ln_f(x)).astype(jnp.float32)


def nnx_lm(num_classes, input_shape, config, rngs):
    """An NNX language model: num_classes is the vocabulary, input_shape (context,)."""
    return NNXLM(num_classes, input_shape[0], int(config.width), int(config.heads), rngs)


def nnx_without_rngs(num_classes, input_shape):
    """A mistake: an NNX module from a factory that takes no `rngs`."""
    return NNXMLP(int(jnp.prod(jnp.asarray(input_shape))), 8, num_classes, nnx.Rngs(0))
