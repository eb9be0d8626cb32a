"""Guard a workdir: one config per workdir, reruns reuse it, a different config is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

from lmc.errors import UserError
from lmc.io import is_writer, read_json, write_json_atomic
from lmc.provenance import config_hash

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def prepare(workdir: str | Path, config_dict: dict, overwrite: bool) -> Path:
    """Create `workdir` or check that it was made by the same config.

    With `overwrite`, a workdir made by another config is emptied first (only files
    lmc writes there: runs, checkpoints, results, plots)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir={workdir} exists and is not a directory")
    saved_path = workdir / CONFIG_FILE
    if saved_path.exists():
        try:
            saved = read_json(saved_path)
        except ValueError:
            saved = {}
        if config_hash(saved) != config_hash(config_dict):
            diff = _first_differences(saved, config_dict)
            if not overwrite:
                raise UserError(
                    f"workdir {workdir} was made by a different config ({diff}). Use a new "
                    "--workdir, or pass --overwrite to delete its contents and start over."
                )
            if is_writer():
                for child in workdir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
    if is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(saved_path, config_dict)
    return workdir


def _first_differences(old: dict, new: dict, prefix: str = "", limit: int = 3) -> str:
    diffs = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}{key}.")
        elif a != b:
            diffs.append(f"{path[:-1]}: {a!r} -> {b!r}")

    walk(old, new, prefix)
    return (
        "; ".join(diffs[:limit]) + (" ..." if len(diffs) > limit else "")
        or "unreadable config.json"
    )
