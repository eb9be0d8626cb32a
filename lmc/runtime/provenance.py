"""What produced a result: versions, commit, devices, config hash."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import jax

import lmc

# Keys that change how a run looks or where it runs, not what it computes; excluded
# from the hash so that e.g. turning the progress bar or a tracker off, or resuming on another
# device count (same math, other float summation order), keeps the workdir valid.
COSMETIC_KEYS = ("progress", "log_every_steps", "mesh", "log")


def config_to_dict(config) -> dict:
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def config_hash(config_dict: dict) -> str:
    semantic = {k: v for k, v in config_dict.items() if k not in COSMETIC_KEYS}
    blob = json.dumps(semantic, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_commit() -> str | None:
    root = Path(lmc.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config_dict: dict, wall_s: float, *, devices: bool = True) -> dict:
    """Versions, commit, devices, config hash, wall time. `devices=False` leaves the
    devices out and never starts a JAX backend (the sweep driver must not claim the
    accelerator its points need)."""
    import flax

    if not devices:
        return {"lmc_version": lmc.__version__, "git_commit": git_commit(),
                "jax_version": jax.__version__, "flax_version": flax.__version__,
                "config_hash": config_hash(config_dict), "wall_s": round(wall_s, 3)}  # fmt: skip
    devices = jax.devices()
    return {
        "lmc_version": lmc.__version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "devices": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)",
        "config_hash": config_hash(config_dict),
        "wall_s": round(wall_s, 3),
    }
