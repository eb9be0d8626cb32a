"""Command-line flags and config loading, shared by `lmc run` and `lmc sweep`.

Flags follow the flax/big_vision convention (absl + ml_collections.config_flags):
`--config=FILE[:arg]` plus `--config.a.b=value` overrides. `parse` turns absl and
ml_collections failures into `UserError`s that name the flag.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from lmc.errors import UserError

USAGE = """usage:
  lmc run    [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.key=value ...] [--overwrite]
  lmc sweep  --config=configs/X.py --workdir=DIR [--parallel=P] [--print]
  lmc report DIR [DIR ...]
`lmc run` with no flags trains the default experiment (configs/default.py) into ./runs/default."""


def default_config_path() -> str:
    local = Path("configs/default.py")
    if local.exists():
        return str(local)
    return str(Path(__file__).resolve().parents[1] / "configs" / "default.py")


def define_run_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    # config_flags finds the --config.x overrides to register by scanning `sys_argv`.
    config_flags.DEFINE_config_file(
        "config",
        default_config_path(),
        "experiment config file",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir", None, "output directory (default: ./runs/<config name>)", flag_values=fv
    )
    flags.DEFINE_bool(
        "overwrite", False, "delete a workdir made by a different config", flag_values=fv
    )
    flags.DEFINE_string(
        "coordinator", None, "HOST:PORT of process 0 for multi-process runs", flag_values=fv
    )
    flags.DEFINE_integer(
        "num_processes", None, "number of processes (multi-process runs)", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "this process's index (multi-process runs)", flag_values=fv
    )


def define_sweep_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    define_run_flags(fv, argv)
    flags.DEFINE_integer("parallel", 1, "points run at once", flag_values=fv)
    flags.DEFINE_bool(
        "print", False, "print one `lmc run` command line per point and exit", flag_values=fv
    )


def parse(argv: list[str], define) -> flags.FlagValues:
    fv = flags.FlagValues()
    try:
        define(fv, argv)
        rest = fv(argv)
    except flags.Error as e:
        raise UserError(f"{e}\n\n{USAGE}") from None
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        # config_flags raises these for unknown --config.x keys or values of the wrong type.
        raise UserError(
            f"bad config override: {e}. Overrides must name an existing key of the config "
            "(see the config file or config.json of a run) with a value of the same type."
        ) from None
    if len(rest) > 1:
        raise UserError(f"unexpected arguments {rest[1:]}\n\n{USAGE}")
    return fv


def config_and_workdir(fv: flags.FlagValues):
    config_file = fv["config"].config_filename
    path = Path(config_file.split(":")[0])
    if not path.is_file():
        raise UserError(
            f"--config={config_file}: no such file (configs live in configs/, e.g. "
            "configs/default.py)"
        )
    try:
        config = fv["config"].value
        config.get("experiment")  # config_flags defers load errors to the first access
    except Exception as e:  # loading a config file runs user code
        raise UserError(f"cannot load --config={config_file}: {e}") from None
    if config is None:
        raise UserError(f"--config is required\n\n{USAGE}")
    workdir = fv.workdir or os.path.join("runs", path.stem)
    return config, config_file, workdir


def quiet_libraries() -> None:
    """Warnings only from libraries; lmc's own INFO lines (resuming, per-k results) as
    plain lines on stderr."""
    from absl import logging as absl_logging

    # Orbax logs every save at INFO through absl; keep stderr for our own progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax", "absl", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ours = logging.getLogger("lmc")
    if not any(getattr(h, "_lmc", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._lmc = True
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # absl's root handler would print it a second time
