"""Command line: `lmc run`, `lmc sweep`, `lmc report`.

    lmc run    --config=configs/X.py[:arg] --workdir=DIR [--config.a.b=v ...] [--overwrite]
    lmc sweep  --config=configs/X.py --workdir=DIR [--parallel=P] [--print]
    lmc report DIR [DIR ...]

Flags follow the flax/big_vision convention (absl + ml_collections.config_flags).
User errors print one paragraph and exit 2, without a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from lmc.errors import UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun the same command to continue

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


def _define_run_flags(fv: flags.FlagValues, argv: list[str]) -> None:
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


def _define_sweep_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    _define_run_flags(fv, argv)
    flags.DEFINE_integer("parallel", 1, "points run at once", flag_values=fv)
    flags.DEFINE_bool(
        "print", False, "print one `lmc run` command line per point and exit", flag_values=fv
    )


def _parse(argv: list[str], define) -> flags.FlagValues:
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


def _config_and_workdir(fv: flags.FlagValues):
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


def _quiet_libraries() -> None:
    from absl import logging as absl_logging

    # Orbax logs every save at INFO through absl; keep stderr for our own progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cmd_run(argv: list[str]) -> int:
    fv = _parse(argv, _define_run_flags)
    config, config_file, workdir = _config_and_workdir(fv)
    _quiet_libraries()
    from lmc import distributed, preemption
    from lmc.experiments import run_experiment

    preemption.install()

    distributed.maybe_initialize(fv.coordinator, fv.num_processes, fv.process_id)
    run_experiment(config, workdir, overwrite=fv.overwrite, config_file=config_file)
    from lmc.report import report_dirs

    if distributed.is_main_process():
        print(report_dirs([workdir]))
        print(f"\nwrote {os.path.join(workdir, 'results.json')}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    fv = _parse(argv, _define_sweep_flags)
    config, config_file, workdir = _config_and_workdir(fv)
    _quiet_libraries()
    from lmc.sweep import run_sweep

    return run_sweep(
        config, config_file, workdir, argv=argv, parallel=fv.parallel, print_only=fv["print"].value
    )


def cmd_report(argv: list[str]) -> int:
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        raise UserError(f"lmc report needs at least one workdir\n\n{USAGE}")
    from lmc.report import report_dirs

    print(report_dirs(dirs))
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else EXIT_USER_ERROR
    command = argv[1]
    from lmc import compilation_cache
    from lmc.preemption import Preempted

    compilation_cache.enable()
    from lmc.train import DivergenceError

    try:
        if command not in COMMANDS:
            raise UserError(
                f"unknown command {command!r}; valid commands: {', '.join(COMMANDS)}\n\n{USAGE}"
            )
        return COMMANDS[command]([f"lmc {command}", *argv[2:]])
    except UserError as e:
        print(f"lmc: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DivergenceError as e:
        print(f"lmc: diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Preempted as e:
        print(f"lmc: {e}", file=sys.stderr)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
