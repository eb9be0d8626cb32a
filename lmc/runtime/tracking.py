"""Experiment trackers: TensorBoard and W&B beside `metrics.jsonl`, chosen by `config.log`.

    config.log.trackers = ("tensorboard",)            # or ("wandb",), or both; () : none
    lmc run --config=... --workdir=DIR --config.log.trackers=tensorboard,wandb

`metrics.jsonl` and `results.json` stay the source of truth; a tracker receives copies
(as levanter's trackers do): every metrics line of every network the loop trains (its
run name is its directory in the workdir: `child_0`, `k10/child_1`, `parent`), and at
the end the results: barrier scalars, the loss/error curves over alpha and the
experiment's Markdown table; the resolved config at the start.

- `tensorboard` (`pip install 'lmc[tensorboard]'`: tensorboardX, no TensorFlow):
  event files in `DIR/tensorboard/`, one run per network (TensorBoard overlays the
  children), plus `DIR/tensorboard/results/` with `barrier/<method>/<metric>`,
  `curves/<method>/<metric>` (x axis: round(1000 * alpha)), for sweep experiments
  `barrier_mean/<method>/<metric>` over the swept value, and the table and config as
  text. `tensorboard --logdir DIR/tensorboard`.
- `wandb` (`pip install 'lmc[wandb]'`): one W&B run per `lmc run` (project
  `config.log.wandb_project`, entity `config.log.wandb_entity`, mode
  `config.log.wandb_mode` or W&B's own default / `WANDB_MODE`), its files in
  `DIR/wandb/`. Each network's metrics are keyed `<run>/<metric>` against their own
  step (`<run>/step`), so children that restart at the spawn step do not fight over
  W&B's global step; the barriers go to the run summary (`barrier/<method>/<metric>`)
  and the table and curves to W&B tables.

Only process 0 tracks. A workdir on an object store (gs://) gets the trackers' files
when the run ends: they are written to a local staging directory meanwhile (both
libraries write local files) and copied through `lmc.runtime.io`. Trackers write through their
own libraries, not `lmc.runtime.io`, so each call first asks `io.check_writable`: a run whose
workdir lock was taken over stops here too. A resumed run starts new event files (and
a new W&B run); TensorBoard shows the steps after the checkpoint twice where a run was
interrupted, metrics.jsonl does not.

The engine calls `current()` (the active tracker, a no-op by default); `run_experiment`
opens it around a run with `use(open_trackers(config, workdir))`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator

from lmc.errors import UserError
from lmc.runtime import io

log = logging.getLogger(__name__)

TRACKERS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
RESULTS_RUN = "results"
_WANDB_MODES = ("", "online", "offline", "disabled")


class Tracker:
    """The interface the engine calls (this base class tracks nothing)."""

    def log_metrics(self, metrics_path: io.PathLike, record: dict) -> None:
        """One metrics.jsonl line (`record`, with its `step`) of the run writing
        `metrics_path`."""

    def log_results(self, results: dict, table: str) -> None:
        """The run's results.json body and its Markdown table, at the end."""

    def finish(self) -> None:
        """Flush and close; copy staged files to an object-store workdir."""


_current: Tracker = Tracker()


def current() -> Tracker:
    """The active tracker (one that does nothing outside `use`)."""
    return _current


@contextlib.contextmanager
def use(tracker: Tracker) -> Iterator[Tracker]:
    """Make `tracker` the active one for the block; finish it at the end."""
    global _current
    previous, _current = _current, tracker
    try:
        yield tracker
    finally:
        _current = previous
        tracker.finish()


def validate(config) -> list[str]:
    """The tracker names of `config.log`, checked (names, W&B mode, packages installed)."""
    given = config.log.trackers
    given = (given,) if isinstance(given, str) else given
    # `--config.log.trackers=tensorboard,wandb` arrives as ("tensorboard,wandb",).
    names = [n.strip() for item in given for n in str(item).split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise UserError(
                f"config.log.trackers: unknown tracker {name!r}; valid trackers: "
                + ", ".join(sorted(TRACKERS))
            )
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"config.log.trackers includes {name!r}, which needs the {module} package: "
                f"pip install 'lmc[{extra}]' (or drop it from config.log.trackers)"
            )
    if config.log.wandb_mode not in _WANDB_MODES:
        raise UserError(
            f"config.log.wandb_mode must be one of {', '.join(map(repr, _WANDB_MODES))}, "
            f"got {config.log.wandb_mode!r}"
        )
    return names


