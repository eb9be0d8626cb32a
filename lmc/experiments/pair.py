"""`pair`: two siblings, B aligned to A by each configured method, a curve and barriers each.

Any model on any data: the siblings come from `lmc.training.siblings` (spawned from
the parent's step `config.spawn.step`, or independent inits), or are two given
checkpoints (`config.checkpoints`, configs/checkpoint_pair.py); the methods from
`config.eval.methods`. Outputs: results.json `endpoints` and `methods`, curves.png.

    lmc run --config=configs/default.py --workdir=runs/default
"""

from __future__ import annotations

from pathlib import Path

from lmc import plots, training
from lmc.experiments.common import compare, setup, tables
from lmc.experiments.common.methods import validate_methods
from lmc.runtime import io


def validate(config) -> None:
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    validate_methods(config, setup.has_batchnorm(model, dataset))
    training.validate_spawn(config, dataset, [config.spawn.step])
    if not setup.checkpoint_dirs(config):
        training.check_num_children(config, 2, "the pair experiment")


def parent_steps(config) -> list[int]:
    """The parent checkpoints this run spawns from (a sweep may train them once)."""
    return [int(config.spawn.step)] if training.is_spawned(config) else []


def run(config, workdir: Path, parent: Path | None = None) -> dict:
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    ea, eb = setup.endpoints(config, workdir, model, dataset, (0, 1), shared=parent)
    setup.finite_or_raise(ea, "endpoint a"), setup.finite_or_raise(eb, "endpoint b")
    body = {}
    if dataset.kind == "text":
        body["data"] = dataset.summary()
    body["endpoints"] = compare.endpoint_metrics(config, model, dataset, {"a": ea, "b": eb})
    body["methods"] = compare.compare_pair(config, model, dataset, ea, eb)
    return body


def plot(results: dict, workdir: Path) -> list[Path]:
    return [plots.plot_curves(results, io.path(workdir) / "curves.png")]


def table(runs: list[tuple[str, dict]]) -> str:
    rows = [row for run, results in runs for row in tables.method_rows(run, results["methods"])]
    out = tables.markdown(tables.HEADER, rows)
    lm = [r for run, res in runs for r in tables.lm_endpoint_rows(run, res.get("endpoints", {}))]
    return out + ("\n\n" + tables.markdown(tables.LM_HEADER, lm) if lm else "")
