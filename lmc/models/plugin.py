"""Plug-in models: `config.model.name = "package.module:factory"`.

The factory is imported (the current directory is searched too, so a `mymodels.py`
next to where `lmc` runs works) and called with those of these keyword arguments
its signature names (or all, if it takes `**kwargs`):

    num_classes  int: classes, or the vocabulary size of a language model
    input_shape  tuple: one example's shape, without the batch axis
    config       the `config.model` ConfigDict (width, depth, norm, ...; the width
                 experiment scales `config.width`, rounded when it is an int)
    rngs         nnx.Rngs: only if the factory names it

A factory that names `rngs` returns an `nnx.Module` built from them: lmc calls it
once per init seed. Otherwise it returns a `flax.linen.Module` (lmc calls its
`init`). Either way the model's `__call__` takes a batch `x` (and optionally `train`)
and returns logits.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import flax.linen as nn
from flax import nnx

from lmc.errors import UserError

ARGUMENTS = ("num_classes", "input_shape", "config", "rngs")


def is_plugin(name: str) -> bool:
    return ":" in str(name)


def load_factory(name: str):
    """The callable named by `package.module:factory`."""
    module_name, _, attr = str(name).partition(":")
    if not module_name or not attr:
        raise UserError(f"config.model.name={name!r}: a plug-in model is 'package.module:factory'")
    try:
        module = _import(module_name)
    except ImportError as e:
        raise UserError(
            f"config.model.name={name!r}: cannot import {module_name!r} ({e}); put it on "
            "PYTHONPATH or in the current directory"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"config.model.name={name!r}: {module_name} has no callable {attr!r}")
    return factory


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        # `lmc` as a console script does not search the current directory.
        if os.getcwd() in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(module_name)


def build_plugin(name: str, num_classes: int, input_shape, model_config):
    """The `lmc.models` model of the plug-in factory `name` (see the module docstring)."""
    from lmc.models import Model, nnx_model

    factory = load_factory(name)
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {"num_classes": int(num_classes), "input_shape": tuple(input_shape),
             "config": model_config}  # fmt: skip
    kwargs = {k: v for k, v in given.items() if takes_all or k in params}
    if "rngs" in params:
        return nnx_model(lambda rngs: factory(**kwargs, rngs=rngs), name=name)
    module = factory(**kwargs)
    if isinstance(module, nn.Module):
        takes_train = "train" in inspect.signature(type(module).__call__).parameters
        return Model(name, module, takes_train)
    if isinstance(module, nnx.Module):
        raise UserError(
            f"config.model.name={name!r} returned an nnx.Module but the factory takes no "
            "`rngs` argument; add `rngs` (lmc builds one module per init seed)"
        )
    raise UserError(
        f"config.model.name={name!r} returned {type(module).__name__}; a factory returns a "
        "flax.linen.Module, or an nnx.Module when it takes `rngs`"
    )
