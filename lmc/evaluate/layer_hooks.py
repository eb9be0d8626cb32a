"""Per-channel hooks on layer outputs, for REPAIR, through `flax.linen.intercept_methods`
(and `lmc.models.nnx_model.call_hook` for Flax NNX models).

REPAIR needs to read and rescale the outputs of chosen layers of a network it only
knows as `apply_fn(params, model_state, x, train)`. Flax lets a context manager
intercept every module method called inside it, so wrapping the opaque `apply_fn`
call is enough: no model code changes and no Flax objects escape this file.

Layers are named by their module path joined with "/" (e.g. "s0b1/conv0"); a module
called more than once per forward pass gets "@k" appended for its k-th extra call.
Channels are the last axis (NHWC convs, (batch, features) dense layers).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from lmc.models.nnx_model import call_hook

# Same epsilon as the models' BatchNorm: a dead channel (zero variance) gets a finite scale.
EPS = 1e-5

Hook = Callable[[str, jax.Array], jax.Array]


@contextlib.contextmanager
def layer_hooks(hook: Hook, keys=None, on_call: Callable | None = None):
    """Within the context, every selected layer's output `y` becomes `hook(key, y)`.

    `keys` selects layers by name (None: none). `on_call(key, module)` sees every
    module call, for discovering layers. One context per forward pass: call counts
    for repeated modules restart with it.
    """
    counts = collections.Counter()
    keys = frozenset(keys or ())

    def visit(path: str, module, out):
        key = path if counts[path] == 0 else f"{path}@{counts[path]}"
        counts[path] += 1
        if on_call is not None:
            on_call(key, module)
        return hook(key, out) if key in keys else out

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not context.module.path:
            return out
        return visit("/".join(context.module.path), context.module, out)

    with nn.intercept_methods(interceptor), call_hook(visit):
        yield


def list_layers(apply_fn, params, model_state, x) -> list[tuple[str, str]]:
    """`(key, kind)` of every module call in one forward pass, in call order.

    kind is "batchnorm", "linear" (Dense/Conv) or "other". Runs abstractly
    (`jax.eval_shape`): no compute.
    """
    layers = []

    def on_call(key, module):
        if isinstance(module, nn.BatchNorm | nnx.BatchNorm):
            layers.append((key, "batchnorm"))
        elif isinstance(module, nn.Dense | nn.Conv | nnx.Linear | nnx.Conv):
            layers.append((key, "linear"))
        else:
            layers.append((key, "other"))

    with layer_hooks(lambda k, y: y, on_call=on_call):
        jax.eval_shape(lambda p, s, xb: apply_fn(p, s, xb, False), params, model_state, x)
    return layers


def default_repair_layers(layers: list[tuple[str, str]]) -> list[str]:
    """The layers REPAIR corrects by default, given `list_layers` output.

    With BatchNorm: the BatchNorm outputs (rescaling a conv that feeds a BatchNorm is
    undone by it; the BN output is what carries the channel statistics onwards).
    Without: every Dense/Conv output except the last one called, the classifier,
    whose logits are the quantity being measured rather than an activation to repair
    (Jordan et al. 2022 correct hidden layers only).
    """
    batchnorms = [key for key, kind in layers if kind == "batchnorm"]
    linear = [key for key, kind in layers if kind == "linear"]
    return batchnorms if batchnorms else linear[:-1]


def moments(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased, as BatchNorm) variance over all but the last axis."""
    y = y.astype(jnp.float32)
    axes = tuple(range(y.ndim - 1))
    # Two-pass variance: E[y^2] - E[y]^2 cancels badly when |mean| >> std.
    return y.mean(axes), y.var(axes)


def recording_hook(record: dict) -> Hook:
    """Stores each layer's batch moments in `record[key]` and leaves the output alone."""

    def hook(key, y):
        record[key] = dict(zip(("mean", "var"), moments(y), strict=True))
        return y

    return hook


def renormalizing_hook(targets: dict, record: dict) -> Hook:
    """Records batch moments, then maps the output to the target mean/std with them.

    Used while gathering the interpolated network's statistics: like a BatchNorm in
    train mode, correcting with *batch* moments means each layer already sees
    repaired inputs, so one pass estimates every layer's statistics at once.
    """

    def hook(key, y):
        mean, var = moments(y)
        record[key] = {"mean": mean, "var": var}
        scale = targets[key]["std"] * jax.lax.rsqrt(var + EPS)
        return (y - mean) * scale.astype(y.dtype) + targets[key]["mean"].astype(y.dtype)

    return hook


def affine_hook(corrections: dict) -> Hook:
    """y * scale + shift per channel: the frozen REPAIR correction used for evaluation."""

    def hook(key, y):
        c = corrections[key]
        return y * c["scale"].astype(y.dtype) + c["shift"].astype(y.dtype)

    return hook
