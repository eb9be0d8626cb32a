"""Pure-functional trainer: plain-dict state, one jitted step, Orbax checkpoints.

    state = {"params", "model_state", "opt_state", "step"}

The batch at step t is `dataset` rows `batch_indices(data_seed, t)`, augmentation is
keyed by fold_in(aug_seed, t), so a run is fully determined by (config, seeds) and
resuming from a checkpoint at step t continues the exact same trajectory.
"""

from __future__ import annotations

import dataclasses
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
from lmc.checkpoint import Checkpointer
from lmc.data import Dataset, crop_and_flip, steps_per_epoch
from lmc.errors import UserError
from lmc.models import Model
from lmc.progress import Progress

log = logging.getLogger(__name__)


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


def make_train_step(model: Model, optimizer: optax.GradientTransformation, augment: bool):
    """The jitted update: state, batch -> state, metrics. State buffers are donated."""

    def loss_fn(params, model_state, x, y):
        logits, new_model_state = model.apply(params, model_state, x, True)
        loss = metrics_lib.cross_entropy(logits, y).mean()
        return loss, (new_model_state, metrics_lib.wrong(logits, y).mean())

    def step_fn(state, x, y, aug_key):
        step = state["step"]
        if augment:
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

    return jax.jit(step_fn, donate_argnums=(0,))


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
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


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
    checkpoint yet; otherwise the newest intact checkpoint wins. Returns the final state.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    num_steps = total_steps(config, dataset)
    stop_step = num_steps if stop_step is None else int(stop_step)
    optimizer = make_optimizer_for(config, num_steps)
    template = init_state(model, optimizer, seeds.init, dataset.train_x[:1])
    if start_state is not None:
        template = _fill(template, start_state)

    ckpt_cfg = config.checkpoint
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        every_steps=ckpt_cfg.every_steps or stop_step,
        keep_steps=keep_steps,
        max_to_keep=ckpt_cfg.get("max_to_keep", 2),
    )
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    try:
        resumed_step, restored = checkpointer.restore_latest(template)
        if restored is not None:
            state = restored
            log.info("%s: resuming from step %d", name, resumed_step)
        else:
            state = template
            resumed_step = int(state["step"])
        writer.truncate_after(resumed_step)
        if int(state["step"]) >= stop_step:
            return state
        if int(state["step"]) == 0 or int(state["step"]) in keep_steps:
            checkpointer.save(int(state["step"]), state, force=True)
        state = _run_steps(
            model, optimizer, dataset, config, seeds, state, stop_step, checkpointer, writer, name
        )
        checkpointer.save(stop_step, state, force=True)
        return state
    finally:
        checkpointer.close()


def make_optimizer_for(config, num_steps: int):
    from lmc.optim import make_optimizer

    return make_optimizer(config.optimizer, num_steps)


def _fill(template: dict, source: dict) -> dict:
    """Take params/model_state/opt_state/step from `source` (a restored parent)."""
    state = dict(template)
    for key in ("params", "model_state", "opt_state", "step"):
        state[key] = source[key]
    state["first_bad_step"] = jnp.full((), -1, jnp.int32)
    return state


def _run_steps(
    model, optimizer, dataset, config, seeds, state, stop_step, checkpointer, writer, name
):
    augment = bool(dataset.augmentable and config.data.get("augment", True))
    train_step = make_train_step(model, optimizer, augment)
    aug_key = jax.random.key(seeds.aug)
    eval_every = int(config.get("eval_every_steps", 0)) or stop_step
    log_every = int(config.get("log_every_steps", 50))
    progress = Progress(name, int(state["step"]), stop_step, enabled=config.get("progress", True))
    t0 = time.perf_counter()
    step = int(state["step"])
    try:
        while step < stop_step:
            x, y = dataset.train_batch(seeds.data, step, config.batch_size)
            state, step_metrics = train_step(state, x, y, aug_key)
            step += 1
            will_save = checkpointer.manager.should_save(step) and step < stop_step
            if step % log_every == 0 or step % eval_every == 0 or will_save or step == stop_step:
                _check_finite(state, name)
                record = {"step": step, **{f"train_{k}": float(v) for k, v in step_metrics.items()}}
                if step % eval_every == 0 or step == stop_step:
                    test = metrics_lib.evaluate(
                        model.apply,
                        state["params"],
                        state["model_state"],
                        dataset.test_x,
                        dataset.test_y,
                    )
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


def _check_finite(state: dict, name: str) -> None:
    bad = int(state["first_bad_step"])
    if bad >= 0:
        raise DivergenceError(
            f"{name}: loss or gradient became NaN/Inf at step {bad}. The last good checkpoint "
            "is kept; lower the learning rate or add warmup and rerun."
        )
