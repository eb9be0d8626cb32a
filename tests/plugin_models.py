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