def open_trackers(config, workdir: io.PathLike, config_dict: dict) -> Tracker:
    """The trackers `config.log` selects for a run in `workdir` (process 0; others and an
    empty selection get the no-op tracker)."""
    names = validate(config)
    if not names or not io.is_writer():
        return Tracker()
    made = []
    try:
        for name in names:
            cls = TensorBoardTracker if name == "tensorboard" else WandbTracker
            made.append(cls(workdir, config_dict, config.log))
    except BaseException:
        for tracker in made:
            tracker.finish()
        raise
    return made[0] if len(made) == 1 else _Several(made)


class _Several(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_metrics(self, metrics_path, record) -> None:
        for t in self.trackers:
            t.log_metrics(metrics_path, record)

    def log_results(self, results, table) -> None:
        for t in self.trackers:
            t.log_results(results, table)

    def finish(self) -> None:
        errors = []
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:  # finish every tracker, then report the first failure
                errors.append(e)
        if errors:
            raise errors[0]


class _Staged(Tracker):
    """A tracker whose library writes local files under `self.local` (DIR/<subdir>, or a
    staging directory copied to DIR/<subdir> at the end for object-store workdirs)."""

    def __init__(self, workdir: io.PathLike, subdir: str):
        self.workdir = os.fspath(workdir)
        self.target = f"{self.workdir.rstrip('/')}/{subdir}"
        self.remote = io.is_remote(self.workdir)
        io.check_writable(self.target)
        if self.remote:
            self.local = os.path.join(tempfile.mkdtemp(prefix="lmc-tracker-"), subdir)
            os.makedirs(self.local)
        else:
            self.local = os.path.abspath(self.target)
            io.makedirs(self.local)

    def run_name(self, metrics_path: io.PathLike) -> str:
        """`child_0`, `k10/child_1`: the metrics file's directory within the workdir."""
        directory = os.fspath(metrics_path).rsplit("/", 1)[0]
        root = self.workdir.rstrip("/")
        if not self.remote:
            directory, root = os.path.abspath(directory), os.path.abspath(root)
        if directory.startswith(root + "/"):
            return directory[len(root) + 1 :]
        return directory.rsplit("/", 1)[-1]

    def upload(self) -> None:
        if not self.remote:
            return
        for root, _, names in os.walk(self.local):
            for name in names:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                with open(path, "rb") as f:
                    io.write_bytes_atomic(f"{self.target}/{rel}", f.read(), any_process=True)
        shutil.rmtree(os.path.dirname(self.local), ignore_errors=True)


def _scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a metrics record, without its step."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _result_scalars(results: dict):
    """(tag, value, step) for the barriers and curves of pair- and sweep-shaped results."""
    for method, entry in results.get("methods", {}).items():
        for metric, value in entry.get("barrier", {}).items():
            yield f"barrier/{method}/{metric}", value, 0
        alphas = entry.get("alphas", [])
        for metric, curve in entry.get("curves", {}).items():
            for alpha, value in zip(alphas, curve, strict=False):
                yield f"curves/{method}/{metric}", value, round(1000 * alpha)
    key = results.get("sweep_key")
    for point in results.get("points", []) if key else []:
        for method, stats in point.get("methods", {}).items():
            for metric, value in stats.get("barrier_mean", {}).items():
                yield f"barrier_mean/{method}/{metric}", value, round(point[key])


class TensorBoardTracker(_Staged):
    """Event files through tensorboardX (which needs no TensorFlow)."""

    def __init__(self, workdir: io.PathLike, config_dict: dict, settings=None):
        super().__init__(workdir, TENSORBOARD_DIR)
        from tensorboardX import SummaryWriter

        self._writer_cls = SummaryWriter
        self._writers: dict = {}
        text = "```json\n" + json.dumps(config_dict, indent=1) + "\n```"
        self._writer(RESULTS_RUN).add_text("config", text, 0)

    def _writer(self, run: str):
        if run not in self._writers:
            self._writers[run] = self._writer_cls(os.path.join(self.local, run))
        return self._writers[run]

    def log_metrics(self, metrics_path, record) -> None:
        io.check_writable(self.target)
        writer = self._writer(self.run_name(metrics_path))
        for key, value in _scalars(record).items():
            writer.add_scalar(key, value, int(record["step"]))

    def log_results(self, results, table) -> None:
        io.check_writable(self.target)
        writer = self._writer(RESULTS_RUN)
        for tag, value, step in _result_scalars(results):
            if value is not None and math.isfinite(value):
                writer.add_scalar(tag, value, step)
        writer.add_text("table", table, 0)

    def finish(self) -> None:
        if not _may_write(self.target):
            return
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()
        self.upload()


class WandbTracker(_Staged):
    """A W&B run (online, offline or disabled, as `config.log.wandb_mode` says)."""

    def __init__(self, workdir: io.PathLike, config_dict: dict, settings):
        super().__init__(workdir, WANDB_DIR)
        import wandb

        self._wandb = wandb
        self._defined: set[str] = set()
        name = self.workdir.rstrip("/").rsplit("/", 1)[-1]
        try:
            self.run = wandb.init(
                project=settings.wandb_project or "lmc",
                entity=settings.wandb_entity or None,
                mode=settings.wandb_mode or None,
                name=name,
                dir=os.path.dirname(self.local),  # W&B writes its files to DIR/wandb
                config=config_dict,
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as e:  # no credentials, no network, a bad entity or project
            raise UserError(
                f"config.log.trackers: W&B could not start a run ({type(e).__name__}: {e}). "
                "Log in (`wandb login`, or set WANDB_API_KEY), check "
                "config.log.wandb_entity and config.log.wandb_project, or set "
                "config.log.wandb_mode=offline (sync later with `wandb sync`)."
            ) from e

    def log_metrics(self, metrics_path, record) -> None:
        io.check_writable(self.target)
        run = self.run_name(metrics_path)
        if run not in self._defined:  # each network's metrics against its own step
            self.run.define_metric(f"{run}/step")
            self.run.define_metric(f"{run}/*", step_metric=f"{run}/step")
            self._defined.add(run)
        values = {f"{run}/{k}": v for k, v in _scalars(record).items()}
        self.run.log({**values, f"{run}/step": int(record["step"])})

    def log_results(self, results, table) -> None:
        io.check_writable(self.target)
        wandb = self._wandb
        curves = []
        for tag, value, step in _result_scalars(results):
            kind, method, metric = tag.split("/", 2)
            if kind == "curves":
                curves.append([method, metric, step / 1000, value])
            else:
                self.run.summary[tag if kind == "barrier" else f"{tag}/{step}"] = value
        logged = {}
        for i, (header, rows) in enumerate(_markdown_tables(table)):
            logged["table" if i == 0 else f"table_{i + 1}"] = wandb.Table(columns=header, data=rows)
        if curves:
            logged["curves"] = wandb.Table(
                columns=["method", "metric", "alpha", "value"], data=curves
            )
        self.run.log(logged)

    def finish(self) -> None:
        run, self.run = self.run, None
        if run is not None and _may_write(self.target):
            run.finish()
            self.upload()


def _may_write(target: str) -> bool:
    """False where the run lost its workdir lock: then nothing is flushed or uploaded."""
    try:
        io.check_writable(target)
    except Exception as e:
        log.warning("trackers not flushed: %s", e)
        return False
    return True


def _markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of each Markdown table in `text` (tables separated by blank lines)."""
    tables = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if len(lines) < 2:
            continue
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
        tables.append((cells[0], cells[2:]))  # cells[1]: the |---|---| separator
    return tables
