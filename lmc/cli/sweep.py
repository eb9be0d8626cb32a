"""`lmc sweep`: every point of a config file's `sweep()` as its own `lmc run`.

A config file may define

    def sweep():            # or sweep(arg), receiving the `:arg` of --config=FILE:arg
        for k in (0, 100, 500):
            for seed in (1, 2):
                yield {"spawn.step": k, "seed": seed}   # dotted keys into get_config()

or, for a grid that follows command-line overrides (`--config.instability.spawn_steps=`),

    def sweep(config):      # get_config(arg) with the command-line overrides applied
        for k in config.instability.spawn_steps:
            yield {"instability.spawn_steps": (k,)}

`lmc sweep --config=FILE --workdir=DIR [--config.a=b ...] [--parallel=P]` runs point
`{"spawn.step": 0, "seed": 1}` as

    python -m lmc.cli run --config=FILE --workdir=DIR/spawn.step=0,seed=1 \\
        [--config.a=b ...] --config.spawn.step=0 --config.seed=1

(a subprocess each, P at a time; its output goes to DIR/logs/<point>.log). A point
whose results.json is complete for exactly this config is skipped; an unfinished one
is rerun in its workdir, where `lmc run` resumes from its checkpoints, so a killed
sweep continues where it stopped. DIR/sweep.json records every point's status; at the
end the `lmc report DIR` table is printed. `--print` prints one `lmc run` command line
per point instead (for SLURM arrays and other schedulers; point i is line i+1).

Every point is checked before anything runs: its keys must exist in the config and
its command line must reproduce its config. A `sweep()` that does not take the config
has a fixed grid: a command-line override of a key its points set is refused. One sweep per DIR at a time
(DIR/.sweep.lock). Multi-process sweeps (every host runs the same `lmc sweep`, each
point a multi-process `lmc run`) forward --coordinator/--num_processes/--process_id;
only process 0 takes the lock and writes sweep.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmc.cli import flags
from lmc.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, UserError
from lmc.runtime import io
from lmc.runtime.io.lock import workdir_lock

log = logging.getLogger(__name__)

LOCK_FILE = ".sweep.lock"
SUMMARY_FILE = "sweep.json"
LOG_DIR = "logs"
SCHEMA_VERSION = 1
SHARED_PARENT = "shared_parent"
_FORWARDED_BOOLS = ("overwrite", "nooverwrite")
_FORWARDED_VALUES = ("coordinator", "num_processes", "process_id")
_MAX_NAME = 120


@dataclass
class Point:
    index: int
    name: str
    overrides: dict
    workdir: io.PathLike  # a local path or a URL (gs://...)
    args: list[str]  # everything after `lmc run`
    config_hash: str
    config: object = None  # the point's resolved ConfigDict
    status: str = "pending"  # done | skipped | failed | preempted | interrupted | pending
    returncode: int | None = None
    wall_s: float | None = None
    extra: dict = field(default_factory=dict)

    def command(self, program: list[str]) -> list[str]:
        return [*program, "run", *self.args]


# ---------------------------------------------------------------- planning


def load_sweep(config_file: str, config=None) -> tuple[list[dict], bool]:
    """The override dicts `sweep()` in `config_file` (`path[:arg]`) yields, and whether
    sweep() took the config. A parameter named `config` receives `config` (the file's
    config with the command-line overrides applied), so the grid can follow them; any
    other parameter receives the `:arg`."""
    path, _, arg = config_file.partition(":")
    module_name = "lmc_sweep_config_" + hashlib.sha1(path.encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"--config={config_file}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code
        raise UserError(f"cannot load --config={config_file}: {e}") from None
    fn = getattr(module, "sweep", None)
    if not callable(fn):
        raise UserError(
            f"{path} defines no sweep(); `lmc sweep` needs a function yielding override "
            "dicts such as {'spawn.step': 100, 'seed': 1} (use `lmc run` for a single run)"
        )
    try:
        names = list(inspect.signature(fn).parameters)
        kwargs = {n: config if n == "config" else arg or None for n in names}
        points = list(fn(**kwargs))
    except Exception as e:
        raise UserError(f"{path}: sweep() raised {type(e).__name__}: {e}") from None
    if not points:
        raise UserError(f"{path}: sweep() yielded no points")
    for i, point in enumerate(points):
        if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
            raise UserError(
                f"{path}: sweep() point {i} is {point!r}; each point must be a dict of dotted "
                "config keys to values"
            )
    return [dict(p) for p in points], "config" in names


def check_key(config, key: str, where: str) -> None:
    """Raise a UserError unless dotted `key` names an existing config value."""
    node, walked = config, []
    for part in key.split("."):
        children = list(node.keys()) if hasattr(node, "keys") else None
        if children is None or part not in children:
            at = ".".join(walked) or "the top level"
            valid = ", ".join(sorted(children)) if children else "(not a config group)"
            raise UserError(
                f"{where}: {key!r} is not a config key ({part!r} not found at {at}; "
                f"valid there: {valid}). Fix sweep() or the config."
            )
        node = node[part]
        walked.append(part)
    if hasattr(node, "keys"):
        raise UserError(f"{where}: {key!r} is a config group; sweep over its leaves instead")


def format_value(value) -> str:
    """`value` as ml_collections' config_flags parses it back (`--config.key=<this>`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def point_name(overrides: dict, varying=None) -> str:
    """A short, readable, filesystem-safe directory name from the last part of each
    key: `{"instability.spawn_steps": (100,), "seed": 1}` -> `spawn_steps=100,seed=1`.
    Keys outside `varying` (the same at every point) are left out of the name. The full
    overrides are in the point's config.json and sweep.json."""
    if varying is not None and any(k in varying for k in overrides):
        overrides = {k: v for k, v in overrides.items() if k in varying}

    def short(v):
        if isinstance(v, (tuple, list)):
            return "-".join(short(x) for x in v) or "empty"
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(v)).strip("-") or "empty"

    leaves = [k.rpartition(".")[2] for k in overrides]
    keys = leaves if len(set(leaves)) == len(leaves) else list(overrides)
    name = (
        ",".join(f"{k}={short(v)}" for k, v in zip(keys, overrides.values(), strict=True)) or "base"
    )
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}~{digest}"
    return name


