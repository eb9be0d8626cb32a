"""Host BLAS threads per operation: one thread for small products and factorizations.

BLAS thread hand-offs cost more than a small product, and on a busy machine (other
jobs on the cores) a multi-threaded LAPACK call on a few-hundred-square matrix is
much slower than the same call on one thread (measured: benchmarks/README.md). The alignment methods decide per
operation from its multiply-adds.
"""

from __future__ import annotations

import contextlib

# Host operations below this many multiply-adds run on one BLAS thread.
SMALL_MACS = 2**26

_CONTROLLER = None


def single_threaded():
    """Context: host BLAS on one thread (no-op without threadpoolctl)."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()  # scanning the loaded libraries is slow: once
    return _CONTROLLER.limit(limits=1, user_api="blas")


def blas_threads(macs: int):
    """Context for one host operation of `macs` multiply-adds: one BLAS thread if small."""
    return single_threaded() if macs < SMALL_MACS else contextlib.nullcontext()
