"""Layers shared by the conv nets: normalization choice and convolutions."""

import functools

import flax.linen as nn

from lmc.errors import choose
from lmc.models.conv import conv_general_dilated

NORMS = ("none", "batchnorm", "layernorm")


def make_norm(norm: str, train: bool, name: str):
    """A per-channel normalization layer, or identity for norm='none'."""
    choose("norm", norm, NORMS)
    if norm == "batchnorm":
        # momentum 0.9 as in the PyTorch reference implementations of these nets.
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    if norm == "layernorm":
        # Normalizes over channels only, so it commutes with channel permutations
        # (Git Re-Basin's choice for BN-free ResNets/VGGs).
        return nn.LayerNorm(epsilon=1e-5, name=name)
    return lambda x: x


# Every conv of the model zoo: flax's, with a cache-friendly weight gradient on CPU.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
conv3x3 = functools.partial(Conv, kernel_size=(3, 3), padding="SAME")
