"""A small CNN: two conv blocks with max-pooling, then a dense head."""

import flax.linen as nn

from lmc.errors import positive
from lmc.models.layers import conv3x3, make_norm


class CNN(nn.Module):
    num_classes: int
    width: int = 32
    norm: str = "none"

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, mult in enumerate((1, 2)):
            x = conv3x3(self.width * mult, name=f"conv{i}")(x)
            x = nn.relu(make_norm(self.norm, train, f"norm{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        # Flatten NHWC: the channel axis becomes the fastest-varying factor.
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.width * 4, name="dense")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def build(num_classes: int, width, depth, norm) -> CNN:
    del depth  # two conv blocks, always
    positive("model.width", width)
    return CNN(num_classes, int(width), norm)
