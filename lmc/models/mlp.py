"""Multi-layer perceptron (Git Re-Basin's 3x512 MNIST MLP by default)."""

import flax.linen as nn
import jax.numpy as jnp

from lmc.errors import positive


class MLP(nn.Module):
    num_classes: int
    width: int = 512
    depth: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no train-time behaviour
        x = x.reshape((x.shape[0], -1))
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.width, name=f"dense{i}")(x))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def build(num_classes: int, width, depth, norm) -> MLP:
    del norm  # no normalization layers
    positive("model.width", width)
    positive("model.depth", depth)
    return MLP(num_classes, int(width), int(depth))
