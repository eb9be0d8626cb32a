"""Flax NNX modules behind lmc's pure model interface.

An `nnx.Module` is a stateful object; lmc's interface is pure:

    params, model_state = model.init(key, example_x)
    logits, new_model_state = model.apply(params, model_state, x, train)

`NNXModel` splits the module once (`nnx.split`) and merges the graph definition with
the given dicts at every call, so everything downstream (tracer, alignment methods,
evaluator, training loop, checkpoints) sees plain dicts, as for flax.linen:
`params` are the `nnx.Param` variables and `model_state` the `nnx.BatchStat`
variables (BatchNorm running statistics), both as pure dicts with string keys
(`nnx.List` indices become "0", "1", ...: checkpoints and specs need string keys).

Train mode is `module.train()` (BatchNorm uses batch statistics and updates its
running ones; Dropout is active), eval mode `module.eval()`; a module whose
`__call__` takes `train` also gets it as an argument. Other variables (RNG streams,
caches) are held fixed, except that in train mode `apply(..., rng=key)` reseeds every
RNG stream from `key` (the train step passes one per (seed, step)), so a Dropout mask
changes from step to step and is reproducible.

Layer hooks (REPAIR, `lmc.evaluate.layer_hooks`): flax.linen has `intercept_methods`,
NNX has no counterpart. Within `call_hook(hook)`, `apply` gives every submodule of the
freshly merged module a subclass whose `__call__` returns `hook(path, module, out)`
(`path` joined with "/"); the merged objects live for one call, so nothing leaks.

A module *instance* is already initialized: `init` returns its current weights whatever
the key; one adapter serves each instance (held weakly), so jitted code that takes the
model as a static argument compiles once per instance. For seeded inits (independent siblings, `init_seed`), give a factory
`rngs -> nnx.Module` (`nnx_model(factory)`); `init(key)` then builds a fresh module
from `nnx.Rngs(key)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from lmc.errors import UserError


def _str_keys(tree: Any) -> Any:
    """`nnx.to_pure_dict` output with string keys everywhere (nnx.List gives ints)."""
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _pure(state) -> dict:
    return _str_keys(nnx.to_pure_dict(state))


def _filled(template, pure: dict):
    """A copy of the nnx State `template` holding the values of `pure` (no mutation of
    the template, so this is safe under jit)."""
    state = jax.tree.map(lambda v: v, template)
    if pure:
        nnx.replace_by_pure_dict(state, pure)
    return state


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a jit static argument
class NNXModel:
    """An `nnx.Module` (or a factory of them) behind lmc's pure interface.

    `name`: for logs. `factory`: `rngs -> nnx.Module`, or None for an instance, then
    held by `instance`. The rest is derived by `nnx_model`."""

    name: str
    factory: Callable | None
    graphdefs: tuple  # (eval mode, train mode)
    templates: tuple  # nnx States of (params, model_state, rest)
    instance: Callable | None  # () -> the module: a weak reference, or the merged pair's
    takes_train: bool = False

    def init(self, key: jax.Array, example_x) -> tuple[dict, dict]:
        del example_x  # an NNX module knows its input sizes from its constructor
        module = _build(self.factory, key) if self.factory else self.instance()
        if module is None:
            raise UserError(f"the nnx.Module of model {self.name} no longer exists")
        _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        return _pure(params), _pure(stats)

    def apply(
        self, params: dict, model_state: dict, x, train: bool, rng: jax.Array | None = None
    ) -> tuple[jax.Array, dict]:
        p, s, rest = self.templates
        reseed = train and rng is not None
        if reseed:  # RNG streams set in this trace: their variables must be made in it
            rest = _filled(rest, {})
        module = nnx.merge(
            self.graphdefs[int(bool(train))], _filled(p, params), _filled(s, model_state), rest
        )
        if reseed:
            _reseed(module, rng)
        hook = _HOOK.get()
        with _hooked_calls(module) if hook else contextlib.nullcontext():
            out = module(x, train=train) if self.takes_train else module(x)
        if not train or not model_state:
            return out, model_state
        return out, _pure(nnx.state(module, nnx.BatchStat))


# (path, module, output) -> output, for every submodule call inside `call_hook`.
_HOOK: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("nnx_hook", default=None)
# While a hooked module runs: id(submodule) -> its path in the module.
_PATHS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("nnx_paths", default=None)
_HOOKED: dict[type, type] = {}


@contextlib.contextmanager
def call_hook(hook: Callable[[str, nnx.Module, Any], Any]):
    """Within the context, `NNXModel.apply` passes every submodule call's output
    through `hook(path, module, out)` (the root module's own output excluded)."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)


def _hooked_class(cls: type) -> type:
    if cls not in _HOOKED:

        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            path, hook = (_PATHS.get() or {}).get(id(self)), _HOOK.get()
            return out if path is None or hook is None else hook(path, self, out)

        _HOOKED[cls] = type(cls)(cls.__name__, (cls,), {"__call__": __call__})
    return _HOOKED[cls]


@contextlib.contextmanager
def _hooked_calls(module: nnx.Module):
    paths = {}
    for path, node in nnx.iter_graph(module):
        if path and isinstance(node, nnx.Module) and id(node) not in paths:
            paths[id(node)] = "/".join(map(str, path))
            object.__setattr__(node, "__class__", _hooked_class(type(node)))
    token = _PATHS.set(paths)
    try:
        yield
    finally:
        _PATHS.reset(token)


def _reseed(module: nnx.Module, rng: jax.Array) -> None:
    """Every RNG stream of the (freshly merged) module keyed from `rng` and its name."""
    tags = {node.key.tag for _, node in nnx.iter_graph(module) if isinstance(node, nnx.RngStream)}
    if tags:
        nnx.reseed(module, **{t: jax.random.fold_in(rng, zlib.crc32(t.encode())) for t in tags})


def _build(factory: Callable, key) -> nnx.Module:
    module = factory(nnx.Rngs(key))
    if not isinstance(module, nnx.Module):
        raise UserError(
            f"the NNX model factory {_name(factory)} returned {type(module).__name__}, "
            "expected an nnx.Module (factory(rngs: nnx.Rngs) -> nnx.Module)"
        )
    return module


def _name(obj) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _mode_graphdef(module: nnx.Module, train: bool):
    """The graph definition with every layer in train or eval mode (BatchNorm's
    use_running_average, Dropout's deterministic are static attributes of it)."""
    copy = nnx.clone(module)
    copy.train() if train else copy.eval()
    return nnx.graphdef(copy)


# One adapter per live instance (keys held weakly; adapters hold instances weakly too).
_ADAPTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def nnx_model(module_or_factory, name: str | None = None) -> NNXModel:
    """An `NNXModel` from an `nnx.Module`, a `(graphdef, state)` pair, or a factory
    `rngs -> nnx.Module` (seeded inits)."""
    factory, held = None, None
    module = module_or_factory
    if isinstance(module, tuple) and len(module) == 2 and isinstance(module[0], nnx.GraphDef):
        module = nnx.merge(*module)
        held = lambda: module  # noqa: E731  (nobody else holds the merged module)
    elif not isinstance(module, nnx.Module):
        factory = module_or_factory
        module = _build(factory, jax.random.key(0))
    elif module in _ADAPTERS and name is None:
        return _ADAPTERS[module]
    else:
        held = weakref.ref(module)
    _, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    call = type(module).__call__
    adapter = NNXModel(
        name=name or _name(factory or type(module)),
        factory=factory,
        graphdefs=(_mode_graphdef(module, False), _mode_graphdef(module, True)),
        templates=(params, stats, rest),
        instance=None if factory else held,
        takes_train="train" in inspect.signature(call).parameters,
    )
    if isinstance(held, weakref.ref) and name is None:
        _ADAPTERS[module] = adapter
    return adapter


def nnx_update(module: nnx.Module, tree) -> nnx.Module:
    """Write lmc's dicts back into `module` (in place; returned for chaining).

    `tree`: params alone, or the combined `{"params", "model_state"}` tree of
    `align.apply_permutation` / the evaluator (BatchNorm statistics included)."""
    if not isinstance(module, nnx.Module):
        raise UserError(f"nnx_update expects an nnx.Module, got {type(module).__name__}")
    combined = isinstance(tree, dict) and set(tree) == {"params", "model_state"}
    parts = [(nnx.Param, tree["params"] if combined else tree)]
    if combined and tree["model_state"]:
        parts.append((nnx.BatchStat, tree["model_state"]))
    for kind, pure in parts:
        state = nnx.state(module, kind)
        try:
            nnx.replace_by_pure_dict(state, pure)
        except ValueError as e:  # flax names the first key it cannot place
            raise UserError(
                f"nnx_update: the tree does not fit {type(module).__name__}'s "
                f"{kind.__name__} variables ({e}); was it made from this model?"
            ) from None
        nnx.update(module, state)
    return module
