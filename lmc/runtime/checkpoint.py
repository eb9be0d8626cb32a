"""Orbax checkpoints of the plain-dict train state, behind a small wrapper.

Layout: `<run_dir>/checkpoints/<step>/` written by Orbax's CheckpointManager, which
writes each step to a temporary directory and renames it when complete, so a crash
mid-save never leaves a step that looks finished. On top of that we verify that a
step restores, and fall back to the newest intact one (see `restore_latest`).

Multi-process runs save and restore collectively: every process calls `save` and
`restore` with the same global arrays (each writes or reads its own shards, process
0 the metadata), and the checkpoint directory must be on storage all processes see:
a shared filesystem or an object store (`gs://bucket/run/checkpoints`). On gs:// Orbax
marks a finished step with `commit_success.txt` instead of renaming a temp directory
(GCS has no rename), array data goes through tensorstore's `gcs` driver, and everything
else (digests, the quarantine) through `lmc.runtime.io`.
A checkpoint restores onto whatever shardings the target has, so one written by N
processes restores in a 1-process run and vice versa.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from lmc.errors import UserError
from lmc.runtime import io

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves every `every_steps` steps and at `keep_steps`; keeps the newest `max_to_keep`
    plus every step in `keep_steps` forever (the spawn points children start from)."""

    def __init__(
        self,
        directory: io.PathLike,
        every_steps: int,
        keep_steps: Sequence[int] = (),
        max_to_keep: int = 2,
        read_only: bool = False,
    ):
        self.directory = io.absolute(directory)
        keep_steps = sorted({int(s) for s in keep_steps})
        save_policies = [cm.FixedIntervalPolicy(max(int(every_steps), 1))]
        if keep_steps:
            save_policies.append(cm.SpecificStepsPolicy(keep_steps))
        preserve = [cm.preservation_policy.LatestN(max_to_keep)]
        if keep_steps:
            preserve.append(cm.preservation_policy.CustomSteps(keep_steps))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=cm.AnySavePolicy(save_policies),
            preservation_policy=cm.preservation_policy.AnyPreservationPolicy(preserve),
            # Synchronous saves: a step is on disk when save() returns, which is what the
            # crash/resume guarantees rely on. The models here save in milliseconds.
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )
        # Orbax removes unfinished steps from a crash in a background thread and waits
        # for it only in save(). Wait now, so that a restore, a quarantine move or a
        # listing never races with that deletion (on gs:// it takes a few requests).
        wait_for_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
        if wait_for_cleanup is not None:
            wait_for_cleanup()

    def save(self, step: int, state, force: bool = False) -> bool:
        if jax.process_index() == 0:
            # Orbax writes past lmc.runtime.io: a lost lock stops here
            io.check_writable(self.directory)
        try:
            saved = self.manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
            self.manager.wait_until_finished()
        except Exception as e:
            # Orbax raises OSError from its own file writes; tensorstore (the array data)
            # raises ValueError with the OS message.
            no_space = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            if not (no_space or "No space left on device" in str(e)):
                message = isinstance(e, OSError) and io.describe_os_error(
                    e, self.directory, f"saving checkpoint step {step}"
                )
                if message:
                    raise UserError(message) from e
                raise
            self._remove_unfinished(int(step))
            raise UserError(_no_space(self.directory, int(step), self.steps())) from e
        if saved:
            self._write_digest(int(step), state)
        return bool(saved)

    # Orbax's atomic rename protects against crashes mid-save, not against bytes that
    # change later (a truncated copy, a flipped block on a shared filesystem): those can
    # restore "successfully" into wrong numbers. A digest of the state, written after
    # the step is final and checked on restore, turns that into a detected corruption.
    def _digest_path(self, step: int) -> epath.Path:
        return self.directory.parent / "checkpoint_digests" / f"{step}.sha256"

    def _write_digest(self, step: int, state) -> None:
        digest = state_digest(state)
        if digest is not None and jax.process_index() == 0:
            io.write_bytes_atomic(self._digest_path(step), digest.encode(), any_process=True)

    def _verify_digest(self, step: int, state) -> None:
        path = self._digest_path(step)
        try:
            expected = io.read_text(path).strip()
        except FileNotFoundError:  # written by an older lmc, or a crash right after the save
            return
        actual = state_digest(state)
        if actual is not None and actual != expected:
            raise ValueError(f"content digest mismatch ({actual[:12]} != {expected[:12]})")

    def _remove_unfinished(self, step: int) -> None:
        """What a failed save of `step` left (Orbax would remove it at the next start):
        nothing half-written stays behind."""
        if jax.process_index() != 0:
            return
        for name in io.listdir(self.directory):
            unfinished = name.startswith(f"{step}.orbax-checkpoint-tmp") or (
                name == str(step) and step not in committed_steps(self.directory)
            )
            if unfinished:
                with contextlib.suppress(OSError, UserError):
                    io.remove_tree(self.directory / name)

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore(self, step: int, target=None):
        """The state at `step`, laid out like `target` (arrays or ShapeDtypeStructs with
        shardings); without a target, as single-device arrays on this process's first
        local device, whatever topology wrote the checkpoint."""
        if target is None:
            target = self._local_target(step)
        return self.manager.restore(int(step), args=ocp.args.StandardRestore(_abstract(target)))

    def _local_target(self, step: int):
        metadata = self.manager.item_metadata(int(step))
        tree = getattr(metadata, "item_metadata", metadata)
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
        return jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local) if is_array(m) else m,
            tree,
            is_leaf=is_array,
        )

    def restore_latest(self, target=None):
        """(step, state) of the newest step that restores cleanly, or (None, None).

        A step that fails to restore (truncated file, deleted array) or whose content
        does not match the digest written at save time is moved aside to
        `<run_dir>/corrupt_checkpoints/<step>` with a warning, so it is neither loaded
        nor retried, and the next older step is tried: never a mix of two steps.
        """
        for step in reversed(self.steps()):
            try:
                state = self.restore(step, target)
                self._verify_digest(step, state)
                return step, state
            except Exception as e:  # Orbax/tensorstore raise many types for bad files.
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); falling back",
                    step,
                    self.directory,
                    e,
                )
                self._quarantine(step)
        return None, None

    def _quarantine(self, step: int) -> None:
        src = self.directory / str(step)
        if jax.process_index() == 0 and io.exists(src):
            # Replaces an older quarantined copy of the same step. On object stores this
            # copies every object, then deletes the source (no rename there).
            io.move_tree(src, self.directory.parent / "corrupt_checkpoints" / str(step))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # The others must not list the step again before process 0 has moved it.
            multihost_utils.sync_global_devices(f"lmc_quarantine_{self.directory}_{step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


# Orbax's marker of a finished step on object stores (which have no rename to make a
# temp directory final); a step directory without it is an unfinished save.
COMMIT_MARKER = "commit_success.txt"


def committed_steps(directory: io.PathLike) -> list[int]:
    """The finished steps in a checkpoint directory, without opening a CheckpointManager
    (cheap enough for "has this run started?"). Locally an unfinished save is a temp
    directory that is not named by its step; on gs:// a step directory counts once
    Orbax wrote its commit marker."""
    steps = [int(name) for name in io.listdir(directory) if name.isdigit()]
    if io.scheme(directory) == "gs":
        steps = [s for s in steps if io.exists(io.path(directory) / str(s) / COMMIT_MARKER)]
    return sorted(steps)


def _no_space(directory, step: int, intact: list[int]) -> str:
    if intact:
        plural = len(intact) > 1
        steps, verb = ("steps", "are") if plural else ("step", "is")
        kept = f"the earlier {steps} {', '.join(map(str, intact))} {verb} intact"
    else:
        kept = "there is no earlier checkpoint"
    return (
        f"No space left on the device holding {directory} while saving checkpoint step "
        f"{step}; the unfinished step was removed and {kept}. Free space there (or raise "
        "the quota), or use a --workdir on a disk with room, then rerun the same command: "
        "it resumes from the newest checkpoint."
    )


def state_digest(state) -> str | None:
    """sha256 over every leaf's dtype, shape and bytes in tree order; None when some
    array is not fully addressable from this process (multi-host sharded state).

    Paths are left out on purpose: a state restored without a target comes back with
    optax's namedtuples as plain containers, same leaves in the same order."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arr = np.asarray(leaf)
        h.update(f"{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _abstract(tree):
    """ShapeDtypeStructs (keeping shardings) so Orbax restores onto the target layout."""

    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree)
