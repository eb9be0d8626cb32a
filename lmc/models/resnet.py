"""ResNet-20 for CIFAR (He et al. 2016, 3 stages x 3 basic blocks) with width multiplier."""

import flax.linen as nn

from lmc.errors import UserError, positive
from lmc.models.layers import Conv, conv3x3, make_norm


class BasicBlock(nn.Module):
    channels: int
    stride: int
    norm: str

    @nn.compact
    def __call__(self, x, train: bool):
        y = conv3x3(self.channels, strides=self.stride, use_bias=False, name="conv0")(x)
        y = nn.relu(make_norm(self.norm, train, "norm0")(y))
        y = conv3x3(self.channels, use_bias=False, name="conv1")(y)
        y = make_norm(self.norm, train, "norm1")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            # Projection shortcut (option B): its output joins the stage's residual stream.
            x = Conv(
                self.channels, (1, 1), strides=self.stride, use_bias=False, name="shortcut_conv"
            )(x)
            x = make_norm(self.norm, train, "shortcut_norm")(x)
        return nn.relu(x + y)


class ResNet20(nn.Module):
    num_classes: int
    width: int = 1
    norm: str = "batchnorm"
    blocks_per_stage: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv3x3(16 * self.width, use_bias=False, name="stem_conv")(x)
        x = nn.relu(make_norm(self.norm, train, "stem_norm")(x))
        for stage, mult in enumerate((1, 2, 4)):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(16 * self.width * mult, stride, self.norm, name=f"s{stage}b{block}")(
                    x, train
                )
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def build(num_classes: int, width, depth, norm) -> ResNet20:
    del depth  # three stages of three blocks: ResNet-20
    positive("model.width", width)
    if int(width) != width:
        raise UserError(
            f"config.model.width for resnet20 must be an integer multiplier, got {width}"
        )
    return ResNet20(num_classes, int(width), norm)