def forwarded_args(argv: list[str]) -> list[str]:
    """The flags of `lmc sweep ...` that every point's `lmc run` gets too: config
    overrides, --overwrite and the multi-process flags."""
    out, i = [], 1
    while i < len(argv):
        token = argv[i]
        bare = token.lstrip("-")
        name = bare.split("=", 1)[0]
        takes_value = name.startswith("config.") or name in _FORWARDED_VALUES
        if token.startswith("-") and takes_value:
            if "=" in bare:
                out.append(token)
            elif i + 1 < len(argv):
                out.append(f"--{name}={argv[i + 1]}")
                i += 1
        elif token.startswith("-") and name in _FORWARDED_BOOLS:
            out.append(token)
        i += 1
    return out


def plan(config, config_file: str, workdir: io.PathLike, argv: list[str]) -> list[Point]:
    """Every point, validated: keys exist and each command line yields its config."""
    workdir = io.path(workdir)
    base = forwarded_args(argv)
    raw, follows = load_sweep(config_file, config)
    keys = {k for overrides in raw for k in overrides}
    clash = sorted(set(flags.config_overrides(base)) & keys)
    if clash and not follows:
        path = config_file.partition(":")[0]
        raise UserError(
            f"{', '.join('--config.' + k for k in clash)}: the points of sweep() in {path} "
            "set this key themselves, and sweep() does not take the config, so its grid "
            "cannot follow the command line. Change the grid in the file, or define "
            "`def sweep(config)` there to build it from the config with your overrides"
        )
    varying = {k for k in keys if len({repr(o.get(k)) for o in raw}) > 1}
    points, names = [], {}
    for i, overrides in enumerate(raw):
        where = f"sweep point {i} {overrides} of {config_file.partition(':')[0]}"
        for key in overrides:
            check_key(config, key, where)
        name = point_name(overrides, varying)
        if name in names or name == SHARED_PARENT:
            raise UserError(f"{where} repeats point {names.get(name)} (both are named {name!r})")
        names[name] = i
        points.append(_point(i, name, overrides, workdir, config_file, base, where))
    return points


