"""The training loop: one network on a device mesh, or a vmapped population of siblings.

    state = train(model=..., dataset=..., config=..., run_dir=..., seeds=...)
    states = train_population(model=..., config=..., members=[Member(...), ...], run_dir=...)

Both run the same loop with the same hooks, in this order after every step:

- preemption: SIGTERM (or SIGINT) -> checkpoint this step, raise `Preempted` (exit 75);
- NaN guard: at every logged step, a non-finite loss or gradient stops the run naming
  the step and the member (the last good checkpoint is kept);
- metrics: train loss/error/grad norm every `config.log_every_steps`, test loss/error
  every `config.eval_every_steps` and at the end (the one evaluator, `lmc.evaluate`),
  one `metrics.jsonl` per member;
- checkpoints: every `config.checkpoint.every_steps`, at `keep_steps` (kept forever),
  and at the end;
- progress: a bar on a terminal; elsewhere a line every 30 s (step, rate, ETA); evaluation
  lines everywhere.

The batch at step t is `dataset.train_batch(data_seed, t)` and augmentation is keyed
by fold_in(aug_seed, t), so a run is fully determined by (config, seeds), and resuming
from a checkpoint at step t continues the exact same trajectory.

One network trains data-parallel on the mesh of `config.mesh` (lmc.runtime.sharding): each
process loads only its rows of every global batch; the step is jitted with explicit
shardings. A population stacks its members' states on a leading axis and trains them
with one vmapped step on one device; its stacked state is checkpointed in `run_dir`,
and each member's final state is also saved as a checkpoint of the member's own run,
so everything downstream sees ordinary runs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lmc.data import Dataset
from lmc.errors import UserError
from lmc.models import Model, as_model
from lmc.runtime import io, preemption
from lmc.runtime import sharding as sharding_lib
from lmc.runtime.checkpoint import Checkpointer
from lmc.runtime.progress import Progress
from lmc.training.metrics_log import MetricsWriter
from lmc.training.population import stack, unstack
from lmc.training.state import (
    Seeds,
    continue_from,
    endpoint,
    init_state,
    make_optimizer_for,
    total_steps,
)
from lmc.training.step import compiled_step

log = logging.getLogger(__name__)

# Steps queued before waiting on the oldest: enough to hide dispatch latency, and it
# keeps XLA:CPU's in-process all-reduces over fake devices from deadlocking when
# hundreds of steps are queued on a 2-core host.
MAX_STEPS_IN_FLIGHT = 2


class DivergenceError(RuntimeError):
    """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One network the loop trains: where it writes, its seeds and its data.

    `start_state` (e.g. the parent's state at a spawn step) replaces the fresh init
    when the run has no checkpoint yet."""

    run_dir: Path
    seeds: Seeds
    dataset: Dataset
    name: str
    start_state: dict | None = None


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
    """Train (or resume) one network in `run_dir` up to `stop_step` (default: the end).

    Returns the final state on this process's first local device, as plain arrays."""
    member = Member(io.path(run_dir), seeds, dataset, name, start_state)
    loop = _Loop(model, config, [member], io.path(run_dir), population=False)
    return loop.run(stop_step, keep_steps)[0]


def train_population(
    *, model: Model, config, members: Sequence[Member], run_dir: str | Path, name="population"
) -> list[dict]:
    """Train `members` to the end as one vmapped population; their final states.

    Every member must start from the same step (fresh inits, or one parent's step)."""
    if not members:
        raise UserError("a population needs at least one member")
    if jax.process_count() > 1:
        raise UserError(
            "config.spawn.population trains on one device of one process; set it to False "
            "for multi-process runs"
        )
    loop = _Loop(model, config, list(members), io.path(run_dir), population=True, name=name)
    states = loop.run(None, ())
    final = int(states[0]["step"])
    for member, state in zip(members, states, strict=True):
        ckpt = Checkpointer(member.run_dir / "checkpoints", every_steps=final)
        try:
            if final not in ckpt.steps():
                ckpt.save(final, state, force=True)
        finally:
            ckpt.close()
    return states


class _Loop:
    """The loop and its hooks over a state that is one network or a stacked population."""

    def __init__(self, model, config, members, run_dir, *, population, name=None):
        # Any model lmc accepts (linen, NNX, lmc.models.Model) trains the same way.
        self.model, self.config, self.members = as_model(model), config, members
        self.run_dir, self.population = run_dir, population
        self.name = name or members[0].name
        lengths = {total_steps(config, m.dataset) for m in members}
        if len(lengths) != 1:
            raise UserError(f"population members train for different lengths: {sorted(lengths)}")
        self.num_steps = lengths.pop()
        self.batch_size = int(config.batch_size)
        self.optimizer = make_optimizer_for(config, self.num_steps)
        self.mesh = None if population else sharding_lib.mesh_from_config(config)
        if self.mesh is not None:
            sharding_lib.check_batch_size(self.batch_size, self.mesh)

    # ---- state -------------------------------------------------------------------
    def _template(self):
        states = []
        for m in self.members:
            state = init_state(self.model, self.optimizer, m.seeds.init, m.dataset.train_x[:1])
            states.append(continue_from(state, m.start_state) if m.start_state else state)
        if self.population:
            # Stacking needs one tree structure, shape and dtype for every member.
            if len(states) > 1:
                chex.assert_trees_all_equal_shapes_and_dtypes(*states)
            steps = {int(s["step"]) for s in states}
            if len(steps) != 1:
                raise UserError(f"population members start at different steps {sorted(steps)}")
            return stack(states), None
        shardings = sharding_lib.state_shardings(
            states[0], self.mesh, sharding_lib.fsdp_min_size(self.config)
        )
        return sharding_lib.place(states[0], shardings), shardings

    def _views(self, state) -> list[dict]:
        """Each member's state (a slice of the stacked state in a population)."""
        return unstack(state, len(self.members)) if self.population else [state]

    def _step_of(self, state) -> int:
        return (
            int(np.asarray(state["step"]).reshape(-1)[0]) if self.population else int(state["step"])
        )

    # ---- the loop ----------------------------------------------------------------
    def run(self, stop_step, keep_steps) -> list[dict]:
        stop_step = self.num_steps if stop_step is None else int(stop_step)
        io.makedirs(self.run_dir)
        for m in self.members:
            io.makedirs(m.run_dir)
        template, shardings = self._template()
        checkpointer = Checkpointer(
            self.run_dir / "checkpoints",
            every_steps=self.config.checkpoint.every_steps or stop_step,
            keep_steps=keep_steps,
            max_to_keep=self.config.checkpoint.max_to_keep,
        )
        writers = [MetricsWriter(m.run_dir / "metrics.jsonl") for m in self.members]
        try:
            # Restores onto the template's shardings (collectively, on every process).
            resumed_step, restored = checkpointer.restore_latest(template)
            state = template if restored is None else restored
            step = self._step_of(state)
            if restored is not None:
                log.info("%s: resuming from step %d of %d", self.name, step, stop_step)
            for writer in writers:
                writer.truncate_after(step)
            # The starting point is a checkpoint of its own when it is step 0 or a kept
            # step, also when there is nothing to train (a parent "trained" to step 0).
            if restored is None and (step in keep_steps or (step == 0 and not self.population)):
                if step not in checkpointer.steps():
                    checkpointer.save(step, state, force=True)
            if step < stop_step:
                train_step = compiled_step(
                    self.model, self.config, self.num_steps, self.optimizer, self._augments(),
                    shardings, self.mesh and sharding_lib.batch_sharding(self.mesh),
                    population=self.population,
                )  # fmt: skip
                state = self._steps(train_step, state, step, stop_step, checkpointer, writers)
                _flush(writers)
                checkpointer.save(stop_step, state, force=True)
            if self.population:
                return unstack(jax.device_get(state), len(self.members))
            return [sharding_lib.to_local(state)]
        finally:
            checkpointer.close()
            for writer in writers:
                writer.close()

    def _augments(self) -> bool:
        return bool(self.members[0].dataset.augmentable and self.config.data.augment)

    def _batches(self):
        """step -> (x, y) for the step function; aug key data for every member."""
        seeds = [m.seeds for m in self.members]
        if self.population:
            keys = jnp.stack([jax.random.key_data(jax.random.key(s.aug)) for s in seeds])

            def batch(step):
                rows = [m.dataset.train_batch(m.seeds.data, step, self.batch_size)
                        for m in self.members]  # fmt: skip
                return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

            return batch, keys
        member, mesh = self.members[0], self.mesh
        slot, num_slots = sharding_lib.process_slot(mesh, self.batch_size)
        key = sharding_lib.replicate(jax.random.key_data(jax.random.key(seeds[0].aug)), mesh)

        def batch(step):
            # This process's rows of the global batch, from the pure (data_seed, step) order.
            local = member.dataset.train_batch(
                member.seeds.data, step, self.batch_size, slot, num_slots
            )
            return sharding_lib.shard_batch(local, mesh, self.batch_size)

        return batch, key

    def _steps(self, train_step, state, step, stop_step, checkpointer, writers):
        config = self.config
        batch, aug_keys = self._batches()
        eval_every = int(config.eval_every_steps) or stop_step
        log_every = int(config.log_every_steps)
        progress = Progress(self.name, step, stop_step,
                            enabled=config.progress and jax.process_index() == 0)  # fmt: skip
        t0 = time.perf_counter()
        in_flight = collections.deque()
        try:
            while step < stop_step:
                x, y = batch(step)
                state, step_metrics = train_step(state, x, y, aug_keys)
                step += 1
                in_flight.append(step_metrics["loss"])
                if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                    in_flight.popleft().block_until_ready()
                if preemption.requested(step) and step < stop_step:
                    self._check_finite(state)
                    if step not in checkpointer.steps():
                        _flush(writers)
                        checkpointer.save(step, state, force=True)
                    raise preemption.Preempted(step, self.name)
                will_save = checkpointer.manager.should_save(step) and step < stop_step
                evaluate_now = step % eval_every == 0 or step == stop_step
                if step % log_every == 0 or evaluate_now or will_save or step == stop_step:
                    self._check_finite(state)
                    records = self._records(step, step_metrics, state, evaluate_now, progress)
                    for writer, record in zip(writers, records, strict=True):
                        record["wall_s"] = round(time.perf_counter() - t0, 3)
                        writer.write(record)
                    if will_save:
                        _flush(writers)
                        checkpointer.save(step, state)
                progress.update(step)
        finally:
            progress.close()
        return state

    def _records(self, step, step_metrics, state, evaluate_now, progress) -> list[dict]:
        """One metrics.jsonl record per member (train metrics, test metrics if due)."""
        if self.population:
            values = {k: np.asarray(v) for k, v in step_metrics.items()}
        else:
            values = {k: np.asarray([float(v)]) for k, v in step_metrics.items()}
        records = []
        for i, (member, view) in enumerate(zip(self.members, self._views(state), strict=True)):
            record = {"step": step, **{f"train_{k}": float(v[i]) for k, v in values.items()}}
            if evaluate_now:
                test = self._evaluate(member, view)
                record.update(test)
                progress.report(
                    f"step {step}: train loss {record['train_loss']:.4f}, test loss "
                    f"{test['test_loss']:.4f}, test error {test['test_error']:.4f}",
                    name=member.name,
                )
            records.append(record)
        return records

    def _evaluate(self, member: Member, state: dict) -> dict:
        """Test loss and error of one member: the same evaluator as the curves."""
        from lmc import evaluate

        data = member.dataset
        network = endpoint(state) if self.population else sharding_lib.to_local(endpoint(state))
        return evaluate.evaluate(
            self.model.apply, network, {"test": (data.test_x, data.test_y)},
            batch_size=int(self.config.eval.batch_size), mesh=self.mesh,
        )  # fmt: skip

    def _check_finite(self, state) -> None:
        if self.population:
            bad = np.asarray(state["first_bad_step"]).reshape(-1)
        else:  # a replicated scalar, readable on every process
            bad = [int(state["first_bad_step"])]
        for member, first_bad in zip(self.members, bad, strict=True):
            if first_bad >= 0:
                raise DivergenceError(
                    f"{member.name}: loss or gradient became NaN/Inf at step {int(first_bad)}. "
                    "The last good checkpoint is kept; lower the learning rate or add warmup "
                    "and rerun."
                )


def _flush(writers) -> None:
    """Metrics lines up to a checkpoint must be durable before it is: a resumed run keeps
    the lines up to its checkpoint and rewrites the ones after (object stores buffer)."""
    for writer in writers:
        writer.flush()


# (key, smallest valid value, what 0 means where 0 is valid). A zero or negative value
# is never replaced by a default: it is either documented (0 below) or refused.
_LOOP_SETTINGS = (
    ("log_every_steps", 1, None),
    ("eval_every_steps", 0, "only at the end"),
    ("checkpoint.every_steps", 0, "only the spawn step(s) and the end"),
    ("checkpoint.max_to_keep", 1, None),
    ("eval.batch_size", 1, None),
)


def validate_loop_settings(config) -> None:
    """The loop's cadences and sizes, checked before anything runs (a negative
    `eval_every_steps` would evaluate at every step, a zero `log_every_steps` fail at
    the first one)."""
    for key, smallest, zero_means in _LOOP_SETTINGS:
        node = config
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, int) or node < smallest:
            allowed = f">= {smallest}" + (f" (0: {zero_means})" if zero_means else "")
            raise UserError(f"config.{key} must be an integer {allowed}, got {node!r}")
