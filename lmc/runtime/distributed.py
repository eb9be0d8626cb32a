"""JAX's multi-controller runtime: initialize when on a cluster or when asked to.

Every process runs the same `lmc run` command; `jax.distributed.initialize()` joins
them into one program whose devices form one mesh (see lmc.runtime.sharding). When:

- explicit flags: `--coordinator=HOST:PORT --num_processes=N --process_id=I`;
- `LMC_DISTRIBUTED=1`: always, with JAX detecting the cluster itself (Cloud TPU VM
  metadata, SLURM, Open MPI, Kubernetes); `launch/tpu_pod.sh` sets it;
- auto-detected (unless `LMC_DISTRIBUTED=0`): a SLURM job step with more than one task
  (`srun`, not the batch script itself), or a multi-host TPU slice whose environment
  names its workers (TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS).

This must run before anything touches a JAX backend.
"""

from __future__ import annotations

import logging
import os

import jax

from lmc.errors import UserError

log = logging.getLogger(__name__)

ENV_SWITCH = "LMC_DISTRIBUTED"


def cluster_detected(environ=None) -> bool:
    """Whether the environment describes a multi-process job JAX can initialize from."""
    env = os.environ if environ is None else environ
    switch = env.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if switch in ("1", "true", "yes", "on"):
        return True
    # srun sets SLURM_STEP_NUM_TASKS for its job step; the batch script's own
    # environment (SLURM_NTASKS without a step) runs a single process.
    if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in env:
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    return False


def maybe_initialize(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Call jax.distributed.initialize() for explicit flags or a detected cluster."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise UserError(
            "--coordinator, --num_processes and --process_id go together; give all three or none"
        )
    if jax.distributed.is_initialized():
        return
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
            )
        if ":" not in coordinator:
            raise UserError(f"--coordinator={coordinator} must be HOST:PORT")
        _enable_cpu_collectives()
        log.info("joining %s as process %d of %d", coordinator, process_id, num_processes)
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return
    if cluster_detected():
        _enable_cpu_collectives()
        jax.distributed.initialize()
        log.info("joined cluster as process %d of %d", jax.process_index(), jax.process_count())


def _enable_cpu_collectives() -> None:
    # CPU devices talk across processes through gloo (the default is none). The
    # setting only affects the CPU client, so it is harmless on GPU/TPU hosts; it is
    # set without asking for the backend, which must not start before initialize().
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_main_process() -> bool:
    return jax.process_index() == 0