def _point(index, name, overrides, workdir, config_file, base, where) -> Point:
    """A point's `lmc run` arguments, checked: its command line reproduces its config."""
    from lmc.runtime.provenance import config_hash, config_to_dict

    point_dir = workdir / name
    # A key the point sets was derived from the command line's value (sweep(config)):
    # the point's value replaces it (two tuple flags for one key would be merged).
    replaced = {f for k, f in flags.config_overrides(base).items() if k in overrides}
    base = [f for f in base if f not in replaced]
    args = [f"--config={config_file}", f"--workdir={point_dir}", *base]
    args += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
    try:
        fv = flags.parse(["lmc run", *args], flags.define_run_flags)
        point_config, _, _ = flags.config_and_workdir(fv)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for key, value in overrides.items():
        got = point_config
        for part in key.split("."):
            got = got[part]
        want = tuple(value) if isinstance(value, list) else value
        if got != want:
            raise UserError(
                f"{where}: --config.{key}={format_value(value)} parses as {got!r}, not "
                f"{value!r}; give the value with the type the config uses"
            )
    digest = config_hash(config_to_dict(point_config))
    return Point(index, name, overrides, point_dir, args, digest, point_config)


def shared_parent(points: list[Point], workdir: Path, config_file: str, argv) -> Point | None:
    """The first stage of a sweep whose points all spawn from the same parent (they differ
    only in children: spawn steps, child seeds, methods): one `lmc run` of the `parent`
    experiment keeping every spawn step any point needs. Points then run with
    `--parent=DIR/shared_parent` and only train children. None if they don't share one."""
    from lmc import experiments, training
    from lmc.runtime.provenance import config_to_dict

    if len(points) < 2:
        return None
    steps, identities = set(), []
    for p in points:
        module = experiments.module_for(p.config.experiment)
        if not hasattr(module, "parent_steps") or not training.is_spawned(p.config):
            return None
        steps.update(module.parent_steps(p.config))
        identities.append(training.parent_identity(config_to_dict(p.config)))
    if not steps or any(i != identities[0] for i in identities[1:]):
        return None
    overrides = {"experiment": "parent", "instability.spawn_steps": tuple(sorted(steps))}
    where = f"the shared parent of {config_file.partition(':')[0]}'s sweep"
    return _point(-1, SHARED_PARENT, overrides, workdir, config_file, forwarded_args(argv), where)


def point_state(point: Point) -> str:
    """'done' (results.json complete for this config), 'other' (workdir made by another
    config), 'partial' (started) or 'new'."""
    from lmc.experiments.common.workdir import CONFIG_FILE, RESULTS_FILE
    from lmc.runtime.provenance import config_hash

    results = _read_json(point.workdir / RESULTS_FILE)
    if (
        results
        and results.get("complete") is True
        and results.get("provenance", {}).get("config_hash") == point.config_hash
    ):
        return "done"
    saved = _read_json(point.workdir / CONFIG_FILE)
    if saved is not None:
        return "partial" if config_hash(saved) == point.config_hash else "other"
    return "partial" if io.exists(point.workdir) else "new"


def _read_json(path):
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- running


