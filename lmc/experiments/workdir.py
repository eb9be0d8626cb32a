"""Guard a workdir: one config per workdir, reruns reuse it, a different config is refused.

Local directories and object-store URLs alike (`lmc.io`)."""

from __future__ import annotations

from lmc import io
from lmc.errors import UserError
from lmc.io.lock import LOCK_FILE
from lmc.provenance import config_hash

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


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
        if not overwrite:
            raise UserError(
                f"workdir {workdir} was made by a different config ({diff}). Use a new "
                "--workdir, or pass --overwrite to delete its contents and start over."
            )
        if io.is_writer():
            for name in io.listdir(workdir):
                if name != LOCK_FILE:
                    io.remove_tree(workdir / name)
    if io.is_writer():
        io.makedirs(workdir)
        io.write_json_atomic(saved_path, config_dict)
    return workdir


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
