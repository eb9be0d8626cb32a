"""lmc's model families: name -> how to build one, its defaults and what it can do.

Adding a family is its module (a flax.linen Module plus a `build` function) and one
entry of `FAMILIES`. Experiments ask a family's capabilities here (`reads`,
`width_counts_units`), never its name, so they keep working for every family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lmc.models import cnn, mlp, resnet, transformer, vgg
from lmc.models.plugin import is_plugin

IMAGE, TEXT = "image", "text"


@dataclasses.dataclass(frozen=True)
class Family:
    """`build(num_classes, width, depth, norm, **options)` makes the flax module and
    checks its sizes, naming the config keys. The defaults fill what a Python caller
    leaves out (configs always give every key, see lmc.config_base)."""

    build: Callable
    width: float  # default config.model.width
    depth: int | None = None  # default config.model.depth; None: the family has no depth
    norm: str = "none"  # default config.model.norm
    reads: str = IMAGE  # the data kind it takes: IMAGE or TEXT (tokens, next-token logits)
    integer_width: bool = True  # width counts units (scaled widths round), else a multiplier
    options: tuple[str, ...] = ()  # further config.model keys `build` takes


FAMILIES = {
    "mlp": Family(mlp.build, width=512, depth=3),
    "cnn": Family(cnn.build, width=32),
    "vgg11": Family(vgg.builder("vgg11"), width=1.0, norm="batchnorm", integer_width=False),
    "vgg16": Family(vgg.builder("vgg16"), width=1.0, norm="batchnorm", integer_width=False),
    "resnet20": Family(resnet.build, width=1, norm="batchnorm"),
    "transformer": Family(
        transformer.build_transformer,
        width=transformer.DEFAULTS["width"],
        depth=transformer.DEFAULTS["depth"],
        norm="layernorm",
        reads=TEXT,
        options=("heads", "context", "mlp_ratio", "positions"),
    ),
}


def reads(name: str) -> str | None:
    """The data kind model `name` takes (IMAGE or TEXT); None for a plug-in (it takes
    what it is given) or an unknown name (refused where the model is built)."""
    family = FAMILIES.get(name)
    return family.reads if family else None


def text_models() -> list[str]:
    return [name for name, family in FAMILIES.items() if family.reads == TEXT]


def width_counts_units(name: str, width) -> bool:
    """Whether config.model.width of model `name` is a unit count (a scaled width is
    rounded to an integer) rather than a multiplier. A plug-in's width counts units
    when its config gives an integer."""
    if is_plugin(name):
        return isinstance(width, int)
    return FAMILIES[name].integer_width