def run_sweep(
    config,
    config_file: str,
    workdir: io.PathLike,
    *,
    argv: list[str],
    parallel: int = 1,
    print_only: bool = False,
) -> int:
    """`lmc sweep`: run (or with `print_only` print) every point; 0 when all are done."""
    workdir = io.path(workdir)
    if parallel < 1:
        raise UserError(f"--parallel={parallel} must be at least 1")
    points = plan(config, config_file, workdir, argv)
    stage = shared_parent(points, workdir, config_file, argv)
    if stage is not None:
        for p in points:
            p.args.append(f"--parent={stage.workdir}")
    if print_only:
        # With a shared parent, line 1 is the first stage: run it before the others
        # (e.g. an array job with --dependency=afterok on it).
        for p in ([stage] if stage else []) + points:
            print(shlex.join(p.command(["lmc"])))
        return 0
    forwarded = forwarded_args(argv)
    multiprocess = any(a.lstrip("-").startswith(_FORWARDED_VALUES) for a in forwarded)
    main = _process_index(forwarded) == 0
    if (multiprocess or _cluster()) and parallel > 1:
        raise UserError(
            "--parallel > 1 in a multi-process sweep: every host must run the points in the "
            "same order, one at a time; drop --parallel"
        )
    overwrite = any(a.lstrip("-").split("=")[0] == "overwrite" for a in forwarded)
    io.makedirs(workdir)
    with _lock(workdir) if main else contextlib.nullcontext():
        todo = []
        for p in ([stage] if stage else []) + points:
            state = point_state(p)
            if state == "done":
                p.status = "skipped"
            elif state == "other" and not overwrite:
                raise UserError(
                    f"{p.workdir} was made by a different config than sweep point {p.index} "
                    "now gives (the config file or --config overrides changed). Use a new "
                    "--workdir, or pass --overwrite to redo such points."
                )
            else:
                todo.append(p)
        everything = ([stage] if stage else []) + points
        skipped = len(everything) - len(todo)
        shared = f", one shared parent ({stage.workdir})" if stage else ""
        _say(f"sweep: {len(points)} points in {workdir}{shared}, {skipped} already done, "
             f"{len(todo)} to run ({parallel} at a time)", main)  # fmt: skip
        summary = _Summary(workdir, config_file, forwarded, everything, enabled=main)
        summary.write()
        process = _process_index(forwarded)
        interrupted = 0
        if stage is not None and stage in todo:  # the first stage: every point needs it
            interrupted = _execute([stage], 1, workdir, summary, process)
            todo.remove(stage)
        if stage is None or stage.status in ("done", "skipped") and not interrupted:
            interrupted = _execute(todo, parallel, workdir, summary, process)
        summary.write()
        failed = [p for p in everything if p.status not in ("done", "skipped")]
        if main and not failed:  # under the lock: the pooled results.json is its writes too
            _aggregate(config, config_file, workdir, points)
    if main:
        _print_report(workdir)
        if failed:
            names = ", ".join(f"{p.name} ({p.status})" for p in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            print(f"\nsweep: {len(failed)} of {len(points)} points not done: {names}{more}. "
                  f"Logs: {workdir / LOG_DIR}. Rerun the same command to retry them.",
                  file=sys.stderr)  # fmt: skip
    if interrupted:
        return 128 + interrupted
    return 1 if failed else 0


def _execute(todo: list[Point], parallel: int, workdir, summary, process: int) -> int:
    """Run the points, `parallel` at a time; returns the signal that stopped us, or 0."""
    main = process == 0
    suffix = f".p{process}" if process else ""  # processes of a multi-host sweep
    program = [sys.executable, "-m", "lmc.cli"]
    env = child_env(workdir)
    log_dir = local_log_dir(workdir)
    with io.os_errors(log_dir, "creating the log directory"):
        log_dir.mkdir(parents=True, exist_ok=True)
    pending, running = list(todo), []
    stop = {"signal": 0}

    def on_signal(signum, frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (pending or running) and not stop["signal"]:
            while pending and len(running) < parallel and not stop["signal"]:
                p = pending.pop(0)
                log_path = log_dir / f"{p.name}{suffix}.log"
                with open(log_path, "ab") as f:
                    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                            f"{shlex.join(p.command(['lmc']))}\n".encode())  # fmt: skip
                    # Popen from this (main) thread: the child's parent-death signal is
                    # tied to the thread that forked it.
                    proc = subprocess.Popen(
                        p.command(program), stdout=f, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent,
                    )  # fmt: skip
                p.status = "running"
                running.append((p, proc, time.perf_counter(), log_path))
                _say(f"sweep: [{p.index + 1}] start {p.name} (log {log_path})", main)
                summary.write()
            time.sleep(0.1)
            for item in list(running):
                p, proc, t0, log_path = item
                rc = proc.poll()
                if rc is None:
                    continue
                running.remove(item)
                p.returncode, p.wall_s = rc, round(time.perf_counter() - t0, 1)
                p.status = {0: "done", EXIT_PREEMPTED: "preempted",
                            EXIT_INTERRUPTED: "interrupted"}.get(rc, "failed")  # fmt: skip
                _copy_log(log_path, workdir)
                msg = f"sweep: [{p.index + 1}] {p.status} {p.name} in {p.wall_s:.1f}s"
                if rc != 0:
                    msg += f" (exit {rc}); last lines of {log_path}:\n" + _tail(log_path)
                _say(msg, main)
                summary.write()
    finally:
        for p, proc, t0, log_path in running:
            _stop(proc)
            _copy_log(log_path, workdir)
            p.status, p.returncode = "interrupted", proc.returncode
            p.wall_s = round(time.perf_counter() - t0, 1)
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop["signal"]:
        _say(f"sweep: stopped by signal {stop['signal']}; rerun the same command to resume",
             main)  # fmt: skip
    return stop["signal"]


def local_log_dir(workdir) -> Path:
    """Where the points' logs go: the points' stdout must be local files, so for an
    object-store workdir a local directory, copied to WORKDIR/logs/ as points finish."""
    if not io.is_remote(workdir):
        return Path(workdir) / LOG_DIR
    import tempfile

    tag = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"lmc-sweep-logs-{os.getuid()}" / tag


def _copy_log(log_path: Path, workdir) -> None:
    """An object-store workdir gets each point's log once the point has stopped."""
    if io.is_remote(workdir):
        try:
            data = log_path.read_bytes()
        except OSError:
            return
        io.write_bytes_atomic(io.path(workdir) / LOG_DIR / log_path.name, data, any_process=True)


def child_env(workdir) -> dict:
    """The points' environment: ours. Each point is an `lmc run`, which uses the same
    persistent compilation cache as any run (lmc.runtime.compilation_cache: LMC_COMPILATION_CACHE,
    size cap, lock), so points share compiled programs and honour `=off`."""
    del workdir
    return dict(os.environ)


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s` (checkpoint saves are atomic either way)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # looked up before any fork: the child only makes the call
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the sweep process dies, even by SIGKILL, so a
    killed sweep leaves no orphan training in a workdir the next sweep will resume."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _say(message: str, main: bool) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)


def _aggregate(config, config_file: str, workdir, points: list[Point]) -> None:
    """DIR/results.json and the experiment's figure for the whole sweep, when the
    experiment can pool its runs (`aggregate`, e.g. instability: barrier vs k over every
    point's pairs). `lmc report DIR` then prints that one table."""
    from lmc import experiments
    from lmc.runtime.provenance import config_to_dict, provenance

    kinds = {p.config.experiment for p in points}
    module = experiments.module_for(kinds.pop()) if len(kinds) == 1 else None
    if module is None or not hasattr(module, "aggregate"):
        return
    runs = [(p.name, _read_json(p.workdir / "results.json")) for p in points]
    if any(r is None for _, r in runs):
        return
    config_dict = config_to_dict(config)
    results = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "experiment": points[0].config.experiment,
        "config": config_dict,
        "provenance": {**provenance(config_dict, sum(p.wall_s or 0.0 for p in points),
                                    devices=False), "config_file": config_file},
        "sweep": {"points": [p.name for p in points]},
        **module.aggregate(runs),
    }  # fmt: skip
    io.write_json_atomic(workdir / "results.json", results, any_process=True)
    figures = module.plot(results, workdir)
    _say(f"sweep: wrote {workdir / 'results.json'}" + "".join(f", {f}" for f in figures), True)


def _print_report(workdir) -> None:
    from lmc import experiments
    from lmc.cli.report import find_results

    found = [(run, r) for run, r in find_results(workdir) if r.get("complete")]
    if found:
        print(experiments.table(found))
    print(f"\nwrote {workdir / SUMMARY_FILE}")


class _Summary:
    """DIR/sweep.json, rewritten atomically whenever a point changes state."""

    def __init__(self, workdir, config_file: str, forwarded, points, enabled: bool):
        self.path = workdir / SUMMARY_FILE
        self.config_file, self.forwarded, self.points = config_file, forwarded, points
        self.enabled = enabled

    def write(self) -> None:
        if not self.enabled:
            return
        counts: dict[str, int] = {}
        for p in self.points:
            counts[p.status] = counts.get(p.status, 0) + 1
        io.write_json_atomic(
            self.path,
            {
                "schema_version": SCHEMA_VERSION,
                "complete": all(p.status in ("done", "skipped") for p in self.points),
                "config_file": self.config_file,
                "forwarded_args": self.forwarded,
                "counts": counts,
                "points": [
                    {
                        "name": p.name,
                        "overrides": json.loads(json.dumps(p.overrides, default=repr)),
                        "workdir": str(p.workdir),
                        "status": p.status,
                        "returncode": p.returncode,
                        "wall_s": p.wall_s,
                        "config_hash": p.config_hash,
                        "command": shlex.join(p.command(["lmc"])),
                    }
                    for p in self.points
                ],
            },
            any_process=True,
        )


def _lock(workdir):
    """Hold DIR/.sweep.lock for the sweep; refuse if another sweep holds it (each point's
    `lmc run` holds its own point dir's lock besides)."""
    return workdir_lock(workdir, writer=True, what="lmc sweep", name=LOCK_FILE)


def _process_index(forwarded: list[str]) -> int:
    for a in forwarded:
        if a.lstrip("-").startswith("process_id="):
            return int(a.split("=", 1)[1])
    for var in ("LMC_PROCESS_ID", "SLURM_PROCID", "TPU_WORKER_ID"):
        if os.environ.get(var, "").isdigit() and (var == "LMC_PROCESS_ID" or _cluster()):
            return int(os.environ[var])
    return 0


def _cluster() -> bool:
    from lmc.runtime.distributed import cluster_detected

    return cluster_detected()
