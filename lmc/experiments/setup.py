"""Data and model from a config, for every experiment and model family.

Image sources and text sources (`text:*`) load through the same `lmc.data.load`; a
text source takes its options (context, held-out fraction, ...) from `config.data`,
which `lmc.config_base.lm_config()` defines. The model comes from `config.model`.
"""

from __future__ import annotations

import functools

import jax

from lmc import data as data_lib
from lmc import models
from lmc.errors import UserError

TEXT_OPTIONS = ("context", "eval_windows", "test_fraction", "max_bytes", "mix", "code_dir",
                "prose_dir")  # fmt: skip


def load_data(config, name: str | None = None):
    """The dataset of `config.data` (or source `name` with the same options)."""
    name = name or config.data.name
    options = {}
    if str(name).startswith("text:"):
        missing = [k for k in TEXT_OPTIONS if k not in config.data]
        if missing:
            raise UserError(
                f"config.data.name={name!r} is a text source, but the config has no "
                f"{', '.join('config.data.' + k for k in missing)}; start the config from "
                "lmc.config_base.lm_config() (see configs/lm_rebasin.py)"
            )
        options = {k: config.data[k] for k in TEXT_OPTIONS}
    return data_lib.load(name, config.data.dir or None, **options)


def load_model(config, dataset) -> models.Model:
    """`config.model` for `dataset`'s classes; a transformer needs text, and vice versa."""
    text = dataset.kind == "text"
    if models.is_plugin(config.model.name):  # a user's model: they know what it takes
        return models.from_config(config.model, dataset.num_classes, dataset.train_x.shape[1:])
    if (config.model.name == "transformer") != text:
        raise UserError(
            f"config.model.name={config.model.name!r} does not fit config.data.name="
            f"{config.data.name!r}: the transformer is a language model for text:* data, and "
            "text data needs config.model.name='transformer'"
        )
    if text and dataset.context > int(config.model.context):
        raise UserError(
            f"config.data.context={dataset.context} exceeds config.model.context="
            f"{config.model.context} (the number of learned positions); make them equal"
        )
    return models.from_config(config.model, dataset.num_classes)


def has_batchnorm(model: models.Model, dataset) -> bool:
    """Whether the model keeps BatchNorm running statistics (shapes only, no compute)."""
    return _has_batchnorm(model, tuple(dataset.train_x.shape[1:]), str(dataset.train_x.dtype))


@functools.lru_cache(maxsize=32)
def _has_batchnorm(model, input_shape, dtype) -> bool:
    example = jax.ShapeDtypeStruct((1, *input_shape), dtype)
    _, state = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), example)
    return bool(state)


def finite_or_raise(tree, what: str) -> None:
    import numpy as np

    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.isfinite(np.asarray(leaf)).all():
            raise UserError(
                f"{what}: parameter {jax.tree_util.keystr(path)} holds NaN/Inf; "
                "the run diverged, retrain with a lower learning rate"
            )


def num_pairs(config, group: str) -> int:
    """`config.<group>.num_pairs`, checked: >= 1 and two child seeds per pair."""
    from lmc import training

    n = int(config[group].num_pairs)
    if n < 1:
        raise UserError(f"config.{group}.num_pairs must be >= 1, got {n}")
    training.check_num_children(config, 2 * n, f"config.{group}.num_pairs={n}")
    return n
