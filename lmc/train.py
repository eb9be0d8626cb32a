"""Pure-functional trainer: plain-dict state, one jitted step, Orbax checkpoints.

    state = {"params", "model_state", "opt_state", "step"}

The batch at step t is `dataset` rows `batch_indices(data_seed, t)`, augmentation is
keyed by fold_in(aug_seed, t), so a run is fully determined by (config, seeds) and
resuming from a checkpoint at step t continues the exact same trajectory.

Data-parallel: the state lives on the device mesh of `config.mesh` (see lmc.sharding;
default all devices on the `data` axis), replicated or FSDP-sharded; each process
loads only its rows of every global batch, and the step is jitted with explicit
in/out shardings, so XLA inserts the gradient all-reduce. The same config gives the
same trajectory on any number of devices or processes, up to float summation order.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmc import metrics as metrics_lib
from lmc import preemption
from lmc import sharding as sharding_lib
from lmc.checkpoint import Checkpointer
from lmc.data import Dataset, crop_and_flip, steps_per_epoch
from lmc.errors import UserError
from lmc.evaluate.batching import padded_batches
from lmc.models import Model
from lmc.progress import Progress

log = logging.getLogger(__name__)


MAX_STEPS_IN_FLIGHT = 2


class DivergenceError(RuntimeError):
    """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Seeds:
    init: int
    data: int
    aug: int


def total_steps(config, dataset: Dataset) -> int:
    if config.get("num_steps"):
        steps = int(config.num_steps)
    else:
        steps = int(
            math.ceil(config.num_epochs * steps_per_epoch(dataset.num_train, config.batch_size))
        )
    if steps <= 0:
        raise UserError(
            f"training length must be positive: num_steps={config.get('num_steps')}, "
            f"num_epochs={config.get('num_epochs')}"
        )
    return steps


def init_state(
    model: Model, optimizer: optax.GradientTransformation, init_seed: int, example_x: np.ndarray
) -> dict:
    params, model_state = model.init(jax.random.key(init_seed), jnp.asarray(example_x))
    return {
        "params": params,
        "model_state": model_state,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        # First step whose loss or gradient was not finite, -1 while healthy. Kept on
        # device so the guard costs no host sync per step.
        "first_bad_step": jnp.full((), -1, jnp.int32),
    }


