"""VGG-11 / VGG-16 for 32x32 inputs with a width multiplier and a choice of norm."""

from collections.abc import Sequence

import flax.linen as nn

from lmc.errors import positive
from lmc.models.layers import conv3x3, make_norm

# Channels per conv, "M" = 2x2 max-pool (Simonyan & Zisserman 2015, configs A and D).
CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),
}


class VGG(nn.Module):
    num_classes: int
    layers: Sequence = CONFIGS["vgg16"]
    width: float = 1.0
    norm: str = "batchnorm"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = 0
        for item in self.layers:
            if item == "M":
                # Small inputs (digits are 8x8) run out of pixels before the last pools.
                if x.shape[1] >= 2:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = conv3x3(max(1, int(item * self.width)), name=f"conv{conv}")(x)
            x = nn.relu(make_norm(self.norm, train, f"norm{conv}")(x))
            conv += 1
        x = x.mean(axis=(1, 2))  # global average pool: robust to input size
        return nn.Dense(self.num_classes, name="head")(x)


def builder(layers: str):
    """The build function of VGG configuration `layers` (a key of CONFIGS)."""

    def build(num_classes: int, width, depth, norm) -> VGG:
        del depth  # fixed by the configuration
        positive("model.width", width)
        return VGG(num_classes, CONFIGS[layers], float(width), norm)

    return build
