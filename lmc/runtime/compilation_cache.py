"""JAX's persistent compilation cache, on by default for the `lmc` command.

A sweep is hundreds of `lmc run` processes that compile the same programs: model
init, train step, evaluators. With the cache, later processes load the executables
instead of compiling them (docs/guide/scaling.md has what it saves).

    LMC_COMPILATION_CACHE=DIR     cache directory (default ~/.cache/lmc/jax)
    LMC_COMPILATION_CACHE=off     no cache

A directory the user already gave JAX (JAX_COMPILATION_CACHE_DIR) is left alone.
The cache is size-capped (MAX_BYTES, least recently used entries go first) and
file-locked, so parallel sweep processes can share it. Library users can call
`enable()` themselves before their first compilation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

ENV = "LMC_COMPILATION_CACHE"
DEFAULT_DIR = Path("~/.cache/lmc/jax")
MAX_BYTES = 4 << 30
_OFF = {"0", "off", "none", "false", "no"}

log = logging.getLogger(__name__)


def enable(path: str | os.PathLike | None = None) -> str | None:
    """Turn the cache on (before any compilation); returns the directory, or None."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    setting = str(path) if path is not None else os.environ.get(ENV, "")
    if setting.strip().lower() in _OFF and setting.strip():
        return None
    directory = Path(setting or DEFAULT_DIR).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home must not stop a run
        log.warning("compilation cache disabled: cannot create %s (%s)", directory, e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Model init compiles hundreds of small programs, each too quick for the default
    # threshold: cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(directory)
