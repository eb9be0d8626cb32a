"""End-to-end experiments, selected by `config.experiment` and run by `lmc run`.

Each experiment is `run(config, workdir) -> dict` returning the experiment-specific
part of results.json (`endpoints`, `methods`, `points`, ...); `run_experiment` adds
the envelope (schema_version, complete, config, provenance), writes results.json
atomically and draws the plots from it.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from lmc.errors import choose
from lmc.experiments import workdir as workdir_lib
from lmc.io import is_writer, write_json_atomic
from lmc.provenance import config_to_dict, provenance

log = logging.getLogger(__name__)

EXPERIMENTS = {
    "pair": "lmc.experiments.pair",
    "instability": "lmc.experiments.instability",
    "width": "lmc.experiments.width",
    "merge_many": "lmc.experiments.merge_many",
    "lm_pair": "lmc.experiments.lm_pair",
    "lm_instability": "lmc.experiments.lm_instability",
    "lm_code_vs_prose": "lmc.experiments.lm_code_vs_prose",
}
SCHEMA_VERSION = 1


def run_experiment(
    config, workdir: str | Path, *, overwrite: bool = False, config_file: str | None = None
) -> dict:
    choose("experiment", config.experiment, EXPERIMENTS)
    module = importlib.import_module(EXPERIMENTS[config.experiment])
    config_dict = config_to_dict(config)
    workdir = Path(workdir)
    results_path = workdir / workdir_lib.RESULTS_FILE
    # Validate everything that can be checked without training first, so a typo does
    # not surface after an hour of compute.
    module.validate(config)
    workdir = workdir_lib.prepare(workdir, config_dict, overwrite)
    t0 = time.perf_counter()
    body = module.run(config, workdir)
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
    if is_writer():
        write_json_atomic(results_path, results)
        _plot(results, workdir)
    return results


def _plot(results: dict, workdir: Path) -> None:
    from lmc import plots

    try:
        if "methods" in results:
            plots.plot_curves(results, workdir / "curves.png")
        if "points" in results:
            x_key = results.get("sweep_key", "spawn_step")
            name = {"spawn_step": "k"}.get(x_key, x_key)
            plots.plot_sweep(results, workdir / f"barrier_vs_{name}.png", x_key)
    except Exception as e:  # a plot must never cost the results
        log.warning("plotting failed: %s", e)
