"""SIGTERM (preemption) and SIGINT (Ctrl-C): finish the current step, checkpoint it, stop.

SIGTERM exits 75 (EX_TEMPFAIL), Ctrl-C exits 130 (the shell's convention for SIGINT);
either way one line says how to resume. A second Ctrl-C stops at once.

Preemptible TPU VMs and SLURM (`--signal=TERM@60`, or scancel) send SIGTERM some time
before killing a job. The handler only sets a flag; the train loop checks it after
each step, saves a checkpoint at that step and raises `Preempted`, which the CLI turns
into exit code 75 (EX_TEMPFAIL). Rerunning the same command continues from there.
On several processes JAX's own preemption sync point is used, so that every process
agrees on the step and the collective save does not deadlock.
"""

from __future__ import annotations

import signal
import threading

import jax

_requested = threading.Event()
_signal = {"number": signal.SIGTERM}


class Preempted(Exception):  # noqa: N818 - it is a notice, not an error
    def __init__(self, step: int, where: str):
        interrupted = _signal["number"] == signal.SIGINT
        what = "interrupted (Ctrl-C)" if interrupted else "preempted (SIGTERM)"
        super().__init__(
            f"{where}: {what} at step {step}; a checkpoint of that step was saved. "
            "Rerun the same command to continue."
        )
        self.step = step
        self.interrupted = interrupted


def _handler(signum, frame):
    del frame
    if signum == signal.SIGINT and _requested.is_set():
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    _signal["number"] = signum
    _requested.set()


def install() -> None:
    """Route SIGTERM and SIGINT to the flag (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)


def requested(step: int) -> bool:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except Exception:  # preemption service not enabled in this runtime
            return _requested.is_set()
    return _requested.is_set()


def reset() -> None:
    _requested.clear()
