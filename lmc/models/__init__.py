"""Model zoo behind one pure interface.

Everything outside `lmc.models` sees a `Model` with

    params, model_state = model.init(key, example_x)
    logits, new_model_state = model.apply(params, model_state, x, train)

where `params` and `model_state` (BatchNorm running statistics; `{}` if the model has
none) are plain nested dicts. Flax stays inside this package.

`as_model` gives that interface to lmc's own models (`build`, `from_config`), a
user's flax.linen Module (`Model`), and a Flax NNX module, `(graphdef, state)` pair or
factory (`nnx_model.NNXModel`; `nnx_update` writes dicts back into a module).
`FAMILIES` (`registry`) names lmc's own families with their defaults and capabilities;
`config.model.name = "package.module:factory"` builds a user's model from the CLI
(`plugin`). `calling` tells the pure-function forms apart at lmc's public APIs.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from lmc.errors import UserError, choose
from lmc.models.nnx_model import NNXModel, nnx_model, nnx_update
from lmc.models.plugin import build_plugin, is_plugin
from lmc.models.registry import FAMILIES, TEXT, reads, text_models, width_counts_units


@dataclasses.dataclass(frozen=True)
class Model:
    """A flax.linen module behind lmc's pure interface. `takes_train`: whether the
    module's `__call__` has a `train` argument (lmc's models do; a user's may not)."""

    name: str
    module: nn.Module
    takes_train: bool = True

    def _kwargs(self, train: bool) -> dict:
        return {"train": train} if self.takes_train else {}

    def init(self, key: jax.Array, example_x) -> tuple[dict, dict]:
        variables = self.module.init(key, example_x, **self._kwargs(False))
        params = _to_dict(variables["params"])
        state = _to_dict(variables.get("batch_stats", {}))
        return params, state

    def apply(
        self, params: dict, model_state: dict, x, train: bool, rng: jax.Array | None = None
    ) -> tuple[jax.Array, dict]:
        """`rng`: the key of the "dropout" RNG stream in train mode (the train step
        passes one per (seed, step)); without it a module that draws one fails."""
        variables = {"params": params}
        if model_state:
            variables["batch_stats"] = model_state
        kwargs = self._kwargs(train)
        if train and rng is not None:
            kwargs["rngs"] = {"dropout": rng}
        if train and model_state:
            logits, updates = self.module.apply(variables, x, **kwargs, mutable=["batch_stats"])
            return logits, _to_dict(updates["batch_stats"])
        return self.module.apply(variables, x, **kwargs), model_state


def is_model(obj) -> bool:
    """Whether `as_model` takes `obj` (as opposed to a pure function)."""
    return isinstance(obj, Model | NNXModel | nn.Module | nnx.Module) or _is_nnx_split(obj)


def _is_nnx_split(obj) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nnx.GraphDef)


def as_model(model) -> Model | NNXModel:
    """One calling convention for every model lmc accepts: an `lmc.models.Model`, a
    user's `flax.linen.Module` (with or without a `train` argument; BatchNorm running
    statistics in the `batch_stats` collection), or a Flax NNX `nnx.Module` or
    `(graphdef, state)` pair (`nnx.BatchStat` variables as model state; see
    `lmc.models.nnx_model`)."""
    if isinstance(model, Model | NNXModel):
        return model
    if isinstance(model, nn.Module):
        takes_train = "train" in inspect.signature(type(model).__call__).parameters
        return Model(type(model).__name__, model, takes_train)
    if isinstance(model, nnx.Module) or _is_nnx_split(model):
        return nnx_model(model)
    raise UserError(
        f"expected a model (lmc.models.Model, flax.linen.Module, nnx.Module or NNX "
        f"(graphdef, state)), got {type(model).__name__}; for a plain function "
        "apply_fn(params, x) use align.spec_from_function, and pass evaluate functions "
        "apply_fn(params, model_state, x, train)"
    )


def as_tree(tree) -> dict:
    """`{"params", "model_state"}` from any of the trees lmc accepts: that form itself,
    flax variables `{"params", "batch_stats"}`, or raw params (no running statistics)."""
    if isinstance(tree, dict) and "params" in tree and set(tree) <= {"params", "model_state"}:
        return {"params": tree["params"], "model_state": tree.get("model_state") or {}}
    if isinstance(tree, dict) and "params" in tree and set(tree) <= {"params", "batch_stats"}:
        return {
            "params": _to_dict(tree["params"]),
            "model_state": _to_dict(tree.get("batch_stats") or {}),
        }
    return {"params": tree, "model_state": {}}


def _to_dict(tree: Any) -> Any:
    """Flax may hand back FrozenDicts; the rest of lmc only deals in dicts."""
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def _family(name: str):
    choose("model", name, [*FAMILIES, "package.module:factory (a plug-in)"])
    return FAMILIES[name]


def build(name: str, num_classes: int, width=None, depth=None, norm=None, **options) -> Model:
    """Build lmc model family `name` (a key of `FAMILIES`). `width` is units (mlp),
    base channels (cnn), a multiplier, or d_model (transformer, which also takes heads,
    context, mlp_ratio, positions); a size left out is the family's default."""
    if is_plugin(name):
        raise UserError(
            f"model {name!r} is a plug-in: build it with from_config (it needs input_shape)"
        )
    family = _family(name)
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise UserError(f"model {name!r} takes no option {', '.join(unknown)}")
    module = family.build(
        num_classes,
        family.width if width is None else width,
        family.depth if depth is None else depth,
        norm or family.norm,
        **options,
    )
    return Model(name, module)


def from_config(model_config, num_classes: int, input_shape=None) -> Model | NNXModel:
    """The model of `config.model` (every key given by the config, see lmc.config_base).
    A name `package.module:factory` is a plug-in model (`lmc.models.plugin`), given
    `num_classes` and `input_shape` (one example's shape)."""
    if is_plugin(model_config.name):
        if input_shape is None:
            raise UserError(
                "a plug-in model (config.model.name 'module:factory') needs input_shape"
            )
        return build_plugin(model_config.name, num_classes, input_shape, model_config)
    extra = {k: model_config[k] for k in _family(model_config.name).options}
    return build(
        model_config.name,
        num_classes,
        width=model_config.width,
        depth=model_config.depth,
        norm=model_config.norm,
        **extra,
    )


__all__ = [
    "FAMILIES",
    "TEXT",
    "Model",
    "NNXModel",
    "as_model",
    "as_tree",
    "build",
    "from_config",
    "is_model",
    "is_plugin",
    "nnx_model",
    "nnx_update",
    "reads",
    "text_models",
    "width_counts_units",
]
