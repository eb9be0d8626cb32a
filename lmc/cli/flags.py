"""Command-line flags and config loading, shared by `lmc run` and `lmc sweep`.

Flags follow the flax/big_vision convention (absl + ml_collections.config_flags):
`--config=FILE[:arg]` plus `--config.a.b=value` overrides. `parse` turns absl and
ml_collections failures into `UserError`s that name the flag.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from lmc.errors import UserError

USAGE = """usage:
  lmc run    [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.key=value ...] [--overwrite]
  lmc run    --config=configs/X.py --show      (list every config key, value and comment)
  lmc sweep  --config=configs/X.py --workdir=DIR [--parallel=P] [--print]
  lmc report DIR [DIR ...]
  lmc COMMAND --help
`lmc run` with no flags trains the default experiment (configs/default.py) into ./runs/default."""

HELP = {
    "run": """lmc run: train the config's networks, align, evaluate; write WORKDIR/results.json.

Rerunning the same command resumes an interrupted run (or reuses a finished one);
a workdir made by another config is refused unless --overwrite. Exit codes: 0 ok,
2 user error, 3 diverged, 4 lock lost (another run took over the workdir),
75 preempted (SIGTERM), 130 interrupted (Ctrl-C); after 75 or 130 rerun the same
command to continue.""",
    "sweep": """lmc sweep: every point of the config file's sweep() as its own `lmc run` in
WORKDIR/<point>/, --parallel at a time; finished points are skipped, unfinished ones
resume. --print prints one `lmc run` command per point instead (for schedulers).""",
    "report": """lmc report DIR [DIR ...]: each experiment's table from the results.json in
DIR (a run) or its sub-directories (a sweep); several DIRs are compared.""",
}


# The repository (or source tree) lmc runs from: its configs/ serve any directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_config_path() -> str:
    local = Path("configs/default.py")
    if local.exists():
        return str(local)
    return str(REPO_ROOT / "configs" / "default.py")


def in_repo(value: str) -> str:
    """A --config value as given, or the repository's file of that relative path when
    only that exists: `--config=configs/X.py` works outside the repository, as the
    default config does."""
    path, sep, arg = value.partition(":")
    if not path or Path(path).is_absolute() or Path(path).exists():
        return value
    repo = REPO_ROOT / path
    return f"{repo}{sep}{arg}" if repo.is_file() else value


def _configs_in_repo(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith(("--config=", "-config=")):
            flag, _, value = a.partition("=")
            out[i] = f"{flag}={in_repo(value)}"
        elif a in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = in_repo(out[i + 1])
    return out


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
    flags.DEFINE_string(
        "parent", None,
        "workdir of a shared parent (trained by `lmc sweep` or `--config.experiment=parent`) "
        "to spawn the children from, instead of training a parent in --workdir",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool(
        "show", False, "print every config key with its value and comment, then exit",
        flag_values=fv,
    )  # fmt: skip


def define_sweep_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    define_run_flags(fv, argv)
    flags.DEFINE_integer("parallel", 1, "points run at once", flag_values=fv)
    flags.DEFINE_bool(
        "print", False, "print one `lmc run` command line per point and exit", flag_values=fv
    )


def config_overrides(argv: list[str]) -> dict[str, str]:
    """Dotted key -> its flag, for every `--config.KEY[=VALUE]` flag in `argv`."""
    keys = {}
    for flag in argv:
        name = flag.lstrip("-").split("=", 1)[0]
        if flag.startswith("-") and name.startswith("config."):
            keys[name[len("config.") :]] = flag
    return keys


def parse(argv: list[str], define) -> flags.FlagValues:
    argv = _configs_in_repo(argv)
    fv = flags.FlagValues()
    try:
        define(fv, argv)
        rest = fv(argv)
    except flags.Error as e:
        # config_flags reports a config file that raised as a flag error whose text is
        # the traceback; say which line of the file raised what instead.
        if "Error whilst parsing config file" in str(e):
            raise UserError(_config_file_error(argv, str(e))) from None
        raise UserError(f"{e}\n\n{USAGE}") from None
    except Exception as e:
        # Running the config file (import, get_config) is user code: anything it raises
        # is the file's problem, reported with the line that raised it.
        if _raised_in_config_file(e, argv):
            text = "".join(traceback.format_exception(e))
            raise UserError(_config_file_error(argv, text)) from None
        if isinstance(e, (KeyError, AttributeError, ValueError, TypeError)):
            # config_flags raises these for unknown --config.x keys or wrong-type values.
            raise UserError(_override_error(e, argv)) from None
        raise
    if len(rest) > 1:
        raise UserError(f"unexpected arguments {rest[1:]}\n\n{USAGE}")
    return fv


def _config_arg(argv: list[str]) -> str:
    """The --config value on the command line (the default config file if none)."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(("--config=", "-config=")):
            value = a.split("=", 1)[1]
        elif a in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
    return value or default_config_path()


