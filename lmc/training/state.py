"""The train state and what determines it: seeds, training length, initialization.

    state = {"params", "model_state", "opt_state", "step", "first_bad_step"}

A plain dict of arrays: checkpoints hold exactly this and restore without model code.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmc.data import steps_per_epoch
from lmc.errors import UserError
from lmc.models import Model, as_model


@dataclasses.dataclass(frozen=True)
class Seeds:
    """Everything random about one training run: init, data order, augmentation."""

    init: int
    data: int
    aug: int


def total_steps(config, dataset) -> int:
    """`config.num_steps` if positive, else `config.num_epochs` epochs of `dataset`."""
    if config.num_steps:
        steps = int(config.num_steps)
    else:
        steps = int(
            math.ceil(config.num_epochs * steps_per_epoch(dataset.num_train, config.batch_size))
        )
    if steps <= 0:
        raise UserError(
            f"training length must be positive: config.num_steps={config.num_steps}, "
            f"config.num_epochs={config.num_epochs}"
        )
    return steps


def make_optimizer_for(config, num_steps: int) -> optax.GradientTransformation:
    from lmc.training.optim import make_optimizer

    return make_optimizer(config.optimizer, num_steps)


def init_state(
    model: Model, optimizer: optax.GradientTransformation, init_seed: int, example_x: np.ndarray
) -> dict:
    params, model_state = as_model(model).init(jax.random.key(init_seed), jnp.asarray(example_x))
    return {
        "params": params,
        "model_state": model_state,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        # First step whose loss or gradient was not finite, -1 while healthy. Kept on
        # device so the guard costs no host sync per step.
        "first_bad_step": jnp.full((), -1, jnp.int32),
    }


def continue_from(template: dict, source: dict) -> dict:
    """`template` with params/model_state/opt_state/step taken from `source` (a parent's
    state at the spawn step): a child continues the parent's optimizer and schedule."""
    state = dict(template)
    for key in ("params", "model_state", "opt_state", "step"):
        state[key] = source[key]
    state["first_bad_step"] = jnp.full((), -1, jnp.int32)
    return state


def endpoint(state: dict) -> dict:
    """The part of a train state that defines the network."""
    return {"params": state["params"], "model_state": state["model_state"]}