def make_train_step(
    model: Model,
    optimizer: optax.GradientTransformation,
    augment: bool,
    state_shardings=None,
    batch_sharding=None,
):
    """The jitted update: (state, x, y, aug_key_data) -> (state, metrics).

    State buffers are donated. `aug_key_data` is `jax.random.key_data(key)` (raw
    uint32s place on any mesh like other arrays). With shardings given, the step is
    jitted for them: state in/out on `state_shardings`, x/y on `batch_sharding`,
    metrics replicated.
    """

    def loss_fn(params, model_state, x, y):
        logits, new_model_state = model.apply(params, model_state, x, True)
        loss = metrics_lib.cross_entropy(logits, y).mean()
        return loss, (new_model_state, metrics_lib.wrong(logits, y).mean())

    def step_fn(state, x, y, aug_key_data):
        step = state["step"]
        if augment:
            aug_key = jax.random.wrap_key_data(aug_key_data)
            x = crop_and_flip(jax.random.fold_in(aug_key, step), x)
        (loss, (model_state, error)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["model_state"], x, y
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

    if state_shardings is None:
        return jax.jit(step_fn, donate_argnums=(0,))
    replicated = sharding_lib.replicated(batch_sharding.mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


# Compiled steps by (model, optimizer config, total steps, augment, shardings): the
# children of one experiment share the parent's compilation instead of redoing it.
_STEP_CACHE: dict = {}
_STEP_CACHE_SIZE = 8


def _cached_train_step(model, config, num_steps, optimizer, augment, shardings, batch_sharding):
    leaves, treedef = jax.tree.flatten(shardings)
    key = (model, _optimizer_key(config), num_steps, augment, treedef, tuple(leaves),
           batch_sharding)  # fmt: skip
    try:
        hash(key)
    except TypeError:  # an unhashable model: compile without caching
        return make_train_step(model, optimizer, augment, shardings, batch_sharding)
    if key not in _STEP_CACHE:
        if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = make_train_step(model, optimizer, augment, shardings, batch_sharding)
    return _STEP_CACHE[key]


def _optimizer_key(config) -> str:
    opt = config.optimizer
    if hasattr(opt, "to_json_best_effort"):
        return opt.to_json_best_effort(sort_keys=True)
    return json.dumps(dict(opt), sort_keys=True, default=repr)


class MetricsWriter:
    """Appends JSON lines to <run_dir>/metrics.jsonl (process 0 only), flushed per line."""

    def __init__(self, path: Path):
        self.path = path
        self.enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint we resume from), so
        a resumed run's metrics file equals an uninterrupted run's."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past every step."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")


def train(
    *,
    model: Model,
    dataset: Dataset,
    config,
    run_dir: str | Path,
    seeds: Seeds,
    stop_step: int | None = None,
    start_state: dict | None = None,
    keep_steps=(),
    name: str = "train",
) -> dict:
    """Train (or resume) one run in `run_dir` up to `stop_step` (default: the total).

    `start_state` (e.g. a parent's step-k state) is used only when `run_dir` has no
    checkpoint yet; otherwise the newest intact checkpoint wins. Trains on the mesh of
    `config.mesh` (all devices by default); returns the final state on this process's
    first local device, as plain single-device arrays.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    num_steps = total_steps(config, dataset)
    stop_step = num_steps if stop_step is None else int(stop_step)
    mesh = sharding_lib.mesh_from_config(config)
    sharding_lib.check_batch_size(int(config.batch_size), mesh)
    optimizer = make_optimizer_for(config, num_steps)
    template = init_state(model, optimizer, seeds.init, dataset.train_x[:1])
    if start_state is not None:
        template = _fill(template, start_state)
    shardings = sharding_lib.state_shardings(template, mesh, sharding_lib.fsdp_min_size(config))
    template = sharding_lib.place(template, shardings)

    ckpt_cfg = config.checkpoint
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        every_steps=ckpt_cfg.every_steps or stop_step,
        keep_steps=keep_steps,
        max_to_keep=ckpt_cfg.get("max_to_keep", 2),
    )
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    try:
        # Restores onto the template's shardings (collectively, on every process).
        resumed_step, restored = checkpointer.restore_latest(template)
        if restored is not None:
            state = restored
            log.info("%s: resuming from step %d", name, resumed_step)
        else:
            state = template
            resumed_step = int(state["step"])
        writer.truncate_after(resumed_step)
        step = int(state["step"])
        # The starting point is a checkpoint of its own when it is step 0 or a kept step,
        # also when there is nothing to train (a parent "trained" to spawn step 0).
        if restored is None and (step == 0 or step in keep_steps):
            if step not in checkpointer.steps():
                checkpointer.save(step, state, force=True)
        if step >= stop_step:
            return sharding_lib.to_local(state)
        log.debug("%s: %s", name, sharding_lib.describe(mesh))
        train_step = _cached_train_step(
            model, config, num_steps, optimizer, _augments(dataset, config), shardings,
            sharding_lib.batch_sharding(mesh),
        )  # fmt: skip
        state = _run_steps(
            model, train_step, dataset, config, seeds, state, stop_step, checkpointer, writer,
            name, mesh,
        )  # fmt: skip
        checkpointer.save(stop_step, state, force=True)
        return sharding_lib.to_local(state)
    finally:
        checkpointer.close()


def make_optimizer_for(config, num_steps: int):
    from lmc.optim import make_optimizer

    return make_optimizer(config.optimizer, num_steps)


def _augments(dataset: Dataset, config) -> bool:
    return bool(dataset.augmentable and config.data.get("augment", True))


def _fill(template: dict, source: dict) -> dict:
    """Take params/model_state/opt_state/step from `source` (a restored parent)."""
    state = dict(template)
    for key in ("params", "model_state", "opt_state", "step"):
        state[key] = source[key]
    state["first_bad_step"] = jnp.full((), -1, jnp.int32)
    return state


def _run_steps(
    model, train_step, dataset, config, seeds, state, stop_step, checkpointer, writer, name, mesh
):
    batch_size = int(config.batch_size)
    slot, num_slots = sharding_lib.process_slot(mesh, batch_size)
    aug_key = sharding_lib.replicate(jax.random.key_data(jax.random.key(seeds.aug)), mesh)
    eval_every = int(config.get("eval_every_steps", 0)) or stop_step
    log_every = int(config.get("log_every_steps", 50))
    progress = Progress(
        name,
        int(state["step"]),
        stop_step,
        enabled=config.get("progress", True) and jax.process_index() == 0,
    )
    t0 = time.perf_counter()
    step = int(state["step"])
    in_flight = collections.deque()
    try:
        while step < stop_step:
            # This process's rows of the global batch, from the pure (data_seed, step) order.
            local = dataset.train_batch(seeds.data, step, batch_size, slot, num_slots)
            x, y = sharding_lib.shard_batch(local, mesh, batch_size)
            state, step_metrics = train_step(state, x, y, aug_key)
            step += 1
            # Bound the steps in flight: enough to hide dispatch latency, and it keeps
            # XLA:CPU's in-process all-reduces over fake devices from deadlocking when
            # hundreds of steps are queued on a 2-core host.
            in_flight.append(step_metrics["loss"])
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                in_flight.popleft().block_until_ready()
            if preemption.requested(step) and step < stop_step:
                _check_finite(state, name)
                if step not in checkpointer.steps():
                    checkpointer.save(step, state, force=True)
                raise preemption.Preempted(step, name)
            will_save = checkpointer.manager.should_save(step) and step < stop_step
            if step % log_every == 0 or step % eval_every == 0 or will_save or step == stop_step:
                _check_finite(state, name)
                record = {"step": step, **{f"train_{k}": float(v) for k, v in step_metrics.items()}}
                if step % eval_every == 0 or step == stop_step:
                    test = evaluate_sharded(
                        model, state["params"], state["model_state"], dataset.test_x,
                        dataset.test_y, mesh,
                    )  # fmt: skip
                    record.update(test_loss=test["loss"], test_error=test["error"])
                    progress.report(
                        f"step {step}: train loss {record['train_loss']:.4f}, "
                        f"test loss {test['loss']:.4f}, test error {test['error']:.4f}"
                    )
                record["wall_s"] = round(time.perf_counter() - t0, 3)
                writer.write(record)
                if will_save:
                    checkpointer.save(step, state)
            progress.update(step)
    finally:
        progress.close()
    return state


def evaluate_sharded(model, params, model_state, x, y, mesh, batch_size: int = 1000) -> dict:
    """Mean loss and error over (x, y) in eval mode, batches split over `mesh` (params as
    the train state holds them). Every process holds x and y in full."""
    batch_size = sharding_lib.round_batch(min(batch_size, len(x)), mesh)
    fn = _eval_sums(model.apply, sharding_lib.batch_sharding(mesh))
    totals, in_flight = np.zeros(3), collections.deque()
    for batch in padded_batches(x, y, batch_size):
        xb, yb, mask = sharding_lib.shard_host_batch(batch, mesh)
        in_flight.append(fn(params, model_state, xb, yb, mask))
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:  # see _run_steps
            totals += np.asarray(in_flight.popleft())
    while in_flight:
        totals += np.asarray(in_flight.popleft())
    loss, err, count = (float(v) for v in totals)
    return {"loss": loss / count, "error": err / count}


@functools.lru_cache(maxsize=16)
def _eval_sums(apply_fn, batch_sharding):
    def sums(params, model_state, x, y, mask):
        logits, _ = apply_fn(params, model_state, x, False)
        per_example = mask.reshape(mask.shape + (1,) * (y.ndim - 1))  # also per-token labels
        ce = metrics_lib.cross_entropy(logits, y) * per_example
        err = metrics_lib.wrong(logits, y) * per_example
        return jnp.stack([ce.sum(), err.sum(), jnp.sum(per_example * jnp.ones_like(ce))])

    # Inputs keep the shardings they arrive with (state layout, batch split).
    return jax.jit(sums, out_shardings=sharding_lib.replicated(batch_sharding.mesh))


def _check_finite(state: dict, name: str) -> None:
    bad = int(state["first_bad_step"])
    if bad >= 0:
        raise DivergenceError(
            f"{name}: loss or gradient became NaN/Inf at step {bad}. The last good checkpoint "
            "is kept; lower the learning rate or add warmup and rerun."
        )