def _raised_in_config_file(error: Exception, argv: list[str]) -> bool:
    config_file = os.path.abspath(_config_arg(argv).split(":", 1)[0])
    frames = traceback.extract_tb(error.__traceback__)
    return any(os.path.abspath(f.filename) == config_file for f in frames)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _config_file_error(argv: list[str], text: str) -> str:
    """One paragraph for a config file that raised on import or in get_config(arg):
    the file and line that raised, the exception, and what to do."""
    config_arg = _config_arg(argv)
    path, _, arg = config_arg.partition(":")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    raised = lines[-1].strip() if lines else "an error"
    frames = _FRAME.findall(text)
    own = [f for f in frames if os.path.abspath(f[0]) == os.path.abspath(path)]
    where = f"{own[-1][0]}:{own[-1][1]} (in {own[-1][2]})" if own else path
    if arg:
        hint = (
            f"get_config received the argument {arg!r} (after ':'); see the file's docstring "
            "for the arguments it takes."
        )
    else:
        hint = "Fix the file, or pick another config (`ls configs/`)."
    return f"cannot load --config={config_arg}: {where} raised {raised}. {hint}"


def _override_error(error: Exception, argv: list[str]) -> str:
    """One readable sentence for a bad --config.x override: which flag, which key is
    unknown, the suggestion ml_collections made, and where the keys are listed."""
    text = str(error.args[0]) if error.args else str(error)
    try:  # some versions hand over the repr of the message
        text = str(ast.literal_eval(text)) if text[:1] in "'\"" else text
    except (ValueError, SyntaxError):
        pass
    lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
    unknown = lines[0] if lines else ""
    suggestion = next((line for line in lines[1:] if line.startswith("Did you mean")), "")
    flag = next(
        (a.split("=", 1)[0] for a in argv
         if a.startswith("--config.") and unknown and f".{unknown}" in a.split("=", 1)[0]),
        None,
    )  # fmt: skip
    listing = "`lmc run --config=FILE --show` lists every key with its value"
    if flag and unknown:
        hint = f" {suggestion.replace('instead of', 'rather than')}" if suggestion else ""
        return f"{flag}: the config has no key {unknown!r}.{hint} ({listing})"
    return f"bad config override: {text.strip()}. Overrides must name an existing key ({listing})."


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


class _StderrHandler(logging.Handler):
    """Plain lines to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def quiet_libraries() -> None:
    """Warnings only from libraries; lmc's own INFO lines (resuming, per-k results) as
    plain lines on stderr."""
    from absl import logging as absl_logging

    # Orbax logs every save at INFO through absl; keep stderr for our own progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax", "absl", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ours = logging.getLogger("lmc")
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        ours.addHandler(_StderrHandler())
    ours.setLevel(logging.INFO)
    ours.propagate = False  # absl's root handler would print it a second time


def command_help(command: str) -> str:
    """`lmc COMMAND --help`: what it does, then its flags with their help strings."""
    text = [HELP[command], ""]
    if command in ("run", "sweep"):
        fv = flags.FlagValues()
        (define_sweep_flags if command == "sweep" else define_run_flags)(fv, ["lmc"])
        for name in sorted(fv):
            flag = fv[name]
            shown = default_config_path() if name == "config" else flag.default
            default = "" if shown in (None, False) else f" (default: {shown})"
            text.append(f"  --{name}: {flag.help}{default}")
        text.append("  --config.KEY=VALUE: override any config key (see --show)")
    text += ["", USAGE]
    return "\n".join(text)
