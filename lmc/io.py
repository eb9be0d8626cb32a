"""Atomic file output: write a temp file in the same directory, fsync, rename.

A reader (or a crashed run's rerun) therefore sees either the old file or the whole
new one, never a prefix. Only process 0 writes; other processes return at once.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax


def is_writer() -> bool:
    return jax.process_index() == 0


def write_bytes_atomic(path: str | Path, data: bytes, *, any_process: bool = False) -> None:
    """`any_process=True` writes from whichever process calls (and never asks JAX for the
    process index, which would start a backend: the sweep driver must not claim devices)."""
    if not any_process and not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj, *, any_process: bool = False) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    write_bytes_atomic(path, data, any_process=any_process)


def read_json(path: str | Path):
    with open(path) as f:
        return json.load(f)
