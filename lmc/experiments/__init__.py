"""End-to-end experiments, selected by `config.experiment` and run by `lmc run`.

Every experiment is a module with

    validate(config) -> None                  # everything checkable before training
    run(config, workdir, parent=None) -> dict # the experiment's part of results.json
    plot(results, workdir) -> list[path]      # its figures, from results.json alone
    table(runs: [(name, results)]) -> str     # its Markdown table (`lmc report`)

and optionally `parent_steps(config)` (the parent checkpoints it spawns from: a sweep
whose points share a parent trains it once, see `lmc.cli.sweep`, and passes
`parent=DIR`) and `aggregate(runs) -> dict` (one result from a sweep's runs).

and works for every model family and data kind (images or text). `run_experiment`
adds the envelope (schema_version, complete, config, provenance; see
docs/reference/results_schema.md), writes results.json atomically and draws the plots;
`lmc report` dispatches on `results["experiment"]`.
"""

from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType

from lmc.errors import UserError, choose
from lmc.experiments.common import workdir as workdir_lib
from lmc.runtime import io, tracking
from lmc.runtime.io.lock import workdir_lock
from lmc.runtime.provenance import config_to_dict, provenance

log = logging.getLogger(__name__)

EXPERIMENTS = {
    "pair": "lmc.experiments.pair",
    "instability": "lmc.experiments.instability",
    "width": "lmc.experiments.width",
    "merge_many": "lmc.experiments.merge_many",
    "code_vs_prose": "lmc.experiments.code_vs_prose",
    "parent": "lmc.experiments.parent",
}
# Names of the language-model experiments before they became the general ones.
ALIASES = {"lm_pair": "pair", "lm_instability": "instability", "lm_code_vs_prose": "code_vs_prose"}
SCHEMA_VERSION = 1


def module_for(name: str) -> ModuleType:
    """The module of experiment `name` (an alias resolves to its experiment)."""
    name = ALIASES.get(name, name)
    choose("experiment", name, EXPERIMENTS)
    return importlib.import_module(EXPERIMENTS[name])


def validate(config) -> None:
    """Check everything that can be checked without training, so a typo does not
    surface after an hour of compute."""
    from lmc.training.loop import validate_loop_settings

    validate_loop_settings(config)
    tracking.validate(config)
    _given_checkpoints_fit(config)
    module_for(config.experiment).validate(config)


# The experiments whose endpoints can be given checkpoints (`config.checkpoints`).
TAKE_CHECKPOINTS = ("pair", "merge_many")


def _given_checkpoints_fit(config) -> None:
    from lmc.experiments.common.setup import checkpoint_dirs

    name = ALIASES.get(config.experiment, config.experiment)
    if checkpoint_dirs(config) and name not in TAKE_CHECKPOINTS:
        raise UserError(
            f"config.checkpoints gives checkpoints, but the {name} experiment trains its own "
            f"networks; given checkpoints go through {' or '.join(TAKE_CHECKPOINTS)}"
        )


def run_experiment(
    config,
    workdir: io.PathLike,
    *,
    overwrite: bool = False,
    config_file: str | None = None,
    parent: io.PathLike | None = None,
) -> dict:
    """Run the config's experiment in `workdir` (a local path or a URL) and write its
    results.json. `parent`: the workdir of a shared parent (`lmc run --parent=DIR`) to
    spawn from instead of training one. One run per workdir: process 0 holds the
    workdir's lock throughout (`lmc.runtime.io.lock`), so a second run there is refused naming
    the holder."""
    module = module_for(config.experiment)
    config_dict = config_to_dict(config)
    if parent is not None and not hasattr(module, "parent_steps"):
        raise UserError(
            f"--parent: the {config.experiment} experiment does not spawn from a shared parent "
            f"(those that do: {', '.join(n for n in EXPERIMENTS if _shares_parent(n))})"
        )
    validate(config)
    workdir = io.path(workdir)
    parent = io.path(parent) if parent is not None else None
    with workdir_lock(workdir):
        return _run_locked(module, config, config_dict, workdir, overwrite, config_file, parent)


def _run_locked(module, config, config_dict, workdir, overwrite, config_file, parent) -> dict:
    workdir = workdir_lib.prepare(workdir, config_dict, overwrite)
    with tracking.use(tracking.open_trackers(config, workdir, config_dict)) as tracker:
        results = _run_tracked(module, config, config_dict, workdir, config_file, parent)
        if io.is_writer():
            tracker.log_results(results, table([(workdir.name, results)]))
    return results


def _run_tracked(module, config, config_dict, workdir, config_file, parent) -> dict:
    t0 = time.perf_counter()
    body = module.run(config, workdir, parent=parent)
    results = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "experiment": config.experiment,
        "config": config_dict,
        "provenance": provenance(config_dict, time.perf_counter() - t0),
        **body,
    }
    if config_file:
        results["provenance"]["config_file"] = config_file
    if parent is not None:
        results["provenance"]["parent"] = str(parent)
    if io.is_writer():
        io.write_json_atomic(workdir / workdir_lib.RESULTS_FILE, results)
        plot(results, workdir)
    return results


def _shares_parent(name: str) -> bool:
    return hasattr(module_for(name), "parent_steps")


def plot(results: dict, workdir: io.PathLike) -> list:
    """The experiment's figures; a failed plot is a warning, never a lost result."""
    try:
        return module_for(results["experiment"]).plot(results, workdir)
    except Exception as e:
        log.warning("plotting failed: %s", e)
        return []


def table(runs: list[tuple[str, dict]]) -> str:
    """Markdown tables of finished runs, one per experiment kind, in order of appearance."""
    groups: dict[str, list] = {}
    for name, results in runs:
        experiment = results.get("experiment")
        if experiment is None:
            raise UserError(f"{name}: results.json has no 'experiment' key (not an lmc result?)")
        groups.setdefault(ALIASES.get(experiment, experiment), []).append((name, results))
    return "\n\n".join(module_for(kind).table(group) for kind, group in groups.items())
