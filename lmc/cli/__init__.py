"""Command line: `lmc run`, `lmc sweep`, `lmc report`.

    lmc run    --config=configs/X.py[:arg] --workdir=DIR [--config.a.b=v ...] [--overwrite]
    lmc sweep  --config=configs/X.py --workdir=DIR [--parallel=P] [--print]
    lmc report DIR [DIR ...]

User errors print one paragraph and exit 2, without a traceback (lmc.errors has
every exit code). Flag parsing and config loading live in `lmc.cli.flags`, shared
with `lmc.cli.sweep`.
"""

from __future__ import annotations

import os
import sys

from lmc.cli import flags as flags_lib
from lmc.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_LOCK_LOST,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    UserError,
)


def cmd_run(argv: list[str]) -> int:
    fv = flags_lib.parse(argv, flags_lib.define_run_flags)
    config, config_file, workdir = flags_lib.config_and_workdir(fv)
    if fv.show:
        from lmc.cli.show import describe

        print(describe(config, config_file, flags_lib.config_overrides(argv)))
        return 0
    flags_lib.quiet_libraries()
    from lmc.cli.report import report_dirs
    from lmc.experiments import run_experiment
    from lmc.runtime import distributed, preemption

    preemption.install()
    distributed.maybe_initialize(fv.coordinator, fv.num_processes, fv.process_id)
    run_experiment(
        config, workdir, overwrite=fv.overwrite, config_file=config_file, parent=fv.parent
    )
    if distributed.is_main_process():
        print(report_dirs([workdir]))
        print(f"\nwrote {os.path.join(workdir, 'results.json')}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    fv = flags_lib.parse(argv, flags_lib.define_sweep_flags)
    config, config_file, workdir = flags_lib.config_and_workdir(fv)
    flags_lib.quiet_libraries()
    from lmc.cli.sweep import run_sweep

    return run_sweep(
        config, config_file, workdir, argv=argv, parallel=fv.parallel, print_only=fv["print"].value
    )


def cmd_report(argv: list[str]) -> int:
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        raise UserError(f"lmc report needs at least one workdir\n\n{flags_lib.USAGE}")
    from lmc.cli.report import report_dirs

    print(report_dirs(dirs))
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (`lmc report --help | head`): stop quietly, as cat does.
        # stdout points at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(flags_lib.USAGE)
        return 0 if len(argv) >= 2 else EXIT_USER_ERROR
    command = argv[1]
    if command in flags_lib.HELP and any(a in ("-h", "--help", "-help") for a in argv[2:]):
        print(flags_lib.command_help(command))
        return 0
    from lmc.runtime import compilation_cache
    from lmc.runtime.io.lock import LockLost
    from lmc.runtime.preemption import Preempted
    from lmc.training import DivergenceError

    compilation_cache.enable()
    try:
        if command not in COMMANDS:
            raise UserError(
                f"unknown command {command!r}; valid commands: {', '.join(COMMANDS)}\n\n"
                f"{flags_lib.USAGE}"
            )
        return COMMANDS[command]([f"lmc {command}", *argv[2:]])
    except UserError as e:
        print(f"lmc: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DivergenceError as e:
        print(f"lmc: diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except LockLost as e:
        print(f"lmc: lock lost: {e}", file=sys.stderr)
        return EXIT_LOCK_LOST
    except Preempted as e:
        print(f"lmc: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED if e.interrupted else EXIT_PREEMPTED
    except KeyboardInterrupt:  # Ctrl-C outside training, or twice: no traceback
        print("lmc: interrupted; rerun the same command to continue from the last "
              "checkpoint", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
