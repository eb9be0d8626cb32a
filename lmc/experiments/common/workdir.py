"""Guard a workdir: one config per workdir, reruns reuse it, a different config is refused.

Evaluation keys are the exception: a config that differs only in `EVAL_ONLY_KEYS`
(which methods, how many alphas, the alignment's settings) trains the same networks,
so the workdir is adopted for it and its checkpoints are reused: a trained pair is
re-evaluated with another method without retraining. The previous results.json is
kept beside the new one as results.<its config hash>.json.

Local directories and object-store URLs alike (`lmc.runtime.io`)."""

from __future__ import annotations

import json
import logging

from lmc.errors import UserError
from lmc.runtime import io
from lmc.runtime.io.lock import LOCK_FILE
from lmc.runtime.provenance import config_hash

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Keys that change what is measured on the trained networks, never the training:
# `eval.batch_size` is absent because train-time evaluation (metrics.jsonl) uses it.
EVAL_ONLY_KEYS = (
    ("eval", "methods"), ("eval", "num_alphas"), ("eval", "norm"),
    ("eval", "bn_reset_batches"), ("align",),
)  # fmt: skip


def prepare(workdir: io.PathLike, config_dict: dict, overwrite: bool):
    """Create `workdir` or check that it was made by the same config; its epath.

    With `overwrite`, a workdir made by another config is emptied first (only files
    lmc writes there: runs, checkpoints, results, plots; the run's own lock stays)."""
    workdir = io.path(workdir)
    if io.is_file(workdir):
        raise UserError(
            f"--workdir={workdir} is a file, not a directory. Use another --workdir, or "
            "move the file away."
        )
    saved_path = workdir / CONFIG_FILE
    saved = read_saved_config(saved_path)
    if saved is not None and config_hash(saved) != config_hash(config_dict):
        diff = _first_differences(saved, config_dict)
        same_training = config_hash(_training(saved)) == config_hash(_training(config_dict))
        if overwrite:
            if io.is_writer():
                for name in io.listdir(workdir):
                    if name != LOCK_FILE:
                        io.remove_tree(workdir / name)
        elif same_training:
            _keep_previous_results(workdir, saved, diff)
        else:
            raise UserError(
                f"workdir {workdir} was made by a different config ({diff}). Use a new "
                "--workdir, or pass --overwrite to delete its contents and start over."
            )
    if io.is_writer():
        io.makedirs(workdir)
        io.write_json_atomic(saved_path, config_dict)
    return workdir


def _training(config_dict: dict) -> dict:
    """The config without its evaluation-only keys."""
    out = json.loads(json.dumps(config_dict))
    for path in EVAL_ONLY_KEYS:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


def _keep_previous_results(workdir, saved: dict, diff: str) -> None:
    log.warning(
        "workdir %s: only evaluation keys changed (%s); reusing its trained networks", workdir, diff
    )
    previous = workdir / RESULTS_FILE
    if io.is_writer() and io.exists(previous):
        kept = workdir / f"results.{config_hash(saved)}.json"
        io.write_bytes_atomic(kept, io.read_bytes(previous))
        log.warning("workdir %s: the previous results are kept as %s", workdir, kept.name)


def read_saved_config(path) -> dict | None:
    """The config a workdir was made by; None if it has none. An unreadable or corrupt
    file is a UserError naming it (guessing would mix two configs in one workdir)."""
    with io.os_errors(path, "reading it"):
        try:
            saved = io.read_json(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None  # the workdir is below a file: makedirs says so
        except IsADirectoryError:
            raise UserError(_corrupt(path, "it is a directory, not a file")) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(_corrupt(path, f"it is not valid JSON ({e})")) from None
    if not isinstance(saved, dict):
        raise UserError(_corrupt(path, f"it holds a {type(saved).__name__}, not a JSON object"))
    return saved


def _corrupt(path, why: str) -> str:
    return (
        f"{path} is corrupt: {why}. It records the config this workdir was made by; "
        "restore it, or delete it to adopt the workdir with the current config (the "
        "checkpoints there are reused), or use a new --workdir, or pass --overwrite to "
        "delete the workdir's contents and start over."
    )


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
