"""JAX's multi-controller runtime: initialize when on a cluster or when asked to."""

from __future__ import annotations

import logging
import os

import jax

from lmc.errors import UserError

log = logging.getLogger(__name__)

_CLUSTER_ENV = ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Call jax.distributed.initialize() for explicit flags or a detected cluster.

    Explicit: --coordinator=HOST:PORT --num_processes=N --process_id=I (all three).
    Detected: SLURM with more than one task, or a multi-worker TPU VM slice, where JAX
    reads the topology from the environment itself.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise UserError(
            "--coordinator, --num_processes and --process_id go together; give all three or none"
        )
    if all(given):
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process_id={process_id} must be in [0, {num_processes})")
        if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            # CPU collectives across processes need gloo (the default is none).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get(
        "TPU_WORKER_HOSTNAMES", ""
    ):
        jax.distributed.initialize()


def is_main_process() -> bool:
    return jax.process_index() == 0
