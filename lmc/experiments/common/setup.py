"""Data and model from a config, for every experiment and model family.

Image sources and text sources (`text:*`) load through the same `lmc.data.load`; a
text source takes its options (context, held-out fraction, tokenizer, ...) from
`config.data`, which `lmc.config_base.lm_config()` defines. The model comes from
`config.model`; `config.model.name = "checkpoint"` is the architecture of the given
checkpoints (`config.checkpoints`, Hugging Face layout, `lmc.models.hub`), whose
weights are then the endpoints (`endpoints`) instead of trained siblings.
"""

from __future__ import annotations

import functools

import jax

from lmc import data as data_lib
from lmc import models
from lmc.errors import UserError

TEXT_OPTIONS = ("context", "eval_windows", "test_fraction", "max_bytes", "mix", "code_dir",
                "prose_dir", "tokenizer")  # fmt: skip
CHECKPOINT = "checkpoint"  # config.model.name of given checkpoints


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
        if options["tokenizer"] == CHECKPOINT:
            options["tokenizer"] = checkpoint_dirs(config)[0]
    return data_lib.load(name, config.data.dir or None, **options)


def checkpoint_dirs(config) -> list[str]:
    """The given checkpoints' directories, [a, b, *more] ([] when the endpoints are
    trained); a UserError unless config.model.name says "checkpoint" exactly then."""
    c = config.checkpoints
    dirs = [str(d) for d in (c.a, c.b, *c.more)]
    given = [d for d in dirs if d]
    named = config.model.name == CHECKPOINT
    if not given and not named:
        return []
    if not named:
        raise UserError(
            f"config.checkpoints names checkpoints but config.model.name={config.model.name!r}; "
            f"set config.model.name={CHECKPOINT!r} (start from configs/checkpoint_pair.py)"
        )
    if not c.a or not c.b or len(given) != len(dirs):
        raise UserError(
            "config.model.name='checkpoint' needs config.checkpoints.a and .b (and every entry "
            "of config.checkpoints.more) set to checkpoint directories, e.g. "
            "--config.checkpoints.a=DIR --config.checkpoints.b=DIR"
        )
    return dirs


def load_model(config, dataset) -> models.Model:
    """`config.model` for `dataset`'s classes; a model reads text or images, and the
    data must be of that kind."""
    text = dataset.kind == "text"
    if checkpoint_dirs(config):
        return _checkpoint_model(config, dataset)
    if models.is_plugin(config.model.name):  # a user's model: they know what it takes
        return models.from_config(config.model, dataset.num_classes, dataset.train_x.shape[1:])
    reads = models.reads(config.model.name)
    if reads is not None and (reads == models.TEXT) != text:
        raise UserError(
            f"config.model.name={config.model.name!r} does not fit config.data.name="
            f"{config.data.name!r}: model {config.model.name!r} reads {reads} data, and text:* "
            f"data needs a language model (config.model.name: {' or '.join(models.text_models())})"
        )
    if text and dataset.context > int(config.model.context):
        raise UserError(
            f"config.data.context={dataset.context} exceeds config.model.context="
            f"{config.model.context} (the number of learned positions); make them equal"
        )
    return models.from_config(config.model, dataset.num_classes)


def _checkpoint_model(config, dataset) -> models.Model:
    from lmc.models import hub

    first = checkpoint_dirs(config)[0]
    model = hub.load_model(first)
    arch = model.module.arch
    if dataset.kind != "text":
        raise UserError(
            f"config.model.name='checkpoint' is a language model ({arch.family}); "
            f"config.data.name={config.data.name!r} must be text (text:dir, text:tfds:NAME, ...)"
        )
    if dataset.num_classes > arch.vocab:
        raise UserError(
            f"the data's vocabulary ({dataset.num_classes} tokens, config.data.tokenizer="
            f"{config.data.tokenizer!r}) exceeds the vocabulary of config.checkpoints.a "
            f"({arch.vocab}); use the checkpoint's tokenizer: config.data.tokenizer='checkpoint'"
        )
    if arch.learned_positions and dataset.context > arch.learned_positions:
        raise UserError(
            f"config.data.context={dataset.context} exceeds the {arch.learned_positions} "
            f"positions of config.checkpoints.a ({first})"
        )
    return model


def endpoints(config, workdir, model, dataset, indices, shared=None) -> list[dict]:
    """Endpoints `indices`: the given checkpoints' weights (`config.checkpoints`), or
    siblings trained as the config describes (`lmc.training.siblings`)."""
    from lmc import training

    dirs = checkpoint_dirs(config)
    if not dirs:
        return training.siblings(config, workdir, model, dataset, indices, shared=shared)
    from lmc.models import hub

    out = []
    for i in indices:
        ckpt = hub.load(dirs[i])
        if ckpt.arch != model.module.arch:
            raise UserError(
                f"checkpoint {dirs[i]} has another architecture than config.checkpoints.a "
                f"({dirs[0]}): {ckpt.arch} vs {model.module.arch}"
            )
        out.append(ckpt.tree)
    return out


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
