"""The train step: one jitted, donated update of the plain-dict state.

    state, metrics = step(state, x, y, aug_key_data)

The batch at step t is chosen by the loop from (data_seed, t); augmentation is keyed
inside the step by fold_in(aug_seed, t), and dropout (linen's "dropout" stream, every
RNG stream of an NNX model) by fold_in(fold_in(aug_seed, DROPOUT), t), so the step
needs no host-side randomness.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lmc.data import crop_and_flip
from lmc.evaluate.metrics import cross_entropy, wrong
from lmc.models import Model
from lmc.runtime import sharding as sharding_lib
from lmc.training.population import population_step

# Folded into the augmentation key to separate the dropout keys from the crop/flip ones.
DROPOUT = 0x64726F70


def step_function(model: Model, optimizer: optax.GradientTransformation, augment: bool):
    """The un-jitted update `(state, x, y, aug_key_data) -> (state, metrics)`.

    `aug_key_data` is `jax.random.key_data(key)` (raw uint32s place on any mesh like
    other arrays)."""

    def loss_fn(params, model_state, x, y, rng):
        logits, new_model_state = model.apply(params, model_state, x, True, rng=rng)
        loss = cross_entropy(logits, y).mean()
        return loss, (new_model_state, wrong(logits, y).astype(jnp.float32).mean())

    def step_fn(state, x, y, aug_key_data):
        step = state["step"]
        aug_key = jax.random.wrap_key_data(aug_key_data)
        if augment:
            x = crop_and_flip(jax.random.fold_in(aug_key, step), x)
        rng = jax.random.fold_in(jax.random.fold_in(aug_key, DROPOUT), step)
        (loss, (model_state, error)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["model_state"], x, y, rng
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        healthy = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        first_bad = jnp.where(
            (state["first_bad_step"] < 0) & ~healthy, step, state["first_bad_step"]
        )
        new_state = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "step": step + 1,
            "first_bad_step": first_bad,
        }
        return new_state, {"loss": loss, "error": error, "grad_norm": grad_norm}

    return step_fn


def make_train_step(
    model: Model,
    optimizer: optax.GradientTransformation,
    augment: bool,
    state_shardings=None,
    batch_sharding=None,
):
    """The jitted update, state buffers donated. With shardings given, it is jitted for
    them: state in/out on `state_shardings`, x/y on `batch_sharding`, metrics replicated."""
    step_fn = step_function(model, optimizer, augment)
    if state_shardings is None:
        return jax.jit(step_fn, donate_argnums=(0,))
    replicated = sharding_lib.replicated(batch_sharding.mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


# Compiled steps by (model, optimizer config, total steps, augment, shardings,
# population): the children of an experiment share the parent's compilation.
_CACHE: dict = {}
_CACHE_SIZE = 8


def compiled_step(
    model, config, num_steps, optimizer, augment, shardings=None, batch_sharding=None,
    population=False,
):  # fmt: skip
    def build():
        if population:
            return population_step(step_function(model, optimizer, augment))
        return make_train_step(model, optimizer, augment, shardings, batch_sharding)

    leaves, treedef = jax.tree.flatten(shardings)
    key = (model, _optimizer_key(config), num_steps, augment, treedef, tuple(leaves),
           batch_sharding, population)  # fmt: skip
    try:
        hash(key)
    except TypeError:  # an unhashable model: compile without caching
        return build()
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]


def _optimizer_key(config) -> str:
    return config.optimizer.to_json_best_effort(sort_keys=True)
